package slack_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
	"github.com/heraldchat/herald/services/plugins/internal/providerfake"
)

const channel = "C0123456789"

var ignoreReconcileDescription = cmpopts.IgnoreFields(pluginhost.ReconcileResult{}, "Description")

func reconcileOf(id string, started time.Time) *pluginhost.Delivery {
	return &pluginhost.Delivery{MessageID: id, Channel: "sl", Recipient: channel, Text: "hello", Attempt: 1, AttemptStarted: started}
}

func historyCalls(fake *providerfake.Server) []providerfake.Request {
	var out []providerfake.Request
	for _, r := range fake.Requests() {
		if r.Path == "/api/conversations.history" {
			out = append(out, r)
		}
	}
	return out
}

// A post whose answer was lost is found again by the herald message id in
// its metadata, among other messages and across pages; a message that was
// never posted is definitely not there. Reconcile sends nothing.
func TestReconcileFindsThePostByItsMetadata(t *testing.T) {
	fake := providerfake.NewSlack(token)
	defer fake.Close()
	a := newAdapter(t, fake.URL, token)
	started := time.Now()

	posted := a.Deliver(t.Context(), &pluginhost.Delivery{MessageID: "01HERALD", Recipient: channel, Text: "hello"})
	if posted.Outcome != pluginsv1.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("post: %+v", posted)
	}
	// Others keep talking: the post is on the third page of 100.
	var others []providerfake.SlackMessage
	for i := range 250 {
		others = append(others, providerfake.SlackMessage{Channel: channel, Text: "chatter " + strconv.Itoa(i),
			// Someone else's metadata must not be mistaken for ours.
			Metadata: map[string]any{"event_type": "other_app", "event_payload": map[string]any{"herald_message_id": "01HERALD"}}})
	}
	fake.AddMessages(others...)
	before := len(fake.Requests())

	got := a.Reconcile(t.Context(), reconcileOf("01HERALD", started))
	want := pluginhost.ReconcileResult{Answer: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND, ProviderMessageID: posted.ProviderMessageID}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("found (-want +got):\n%s", diff)
	}
	calls := historyCalls(fake)
	if len(calls) != 3 || len(fake.Requests())-before != 3 {
		t.Fatalf("%d conversations.history calls of %d requests, want 3 pages and nothing else", len(calls), len(fake.Requests())-before)
	}
	f := calls[0].Form
	oldest, _ := strconv.ParseFloat(f.Get("oldest"), 64)
	wantOldest := float64(started.Add(-2*time.Minute).UnixMicro()) / 1e6
	if f.Get("channel") != channel || f.Get("include_all_metadata") != "true" || f.Get("inclusive") != "true" || oldest < wantOldest-0.001 || oldest > wantOldest+0.001 {
		t.Errorf("history request %v: want the channel, include_all_metadata, and oldest = the attempt's start less 2m (%f)", f, wantOldest)
	}
	if calls[0].Method != "POST" || calls[0].Header.Get("Authorization") != "Bearer "+token {
		t.Errorf("history request %s, auth ok=%v; want POST with the bearer token", calls[0].Method, calls[0].Header.Get("Authorization") == "Bearer "+token)
	}

	got = a.Reconcile(t.Context(), reconcileOf("01NEVERPOSTED", started))
	if got.Answer != pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND {
		t.Fatalf("never posted: %+v, want NOT_FOUND", got)
	}
	for _, m := range fake.History() {
		if m.Metadata != nil && m.Metadata["event_type"] == "herald_message" && m.Metadata["event_payload"].(map[string]any)["herald_message_id"] != "01HERALD" {
			t.Fatalf("Reconcile posted a message: %+v", m)
		}
	}
	if n := len(fake.History()); n != 251 {
		t.Fatalf("the channel has %d messages, want 251: Reconcile must never post", n)
	}
}

// Only the attempt's window is read: a post older than the attempt's start
// (less the clock-skew margin) is not this attempt's.
func TestReconcileReadsOnlySinceTheAttempt(t *testing.T) {
	fake := providerfake.NewSlack(token)
	defer fake.Close()
	a := newAdapter(t, fake.URL, token)
	fake.AddMessages(providerfake.SlackMessage{Channel: channel, TS: "1700000000.000001",
		Metadata: map[string]any{"event_type": "herald_message", "event_payload": map[string]any{"herald_message_id": "01OLD"}}})
	got := a.Reconcile(t.Context(), reconcileOf("01OLD", time.Now()))
	if got.Answer != pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND {
		t.Fatalf("got %+v, want NOT_FOUND for a post before the window", got)
	}
	got = a.Reconcile(t.Context(), reconcileOf("01OLD", time.Unix(1700000000, 0)))
	if got.Answer != pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND || got.ProviderMessageID != channel+":1700000000.000001" {
		t.Fatalf("got %+v, want FOUND within the window", got)
	}
}

