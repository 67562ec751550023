package queue

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/heraldchat/herald/pkg/telemetry"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// job is one delivery handed to the plugin host and not yet answered.
type job struct {
	lease    *trackerv1.Lease
	span     trace.Span
	deadline time.Time
	// done reports the attempt to the channel's circuit breaker.
	done func(error)
	// notAttempted: held back before any provider call.
	notAttempted bool
	// aborted: its call was cancelled because the message was aborted, so
	// its end says nothing about the channel's health.
	aborted atomic.Bool
	// reconcile: a reconcile lease; the plugin host asks the provider
	// whether it has the message and sends nothing.
	reconcile bool
	// exhausted: the attempt budget was spent before this attempt was
	// sent; it is dead-lettered without a provider call.
	exhausted bool
}

// conn is one Deliver stream and the jobs sent on it.
type conn struct {
	stream  pluginsv1.PluginHostService_DeliverClient
	cancel  context.CancelFunc
	sendMu  sync.Mutex // gRPC streams allow one sender at a time
	pending map[uint64]*job
	broken  bool
}

// sendCancel asks the plugin host to cancel a call. A broken stream needs
// no cancel: its calls are answered as unknown.
func (c *conn) sendCancel(id uint64) {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	_ = c.stream.Send(&pluginsv1.DeliverRequest{Kind: &pluginsv1.DeliverRequest_Cancel{Cancel: &pluginsv1.Cancel{RequestId: id}}})
}

// dispatcher keeps one pipelined Deliver stream to the plugin host. When the
// stream breaks, every job sent on it and not answered has an unknown
// outcome: the plugin host may have called the provider.
type dispatcher struct {
	q      *Queue
	mu     sync.Mutex
	cur    *conn
	nextID uint64
	// aborts holds the latest aborted message ids, under mu with the
	// pending calls: an abort's event can come before the lease of the
	// same message (the tracker answers a lease once a later fsync, maybe
	// the abort's, has made it durable), and then there is no call yet to
	// cancel; the lease finds the abort here instead.
	aborts recentIDs
}

func newDispatcher(q *Queue) *dispatcher {
	return &dispatcher{q: q, aborts: newRecentIDs(recentAbortsMax)}
}

// recentAbortsMax bounds the aborted ids the dispatcher remembers: an
// abort and the lease it overtook arrive milliseconds apart.
const recentAbortsMax = 4096

// recentIDs remembers the last max ids it was given.
type recentIDs struct {
	set  map[string]struct{}
	ring []string
	next int
}

func newRecentIDs(max int) recentIDs {
	return recentIDs{set: make(map[string]struct{}, max), ring: make([]string, max)}
}

func (r *recentIDs) add(id string) {
	if _, ok := r.set[id]; ok {
		return
	}
	if old := r.ring[r.next]; old != "" {
		delete(r.set, old)
	}
	r.ring[r.next] = id
	r.set[id] = struct{}{}
	r.next = (r.next + 1) % len(r.ring)
}

func (r *recentIDs) has(id string) bool {
	_, ok := r.set[id]
	return ok
}

// ready opens the stream if there is none.
func (d *dispatcher) ready(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cur != nil && !d.cur.broken {
		return nil
	}
	sctx, cancel := context.WithCancel(context.Background())
	stream, err := d.q.host.Deliver(sctx)
	if err != nil {
		cancel()
		return fmt.Errorf("open Deliver stream: %w", err)
	}
	c := &conn{stream: stream, cancel: cancel, pending: map[uint64]*job{}}
	d.cur = c
	go d.receive(c)
	return nil
}

