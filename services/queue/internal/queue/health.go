package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// Channel-health event types.
const (
	eventUnhealthy = "channel.unhealthy"
	eventHealthy   = "channel.healthy"
)

// errProvider marks an attempt the circuit breaker counts as a failure;
// errNotAttempted one it does not count at all.
var (
	errProvider     = errors.New("provider failure")
	errNotAttempted = errors.New("not attempted")
)

// guard protects channels and destinations from being hammered: a circuit
// breaker per channel (a dead provider gets one probe per interval, not a
// stream of requests), a pause per destination after a provider's
// retry-after, and the consecutive-failure count behind channel.unhealthy.
type guard struct {
	q         *Queue
	threshold int
	settings  gobreaker.Settings

	mu       sync.Mutex
	breakers map[string]*gobreaker.TwoStepCircuitBreaker[struct{}]
	failures map[string]int
	degraded map[string]bool
	paused   map[[2]string]time.Time
}

func newGuard(q *Queue) *guard {
	g := &guard{
		q:         q,
		threshold: q.cfg.FailureThreshold,
		breakers:  map[string]*gobreaker.TwoStepCircuitBreaker[struct{}]{},
		failures:  map[string]int{},
		degraded:  map[string]bool{},
		paused:    map[[2]string]time.Time{},
	}
	g.settings = gobreaker.Settings{
		MaxRequests: 1, // one probe while half-open
		IsExcluded:  func(err error) bool { return errors.Is(err, errNotAttempted) },
		Timeout:     q.cfg.BreakerTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return int(c.ConsecutiveFailures) >= q.cfg.BreakerFailures },
		OnStateChange: func(name string, from, to gobreaker.State) {
			q.log.Warn("channel circuit changed", "channel", name, "from", from.String(), "to", to.String(), "error_code", "QUE_009")
		},
	}
	return g
}

func (g *guard) breaker(ch string) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	g.mu.Lock()
	defer g.mu.Unlock()
	b := g.breakers[ch]
	if b == nil {
		s := g.settings
		s.Name = ch
		b = gobreaker.NewTwoStepCircuitBreaker[struct{}](s)
		g.breakers[ch] = b
	}
	return b
}

// slots limits what the tracker leases for a channel whose circuit is not
// closed: nothing while open, one probe while half-open.
func (g *guard) slots(out map[string]uint32) {
	g.mu.Lock()
	names := make([]string, 0, len(g.breakers))
	for ch := range g.breakers {
		names = append(names, ch)
	}
	g.mu.Unlock()
	for _, ch := range names {
		switch g.breaker(ch).State() {
		case gobreaker.StateOpen:
			out[ch] = 0
		case gobreaker.StateHalfOpen:
			if v, ok := out[ch]; !ok || v > 1 {
				out[ch] = 1
			}
		}
	}
}

// hold reports whether a leased message must not be sent now, and until
// when: its destination is paused by a retry-after, or its channel's circuit
// is open. It returns the breaker's done function when the call may go.
func (g *guard) hold(ch, recipient string) (until time.Time, done func(error)) {
	now := g.q.now()
	g.mu.Lock()
	p, ok := g.paused[[2]string{ch, recipient}]
	if ok && !now.Before(p) {
		delete(g.paused, [2]string{ch, recipient})
		ok = false
	}
	g.mu.Unlock()
	if ok {
		return p, nil
	}
	done, err := g.breaker(ch).Allow()
	if err != nil {
		return now.Add(g.q.cfg.BreakerTimeout), nil
	}
	return time.Time{}, done
}

// observe records an attempt's answer.
func (g *guard) observe(j *job, r *pluginsv1.DeliverResponse) {
	ch := j.lease.GetMessage().GetChannel()
	if (j.aborted.Load() && r.GetOutcome() != pluginsv1.Outcome_OUTCOME_DELIVERED) || strings.HasPrefix(r.GetErrorCode(), "QUE_") {
		// Cut short by its abort, or answered by the queue itself (the
		// plugin host went away, or never answered): neither a success nor
		// a failure of the provider.
		if j.done != nil {
			j.done(errNotAttempted)
		}
		return
	}
	if j.done != nil {
		switch r.GetOutcome() {
		case pluginsv1.Outcome_OUTCOME_RETRYABLE, pluginsv1.Outcome_OUTCOME_UNKNOWN:
			j.done(errProvider)
		default:
			j.done(nil) // the provider answered
		}
	}
	if ra := r.GetRetryAfterMs(); ra > 0 {
		g.mu.Lock()
		g.paused[[2]string{ch, j.lease.GetMessage().GetRecipient()}] = g.q.now().Add(time.Duration(ra) * time.Millisecond)
		g.mu.Unlock()
	}
	delivered := r.GetOutcome() == pluginsv1.Outcome_OUTCOME_DELIVERED
	g.mu.Lock()
	var event, detail string
	if delivered {
		g.failures[ch] = 0
		if g.degraded[ch] {
			g.degraded[ch] = false
			event, detail = eventHealthy, "a delivery succeeded"
		}
	} else {
		g.failures[ch]++
		if g.failures[ch] >= g.threshold && !g.degraded[ch] {
			g.degraded[ch] = true
			event, detail = eventUnhealthy, fmt.Sprintf("%d consecutive failures; last: %s %s", g.failures[ch], r.GetErrorCode(), r.GetDescription())
		}
	}
	g.mu.Unlock()
	if event != "" {
		g.q.log.Warn("channel health changed", "channel", ch, "event", event, "detail", detail, "error_code", r.GetErrorCode())
		go g.record(event, ch, r.GetErrorCode(), detail)
	}
}

// Degraded lists channels currently marked unhealthy.
func (g *guard) Degraded() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for ch, d := range g.degraded {
		if d {
			out = append(out, ch)
		}
	}
	return out
}

func (g *guard) record(typ, ch, code, detail string) {
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := g.q.tracker.RecordEvent(ctx, &trackerv1.RecordEventRequest{Type: typ, Channel: ch, ErrorCode: code, Detail: detail})
		cancel()
		if err == nil {
			return
		}
		time.Sleep(time.Duration(i+1) * 200 * time.Millisecond)
	}
	g.q.log.Warn("could not record channel event", "channel", ch, "event", typ)
}
