package gateway

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// maxBatch is the most Sends one AcceptStream request carries.
const maxBatch = 256

// maxOutstanding is how many requests may wait for the tracker's answer at
// once. While they do, new Sends gather into the next request: under load,
// batches grow until one commit (and one fsync) serves many Sends; a lone
// Send never waits.
const maxOutstanding = 4

// accepter carries Send's Accept calls to the tracker over one
// AcceptStream: whatever calls are waiting when the stream is free to send
// go as one request, which the tracker makes durable with one commit. No
// call waits for a batch to fill: under light load each request holds one
// call, under heavy load many, and the per-call cost of the internal hop
// (a unary call's HTTP/2 stream, its spans and interceptors) is shared. A
// tracker without AcceptStream gets unary Accept calls instead.
//
// There is no sending goroutine: the caller that finds the stream free
// sends the waiting calls itself, and the goroutine that receives an
// answer sends what gathered meanwhile, so a lone Send reaches the wire
// without a hand-off to another goroutine.
type accepter struct {
	tracker trackerv1.TrackerServiceClient
	log     *slog.Logger
	unary   atomic.Bool // the tracker has no AcceptStream
	stop    context.CancelFunc
	stopped chan struct{}

	mu          sync.Mutex
	state       streamState
	queue       []*acceptCall // waiting to be sent
	stream      trackerv1.TrackerService_AcceptStreamClient
	pending     map[uint64]*acceptCall // sent, not yet answered
	next        uint64
	outstanding int  // requests sent, not yet answered
	sending     bool // a goroutine is in stream.Send
}

type streamState int

const (
	// connecting: calls wait in the queue for the stream to open.
	connecting streamState = iota
	// open: calls are sent.
	open
	// down: the tracker is unreachable; calls fail at once until the next
	// try to open the stream.
	down
	// closed: the gateway is stopping.
	closed
)

type acceptCall struct {
	ctx context.Context
	req *trackerv1.AcceptRequest
	// done receives the answer, once. It may be called with a.mu held, so
	// it must not block nor call back into the accepter, and should do no
	// more than hand the answer on.
	done func(acceptAnswer)
}

type acceptAnswer struct {
	resp *trackerv1.AcceptResponse
	err  error
}

func newAccepter(tracker trackerv1.TrackerServiceClient, log *slog.Logger) *accepter {
	ctx, cancel := context.WithCancel(context.Background())
	a := &accepter{tracker: tracker, log: log, stop: cancel, stopped: make(chan struct{})}
	go a.run(ctx)
	return a
}

// close ends the stream; call it after the last Send has returned.
func (a *accepter) close() {
	a.stop()
	<-a.stopped
}

