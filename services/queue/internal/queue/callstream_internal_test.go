package queue

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/tracker/trackertest"
)

// callCounts counts the calls a client makes, by method.
type callCounts struct {
	leaseStreams, completeStreams, unaryLeases, unaryCompletes atomic.Int64
}

func (c *callCounts) dial(t *testing.T, addr string) trackerv1.TrackerServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			switch method {
			case trackerv1.TrackerService_Lease_FullMethodName:
				c.unaryLeases.Add(1)
			case trackerv1.TrackerService_Complete_FullMethodName:
				c.unaryCompletes.Add(1)
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			switch method {
			case trackerv1.TrackerService_LeaseStream_FullMethodName:
				c.leaseStreams.Add(1)
			case trackerv1.TrackerService_CompleteStream_FullMethodName:
				c.completeStreams.Add(1)
			}
			return streamer(ctx, desc, cc, method, opts...)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return trackerv1.NewTrackerServiceClient(conn)
}

func callers(tc trackerv1.TrackerServiceClient) (*streamCaller[trackerv1.LeaseRequest, trackerv1.LeaseResponse], *streamCaller[trackerv1.CompleteRequest, trackerv1.CompleteResponse]) {
	log := slog.New(slog.DiscardHandler)
	return &streamCaller[trackerv1.LeaseRequest, trackerv1.LeaseResponse]{method: "Lease", open: tc.LeaseStream, unary: tc.Lease, noStream: new(atomic.Bool), log: log},
		&streamCaller[trackerv1.CompleteRequest, trackerv1.CompleteResponse]{method: "Complete", open: tc.CompleteStream, unary: tc.Complete, noStream: new(atomic.Bool), log: log}
}

// leaseAndDeliver leases one message through leases and reports it
// delivered through completes.
func leaseAndDeliver(ctx context.Context, t *testing.T, leases *streamCaller[trackerv1.LeaseRequest, trackerv1.LeaseResponse], completes *streamCaller[trackerv1.CompleteRequest, trackerv1.CompleteResponse]) {
	t.Helper()
	resp, err := leases.call(ctx, &trackerv1.LeaseRequest{Worker: "q", Max: 1, LeaseDurationMs: 60_000, WaitMs: 1000})
	if err != nil || len(resp.GetLeases()) != 1 {
		t.Fatalf("lease: %v, %v; want one lease", resp.GetLeases(), err)
	}
	l := resp.GetLeases()[0]
	out, err := completes.call(ctx, &trackerv1.CompleteRequest{Worker: "q", Outcomes: []*trackerv1.Outcome{{
		MessageId: l.GetMessage().GetId(), LeaseToken: l.GetDelivery().GetLeaseToken(), Result: trackerv1.Result_RESULT_DELIVERED, ProviderMessageId: "p",
	}}})
	if err != nil || !out.GetResults()[0].GetApplied() {
		t.Fatalf("complete: %v, %v; want applied", out.GetResults(), err)
	}
}

