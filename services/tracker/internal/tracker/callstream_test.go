package tracker_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/heraldchat/herald/pkg/grpcserver"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/tracker/internal/store"
	"github.com/heraldchat/herald/services/tracker/internal/tracker"
	"github.com/heraldchat/herald/services/tracker/trackertest"
)

// serveTracker serves svc's tracker in-process until the test ends and
// returns the service, for its shutdown steps, and a client.
func serveTracker(t *testing.T) (*tracker.Service, trackerv1.TrackerServiceClient) {
	t.Helper()
	st, err := store.Open("tracker", store.Options{FS: vfs.NewMem(), CacheSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	srv, err := grpcserver.New(grpcserver.Config{Name: trackerv1.TrackerService_ServiceDesc.ServiceName, Addr: "127.0.0.1:0", Logger: log, GracePeriod: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	svc := tracker.New(st, log, time.Now, t.TempDir())
	trackerv1.RegisterTrackerServiceServer(srv.GRPC(), svc)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		svc.Close()
		cancel()
		<-done
		st.Close()
	})
	return svc, trackerv1.NewTrackerServiceClient(conn)
}

func leaseRequest(max uint32) *trackerv1.LeaseRequest {
	return &trackerv1.LeaseRequest{Worker: "test", Max: max, LeaseDurationMs: 60_000, WaitMs: 50}
}

func delivered(l *trackerv1.Lease) *trackerv1.CompleteRequest {
	return &trackerv1.CompleteRequest{Worker: "test", Outcomes: []*trackerv1.Outcome{{
		MessageId: l.GetMessage().GetId(), LeaseToken: l.GetDelivery().GetLeaseToken(),
		Result: trackerv1.Result_RESULT_DELIVERED, ProviderMessageId: "p-" + l.GetMessage().GetId(),
	}}}
}

// LeaseStream and CompleteStream answer each request, in order, as Lease
// and Complete would: new leases, then outcomes applied once (a repeat is
// refused per item, not an error), and a bad request ends the stream with
// the unary call's status.
func TestCallStreamsAnswerInOrderAsTheUnaryCalls(t *testing.T) {
	_, tc := serveTracker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want := map[string]bool{}
	for range 3 {
		want[trackertest.AcceptOne(ctx, t, tc)] = true
	}
	leases, err := tc.LeaseStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	completes, err := tc.CompleteStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := leases.Send(leaseRequest(1)); err != nil {
			t.Fatal(err)
		}
		resp, err := leases.Recv()
		if err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
		if len(resp.GetLeases()) != 1 || !want[resp.GetLeases()[0].GetMessage().GetId()] {
			t.Fatalf("lease %d: %v, want one of the accepted messages not leased yet", i, resp.GetLeases())
		}
		l := resp.GetLeases()[0]
		delete(want, l.GetMessage().GetId())
		for _, applied := range []bool{true, false} {
			if err := completes.Send(delivered(l)); err != nil {
				t.Fatal(err)
			}
			out, err := completes.Recv()
			if err != nil {
				t.Fatalf("complete %d: %v", i, err)
			}
			if got := out.GetResults()[0].GetApplied(); got != applied {
				t.Fatalf("complete %d: applied=%v, want %v (the first applies, the repeat is refused)", i, got, applied)
			}
		}
	}
	// Nothing left: an empty answer after the long poll.
	if err := leases.Send(leaseRequest(1)); err != nil {
		t.Fatal(err)
	}
	if resp, err := leases.Recv(); err != nil || len(resp.GetLeases()) != 0 {
		t.Fatalf("lease with nothing due: %v, %v; want an empty answer", resp.GetLeases(), err)
	}
	if err := leases.Send(&trackerv1.LeaseRequest{Worker: "test", Max: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := leases.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("lease without a duration: %v, want INVALID_ARGUMENT ending the stream", err)
	}
}

// When shutdown starts, LeaseStream ends at once (no new leases), while
// CompleteStream keeps recording the outcomes of deliveries under way
// through the drain, and ends with Close. An outcome stream that ended with
// the leases would leave those deliveries to expire into recovery and be
// sent again after the restart.
func TestShutdownEndsLeaseStreamsAtOnceAndCompleteStreamsAfterTheDrain(t *testing.T) {
	svc, tc := serveTracker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	trackertest.AcceptOne(ctx, t, tc)
	leases, err := tc.LeaseStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := leases.Send(leaseRequest(1)); err != nil {
		t.Fatal(err)
	}
	resp, err := leases.Recv()
	if err != nil || len(resp.GetLeases()) != 1 {
		t.Fatalf("lease: %v, %v", resp.GetLeases(), err)
	}
	completes, err := tc.CompleteStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Open the outcome stream before shutdown starts, as a queue has.
	if err := completes.Send(&trackerv1.CompleteRequest{Worker: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := completes.Recv(); err != nil {
		t.Fatal(err)
	}

	svc.Stop()
	if _, err := leases.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("lease stream after shutdown started: %v, want UNAVAILABLE", err)
	}
	if err := completes.Send(delivered(resp.GetLeases()[0])); err != nil {
		t.Fatal(err)
	}
	out, err := completes.Recv()
	if err != nil {
		t.Fatalf("outcome during the drain: %v; it must be recorded", err)
	}
	if !out.GetResults()[0].GetApplied() {
		t.Fatalf("outcome during the drain not applied: %v", out.GetResults()[0])
	}

	svc.Close()
	if _, err := completes.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("outcome stream after Close: %v, want UNAVAILABLE", err)
	}
}
