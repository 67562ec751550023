package pluginhost

import (
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
)

// Metrics are the plugin host's Prometheus metrics:
//
//	herald_provider_call_duration_seconds{channel,outcome}  adapter calls (the provider round trip), by outcome: delivered, retryable, permanent, unknown; reconcile requests as reconcile_found, reconcile_not_found, reconcile_cannot_answer, reconcile_error
//	herald_channel_healthy{channel}                        1 while fewer than 3 consecutive outcomes were not DELIVERED, else 0 (as ListChannels)
//	herald_delivery_errors_total{channel,error_code}       deliveries answered other than DELIVERED, and reconcile requests answered other than found or not found, by error code
//
// One Metrics serves one Host.
type Metrics struct {
	callDuration *prometheus.HistogramVec
	errors       *prometheus.CounterVec
	healthyDesc  *prometheus.Desc
	host         atomic.Pointer[Host]
}

// NewMetrics creates the plugin host's metrics and registers them on reg; a
// nil reg leaves them unregistered.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		callDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "herald_provider_call_duration_seconds",
			Help:    "Duration of adapter calls to the provider, by channel and outcome (delivered, retryable, permanent, unknown).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"channel", "outcome"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_delivery_errors_total",
			Help: "Deliveries the plugin host answered other than DELIVERED, by channel and error code.",
		}, []string{"channel", "error_code"}),
		healthyDesc: prometheus.NewDesc("herald_channel_healthy",
			"1 while a channel has had fewer than 3 consecutive outcomes other than DELIVERED, else 0.",
			[]string{"channel"}, nil),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.callDuration, m.errors, healthCollector{m}} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register plugin host metrics: %w", err)
			}
		}
	}
	return m, nil
}

// outcomeLabel is "delivered", "retryable", "permanent" or "unknown".
func outcomeLabel(o pluginsv1.Outcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "OUTCOME_"))
}

// healthCollector reports herald_channel_healthy from the host's
// consecutive-failure counters at scrape time.
type healthCollector struct{ m *Metrics }

func (c healthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.m.healthyDesc }

func (c healthCollector) Collect(ch chan<- prometheus.Metric) {
	h := c.m.host.Load()
	if h == nil {
		return
	}
	for _, name := range h.names {
		v := 0.0
		if h.channels[name].failures.Load() < h.unhealthyAfter {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.m.healthyDesc, prometheus.GaugeValue, v, name)
	}
}
