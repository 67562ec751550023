// Package queue schedules deliveries: it leases due messages from the
// tracker in batches, hands them to the plugin host over one pipelined
// stream within per-channel concurrency limits, decides retries, and reports
// outcomes back to the tracker in batches, each fenced by its lease token.
//
// It keeps no state that a restart needs: everything comes back from the
// tracker's recovery index. Per-conversation order is the tracker's: it
// leases only the head of each conversation.
package queue

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/heraldchat/herald/pkg/telemetry"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	queuev1 "github.com/heraldchat/herald/proto/herald/queue/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// Config tunes a Queue. Zero fields take the defaults in withDefaults.
type Config struct {
	// Worker names this queue in the tracker's events.
	Worker string
	// LeaseBatch is the most messages leased per call.
	LeaseBatch int
	// LeaseDuration is how long a lease lasts; it must exceed DeliverTimeout
	// by enough to report the outcome.
	LeaseDuration time.Duration
	// DeliverTimeout bounds one provider call.
	DeliverTimeout time.Duration
	// MaxInFlight bounds deliveries in flight across channels.
	MaxInFlight int
	// ChannelLimit bounds deliveries in flight per channel; channels not
	// listed get DefaultChannelLimit.
	ChannelLimit        map[string]int
	DefaultChannelLimit int
	// Retry is the retry policy per channel; channels not listed get
	// DefaultRetry.
	Retry        map[string]RetryPolicy
	DefaultRetry RetryPolicy
	// DrainTimeout bounds how long shutdown waits for deliveries in flight.
	DrainTimeout time.Duration
	// Completers is the number of concurrent Complete calls.
	Completers int
	// FailureThreshold consecutive failures on a channel emit
	// channel.unhealthy; one success emits channel.healthy.
	FailureThreshold int
	// BreakerFailures consecutive provider failures open a channel's
	// circuit; BreakerTimeout later one probe is let through.
	BreakerFailures int
	BreakerTimeout  time.Duration
	// Metrics receives the queue's counts; nil means metrics registered
	// nowhere.
	Metrics *Metrics
}

// RetryPolicy decides when a retryable failure is tried again.
type RetryPolicy struct {
	Initial     time.Duration
	Multiplier  float64
	Max         time.Duration
	MaxAttempts uint32
	// MaxAge dead-letters a message this long after it was accepted; zero
	// means no limit.
	MaxAge time.Duration
}

// Delay is the backoff before attempt+1, with ±20% jitter.
func (p RetryPolicy) Delay(attempt uint32) time.Duration {
	d := float64(p.Initial)
	for i := uint32(1); i < attempt && d < float64(p.Max); i++ {
		d *= p.Multiplier
	}
	d = min(d, float64(p.Max))
	return time.Duration(d * (0.8 + 0.4*rand.Float64()))
}

func (c Config) withDefaults() Config {
	if c.Worker == "" {
		c.Worker = "queue"
	}
	if c.LeaseBatch <= 0 {
		c.LeaseBatch = 256
	}
	if c.DeliverTimeout <= 0 {
		c.DeliverTimeout = 10 * time.Second
	}
	if c.LeaseDuration <= 0 {
		c.LeaseDuration = 3*c.DeliverTimeout + 5*time.Second
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1024
	}
	if c.DefaultChannelLimit <= 0 {
		c.DefaultChannelLimit = 256
	}
	if c.DefaultRetry.Initial <= 0 {
		c.DefaultRetry = RetryPolicy{Initial: time.Second, Multiplier: 2, Max: 5 * time.Minute, MaxAttempts: 10}
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 25 * time.Second
	}
	if c.Completers <= 0 {
		c.Completers = 4
	}
	if c.FailureThreshold <= 0 {
		c.FailureThreshold = 3
	}
	if c.BreakerFailures <= 0 {
		c.BreakerFailures = 5
	}
	if c.BreakerTimeout <= 0 {
		c.BreakerTimeout = 10 * time.Second
	}
	if c.Metrics == nil {
		c.Metrics, _ = NewMetrics(nil) // registers nothing, cannot fail
	}
	return c
}

