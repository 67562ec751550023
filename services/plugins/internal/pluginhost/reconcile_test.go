package pluginhost_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/testing/protocmp"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
)

// reconcilingAdapter is a funcAdapter that can also be asked whether its
// provider has a message.
type reconcilingAdapter struct {
	funcAdapter
	reconcile func(ctx context.Context, d *pluginhost.Delivery) pluginhost.ReconcileResult
}

func (a reconcilingAdapter) Reconcile(ctx context.Context, d *pluginhost.Delivery) pluginhost.ReconcileResult {
	return a.reconcile(ctx, d)
}

func reconcileReq(id uint64, channel, recipient string) *pluginsv1.DeliverRequest {
	return &pluginsv1.DeliverRequest{Kind: &pluginsv1.DeliverRequest_Reconcile{Reconcile: &pluginsv1.Delivery{
		RequestId: id, MessageId: "m1", Channel: channel, Recipient: recipient, Attempt: 1, Text: "hi",
		LeaseToken: 5, AttemptStartedUnixNano: time.Unix(1_800_000_000, 0).UnixNano(),
	}}}
}

// A reconcile request never reaches an adapter's Deliver: an adapter that
// cannot reconcile answers CANNOT_ANSWER, and an answer that claims the
// message was found without the provider's id, or no valid answer, becomes
// ERROR. Reconcile answers never carry a delivery outcome.
func TestReconcileNeverSends(t *testing.T) {
	var delivers atomic.Int32
	deliver := func(context.Context, *pluginhost.Delivery) pluginhost.Result {
		delivers.Add(1)
		return pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "p"}
	}
	var started atomic.Int64 // the attempt start the adapter saw
	asks := reconcilingAdapter{funcAdapter: funcAdapter{name: "asks", fn: deliver}, reconcile: func(ctx context.Context, d *pluginhost.Delivery) pluginhost.ReconcileResult {
		started.Store(d.AttemptStarted.UnixNano())
		switch d.Recipient {
		case "found":
			return pluginhost.ReconcileResult{Answer: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND, ProviderMessageID: "p-1"}
		case "found-without-id":
			return pluginhost.ReconcileResult{Answer: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND}
		case "not-found":
			return pluginhost.ReconcileResult{Answer: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND}
		case "panic":
			panic("reconcile broke")
		}
		return pluginhost.ReconcileResult{}
	}}
	c, logs := startHost(t, map[string]pluginhost.Adapter{
		"plain": funcAdapter{name: "plain", fn: deliver},
		"asks":  asks,
	}, pluginhost.Options{})
	s, _ := openStream(t, c)

	tests := []struct {
		channel, recipient string
		want               *pluginsv1.DeliverResponse
	}{
		{"plain", "x", &pluginsv1.DeliverResponse{Reconcile: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER, ErrorCode: "PLG_009", Adapter: "plain"}},
		{"nowhere", "x", &pluginsv1.DeliverResponse{Reconcile: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER, ErrorCode: "PLG_002"}},
		{"asks", "found", &pluginsv1.DeliverResponse{Reconcile: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND, ProviderMessageId: "p-1", Adapter: "asks"}},
		{"asks", "not-found", &pluginsv1.DeliverResponse{Reconcile: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND, Adapter: "asks"}},
		{"asks", "found-without-id", &pluginsv1.DeliverResponse{Reconcile: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR, ErrorCode: "DLV_003", Adapter: "asks"}},
		{"asks", "no-answer", &pluginsv1.DeliverResponse{Reconcile: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR, ErrorCode: "DLV_003", Adapter: "asks"}},
		{"asks", "panic", &pluginsv1.DeliverResponse{Reconcile: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR, ErrorCode: "PLG_003", Adapter: "asks"}},
	}
	for i, tt := range tests {
		id := uint64(i + 1)
		send(t, s, reconcileReq(id, tt.channel, tt.recipient))
		got := recv(t, s)
		tt.want.RequestId = id
		if diff := cmp.Diff(tt.want, got, protocmp.Transform(), protocmp.IgnoreFields(&pluginsv1.DeliverResponse{}, "description")); diff != "" {
			t.Errorf("%s/%s (-want +got):\n%s", tt.channel, tt.recipient, diff)
		}
		if got.GetOutcome() != pluginsv1.Outcome_OUTCOME_UNSPECIFIED {
			t.Errorf("%s/%s: a reconcile answer carries the delivery outcome %s", tt.channel, tt.recipient, got.GetOutcome())
		}
	}
	if n := delivers.Load(); n != 0 {
		t.Fatalf("Deliver was called %d times for reconcile requests", n)
	}
	if got := time.Unix(0, started.Load()); !got.Equal(time.Unix(1_800_000_000, 0)) {
		t.Errorf("the adapter saw attempt start %v, want the request's", got)
	}
	cannot := 0
	for _, l := range logs.lines(t) {
		if l["error_code"] == "PLG_009" && l["level"] == "ERROR" {
			cannot++
		}
		if l["message_id"] == "m1" && l["recipient"] != nil {
			t.Errorf("log line holds the recipient: %v", l)
		}
	}
	if cannot != 1 {
		t.Errorf("%d ERROR lines with PLG_009, want 1", cannot)
	}
}