// dispatch sends one leased message to the plugin host: a delivery, or for
// a reconcile lease, a reconcile request. If a delivery cannot be sent, the
// message was not attempted and is retried soon.
func (d *dispatcher) dispatch(l *trackerv1.Lease) {
	span, carrier := d.q.startAttempt(l)
	j := &job{lease: l, span: span, deadline: d.q.now().Add(d.q.cfg.DeliverTimeout), reconcile: l.GetDelivery().GetReconciling()}
	m := l.GetMessage()
	if j.reconcile {
		// Asking is not a delivery: the circuit breaker and retry-after
		// pauses guard sends, and a reconcile's answer is not a sign of the
		// channel's health. The tracker leases it within the channel's
		// free slots, so an open circuit (no slots) holds it back too.
		d.send(j, carrier)
		return
	}
	if p := d.q.retryPolicy(m.GetChannel()); p.MaxAttempts > 0 && l.GetDelivery().GetAttempts() > p.MaxAttempts {
		// Only re-sends after an unknown outcome (redeliver, or reconcile
		// learning that the provider does not have it) get here: a
		// retryable failure at the last attempt is dead-lettered at once.
		// They spend the same budget.
		j.exhausted = true
		d.q.finish(j, &pluginsv1.DeliverResponse{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "QUE_011",
			Description: fmt.Sprintf("attempts exhausted (%d) before this one was sent; the earlier ones ended with an unknown outcome", p.MaxAttempts)}, nil, 0)
		return
	}

	until, done := d.q.guard.hold(m.GetChannel(), m.GetRecipient())
	if done == nil {
		j.notAttempted = true
		d.q.finish(j, &pluginsv1.DeliverResponse{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "QUE_010",
			RetryAfterMs: max(until.Sub(d.q.now()).Milliseconds(), 1),
			Description:  "held back: the channel's circuit is open or the destination asked to wait"}, nil, 0)
		return
	}
	j.done = done
	d.send(j, carrier)
}

// send hands j to the plugin host on the current stream.
func (d *dispatcher) send(j *job, carrier telemetry.TraceFields) {
	l, m := j.lease, j.lease.GetMessage()
	d.mu.Lock()
	if !j.reconcile && d.aborts.has(m.GetId()) {
		// Aborted after the tracker leased it, before this call left: the
		// tracker records ABORTED for any end but a delivery.
		d.mu.Unlock()
		d.notSent(j, &pluginsv1.DeliverResponse{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "QUE_012",
			Description: "not sent: the message was aborted before its call left"})
		return
	}
	c := d.cur
	if c == nil || c.broken {
		d.mu.Unlock()
		if j.reconcile {
			d.notSent(j, &pluginsv1.DeliverResponse{ErrorCode: "QUE_001", Description: "no stream to the plugin host"})
			return
		}
		d.notSent(j, notSent("no stream to the plugin host"))
		return
	}
	d.nextID++
	id := d.nextID
	c.pending[id] = j
	d.mu.Unlock()

	pd := &pluginsv1.Delivery{
		RequestId:    id,
		MessageId:    m.GetId(),
		Channel:      m.GetChannel(),
		Recipient:    m.GetRecipient(),
		Conversation: m.GetConversation(),
		Sequence:     m.GetSequence(),
		Text:         m.GetText(),
		Metadata:     m.GetMetadata(),
		Attempt:      l.GetDelivery().GetAttempts(),
		Traceparent:  carrier.Parent,
		Tracestate:   carrier.State,
		TimeoutNanos: d.q.cfg.DeliverTimeout.Nanoseconds(),
		LeaseToken:   l.GetDelivery().GetLeaseToken(),
	}
	req := &pluginsv1.DeliverRequest{Kind: &pluginsv1.DeliverRequest_Delivery{Delivery: pd}}
	if j.reconcile {
		// Records written before attempt starts were stored: the message's
		// acceptance is the earliest the provider can have received it.
		pd.AttemptStartedUnixNano = cmp.Or(l.GetDelivery().GetAttemptStartedUnixNano(), m.GetAcceptedAtUnixNano())
		req.Kind = &pluginsv1.DeliverRequest_Reconcile{Reconcile: pd}
	}
	c.sendMu.Lock()
	err := c.stream.Send(req)
	c.sendMu.Unlock()
	if err != nil {
		// The request may or may not have left; receive() sees the broken
		// stream and reports every pending job, this one included, as
		// unknown. Nothing more to do here.
		d.q.log.Warn("send to plugin host failed", "message_id", m.GetId(), "error_code", "QUE_005", "err", err)
		c.cancel()
	}
}