// Queue is one scheduler instance. Several may run against one tracker.
type Queue struct {
	queuev1.UnimplementedQueueServiceServer

	cfg     Config
	tracker trackerv1.TrackerServiceClient
	host    pluginsv1.PluginHostServiceClient
	log     *slog.Logger
	now     func() time.Time
	tracer  trace.Tracer

	mu         sync.Mutex
	inFlight   int
	perChannel map[string]int
	freed      chan struct{} // signalled when a slot frees

	disp     *dispatcher
	guard    *guard
	outcomes chan report

	// Whether the tracker lacks LeaseStream, CompleteStream: then Lease and
	// Complete are unary calls.
	noLeaseStream, noCompleteStream atomic.Bool

	delivered, retried, failed, unknown atomic.Uint64
}

// New returns a Queue. Run starts it.
func New(cfg Config, tracker trackerv1.TrackerServiceClient, host pluginsv1.PluginHostServiceClient, log *slog.Logger, now func() time.Time) *Queue {
	if now == nil {
		now = time.Now
	}
	q := &Queue{
		cfg:        cfg.withDefaults(),
		tracker:    tracker,
		host:       host,
		log:        log,
		now:        now,
		tracer:     otel.Tracer("github.com/heraldchat/herald/services/queue"),
		perChannel: map[string]int{},
		freed:      make(chan struct{}, 1),
		outcomes:   make(chan report, 4096),
	}
	q.disp = newDispatcher(q)
	q.guard = newGuard(q)
	return q
}

// Run leases and dispatches until ctx ends, then drains: it stops leasing,
// waits up to DrainTimeout for deliveries in flight, reports every outcome,
// and returns. It returns an error only when it had to cut work short;
// deliveries it cancelled keep their leases, which expire into the tracker's
// recovery path.
func (q *Queue) Run(ctx context.Context) error {
	completeCtx, stopComplete := context.WithCancel(context.Background())
	defer stopComplete()
	var wg sync.WaitGroup
	for range q.cfg.Completers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.completeLoop(completeCtx)
		}()
	}
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go q.disp.watchdog(watchCtx)
	go q.followAborts(watchCtx)

	q.leaseLoop(ctx)

	// Drain.
	start := q.now()
	q.log.Info("draining", "in_flight", q.InFlight(), "timeout", q.cfg.DrainTimeout)
	drained := q.waitIdle(q.cfg.DrainTimeout)
	cancelled := 0
	if !drained {
		cancelled = q.disp.cancelAll()
	}
	stopWatch()
	close(q.outcomes)
	flushed := make(chan struct{})
	go func() { wg.Wait(); close(flushed) }()
	select {
	case <-flushed:
	case <-time.After(10 * time.Second):
		stopComplete()
		<-flushed
	}
	q.disp.close()
	q.log.Info("drained", "delivered", q.delivered.Load(), "cancelled", cancelled, "took", q.now().Sub(start).String())
	if cancelled > 0 {
		return fmt.Errorf("drain timeout: cancelled %d deliveries in flight; their leases will expire into recovery", cancelled)
	}
	return nil
}

