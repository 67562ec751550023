package mock_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/mock"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
)

var fixed = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func TestScripts(t *testing.T) {
	tests := []struct {
		recipient string
		attempt   uint32
		want      pluginhost.Result
	}{
		{"ok", 1, pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "mock-m1"}},
		{"ok#alice", 1, pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "mock-m1"}},
		{"fail:retryable", 1, pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "mock"}},
		{"fail:permanent", 1, pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_001", ProviderCode: "mock"}},
		{"fail:unknown", 1, pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "PLG_006", ProviderCode: "mock"}},
		{"delay:1ms", 1, pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "mock-m1"}},
		{"flaky:2", 1, pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "mock"}},
		{"flaky:2", 2, pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "mock"}},
		{"flaky:2", 3, pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "mock-m1"}},
		{"nonsense", 1, pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_004"}},
		{"delay:soon", 1, pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_004"}},
		{"", 1, pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_004"}},
	}
	for _, tt := range tests {
		t.Run(tt.recipient, func(t *testing.T) {
			a := mock.New(mock.Options{Now: func() time.Time { return fixed }})
			got := a.Deliver(t.Context(), &pluginhost.Delivery{MessageID: "m1", Recipient: tt.recipient, Attempt: tt.attempt})
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(pluginhost.Result{}, "Description")); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			wantRecords := 0
			if tt.want.Outcome == pluginsv1.Outcome_OUTCOME_DELIVERED {
				wantRecords = 1
			}
			if n := len(a.Deliveries()); n != wantRecords {
				t.Errorf("%d records, want %d", n, wantRecords)
			}
		})
	}
}

func TestDelayHonoursCancellation(t *testing.T) {
	a := mock.New(mock.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	got := a.Deliver(ctx, &pluginhost.Delivery{MessageID: "m1", Recipient: "delay:1h"})
	if got.Outcome != pluginsv1.Outcome_OUTCOME_UNKNOWN || got.ErrorCode != "PLG_006" {
		t.Errorf("got %v %s, want UNKNOWN PLG_006", got.Outcome, got.ErrorCode)
	}
	if len(a.Deliveries()) != 0 {
		t.Error("cancelled delivery was recorded")
	}
}

func TestPanicScriptPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("panic script did not panic")
		}
	}()
	mock.New(mock.Options{}).Deliver(t.Context(), &pluginhost.Delivery{MessageID: "m1", Recipient: "panic"})
}

func TestRecordsAsJSONLines(t *testing.T) {
	var buf bytes.Buffer
	a := mock.New(mock.Options{Record: &buf, Now: func() time.Time { return fixed }})
	for i, r := range []string{"ok", "fail:retryable", "ok#b"} {
		a.Deliver(t.Context(), &pluginhost.Delivery{
			MessageID: "m" + string(rune('1'+i)), Channel: "mock", Recipient: r,
			Conversation: "c1", Sequence: uint64(i + 1), Attempt: 1, Text: "t",
		})
	}
	want := []mock.Record{
		{MessageID: "m1", Channel: "mock", Conversation: "c1", Sequence: 1, Attempt: 1, Text: "t", Time: fixed},
		{MessageID: "m3", Channel: "mock", Conversation: "c1", Sequence: 3, Attempt: 1, Text: "t", Time: fixed},
	}
	var fromFile []mock.Record
	for line := range strings.SplitSeq(strings.TrimSpace(buf.String()), "\n") {
		var r mock.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		fromFile = append(fromFile, r)
	}
	if diff := cmp.Diff(want, fromFile); diff != "" {
		t.Errorf("file records (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, a.Deliveries()); diff != "" {
		t.Errorf("in-memory records (-want +got):\n%s", diff)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestUnwritableRecordIsNotDelivered(t *testing.T) {
	a := mock.New(mock.Options{Record: failingWriter{}})
	got := a.Deliver(t.Context(), &pluginhost.Delivery{MessageID: "m1", Recipient: "ok"})
	if got.Outcome == pluginsv1.Outcome_OUTCOME_DELIVERED {
		t.Errorf("got DELIVERED although the record was not written")
	}
}

// The mock provider answers reconcile requests from its own record: what it
// accepted (even when the answer was lost) is found, what it did not is
// definitely not there, and a restarted adapter knows what its record file
// holds.
func TestReconcileAnswersFromTheRecord(t *testing.T) {
	var file bytes.Buffer
	a := mock.New(mock.Options{Record: &file, Now: func() time.Time { return fixed }})
	deliver := func(id, recipient string) pluginhost.Result {
		return a.Deliver(t.Context(), &pluginhost.Delivery{MessageID: id, Recipient: recipient, Attempt: 1})
	}
	if got := deliver("m-ok", "ok"); got.Outcome != pluginsv1.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("ok: %v", got)
	}
	if got := deliver("m-lost", "lost"); got.Outcome != pluginsv1.Outcome_OUTCOME_UNKNOWN || got.ErrorCode != "PLG_006" {
		t.Fatalf("lost: %v, want UNKNOWN PLG_006", got)
	}
	deliver("m-unknown", "fail:unknown")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	a.Deliver(ctx, &pluginhost.Delivery{MessageID: "m-cut", Recipient: "delay:1h"})

	found := func(id string) pluginhost.ReconcileResult {
		return pluginhost.ReconcileResult{Answer: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND, ProviderMessageID: "mock-" + id}
	}
	notFound := pluginhost.ReconcileResult{Answer: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND}
	want := map[string]pluginhost.ReconcileResult{
		"m-ok": found("m-ok"), "m-lost": found("m-lost"), "m-unknown": notFound, "m-cut": notFound, "m-never": notFound,
	}
	restarted := mock.New(mock.Options{})
	if err := restarted.Replay(bytes.NewReader(file.Bytes())); err != nil {
		t.Fatal(err)
	}
	for _, ad := range []*mock.Adapter{a, restarted} {
		for id, w := range want {
			if diff := cmp.Diff(w, ad.Reconcile(t.Context(), &pluginhost.Delivery{MessageID: id})); diff != "" {
				t.Errorf("%s (-want +got):\n%s", id, diff)
			}
		}
	}
	if n := len(a.Deliveries()); n != 2 {
		t.Errorf("%d records, want 2: Reconcile must not record anything", n)
	}
	if err := mock.New(mock.Options{}).Replay(strings.NewReader("not json\n")); err == nil {
		t.Error("Replay accepted a line that is not a record")
	}
}

// With Keep, Deliveries holds the latest deliveries only, while Reconcile
// still finds every message the mock provider accepted.
func TestKeepBoundsTheDeliveriesButNotReconcile(t *testing.T) {
	a := mock.New(mock.Options{Keep: 3})
	for i := range 10 {
		d := &pluginhost.Delivery{MessageID: fmt.Sprint("m", i), Recipient: "ok", Attempt: 1}
		if got := a.Deliver(t.Context(), d); got.Outcome != pluginsv1.Outcome_OUTCOME_DELIVERED {
			t.Fatalf("deliver m%d: %v", i, got.Outcome)
		}
	}
	var ids []string
	for _, r := range a.Deliveries() {
		ids = append(ids, r.MessageID)
	}
	if want := []string{"m7", "m8", "m9"}; !slices.Equal(ids, want) {
		t.Fatalf("Deliveries() = %v, want the latest 3 %v", ids, want)
	}
	for _, id := range []string{"m0", "m9"} {
		if got := a.Reconcile(t.Context(), &pluginhost.Delivery{MessageID: id}); got.Answer != pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND {
			t.Fatalf("reconcile %s: %v, want FOUND", id, got.Answer)
		}
	}
}
