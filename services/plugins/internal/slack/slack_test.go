package slack_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
	"github.com/heraldchat/herald/services/plugins/internal/providerfake"
	"github.com/heraldchat/herald/services/plugins/internal/slack"
)

const token = "xoxb-SECRET-slack-token"

var ignoreDescription = cmpopts.IgnoreFields(pluginhost.Result{}, "Description")

func newDelivery(recipient string) *pluginhost.Delivery {
	return &pluginhost.Delivery{MessageID: "m1", Channel: "sl", Recipient: recipient, Text: "hello", Attempt: 1}
}

func newAdapter(t *testing.T, base, tok string) *slack.Adapter {
	t.Helper()
	a, err := slack.New(slack.Options{Token: tok, BaseURL: base})
	if err != nil {
		t.Fatalf("slack.New: %v", err)
	}
	t.Cleanup(a.Close)
	return a
}

func TestDeliverClassifiesWebAPIAnswers(t *testing.T) {
	raw := func(status int, body string) providerfake.Response {
		return providerfake.Response{Status: status, Body: body}
	}
	permanent := func(code string) pluginhost.Result {
		return pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_001", ProviderCode: code}
	}
	tests := []struct {
		name   string
		token  string // default token
		script []providerfake.Response
		want   pluginhost.Result
	}{
		{
			name:   "ok with ts is delivered",
			script: []providerfake.Response{raw(200, `{"ok":true,"channel":"C0123456789","ts":"1503435956.000247","message":{"text":"hello","type":"message","ts":"1503435956.000247"}}`)},
			want:   pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "C0123456789:1503435956.000247"},
		},
		{
			name:   "ok without ts is unknown, not delivered",
			script: []providerfake.Response{raw(200, `{"ok":true,"channel":"C0123456789"}`)},
			want:   pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "DLV_003"},
		},
		{
			name:   "200 without a Web API body is unknown",
			script: []providerfake.Response{raw(200, `<html>proxy</html>`)},
			want:   pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "DLV_003", ProviderCode: "200"},
		},
		{name: "channel_not_found is permanent", script: []providerfake.Response{raw(200, `{"ok":false,"error":"channel_not_found"}`)}, want: permanent("channel_not_found")},
		{name: "not_in_channel is permanent", script: []providerfake.Response{providerfake.SlackError("not_in_channel")}, want: permanent("not_in_channel")},
		{name: "is_archived is permanent", script: []providerfake.Response{providerfake.SlackError("is_archived")}, want: permanent("is_archived")},
		{name: "account_inactive is permanent", script: []providerfake.Response{providerfake.SlackError("account_inactive")}, want: permanent("account_inactive")},
		{name: "token_revoked is permanent", script: []providerfake.Response{providerfake.SlackError("token_revoked")}, want: permanent("token_revoked")},
		{name: "msg_too_long is permanent", script: []providerfake.Response{providerfake.SlackError("msg_too_long")}, want: permanent("msg_too_long")},
		{name: "no_text is permanent", script: []providerfake.Response{providerfake.SlackError("no_text")}, want: permanent("no_text")},
		{name: "an unlisted error is permanent", script: []providerfake.Response{providerfake.SlackError("restricted_action")}, want: permanent("restricted_action")},
		{name: "wrong token is invalid_auth, permanent", token: "xoxb-WRONG", want: permanent("invalid_auth")},
		{
			name:   "ratelimited is retryable",
			script: []providerfake.Response{{Body: `{"ok":false,"error":"ratelimited"}`, Header: map[string]string{"Retry-After": "3"}}},
			want:   pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "ratelimited", RetryAfter: 3 * time.Second},
		},
		{
			name:   "HTTP 429 is retryable after Retry-After",
			script: []providerfake.Response{{Status: 429, Body: `{"ok":false,"error":"ratelimited"}`, Header: map[string]string{"Retry-After": "30"}}},
			want:   pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "429", RetryAfter: 30 * time.Second},
		},
		{
			name:   "5xx is retryable",
			script: []providerfake.Response{raw(503, `upstream unavailable`)},
			want:   pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "503"},
		},
		{
			name:   "fatal_error may have posted: unknown",
			script: []providerfake.Response{providerfake.SlackError("fatal_error")},
			want:   pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "PLG_001", ProviderCode: "fatal_error"},
		},
		{
			name:   "other 4xx is permanent",
			script: []providerfake.Response{raw(404, `not found`)},
			want:   permanent("404"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := providerfake.NewSlack(token, tt.script...)
			defer fake.Close()
			tok := token
			if tt.token != "" {
				tok = tt.token
			}
			got := newAdapter(t, fake.URL, tok).Deliver(t.Context(), newDelivery("C0123456789"))
			if diff := cmp.Diff(tt.want, got, ignoreDescription); diff != "" {
				t.Errorf("result (-want +got):\n%s\ndescription: %s", diff, got.Description)
			}
			if got.Outcome != pluginsv1.Outcome_OUTCOME_DELIVERED && got.Description == "" {
				t.Errorf("failure without a description")
			}
			if strings.Contains(got.Description, tok) {
				t.Errorf("description leaks the token: %q", got.Description)
			}
			reqs := fake.Requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.Method != http.MethodPost || r.Path != "/api/chat.postMessage" || r.Header.Get("Authorization") != "Bearer "+tok {
				t.Errorf("request %s %s, auth ok=%v; want POST /api/chat.postMessage with the bearer token",
					r.Method, r.Path, r.Header.Get("Authorization") == "Bearer "+tok)
			}
			// The metadata is what Reconcile finds the post by.
			wantBody := map[string]any{"channel": "C0123456789", "text": "hello", "metadata": map[string]any{
				"event_type": "herald_message", "event_payload": map[string]any{"herald_message_id": "m1"},
			}}
			if diff := cmp.Diff(wantBody, r.JSON); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeliverWithoutTokenMakesNoCall(t *testing.T) {
	fake := providerfake.NewSlack(token)
	defer fake.Close()
	got := newAdapter(t, fake.URL, "").Deliver(t.Context(), newDelivery("C0123456789"))
	want := pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_008"}
	if diff := cmp.Diff(want, got, ignoreDescription); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if !strings.Contains(got.Description, "--slack-token") {
		t.Errorf("description %q does not say how to fix it", got.Description)
	}
	if n := len(fake.Requests()); n != 0 {
		t.Errorf("%d requests, want none", n)
	}
}

func TestDeliverClassifiesTransportFailures(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + lis.Addr().String()
	lis.Close()
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The server notices the client leaving only once the body is read.
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}))
	defer hang.Close()

	tests := []struct {
		name    string
		base    string
		timeout time.Duration
		want    pluginhost.Result
	}{
		{"connection refused is retryable, not sent", refused, 5 * time.Second,
			pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_005"}},
		{"timeout after send is unknown", hang.URL, 200 * time.Millisecond,
			pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "PLG_006"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), tt.timeout)
			defer cancel()
			got := newAdapter(t, tt.base, token).Deliver(ctx, newDelivery("C0123456789"))
			if diff := cmp.Diff(tt.want, got, ignoreDescription); diff != "" {
				t.Errorf("(-want +got):\n%s\ndescription: %s", diff, got.Description)
			}
			if got.Description == "" || strings.Contains(got.Description, "SECRET") {
				t.Errorf("description %q is empty or leaks the token", got.Description)
			}
		})
	}
}
