package tracker_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// TestAbortAnswersOnceTheAttemptInFlightEnded: Abort of a message (or of
// the streamed reply it is a chunk of) whose attempt is in flight answers
// only after that attempt's outcome is recorded, with the state it ends in:
// ABORTED when the call was cut, DELIVERED when the provider confirmed it. An Abort that answered at once
// would let the provider call go on after the acknowledgement (the tracker
// alone cannot stop it; the queue cancels it on the abort's event).
func TestAbortAnswersOnceTheAttemptInFlightEnded(t *testing.T) {
	tests := []struct {
		name   string
		reply  bool
		result trackerv1.Result
		want   storev1.State
	}{
		{"call cut by the abort", false, trackerv1.Result_RESULT_UNKNOWN, storev1.State_STATE_ABORTED},
		{"provider confirmed first", false, trackerv1.Result_RESULT_DELIVERED, storev1.State_STATE_DELIVERED},
		{"reply, chunk's call cut by the abort", true, trackerv1.Result_RESULT_UNKNOWN, storev1.State_STATE_ABORTED},
		{"reply, chunk confirmed first", true, trackerv1.Result_RESULT_DELIVERED, storev1.State_STATE_DELIVERED},
	}
	tc := startTracker(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			id, abortID := ulid.Make().String(), ""
			if tt.reply {
				abortID = ulid.Make().String()
				if _, err := tc.OpenReply(ctx, &trackerv1.OpenReplyRequest{Reply: &storev1.Reply{
					Id: abortID, Tenant: "t1", Channel: "mock", Recipient: "ok", Conversation: abortID,
				}}); err != nil {
					t.Fatal(err)
				}
				if _, err := tc.AppendChunk(ctx, &trackerv1.AppendChunkRequest{ReplyId: abortID, Index: 0,
					Message: &storev1.Message{Id: id, Text: "Generating"}}); err != nil {
					t.Fatal(err)
				}
			} else {
				abortID = id
				if _, err := tc.Accept(ctx, &trackerv1.AcceptRequest{Message: &storev1.Message{
					Id: id, Tenant: "t1", Channel: "mock", Recipient: "ok", Conversation: id, Text: "hi",
				}}); err != nil {
					t.Fatal(err)
				}
			}
			lease, err := tc.Lease(ctx, &trackerv1.LeaseRequest{Worker: "test", Max: 1, LeaseDurationMs: 60_000, WaitMs: 5_000})
			if err != nil || len(lease.GetLeases()) != 1 {
				t.Fatalf("lease: %v %v", lease, err)
			}
			token := lease.GetLeases()[0].GetDelivery().GetLeaseToken()

			var completed atomic.Bool
			type answer struct {
				resp          *trackerv1.AbortResponse
				err           error
				afterComplete bool
			}
			answered := make(chan answer, 1)
			go func() {
				resp, err := tc.Abort(ctx, &trackerv1.AbortRequest{Id: abortID, Reason: "user pressed stop"})
				answered <- answer{resp, err, completed.Load()}
			}()
			// The attempt ends once the abort is recorded (the queue would
			// cancel the call on its event), unless Abort has answered.
			waitAbortRequested(ctx, t, tc, id)
			select {
			case a := <-answered:
				t.Fatalf("Abort answered %v %v while the attempt was in flight", a.resp, a.err)
			case <-time.After(100 * time.Millisecond):
			}
			completed.Store(true)
			if _, err := tc.Complete(ctx, &trackerv1.CompleteRequest{Worker: "test", Outcomes: []*trackerv1.Outcome{{
				MessageId: id, LeaseToken: token, Result: tt.result, ProviderMessageId: "p-1", ErrorCode: "PLG_006",
			}}}); err != nil {
				t.Fatal(err)
			}
			a := <-answered
			if a.err != nil {
				t.Fatal(a.err)
			}
			if !a.afterComplete {
				t.Fatal("Abort answered before the attempt in flight ended")
			}
			got := a.resp.GetDelivery().GetState()
			if tt.reply {
				if a.resp.GetReply().GetState() != storev1.ReplyState_REPLY_STATE_ABORTED {
					t.Fatalf("Abort answered %v, want the reply ABORTED", a.resp)
				}
				m, err := tc.GetMessage(ctx, &trackerv1.GetMessageRequest{Id: id})
				if err != nil {
					t.Fatal(err)
				}
				got = m.GetDelivery().GetState()
			}
			if got != tt.want {
				t.Fatalf("after Abort answered, the message is %s, want %s", got, tt.want)
			}
		})
	}
}

// waitAbortRequested polls until the message is marked abort_requested.
func waitAbortRequested(ctx context.Context, t *testing.T, tc trackerv1.TrackerServiceClient, id string) {
	t.Helper()
	for {
		resp, err := tc.GetMessage(ctx, &trackerv1.GetMessageRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetDelivery().GetAbortRequested() {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal("the abort was never recorded")
		case <-time.After(5 * time.Millisecond):
		}
	}
}
