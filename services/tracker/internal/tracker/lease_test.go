package tracker_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/tracker/trackertest"
)

// TestLeaseAnswersAtOnceWhenOnlySlotsHoldWorkBack: a long-polling Lease
// whose due work is all on a channel the caller has no slot for answers
// empty at once, so that the caller asks again when a slot frees. Before,
// it waited out wait_ms while the caller's deliveries finished: the queue
// sat idle for a second at a time with a backlog pending.
func TestLeaseAnswersAtOnceWhenOnlySlotsHoldWorkBack(t *testing.T) {
	tc := startTracker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	id := trackertest.AcceptOne(ctx, t, tc)
	lease := func(slots map[string]uint32) (*trackerv1.LeaseResponse, time.Duration) {
		t.Helper()
		start := time.Now()
		resp, err := tc.Lease(ctx, &trackerv1.LeaseRequest{Worker: "test", Max: 16, LeaseDurationMs: 60_000, WaitMs: 20_000, ChannelSlots: slots})
		if err != nil {
			t.Fatal(err)
		}
		return resp, time.Since(start)
	}
	resp, took := lease(map[string]uint32{"mock": 0})
	if len(resp.GetLeases()) != 0 {
		t.Fatalf("leased %d messages on a channel without a free slot", len(resp.GetLeases()))
	}
	// Not a timing test: the fault this catches waits the full 20 s.
	if took > 10*time.Second {
		t.Fatalf("Lease with only slot-limited work due took %s: it waited out wait_ms instead of answering", took)
	}
	// Work on another channel is still leased while one is at its limit.
	resp, _ = lease(map[string]uint32{"slack": 0})
	if len(resp.GetLeases()) != 1 || resp.GetLeases()[0].GetMessage().GetId() != id {
		t.Fatalf("lease with a free mock slot: %v", resp.GetLeases())
	}
}

// startTracker serves a tracker in-process until the test ends and returns
// a client of it.
func startTracker(t *testing.T) trackerv1.TrackerServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(trackertest.Start(t), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return trackerv1.NewTrackerServiceClient(conn)
}
