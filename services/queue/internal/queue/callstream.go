package queue

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// streamCaller makes one unary method's calls over one long-lived stream of
// its streaming twin (Lease over LeaseStream, Complete over
// CompleteStream), one call at a time: each request is answered by one
// response, in order, with what the unary call would have answered. A
// stream saves each call its setup (a new HTTP/2 stream, headers both
// ways, the interceptors, a goroutine in the server).
//
// A call that fails drops the stream; the next call opens a new one. A
// tracker without the streaming method (UNIMPLEMENTED before any answer)
// gets unary calls from then on. A streamCaller is not safe for concurrent
// use: each loop that calls owns one.
type streamCaller[Req, Resp any] struct {
	method string
	open   func(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[Req, Resp], error)
	unary  func(context.Context, *Req, ...grpc.CallOption) (*Resp, error)
	// noStream is shared by the callers of one method: once the tracker
	// has answered UNIMPLEMENTED, all of them call unary.
	noStream *atomic.Bool
	log      *slog.Logger

	stream   grpc.BidiStreamingClient[Req, Resp]
	cancel   context.CancelFunc
	answered bool // stream has answered a request
}

// call sends req and returns its response. ctx bounds this call only: when
// it ends first, the stream is cancelled and the call returns ctx's error
// as a status, as a unary call would.
func (c *streamCaller[Req, Resp]) call(ctx context.Context, req *Req) (*Resp, error) {
	if c.noStream.Load() {
		return c.unary(ctx, req)
	}
	if c.stream == nil {
		c.answered = false
		sctx, cancel := context.WithCancel(context.Background())
		st, err := c.open(sctx)
		if err != nil {
			cancel()
			return c.failed(ctx, req, err)
		}
		c.stream, c.cancel = st, cancel
	}
	stop := context.AfterFunc(ctx, c.cancel)
	err := c.stream.Send(req)
	var resp *Resp
	if err == nil || errors.Is(err, io.EOF) {
		// A stream that ended makes Send return io.EOF; Recv returns
		// the status it ended with.
		resp, err = c.stream.Recv()
	}
	cancelled := !stop()
	if err != nil {
		return c.failed(ctx, req, err)
	}
	c.answered = true
	if cancelled {
		// ctx ended just after the answer came: the stream is cut.
		c.close()
	}
	return resp, nil
}

// failed drops the stream after err and returns what the unary call would
// have: ctx's error when ctx ended, else err, or the unary call's answer
// when the tracker has no streaming method.
func (c *streamCaller[Req, Resp]) failed(ctx context.Context, req *Req, err error) (*Resp, error) {
	unimplemented := status.Code(err) == codes.Unimplemented && !c.answered
	c.close()
	if ctxErr := ctx.Err(); ctxErr != nil {
		return nil, status.FromContextError(ctxErr).Err()
	}
	if unimplemented {
		// Nothing was done: the tracker does not know the method.
		if !c.noStream.Swap(true) {
			c.log.Info("the tracker has no "+c.method+"Stream; using unary "+c.method+" calls", "err", err)
		}
		return c.unary(ctx, req)
	}
	return nil, err
}

// close cancels the stream, if one is open.
func (c *streamCaller[Req, Resp]) close() {
	if c.stream != nil {
		c.cancel()
		c.stream, c.cancel = nil, nil
	}
}
