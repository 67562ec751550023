package queue

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// emptyLeases answers every Lease at once with nothing, as the tracker does
// when its due work is all on channels without a free slot, and counts the
// calls.
type emptyLeases struct {
	trackerv1.TrackerServiceClient
	calls atomic.Int64
}

func (t *emptyLeases) Lease(context.Context, *trackerv1.LeaseRequest, ...grpc.CallOption) (*trackerv1.LeaseResponse, error) {
	t.calls.Add(1)
	return &trackerv1.LeaseResponse{}, nil
}

// LeaseStream is refused as by a tracker from before it: the queue falls
// back to Lease, which counts.
func (t *emptyLeases) LeaseStream(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[trackerv1.LeaseRequest, trackerv1.LeaseResponse], error) {
	return nil, status.Error(codes.Unimplemented, "unknown method LeaseStream")
}

func (t *emptyLeases) Stats(context.Context, *trackerv1.StatsRequest, ...grpc.CallOption) (*trackerv1.StatsResponse, error) {
	return &trackerv1.StatsResponse{}, nil
}

func (t *emptyLeases) WatchEvents(context.Context, *trackerv1.WatchEventsRequest, ...grpc.CallOption) (grpc.ServerStreamingClient[storev1.Event], error) {
	return nil, errors.New("no events here")
}

// idleHost opens Deliver streams that never answer.
type idleHost struct {
	pluginsv1.PluginHostServiceClient
}

func (idleHost) Deliver(ctx context.Context, _ ...grpc.CallOption) (grpc.BidiStreamingClient[pluginsv1.DeliverRequest, pluginsv1.DeliverResponse], error) {
	return idleStream{ctx: ctx}, nil
}

type idleStream struct {
	grpc.BidiStreamingClient[pluginsv1.DeliverRequest, pluginsv1.DeliverResponse]
	ctx context.Context
}

func (s idleStream) Recv() (*pluginsv1.DeliverResponse, error) {
	<-s.ctx.Done()
	return nil, s.ctx.Err()
}

func (s idleStream) CloseSend() error { return nil }

// While a channel is at its limit and the tracker answers at once with
// nothing, the queue asks again when a slot frees or every 50 ms: it does not
// spin on Lease.
func TestLeaseLoopWaitsForASlotWhileAChannelIsAtItsLimit(t *testing.T) {
	tr := &emptyLeases{}
	q := New(Config{ChannelLimit: map[string]int{"mock": 1}, DrainTimeout: time.Second}, tr, idleHost{}, slog.New(slog.DiscardHandler), nil)
	q.take("mock") // one delivery in flight: mock has no free slot
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	time.Sleep(time.Second)
	cancel()
	q.release("mock") // lets the drain finish
	<-done
	// About 20 in a second; a loop that does not wait makes thousands.
	if n := tr.calls.Load(); n > 100 {
		t.Fatalf("%d Lease calls in a second while mock had no free slot: the lease loop spins", n)
	}
	if n := tr.calls.Load(); n < 2 {
		t.Fatalf("%d Lease calls in a second: the lease loop stopped asking", n)
	}
}
