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
type accepter struct {
	tracker trackerv1.TrackerServiceClient
	log     *slog.Logger
	calls   chan *acceptCall
	unary   atomic.Bool
	stop    context.CancelFunc
	stopped chan struct{}
}

type acceptCall struct {
	ctx  context.Context
	req  *trackerv1.AcceptRequest
	done chan acceptAnswer // buffered: the answer never blocks its sender
}

type acceptAnswer struct {
	resp *trackerv1.AcceptResponse
	err  error
}

func newAccepter(tracker trackerv1.TrackerServiceClient, log *slog.Logger) *accepter {
	ctx, cancel := context.WithCancel(context.Background())
	a := &accepter{tracker: tracker, log: log, calls: make(chan *acceptCall, 4*maxBatch), stop: cancel, stopped: make(chan struct{})}
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
	c := &acceptCall{ctx: ctx, req: req, done: make(chan acceptAnswer, 1)}
	select {
	case a.calls <- c:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-a.stopped:
		return nil, status.Error(codes.Unavailable, "gateway is stopping; nothing was written")
	}
	select {
	case ans := <-c.done:
		return ans.resp, ans.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func (a *accepter) run(ctx context.Context) {
	defer close(a.stopped)
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		sctx, cancel := context.WithCancel(ctx)
		stream, err := a.tracker.AcceptStream(sctx)
		if err == nil {
			if a.serve(sctx, stream) {
				backoff = 10 * time.Millisecond
			}
		} else {
			a.log.Warn("cannot open the accept stream to the tracker; Sends fail until it can be opened", "error_code", "GW_001", "err", err)
		}
		cancel()
		if a.unary.Load() {
			a.forwardUnary(ctx)
			return
		}
		// Sends that arrive while the tracker is unreachable fail at once,
		// as a unary call would, until the next try.
		timer := time.NewTimer(backoff)
		a.refuse(ctx, timer.C)
		timer.Stop()
		backoff = min(2*backoff, time.Second)
	}
}

// refuse answers waiting calls UNAVAILABLE until until fires.
func (a *accepter) refuse(ctx context.Context, until <-chan time.Time) {
	for {
		select {
		case c := <-a.calls:
			c.done <- acceptAnswer{err: status.Error(codes.Unavailable, "the tracker is unreachable; nothing was written: retry")}
		case <-until:
			return
		case <-ctx.Done():
			return
		}
	}
}

// forwardUnary hands calls that were queued before the switch to unary
// Accept.
func (a *accepter) forwardUnary(ctx context.Context) {
	for {
		select {
		case c := <-a.calls:
			go a.unaryCall(c)
		case <-ctx.Done():
			return
		}
	}
}

func (a *accepter) unaryCall(c *acceptCall) {
	resp, err := a.tracker.Accept(c.ctx, c.req)
	c.done <- acceptAnswer{resp, err}
}

// serve sends batches on stream until it breaks; it reports whether any
// answer came back.
func (a *accepter) serve(ctx context.Context, stream trackerv1.TrackerService_AcceptStreamClient) (answered bool) {
	var (
		mu      sync.Mutex
		pending = map[uint64]*acceptCall{}
		next    uint64
	)
	recvErr := make(chan error, 1)
	var got atomic.Bool
	slots := make(chan struct{}, maxOutstanding)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			got.Store(true)
			<-slots // the tracker answers each request once
			mu.Lock()
			for _, r := range resp.GetResults() {
				c := pending[r.GetRequestId()]
				delete(pending, r.GetRequestId())
				if c == nil {
					continue
				}
				if r.GetResponse() != nil {
					c.done <- acceptAnswer{resp: r.GetResponse()}
				} else {
					c.done <- acceptAnswer{err: status.Error(codes.Code(r.GetCode()), r.GetError())}
				}
			}
			mu.Unlock()
		}
	}()
	broken := func(err error) bool {
		mu.Lock()
		defer mu.Unlock()
		if status.Code(err) == codes.Unimplemented {
			// An older tracker: nothing was accepted on this stream.
			a.unary.Store(true)
			a.log.Info("the tracker has no AcceptStream; using unary Accept")
			for _, c := range pending {
				go a.unaryCall(c)
			}
			return got.Load()
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
			c.done <- acceptAnswer{err: &streamBrokenError{cause: err}}
		}
		return got.Load()
	}
	for {
		// Wait for a free slot first: the calls that arrive meanwhile
		// make the next request.
		select {
		case slots <- struct{}{}:
		case err := <-recvErr:
			return broken(err)
		case <-ctx.Done():
			stream.CloseSend()
			return broken(<-recvErr)
		}
		var first *acceptCall
		select {
		case first = <-a.calls:
		case err := <-recvErr:
			return broken(err)
		case <-ctx.Done():
			stream.CloseSend()
			return broken(<-recvErr)
		}
		batch := []*acceptCall{first}
	fill:
		for len(batch) < maxBatch {
			select {
			case c := <-a.calls:
				batch = append(batch, c)
			default:
				break fill
			}
		}
		req := &trackerv1.AcceptStreamRequest{Items: make([]*trackerv1.AcceptItem, 0, len(batch))}
		mu.Lock()
		for _, c := range batch {
			if err := c.ctx.Err(); err != nil {
				c.done <- acceptAnswer{err: status.FromContextError(err).Err()}
				continue
			}
			next++
			pending[next] = c
			req.Items = append(req.Items, &trackerv1.AcceptItem{RequestId: next, Request: c.req})
		}
		mu.Unlock()
		if len(req.Items) == 0 {
			<-slots
			continue
		}
		if err := stream.Send(req); err != nil {
			// Send reports io.EOF; the stream's status comes from Recv.
			return broken(<-recvErr)
		}
	}
}