func (q *Queue) leaseLoop(ctx context.Context) {
	leases := &streamCaller[trackerv1.LeaseRequest, trackerv1.LeaseResponse]{
		method: "Lease", open: q.tracker.LeaseStream, unary: q.tracker.Lease,
		noStream: &q.noLeaseStream, log: q.log,
	}
	defer leases.close()
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		free, slots := q.capacity()
		if free == 0 {
			select {
			case <-ctx.Done():
				return
			case <-q.freed:
			}
			continue
		}
		if err := q.disp.ready(ctx); err != nil {
			q.log.Warn("plugin host unreachable; not leasing", "error_code", "QUE_001", "err", err)
			sleep(ctx, backoff)
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		// Not ctx: a lease the tracker granted must reach this queue, or it
		// sits IN_FLIGHT until expiry. The short wait bounds shutdown.
		lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := leases.call(lctx, &trackerv1.LeaseRequest{
			Worker:          q.cfg.Worker,
			Max:             uint32(min(free, q.cfg.LeaseBatch)),
			LeaseDurationMs: q.cfg.LeaseDuration.Milliseconds(),
			WaitMs:          1000,
			ChannelSlots:    slots,
			Reconcile:       true,
		})
		cancel()
		if err != nil {
			q.log.Warn("lease failed; retrying", "error_code", "QUE_002", "err", err)
			sleep(ctx, backoff)
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		for _, l := range resp.GetLeases() {
			q.take(l.GetMessage().GetChannel())
			q.disp.dispatch(l)
		}
		if len(resp.GetLeases()) == 0 && atLimit(slots) {
			// The tracker answers at once when its due work is all on
			// channels at their limit here: ask again when a delivery
			// frees a slot, or after a short while for other channels'
			// new work.
			select {
			case <-ctx.Done():
			case <-q.freed:
			case <-time.After(limitedRetry):
			}
		}
	}
}

// limitedRetry bounds how long the lease loop waits for a freed slot after
// an empty lease while a channel is at its limit.
const limitedRetry = 50 * time.Millisecond

// atLimit reports whether some channel has no free slot.
func atLimit(slots map[string]uint32) bool {
	for _, n := range slots {
		if n == 0 {
			return true
		}
	}
	return false
}

// capacity returns free slots overall and for channels near their limit.
func (q *Queue) capacity() (int, map[string]uint32) {
	free, slots := q.freeSlots()
	q.guard.slots(slots) // the breakers have their own lock
	return free, slots
}

// freeSlots counts free slots overall and per limited channel.
func (q *Queue) freeSlots() (int, map[string]uint32) {
	q.mu.Lock()
	defer q.mu.Unlock()
	free := q.cfg.MaxInFlight - q.inFlight
	slots := map[string]uint32{}
	for ch, n := range q.perChannel {
		slots[ch] = uint32(max(q.limit(ch)-n, 0))
	}
	for ch, lim := range q.cfg.ChannelLimit {
		if _, ok := slots[ch]; !ok {
			slots[ch] = uint32(lim)
		}
	}
	return free, slots
}

func (q *Queue) limit(ch string) int {
	if l, ok := q.cfg.ChannelLimit[ch]; ok {
		return l
	}
	return q.cfg.DefaultChannelLimit
}

func (q *Queue) take(ch string) {
	q.mu.Lock()
	q.inFlight++
	q.perChannel[ch]++
	q.mu.Unlock()
	q.cfg.Metrics.inFlight.WithLabelValues(ch).Inc()
}

func (q *Queue) release(ch string) {
	q.mu.Lock()
	q.inFlight--
	if q.perChannel[ch]--; q.perChannel[ch] <= 0 {
		delete(q.perChannel, ch)
	}
	q.mu.Unlock()
	q.cfg.Metrics.inFlight.WithLabelValues(ch).Dec()
	select {
	case q.freed <- struct{}{}:
	default:
	}
}

// InFlight is the number of deliveries handed to the plugin host and not
// yet answered.
func (q *Queue) InFlight() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.inFlight
}

func (q *Queue) waitIdle(timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for q.InFlight() > 0 {
		select {
		case <-deadline.C:
			return false
		case <-q.freed:
		case <-time.After(50 * time.Millisecond):
		}
	}
	return true
}

// decide turns the plugin host's answer into the outcome to record.
func (q *Queue) decide(j *job, r *pluginsv1.DeliverResponse) *trackerv1.Outcome {
	o := q.decideOutcome(j, r)
	if !j.notAttempted {
		q.count(j.lease.GetMessage().GetChannel(), o)
	}
	return o
}

// count adds an answered attempt's outcome to the metrics.
func (q *Queue) count(ch string, o *trackerv1.Outcome) {
	m := q.cfg.Metrics
	switch o.GetResult() {
	case trackerv1.Result_RESULT_DELIVERED:
		m.deliveries.WithLabelValues(ch, "delivered").Inc()
	case trackerv1.Result_RESULT_RETRY:
		m.deliveries.WithLabelValues(ch, "retry").Inc()
		m.retries.WithLabelValues(ch).Inc()
	case trackerv1.Result_RESULT_FAILED:
		m.deliveries.WithLabelValues(ch, "failed").Inc()
		m.deadLetters.WithLabelValues(ch, o.GetErrorCode()).Inc()
	default:
		m.deliveries.WithLabelValues(ch, "unknown").Inc()
	}
}

