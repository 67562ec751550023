package tracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// LeaseStream implements trackerv1.TrackerServiceServer: Lease, request by
// request, over one stream. It ends when shutdown starts, after answering
// the request under way (which Lease answers at once, empty, by then).
func (s *Service) LeaseStream(stream grpc.BidiStreamingServer[trackerv1.LeaseRequest, trackerv1.LeaseResponse]) error {
	return serveCalls(stream, s.stopping, s.Lease)
}

// CompleteStream implements trackerv1.TrackerServiceServer: Complete,
// request by request, over one stream. It keeps answering through the
// drain, while deliveries under way report, and ends when Close is called.
func (s *Service) CompleteStream(stream grpc.BidiStreamingServer[trackerv1.CompleteRequest, trackerv1.CompleteResponse]) error {
	return serveCalls(stream, s.closed, s.Complete)
}

// serveCalls answers a stream's requests one at a time, in order, each with
// handle, as if each were a unary call of its own; what a stream saves is a
// call's setup per request. An error from handle ends the stream with that
// status. When end closes, the request under way is answered first, then
// the stream ends with UNAVAILABLE, so that the graceful stop does not wait
// on it; a request that arrives after that is not handled.
//
// The requests are received, handled and answered on one goroutine; this
// one only waits for the stream's end or end, since a receive cannot be
// interrupted from the server's side. A panic there is raised again here,
// where the server's recovery interceptor catches it.
func serveCalls[Req, Resp any](stream grpc.BidiStreamingServer[Req, Resp], end <-chan struct{}, handle func(context.Context, *Req) (*Resp, error)) error {
	ctx := stream.Context()
	var (
		mu    sync.Mutex // held while a request is handled and answered
		ended bool       // set under mu when this handler returns on end
	)
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- callPanic{value: p, stack: debug.Stack()}
			}
		}()
		for {
			req, err := stream.Recv()
			if err != nil {
				done <- err
				return
			}
			mu.Lock()
			if ended {
				mu.Unlock()
				return
			}
			resp, err := handle(ctx, req)
			if err == nil {
				err = stream.Send(resp)
			}
			mu.Unlock()
			if err != nil {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		if p, ok := err.(callPanic); ok {
			panic(fmt.Sprintf("%v\n\nstack of the stream's receiving goroutine:\n%s", p.value, p.stack))
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	case <-end:
		mu.Lock()
		ended = true
		mu.Unlock()
		return status.Error(codes.Unavailable, "tracker is shutting down: send the request again after it restarts")
	}
}

// callPanic carries a panic from serveCalls' receiving goroutine to the
// handler's.
type callPanic struct {
	value any
	stack []byte
}

func (p callPanic) Error() string { return fmt.Sprint("panic: ", p.value) }
