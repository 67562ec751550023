package telegram_test

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
	"github.com/heraldchat/herald/services/plugins/internal/telegram"
)

const token = "123456:SECRET-bot-token"

var ignoreDescription = cmpopts.IgnoreFields(pluginhost.Result{}, "Description")

func newDelivery(recipient string) *pluginhost.Delivery {
	return &pluginhost.Delivery{MessageID: "m1", Channel: "tg", Recipient: recipient, Text: "hello", Attempt: 1}
}

func newAdapter(t *testing.T, base, tok string) *telegram.Adapter {
	t.Helper()
	a, err := telegram.New(telegram.Options{Token: tok, BaseURL: base})
	if err != nil {
		t.Fatalf("telegram.New: %v", err)
	}
	t.Cleanup(a.Close)
	return a
}

// The payloads are the Bot API's documented answers, verbatim.
func TestDeliverClassifiesBotAPIAnswers(t *testing.T) {
	raw := func(status int, body string) providerfake.Response {
		return providerfake.Response{Status: status, Body: body}
	}
	tests := []struct {
		name      string
		token     string // default token
		script    []providerfake.Response
		want      pluginhost.Result
		wantDesc  string   // substring of Description
		wantChats []string // chat_id of each request, in order
	}{
		{
			name:      "ok with message id is delivered",
			script:    []providerfake.Response{raw(200, `{"ok":true,"result":{"message_id":4711,"date":1700000000,"chat":{"id":42,"type":"private"},"text":"hello"}}`)},
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "4711"},
			wantChats: []string{"42"},
		},
		{
			name:      "ok without message id is unknown, not delivered",
			script:    []providerfake.Response{raw(200, `{"ok":true,"result":{}}`)},
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "DLV_003"},
			wantChats: []string{"42"},
		},
		{
			name:      "200 without a Bot API body is unknown",
			script:    []providerfake.Response{raw(200, `<html>proxy</html>`)},
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "DLV_003", ProviderCode: "200"},
			wantChats: []string{"42"},
		},
		{
			name:      "chat not found is permanent",
			script:    []providerfake.Response{raw(400, `{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}`)},
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_001", ProviderCode: "400"},
			wantDesc:  "Bad Request: chat not found",
			wantChats: []string{"42"},
		},
		{
			name:      "bot blocked by the user is permanent",
			script:    []providerfake.Response{raw(403, `{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}`)},
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_001", ProviderCode: "403"},
			wantDesc:  "Forbidden: bot was blocked by the user",
			wantChats: []string{"42"},
		},
		{
			name:      "bot kicked from the group is permanent",
			script:    []providerfake.Response{raw(403, `{"ok":false,"error_code":403,"description":"Forbidden: bot was kicked from the group chat"}`)},
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_001", ProviderCode: "403"},
			wantDesc:  "Forbidden: bot was kicked from the group chat",
			wantChats: []string{"42"},
		},
		{
			name:      "wrong token is permanent",
			token:     "999:WRONG-token",
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_001", ProviderCode: "401"},
			wantDesc:  "Unauthorized",
			wantChats: []string{"42"},
		},
		{
			name:      "too many requests is retryable after retry_after",
			script:    []providerfake.Response{raw(429, `{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 2","parameters":{"retry_after":2}}`)},
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "429", RetryAfter: 2 * time.Second},
			wantDesc:  "Too Many Requests: retry after 2",
			wantChats: []string{"42"},
		},
		{
			name:      "server error is retryable",
			script:    []providerfake.Response{raw(500, `{"ok":false,"error_code":500,"description":"Internal Server Error"}`)},
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "500"},
			wantChats: []string{"42"},
		},
		{
			name:      "bad gateway without a Bot API body is retryable",
			script:    []providerfake.Response{raw(502, `<html>Bad Gateway</html>`)},
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "502"},
			wantChats: []string{"42"},
		},
		{
			name: "migrated chat is re-addressed once and delivered",
			script: []providerfake.Response{
				raw(400, `{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234567890}}`),
				providerfake.TelegramOK(77),
			},
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "77"},
			wantDesc:  "migrated to supergroup -1001234567890",
			wantChats: []string{"42", "-1001234567890"},
		},
		{
			name: "migrated chat takes the new chat's failure",
			script: []providerfake.Response{
				raw(400, `{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234567890}}`),
				raw(403, `{"ok":false,"error_code":403,"description":"Forbidden: bot was kicked from the supergroup chat"}`),
			},
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_001", ProviderCode: "403"},
			wantDesc:  "Forbidden: bot was kicked from the supergroup chat",
			wantChats: []string{"42", "-1001234567890"},
		},
		{
			name: "a second migration is not followed",
			script: []providerfake.Response{
				raw(400, `{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234567890}}`),
				raw(400, `{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1009999999999}}`),
			},
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_001"},
			wantDesc:  "migrated again",
			wantChats: []string{"42", "-1001234567890"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := providerfake.NewTelegram(token, tt.script...)
			defer fake.Close()
			tok := token
			if tt.token != "" {
				tok = tt.token
			}
			got := newAdapter(t, fake.URL, tok).Deliver(t.Context(), newDelivery("42"))
			if diff := cmp.Diff(tt.want, got, ignoreDescription); diff != "" {
				t.Errorf("result (-want +got):\n%s\ndescription: %s", diff, got.Description)
			}
			if !strings.Contains(got.Description, tt.wantDesc) {
				t.Errorf("description %q does not contain %q", got.Description, tt.wantDesc)
			}
			if strings.Contains(got.Description, tok) {
				t.Errorf("description leaks the token: %q", got.Description)
			}
			var chats []string
			for _, r := range fake.Requests() {
				if r.Method != http.MethodPost || r.Path != "/bot"+tok+"/sendMessage" || r.Header.Get("Content-Type") != "application/json" {
					t.Errorf("request %s %s (%s), want POST /bot<token>/sendMessage (application/json)", r.Method, r.Path, r.Header.Get("Content-Type"))
				}
				if r.JSON["text"] != "hello" {
					t.Errorf("text = %v, want hello", r.JSON["text"])
				}
				chat, _ := r.JSON["chat_id"].(string)
				chats = append(chats, chat)
			}
			if diff := cmp.Diff(tt.wantChats, chats); diff != "" {
				t.Errorf("chat ids (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeliverWithoutTokenMakesNoCall(t *testing.T) {
	fake := providerfake.NewTelegram(token)
	defer fake.Close()
	got := newAdapter(t, fake.URL, "").Deliver(t.Context(), newDelivery("42"))
	want := pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_008"}
	if diff := cmp.Diff(want, got, ignoreDescription); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if !strings.Contains(got.Description, "--telegram-token") {
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
			got := newAdapter(t, tt.base, token).Deliver(ctx, newDelivery("42"))
			if diff := cmp.Diff(tt.want, got, ignoreDescription); diff != "" {
				t.Errorf("(-want +got):\n%s\ndescription: %s", diff, got.Description)
			}
			if got.Description == "" || strings.Contains(got.Description, token) || strings.Contains(got.Description, "SECRET") {
				t.Errorf("description %q is empty or leaks the token", got.Description)
			}
		})
	}
}

func TestNewRejectsBadConfiguration(t *testing.T) {
	for _, o := range []telegram.Options{
		{BaseURL: "api.telegram.org"},
		{BaseURL: "ftp://api.telegram.org"},
		{Token: "123/../SECRET"},
	} {
		if _, err := telegram.New(o); err == nil {
			t.Errorf("New(%+v) succeeded, want an error", o)
		} else if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("error %q leaks the token", err)
		}
	}
}

// The Bot API cannot read back sent messages: reconciliation cannot answer,
// and asks nothing of telegram.
func TestReconcileCannotAnswer(t *testing.T) {
	fake := providerfake.NewTelegram(token)
	defer fake.Close()
	a, err := telegram.New(telegram.Options{Token: token, BaseURL: fake.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	got := a.Reconcile(t.Context(), &pluginhost.Delivery{MessageID: "m1", Recipient: "-1001234567890", AttemptStarted: time.Now()})
	if got.Answer != pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER || got.ErrorCode != "PLG_009" || !strings.Contains(got.Description, "telegram=fail") {
		t.Fatalf("got %+v, want CANNOT_ANSWER PLG_009 with a hint", got)
	}
	if n := len(fake.Requests()); n != 0 {
		t.Fatalf("%d requests to telegram, want none", n)
	}
}
