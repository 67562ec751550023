package queue

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the queue's Prometheus metrics:
//
//	herald_deliveries_total{channel,result}     answered attempts: delivered, retry, failed, unknown
//	herald_retries_total{channel}               attempts this queue scheduled for a retry
//	herald_dead_letters_total{channel,code}     messages this queue dead-lettered, by the last error code
//	herald_in_flight{channel}                   deliveries (and reconcile requests) handed to the plugin host and not yet answered
//	herald_reconciles_total{channel,result}     reconcile requests answered: found, not_found, cannot_answer, error
//
// A delivery held back before any provider call (open circuit, paused
// destination) is not an attempt and is not counted.
type Metrics struct {
	deliveries  *prometheus.CounterVec
	retries     *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	inFlight    *prometheus.GaugeVec
	reconciles  *prometheus.CounterVec
}

// NewMetrics creates the queue's metrics and registers them on reg; a nil
// reg leaves them unregistered.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_deliveries_total",
			Help: "Delivery attempts answered, by channel and the result the queue reported: delivered, retry, failed or unknown.",
		}, []string{"channel", "result"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_retries_total",
			Help: "Failed attempts the queue scheduled to be tried again, by channel.",
		}, []string{"channel"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_dead_letters_total",
			Help: "Messages the queue dead-lettered (permanent failure, attempts or age exhausted), by channel and error code.",
		}, []string{"channel", "code"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "herald_in_flight",
			Help: "Deliveries handed to the plugin host and not yet answered, by channel.",
		}, []string{"channel"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_reconciles_total",
			Help: "Reconcile requests answered (was a message whose outcome is unknown received by the provider?), by channel and result: found, not_found, cannot_answer or error.",
		}, []string{"channel", "result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.deliveries, m.retries, m.deadLetters, m.inFlight, m.reconciles} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register queue metrics: %w", err)
			}
		}
	}
	return m, nil
}