// notSent ends a job that never reached the plugin host: no provider call,
// so neither a success nor a failure for the channel's circuit breaker.
func (d *dispatcher) notSent(j *job, r *pluginsv1.DeliverResponse) {
	j.notAttempted = true
	if j.done != nil { // a reconcile job holds no breaker slot
		j.done(errNotAttempted)
	}
	d.q.finish(j, r, nil, 0)
}

// receive reads answers until the stream ends, then reports what is still
// pending as unknown.
func (d *dispatcher) receive(c *conn) {
	for {
		resp, err := c.stream.Recv()
		if err != nil {
			d.mu.Lock()
			c.broken = true
			orphans := c.pending
			c.pending = map[uint64]*job{}
			d.mu.Unlock()
			c.cancel()
			if len(orphans) > 0 {
				d.q.log.Warn("plugin host stream broke with deliveries in flight; their outcome is unknown",
					"count", len(orphans), "error_code", "QUE_006", "err", err)
			}
			for _, j := range orphans {
				d.q.finish(j, &pluginsv1.DeliverResponse{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "QUE_006",
					Description: "the plugin host stream broke before it answered"}, nil, 0)
			}
			return
		}
		d.mu.Lock()
		j := c.pending[resp.GetRequestId()]
		delete(c.pending, resp.GetRequestId())
		d.mu.Unlock()
		if j == nil {
			d.q.log.Warn("answer for an unknown request", "request_id", resp.GetRequestId(), "error_code", "QUE_007")
			continue
		}
		d.q.finish(j, resp, c, resp.GetRequestId())
	}
}

// ack tells the plugin host which answers are now durable in the tracker,
// so it need not report them itself if the stream breaks.
func (d *dispatcher) ack(reports []report) {
	byConn := map[*conn][]uint64{}
	for _, r := range reports {
		if r.c != nil {
			byConn[r.c] = append(byConn[r.c], r.reqID)
		}
	}
	for c, ids := range byConn {
		c.sendMu.Lock()
		// A broken stream needs no ack: the host reports what it holds,
		// and the tracker refuses the repeats by their lease tokens.
		_ = c.stream.Send(&pluginsv1.DeliverRequest{Kind: &pluginsv1.DeliverRequest_Ack{Ack: &pluginsv1.Ack{RequestIds: ids}}})
		c.sendMu.Unlock()
	}
}

// watchdog answers, as unknown, jobs the plugin host has held well past
// their deadline, and cancels them on the host.
func (d *dispatcher) watchdog(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := d.q.now()
		type late struct {
			c  *conn
			id uint64
			j  *job
		}
		var lates []late
		d.mu.Lock()
		if c := d.cur; c != nil {
			for id, j := range c.pending {
				if now.After(j.deadline.Add(5 * time.Second)) {
					lates = append(lates, late{c, id, j})
					delete(c.pending, id)
				}
			}
		}
		d.mu.Unlock()
		for _, l := range lates {
			l.c.sendCancel(l.id)
			d.q.finish(l.j, &pluginsv1.DeliverResponse{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "QUE_008",
				Description: "the plugin host did not answer within the delivery deadline"}, nil, 0)
		}
	}
}

// cancelAll cancels every pending job on the host without reporting it: the
// leases expire into the tracker's recovery path. It returns how many.
func (d *dispatcher) cancelAll() int {
	d.mu.Lock()
	c := d.cur
	var ids []uint64
	var jobs []*job
	if c != nil {
		for id, j := range c.pending {
			ids = append(ids, id)
			jobs = append(jobs, j)
		}
		c.pending = map[uint64]*job{}
	}
	d.mu.Unlock()
	for _, id := range ids {
		c.sendCancel(id)
	}
	for _, j := range jobs {
		j.span.End()
		d.q.release(j.lease.GetMessage().GetChannel())
	}
	return len(ids)
}

func (d *dispatcher) close() {
	d.mu.Lock()
	c := d.cur
	d.mu.Unlock()
	if c != nil {
		c.sendMu.Lock()
		_ = c.stream.CloseSend()
		c.sendMu.Unlock()
		c.cancel()
	}
}

// notSent is the answer for a delivery that never reached the plugin host.
func notSent(why string) *pluginsv1.DeliverResponse {
	return &pluginsv1.DeliverResponse{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "QUE_001", Description: why}
}