// decideOutcome is decide without the metrics.
func (q *Queue) decideOutcome(j *job, r *pluginsv1.DeliverResponse) *trackerv1.Outcome {
	l := j.lease
	m, d := l.GetMessage(), l.GetDelivery()
	o := &trackerv1.Outcome{
		MessageId:   m.GetId(),
		LeaseToken:  d.GetLeaseToken(),
		ErrorCode:   r.GetErrorCode(),
		ErrorDetail: describe(r),
		Adapter:     r.GetAdapter(),
	}
	policy := q.retryPolicy(m.GetChannel())
	if j.notAttempted {
		// Held back before any provider call: back in the queue at the
		// given time, without spending an attempt.
		o.Result = trackerv1.Result_RESULT_RETRY
		o.NotAttempted = true
		o.RetryAfterNanos = max(time.Duration(r.GetRetryAfterMs())*time.Millisecond, 50*time.Millisecond).Nanoseconds()
		return o
	}
	switch r.GetOutcome() {
	case pluginsv1.Outcome_OUTCOME_DELIVERED:
		o.Result = trackerv1.Result_RESULT_DELIVERED
		o.ProviderMessageId = r.GetProviderMessageId()
		q.delivered.Add(1)
	case pluginsv1.Outcome_OUTCOME_RETRYABLE:
		delay := policy.Delay(d.GetAttempts())
		if ra := time.Duration(r.GetRetryAfterMs()) * time.Millisecond; ra > 0 {
			delay = ra
		}
		next := q.now().Add(delay)
		age := next.Sub(time.Unix(0, m.GetAcceptedAtUnixNano()))
		switch {
		case policy.MaxAttempts > 0 && d.GetAttempts() >= policy.MaxAttempts:
			o.Result = trackerv1.Result_RESULT_FAILED
			o.ErrorDetail = fmt.Sprintf("attempts exhausted (%d): %s", d.GetAttempts(), o.ErrorDetail)
			q.failed.Add(1)
		case policy.MaxAge > 0 && age > policy.MaxAge:
			o.Result = trackerv1.Result_RESULT_FAILED
			o.ErrorDetail = fmt.Sprintf("maximum age %s exceeded: %s", policy.MaxAge, o.ErrorDetail)
			q.failed.Add(1)
		default:
			o.Result = trackerv1.Result_RESULT_RETRY
			o.RetryAfterNanos = delay.Nanoseconds()
			q.retried.Add(1)
		}
	case pluginsv1.Outcome_OUTCOME_PERMANENT:
		o.Result = trackerv1.Result_RESULT_FAILED
		o.NotAttempted = j.exhausted // its lease gives back the attempt it never made
		q.failed.Add(1)
	default:
		o.Result = trackerv1.Result_RESULT_UNKNOWN
		q.unknown.Add(1)
	}
	return o
}

func describe(r *pluginsv1.DeliverResponse) string {
	switch {
	case r.GetAdapter() == "":
		// The queue's own answer, or the host's before any adapter ran.
		return r.GetDescription()
	case r.GetProviderCode() != "" && r.GetDescription() != "":
		return fmt.Sprintf("%s: %s (%s)", r.GetAdapter(), r.GetDescription(), r.GetProviderCode())
	case r.GetDescription() != "":
		return fmt.Sprintf("%s: %s", r.GetAdapter(), r.GetDescription())
	}
	return ""
}

func (q *Queue) retryPolicy(ch string) RetryPolicy {
	if p, ok := q.cfg.Retry[ch]; ok {
		return p
	}
	return q.cfg.DefaultRetry
}

// report is an outcome waiting for the tracker, with where to ack it once
// it is durable (c is nil when the plugin host never answered).
type report struct {
	o     *trackerv1.Outcome
	c     *conn
	reqID uint64
}

// finish records a delivery's answer: the slot frees at once, the outcome
// joins the next Complete batch. c and reqID name the answer to ack on the
// plugin host once the outcome is durable; c is nil when there is none.
func (q *Queue) finish(j *job, r *pluginsv1.DeliverResponse, c *conn, reqID uint64) {
	if j.reconcile {
		q.finishReconcile(j, r, c, reqID)
		return
	}
	if !j.notAttempted {
		q.guard.observe(j, r)
	}
	o := q.decide(j, r)
	if sc := j.span.SpanContext(); sc.IsValid() && sc.IsSampled() {
		o.TraceId, o.SpanId = sc.TraceID().String(), sc.SpanID().String()
	}
	j.span.SetAttributes(attribute.String("herald.outcome", r.GetOutcome().String()), attribute.String("herald.error_code", r.GetErrorCode()))
	j.span.End()
	// The plugin host logs every provider failure once, with the provider's
	// code. The queue logs what only it knows: answers it made up itself
	// (the host went away or stayed silent) and a retryable failure it
	// dead-letters because the attempts or the age ran out.
	exhausted := j.exhausted || o.Result == trackerv1.Result_RESULT_FAILED && r.GetOutcome() == pluginsv1.Outcome_OUTCOME_RETRYABLE
	synthetic := strings.HasPrefix(r.GetErrorCode(), "QUE_") && !exhausted
	if !j.notAttempted && (synthetic || exhausted) {
		lvl, msg := slog.LevelWarn, "delivery outcome unknown: the plugin host did not answer"
		if exhausted {
			lvl, msg = slog.LevelError, "dead-lettered: retries exhausted"
		}
		q.log.Log(context.Background(), lvl, msg, "message_id", o.MessageId, "channel", j.lease.GetMessage().GetChannel(),
			"attempt", j.lease.GetDelivery().GetAttempts(), "result", o.Result.String(), "error_code", o.ErrorCode, "detail", o.ErrorDetail)
	}
	q.outcomes <- report{o: o, c: c, reqID: reqID}
	q.release(j.lease.GetMessage().GetChannel())
}