// Accept is trackerv1.TrackerServiceClient.Accept over the stream.
func (a *accepter) Accept(ctx context.Context, req *trackerv1.AcceptRequest) (*trackerv1.AcceptResponse, error) {
	if a.unary.Load() {
		return a.tracker.Accept(ctx, req)
	}
	answer := make(chan acceptAnswer, 1) // buffered: the answer never blocks its sender
	a.acceptAsync(ctx, req, func(ans acceptAnswer) { answer <- ans })
	select {
	case ans := <-answer:
		return ans.resp, ans.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// acceptAsync is Accept without the wait: done receives the answer, once,
// from whichever goroutine has it (possibly before acceptAsync returns).
// done must not block.
func (a *accepter) acceptAsync(ctx context.Context, req *trackerv1.AcceptRequest, done func(acceptAnswer)) {
	c := &acceptCall{ctx: ctx, req: req, done: done}
	a.mu.Lock()
	if a.unary.Load() { // set under a.mu when the stream turned out unimplemented
		a.mu.Unlock()
		go a.unaryCall(c)
		return
	}
	switch a.state {
	case down:
		a.mu.Unlock()
		done(acceptAnswer{err: status.Error(codes.Unavailable, "the tracker is unreachable; nothing was written: retry")})
		return
	case closed:
		a.mu.Unlock()
		done(acceptAnswer{err: status.Error(codes.Unavailable, "gateway is stopping; nothing was written")})
		return
	}
	a.queue = append(a.queue, c)
	a.sendLocked()
	a.mu.Unlock()
}

// sendLocked sends the waiting calls while the stream is open, no other
// goroutine is sending and fewer than maxOutstanding requests await their
// answers. a.mu is held on entry and on return; it is released around
// stream.Send.
func (a *accepter) sendLocked() {
	for a.state == open && !a.sending && a.outstanding < maxOutstanding && len(a.queue) > 0 {
		n := min(len(a.queue), maxBatch)
		req := &trackerv1.AcceptStreamRequest{Items: make([]*trackerv1.AcceptItem, 0, n)}
		for _, c := range a.queue[:n] {
			if err := c.ctx.Err(); err != nil {
				c.done(acceptAnswer{err: status.FromContextError(err).Err()})
				continue
			}
			a.next++
			a.pending[a.next] = c
			req.Items = append(req.Items, &trackerv1.AcceptItem{RequestId: a.next, Request: c.req})
		}
		clear(a.queue[:n])
		a.queue = a.queue[n:]
		if len(a.queue) == 0 {
			a.queue = nil
		}
		if len(req.Items) == 0 {
			continue
		}
		a.outstanding++
		a.sending = true
		stream := a.stream
		a.mu.Unlock()
		err := stream.Send(req)
		a.mu.Lock()
		a.sending = false
		if err != nil && a.stream == stream {
			// Send reports io.EOF; the stream's status comes from Recv,
			// which answers the calls. (If a new stream opened meanwhile,
			// the loop goes on with it.)
			return
		}
	}
}

func (a *accepter) run(ctx context.Context) {
	defer func() {
		a.mu.Lock()
		a.state = closed
		a.failQueuedLocked(status.Error(codes.Unavailable, "gateway is stopping; nothing was written"))
		a.mu.Unlock()
		close(a.stopped)
	}()
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		a.setState(connecting)
		sctx, cancel := context.WithCancel(ctx)
		stream, err := a.tracker.AcceptStream(sctx)
		if err == nil {
			if a.serve(ctx, stream) {
				backoff = 10 * time.Millisecond
			}
		} else {
			a.log.Warn("cannot open the accept stream to the tracker; Sends fail until it can be opened", "error_code", "GW_001", "err", err)
		}
		cancel()
		if a.unary.Load() {
			return
		}
		// Sends that arrive while the tracker is unreachable fail at once,
		// as a unary call would, until the next try.
		a.mu.Lock()
		a.state = down
		a.failQueuedLocked(status.Error(codes.Unavailable, "the tracker is unreachable; nothing was written: retry"))
		a.mu.Unlock()
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (a *accepter) setState(s streamState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.state = s
}

// failQueuedLocked answers the calls that were never sent.
func (a *accepter) failQueuedLocked(err error) {
	for _, c := range a.queue {
		c.done(acceptAnswer{err: err})
	}
	a.queue = nil
}

func (a *accepter) unaryCall(c *acceptCall) {
	resp, err := a.tracker.Accept(c.ctx, c.req)
	c.done(acceptAnswer{resp, err})
}

// serve opens the stream to calls and hands out its answers until it
// breaks; it reports whether any answer came back.
func (a *accepter) serve(ctx context.Context, stream trackerv1.TrackerService_AcceptStreamClient) (answered bool) {
	a.mu.Lock()
	a.state, a.stream, a.pending, a.outstanding = open, stream, map[uint64]*acceptCall{}, 0
	a.sendLocked()
	a.mu.Unlock()
	for {
		resp, err := stream.Recv()
		if err != nil {
			a.broken(ctx, err)
			return answered
		}
		answered = true
		a.mu.Lock()
		a.outstanding-- // the tracker answers each request once
		for _, r := range resp.GetResults() {
			c := a.pending[r.GetRequestId()]
			delete(a.pending, r.GetRequestId())
			if c == nil {
				continue
			}
			if r.GetResponse() != nil {
				c.done(acceptAnswer{resp: r.GetResponse()})
			} else {
				c.done(acceptAnswer{err: status.Error(codes.Code(r.GetCode()), r.GetError())})
			}
		}
		// What gathered while the stream was full goes now.
		a.sendLocked()
		a.mu.Unlock()
	}
}

// broken answers the calls of a stream that ended with err.
func (a *accepter) broken(ctx context.Context, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	pending := a.pending
	a.state, a.stream, a.pending = connecting, nil, nil
	if status.Code(err) == codes.Unimplemented {
		// An older tracker: nothing was accepted on this stream.
		a.unary.Store(true)
		a.log.Info("the tracker has no AcceptStream; using unary Accept")
		for _, c := range pending {
			go a.unaryCall(c)
		}
		for _, c := range a.queue {
			go a.unaryCall(c)
		}
		a.queue = nil
		return
	}
	switch {
	case ctx.Err() != nil:
	case len(pending) == 0:
		// Nothing lost: a restart or a stop of the tracker.
		a.log.Info("the accept stream to the tracker ended; reopening it", "err", err)
	default:
		a.log.Warn("the accept stream to the tracker broke", "error_code", "GW_001", "unanswered", len(pending), "err", err)
	}
	for _, c := range pending {
		c.done(acceptAnswer{err: &streamBrokenError{cause: err}})
	}
}