// A channel too busy to read through since the attempt cannot be answered
// for: NOT_FOUND would be a guess.
func TestReconcileGivesUpOnABusyChannel(t *testing.T) {
	fake := providerfake.NewSlack(token)
	defer fake.Close()
	a := newAdapter(t, fake.URL, token)
	msgs := make([]providerfake.SlackMessage, 2001)
	for i := range msgs {
		msgs[i] = providerfake.SlackMessage{Channel: channel, Text: "chatter"}
	}
	fake.AddMessages(msgs...)
	got := a.Reconcile(t.Context(), reconcileOf("01X", time.Now().Add(-time.Minute)))
	if got.Answer != pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER || got.ErrorCode != "PLG_009" {
		t.Fatalf("got %+v, want CANNOT_ANSWER PLG_009", got)
	}
	if n := len(historyCalls(fake)); n != 20 {
		t.Fatalf("%d pages read, want the bound of 20", n)
	}
}

func TestReconcileClassifiesHistoryAnswers(t *testing.T) {
	cannot := func(code string) pluginhost.ReconcileResult {
		return pluginhost.ReconcileResult{Answer: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER, ErrorCode: "PLG_009", ProviderCode: code}
	}
	transient := func(code string, after time.Duration) pluginhost.ReconcileResult {
		return pluginhost.ReconcileResult{Answer: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR, ErrorCode: "PLG_001", ProviderCode: code, RetryAfter: after}
	}
	tests := []struct {
		name     string
		token    string
		script   []providerfake.Response
		want     pluginhost.ReconcileResult
		wantHint string
	}{
		{name: "missing_scope cannot answer", script: []providerfake.Response{{Body: `{"ok":false,"error":"missing_scope","needed":"channels:history","provided":"chat:write"}`}},
			want: cannot("missing_scope"), wantHint: "channels:history"},
		{name: "not_in_channel cannot answer", script: []providerfake.Response{providerfake.SlackError("not_in_channel")}, want: cannot("not_in_channel"), wantHint: "invite"},
		{name: "channel_not_found cannot answer", script: []providerfake.Response{providerfake.SlackError("channel_not_found")}, want: cannot("channel_not_found"), wantHint: "D…"},
		{name: "wrong token cannot answer", token: "xoxb-WRONG", want: cannot("invalid_auth")},
		{name: "an unlisted error cannot answer", script: []providerfake.Response{providerfake.SlackError("ekm_access_denied")}, want: cannot("ekm_access_denied")},
		{name: "other 4xx cannot answer", script: []providerfake.Response{{Status: 404, Body: "no"}}, want: cannot("404")},
		{name: "ratelimited is an error, after Retry-After",
			script: []providerfake.Response{{Body: `{"ok":false,"error":"ratelimited"}`, Header: map[string]string{"Retry-After": "60"}}},
			want:   transient("ratelimited", time.Minute)},
		{name: "HTTP 429 is an error, after Retry-After",
			script: []providerfake.Response{{Status: 429, Body: `{"ok":false,"error":"ratelimited"}`, Header: map[string]string{"Retry-After": "30"}}},
			want:   transient("429", 30*time.Second)},
		{name: "5xx is an error", script: []providerfake.Response{{Status: 503, Body: "down"}}, want: transient("503", 0)},
		{name: "internal_error is an error", script: []providerfake.Response{providerfake.SlackError("internal_error")}, want: transient("internal_error", 0)},
		{name: "200 without a Web API body is an error", script: []providerfake.Response{{Body: "<html>proxy</html>"}}, want: transient("200", 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := providerfake.NewSlack(token)
			defer fake.Close()
			fake.ScriptHistory(tt.script...)
			tok := token
			if tt.token != "" {
				tok = tt.token
			}
			got := newAdapter(t, fake.URL, tok).Reconcile(t.Context(), reconcileOf("01X", time.Now()))
			if diff := cmp.Diff(tt.want, got, ignoreReconcileDescription); diff != "" {
				t.Errorf("(-want +got):\n%s\ndescription: %s", diff, got.Description)
			}
			if got.Description == "" || strings.Contains(got.Description, tok) {
				t.Errorf("description %q is empty or leaks the token", got.Description)
			}
			if !strings.Contains(got.Description, tt.wantHint) {
				t.Errorf("description %q does not say what to do (%q)", got.Description, tt.wantHint)
			}
		})
	}
}

func TestReconcileWithoutTokenOrAnswer(t *testing.T) {
	fake := providerfake.NewSlack(token)
	defer fake.Close()
	got := newAdapter(t, fake.URL, "").Reconcile(t.Context(), reconcileOf("01X", time.Now()))
	if got.Answer != pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER || got.ErrorCode != "PLG_008" || len(fake.Requests()) != 0 {
		t.Fatalf("no token: %+v after %d requests, want CANNOT_ANSWER PLG_008 without a call", got, len(fake.Requests()))
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + lis.Addr().String()
	lis.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	got = newAdapter(t, refused, token).Reconcile(ctx, reconcileOf("01X", time.Now()))
	if got.Answer != pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR || got.ErrorCode != "PLG_005" || strings.Contains(got.Description, "SECRET") {
		t.Fatalf("connection refused: %+v, want ERROR PLG_005 without the token", got)
	}
}
