package gateway

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

// Metrics are the gateway's Prometheus metrics:
//
//	herald_messages_accepted_total{channel}  messages Send made durable (duplicates of an idempotency key not counted)
//	herald_send_duration_seconds{code}       Send latency by gRPC status code, tracker round trip included
type Metrics struct {
	accepted *prometheus.CounterVec
	send     *prometheus.HistogramVec
}

// NewMetrics creates the gateway's metrics and registers them on reg; a nil
// reg leaves them unregistered (they still count, nobody reads them).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_messages_accepted_total",
			Help: "Messages the gateway's Send made durable, by channel. Repeats of an idempotency key are not counted.",
		}, []string{"channel"}),
		send: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "herald_send_duration_seconds",
			Help:    "Latency of Send, including the tracker's fsynced Accept, by gRPC status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"code"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.accepted, m.send} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register gateway metrics: %w", err)
			}
		}
	}
	return m, nil
}

// observeSend records one Send that started at start and ended with err.
func (m *Metrics) observeSend(start time.Time, channel string, resp interface{ GetDuplicate() bool }, err error) {
	m.send.WithLabelValues(status.Code(err).String()).Observe(time.Since(start).Seconds())
	if err == nil && !resp.GetDuplicate() {
		m.accepted.WithLabelValues(channel).Inc()
	}
}