// completeLoop sends outcomes to the tracker in batches until the outcomes
// channel closes and is empty. A failed call is retried whole: outcomes are
// fenced by lease tokens, so a repeat changes nothing.
func (q *Queue) completeLoop(ctx context.Context) {
	completes := &streamCaller[trackerv1.CompleteRequest, trackerv1.CompleteResponse]{
		method: "Complete", open: q.tracker.CompleteStream, unary: q.tracker.Complete,
		noStream: &q.noCompleteStream, log: q.log,
	}
	defer completes.close()
	for {
		first, ok := <-q.outcomes
		if !ok {
			return
		}
		reports := []report{first}
	fill:
		for len(reports) < 1024 {
			select {
			case r, ok := <-q.outcomes:
				if !ok {
					break fill
				}
				reports = append(reports, r)
			default:
				break fill
			}
		}
		batch := make([]*trackerv1.Outcome, len(reports))
		for i, r := range reports {
			batch[i] = r.o
		}
		backoff := 50 * time.Millisecond
		for {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := completes.call(cctx, &trackerv1.CompleteRequest{Worker: q.cfg.Worker, Outcomes: batch})
			cancel()
			if err == nil {
				q.disp.ack(reports)
				break
			}
			if ctx.Err() != nil {
				q.log.Error("outcomes not reported before shutdown; their leases will expire into recovery", "count", len(batch), "error_code", "QUE_003")
				return
			}
			q.log.Warn("reporting outcomes failed; retrying", "count", len(batch), "error_code", "QUE_004", "err", err)
			sleep(ctx, backoff)
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// Status implements queuev1.QueueServiceServer.
func (q *Queue) Status(ctx context.Context, _ *queuev1.StatusRequest) (*queuev1.StatusResponse, error) {
	q.mu.Lock()
	in := make(map[string]uint32, len(q.perChannel))
	for ch, n := range q.perChannel {
		in[ch] = uint32(n)
	}
	q.mu.Unlock()
	return &queuev1.StatusResponse{
		InFlight:  in,
		Delivered: q.delivered.Load(),
		Retried:   q.retried.Load(),
		Failed:    q.failed.Load(),
		Unknown:   q.unknown.Load(),
	}, nil
}

// startAttempt opens the attempt's span (or a reconcile's) as a child of
// the trace stored with the message, so every attempt, after any restart,
// joins the message's trace.
func (q *Queue) startAttempt(l *trackerv1.Lease) (trace.Span, telemetry.TraceFields) {
	m := l.GetMessage()
	parent := telemetry.ExtractTrace(context.Background(), m.GetTraceparent(), m.GetTracestate())
	name := "queue.attempt"
	if l.GetDelivery().GetReconciling() {
		name = "queue.reconcile"
	}
	ctx, span := q.tracer.Start(parent, name, trace.WithSpanKind(trace.SpanKindInternal))
	// Only a recorded span keeps attributes; most attempts are not sampled.
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("herald.message_id", m.GetId()),
			attribute.String("herald.channel", m.GetChannel()),
			attribute.String("herald.conversation", m.GetConversation()),
			attribute.Int64("herald.attempt", int64(l.GetDelivery().GetAttempts())),
		)
	}
	var out telemetry.TraceFields
	out.Parent, out.State = telemetry.InjectTrace(ctx)
	return span, out
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