// fakeTracker records the Complete calls a TrackerReporter makes.
type fakeTracker struct {
	trackerv1.TrackerServiceClient
	got chan *trackerv1.CompleteRequest
}

func (f fakeTracker) Complete(_ context.Context, req *trackerv1.CompleteRequest, _ ...grpc.CallOption) (*trackerv1.CompleteResponse, error) {
	f.got <- req
	return &trackerv1.CompleteResponse{}, nil
}

// A reconcile answer the queue could not report is reported by the host
// as a RESULT_RECONCILE_* outcome under the reconcile lease's token, never
// as a delivery result.
func TestOrphanedReconcileAnswersAreReportedAsReconcileResults(t *testing.T) {
	orphan := func(token uint64, a *pluginsv1.DeliverResponse) pluginhost.Orphan {
		return pluginhost.Orphan{Delivery: &pluginsv1.Delivery{MessageId: "m1", LeaseToken: token}, Answer: a, Reconcile: true}
	}
	ft := fakeTracker{got: make(chan *trackerv1.CompleteRequest, 1)}
	err := pluginhost.TrackerReporter{Client: ft, Timeout: time.Second}.Report(t.Context(), []pluginhost.Orphan{
		orphan(1, &pluginsv1.DeliverResponse{Reconcile: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND, ProviderMessageId: "p-1"}),
		orphan(2, &pluginsv1.DeliverResponse{Reconcile: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND}),
		orphan(3, &pluginsv1.DeliverResponse{Reconcile: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER, ErrorCode: "PLG_009"}),
		orphan(4, &pluginsv1.DeliverResponse{Reconcile: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR, ErrorCode: "PLG_001", RetryAfterMs: 60_000}),
		// The answer a killed adapter left: no reconcile answer at all.
		orphan(5, &pluginsv1.DeliverResponse{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageId: "p"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	req := <-ft.got
	want := []trackerv1.Result{
		trackerv1.Result_RESULT_RECONCILE_FOUND, trackerv1.Result_RESULT_RECONCILE_NOT_FOUND,
		trackerv1.Result_RESULT_RECONCILE_CANNOT_ANSWER, trackerv1.Result_RESULT_RECONCILE_ERROR, trackerv1.Result_RESULT_RECONCILE_ERROR,
	}
	if len(req.GetOutcomes()) != len(want) {
		t.Fatalf("%d outcomes, want %d", len(req.GetOutcomes()), len(want))
	}
	for i, o := range req.GetOutcomes() {
		if o.GetResult() != want[i] || o.GetLeaseToken() != uint64(i+1) {
			t.Errorf("outcome %d: %s lease %d, want %s lease %d", i, o.GetResult(), o.GetLeaseToken(), want[i], i+1)
		}
	}
	if o := req.GetOutcomes()[0]; o.GetProviderMessageId() != "p-1" {
		t.Errorf("found without the provider's id: %v", o)
	}
	if o := req.GetOutcomes()[3]; o.GetRetryAfterNanos() < (50 * time.Second).Nanoseconds() {
		t.Errorf("error outcome ignores the retry-after: %v", o)
	}
}
