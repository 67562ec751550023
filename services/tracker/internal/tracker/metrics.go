package tracker

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	"github.com/heraldchat/herald/services/tracker/internal/store"
)

// Metrics are the tracker's Prometheus metrics:
//
//	herald_messages{state}                  messages per delivery state, read from the store's counters at scrape time
//	herald_recovery_index_size              recovery-index entries (non-terminal messages)
//	herald_oldest_pending_age_seconds       how long the most overdue due PENDING message has been due (0 when none is)
//	herald_store_commit_duration_seconds    store batch commits, fsync included
//	herald_commits_total                    store batch commits
//	herald_wal_fsyncs_total                 Pebble WAL fsyncs (group commit shares one among many commits)
//
// Create Metrics before the store (its ObserveCommit is the store's
// Options.OnCommit), then give it the store with Watch.
type Metrics struct {
	commitSeconds prometheus.Histogram
	commits       prometheus.Counter
	now           func() time.Time
	store         atomic.Pointer[store.Store]

	messages, recovery, oldestPending, walFsyncs *prometheus.Desc
	storeMemory, openTables                      *prometheus.Desc
}

// NewMetrics creates the tracker's metrics and registers them on reg; a nil
// reg leaves them unregistered. now is the store's clock (due times are on
// it); nil means time.Now.
func NewMetrics(reg prometheus.Registerer, now func() time.Time) (*Metrics, error) {
	if now == nil {
		now = time.Now
	}
	m := &Metrics{
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "herald_store_commit_duration_seconds",
			Help:    "Duration of the tracker store's batch commits, fsync included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
		commits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_commits_total",
			Help: "Batch commits of the tracker store (each made durable with pebble.Sync).",
		}),
		now: now,
		messages: prometheus.NewDesc("herald_messages",
			"Messages per delivery state, from the store's durable counters.", []string{"state"}, nil),
		recovery: prometheus.NewDesc("herald_recovery_index_size",
			"Entries in the recovery index: every non-terminal message.", nil, nil),
		oldestPending: prometheus.NewDesc("herald_oldest_pending_age_seconds",
			"How long the most overdue PENDING message (head of its conversation) has been due; 0 when none is due.", nil, nil),
		walFsyncs: prometheus.NewDesc("herald_wal_fsyncs_total",
			"Pebble WAL fsyncs since the store was opened; group commit lets one serve many commits.", nil, nil),
		storeMemory: prometheus.NewDesc("herald_store_memory_bytes",
			"Memory the store's Pebble instance holds, by use: block_cache (table blocks read, at most 64 MiB), memtables (writes not yet flushed).", []string{"use"}, nil),
		openTables: prometheus.NewDesc("herald_store_open_tables",
			"Table files Pebble holds open (its file cache).", nil, nil),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.commitSeconds, m.commits, storeCollector{m}} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register tracker metrics: %w", err)
			}
		}
	}
	return m, nil
}

// ObserveCommit records one store commit; pass it as store.Options.OnCommit.
func (m *Metrics) ObserveCommit(d time.Duration) {
	m.commitSeconds.Observe(d.Seconds())
	m.commits.Inc()
}

// Watch makes scrapes read st. Until it is called, the store's gauges are
// absent. The caller stops serving metrics before it closes st.
func (m *Metrics) Watch(st *store.Store) { m.store.Store(st) }

// storeCollector reads the store's gauges at scrape time.
type storeCollector struct{ m *Metrics }

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.m.messages
	ch <- c.m.recovery
	ch <- c.m.oldestPending
	ch <- c.m.walFsyncs
	ch <- c.m.storeMemory
	ch <- c.m.openTables
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.m.store.Load()
	if st == nil {
		return
	}
	if counts, err := st.Counts(); err != nil {
		ch <- prometheus.NewInvalidMetric(c.m.messages, fmt.Errorf("read state counters: %w", err))
	} else {
		for v, name := range storev1.State_name {
			s := storev1.State(v)
			if s == storev1.State_STATE_UNSPECIFIED {
				continue
			}
			ch <- prometheus.MustNewConstMetric(c.m.messages, prometheus.GaugeValue, float64(counts[s]),
				strings.ToLower(strings.TrimPrefix(name, "STATE_")))
		}
	}
	ch <- prometheus.MustNewConstMetric(c.m.recovery, prometheus.GaugeValue, float64(st.RecoverySize()))
	age := 0.0
	if next, ok, _ := st.DueSignal(false); ok {
		age = max(c.m.now().Sub(next).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(c.m.oldestPending, prometheus.GaugeValue, age)
	pm := st.Metrics()
	ch <- prometheus.MustNewConstMetric(c.m.walFsyncs, prometheus.CounterValue, float64(store.WALFsyncs(pm)))
	ch <- prometheus.MustNewConstMetric(c.m.storeMemory, prometheus.GaugeValue, float64(pm.BlockCache.Size), "block_cache")
	ch <- prometheus.MustNewConstMetric(c.m.storeMemory, prometheus.GaugeValue, float64(pm.MemTable.Size), "memtables")
	ch <- prometheus.MustNewConstMetric(c.m.openTables, prometheus.GaugeValue, float64(pm.FileCache.TableCount))
}