// The queue's leases and outcomes travel over one stream each, not a call
// per batch; a call whose deadline passes returns DEADLINE_EXCEEDED, as a
// unary call would, and the next call opens a new stream.
func TestLeasesAndOutcomesShareOneStreamEach(t *testing.T) {
	var n callCounts
	tc := n.dial(t, trackertest.Start(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leases, completes := callers(tc)
	defer leases.close()
	defer completes.close()
	for range 5 {
		trackertest.AcceptOne(ctx, t, tc)
		leaseAndDeliver(ctx, t, leases, completes)
	}
	if a, b, c, d := n.leaseStreams.Load(), n.completeStreams.Load(), n.unaryLeases.Load(), n.unaryCompletes.Load(); a != 1 || b != 1 || c != 0 || d != 0 {
		t.Fatalf("5 leases and outcomes took %d lease streams, %d outcome streams, %d unary Leases, %d unary Completes; want 1, 1, 0, 0", a, b, c, d)
	}

	// Nothing is due: the tracker long-polls past this call's deadline.
	short, stop := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := leases.call(short, &trackerv1.LeaseRequest{Worker: "q", Max: 1, LeaseDurationMs: 60_000, WaitMs: 5000})
	stop()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("lease past its deadline: %v, want DEADLINE_EXCEEDED", err)
	}
	trackertest.AcceptOne(ctx, t, tc)
	leaseAndDeliver(ctx, t, leases, completes)
	if a := n.leaseStreams.Load(); a != 2 {
		t.Fatalf("%d lease streams after a call timed out; want 2 (the cut one and a new one)", a)
	}
}

// unaryOnly is a tracker from before LeaseStream and CompleteStream: it
// answers them UNIMPLEMENTED, and Lease and Complete from the real tracker.
type unaryOnly struct {
	trackerv1.UnimplementedTrackerServiceServer
	real trackerv1.TrackerServiceClient
}

func (u unaryOnly) Lease(ctx context.Context, req *trackerv1.LeaseRequest) (*trackerv1.LeaseResponse, error) {
	return u.real.Lease(ctx, req)
}

func (u unaryOnly) Complete(ctx context.Context, req *trackerv1.CompleteRequest) (*trackerv1.CompleteResponse, error) {
	return u.real.Complete(ctx, req)
}

// Against a tracker without the streams, each call falls back to the unary
// method, from the first call on, and nothing is lost on the way.
func TestCallsFallBackToUnaryWithoutTheStreams(t *testing.T) {
	var direct callCounts
	real := direct.dial(t, trackertest.Start(t))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	trackerv1.RegisterTrackerServiceServer(srv, unaryOnly{real: real})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	var n callCounts
	tc := n.dial(t, lis.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leases, completes := callers(tc)
	for range 3 {
		trackertest.AcceptOne(ctx, t, real)
		leaseAndDeliver(ctx, t, leases, completes)
	}
	if a, b, c, d := n.leaseStreams.Load(), n.completeStreams.Load(), n.unaryLeases.Load(), n.unaryCompletes.Load(); a != 1 || b != 1 || c != 3 || d != 3 {
		t.Fatalf("3 leases and outcomes took %d lease streams, %d outcome streams, %d unary Leases, %d unary Completes; want 1, 1 (each refused once), 3, 3", a, b, c, d)
	}
}

// fakeLeases is a LeaseStream that answers its first requests (answers of
// them), then breaks.
type fakeLeases struct {
	grpc.BidiStreamingClient[trackerv1.LeaseRequest, trackerv1.LeaseResponse]
	answers int
}

func (f *fakeLeases) Send(*trackerv1.LeaseRequest) error { return nil }

func (f *fakeLeases) Recv() (*trackerv1.LeaseResponse, error) {
	if f.answers == 0 {
		return nil, status.Error(codes.Unavailable, "tracker restarting")
	}
	f.answers--
	return &trackerv1.LeaseResponse{}, nil
}

// A tracker replaced by one without the streams, after the first had
// answered on one, gets unary calls: the answers of the stream before do
// not count for the new one.
func TestCallsFallBackAfterATrackerWithoutTheStreamsReplacesOne(t *testing.T) {
	opens, unary := 0, 0
	c := &streamCaller[trackerv1.LeaseRequest, trackerv1.LeaseResponse]{
		method: "Lease",
		open: func(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[trackerv1.LeaseRequest, trackerv1.LeaseResponse], error) {
			opens++
			if opens == 1 {
				return &fakeLeases{answers: 1}, nil
			}
			return nil, status.Error(codes.Unimplemented, "unknown method LeaseStream")
		},
		unary: func(context.Context, *trackerv1.LeaseRequest, ...grpc.CallOption) (*trackerv1.LeaseResponse, error) {
			unary++
			return &trackerv1.LeaseResponse{}, nil
		},
		noStream: new(atomic.Bool),
		log:      slog.New(slog.DiscardHandler),
	}
	ctx := context.Background()
	if _, err := c.call(ctx, &trackerv1.LeaseRequest{}); err != nil {
		t.Fatalf("first call, on the stream: %v", err)
	}
	if _, err := c.call(ctx, &trackerv1.LeaseRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("second call, the stream broken: %v, want UNAVAILABLE", err)
	}
	if _, err := c.call(ctx, &trackerv1.LeaseRequest{}); err != nil || unary != 1 {
		t.Fatalf("third call, against a tracker without the stream: %v after %d unary calls; want the unary call's answer", err, unary)
	}
}
