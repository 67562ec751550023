package webhook_test

import (
	"context"
	"encoding/json"
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
	"github.com/heraldchat/herald/services/plugins/internal/webhook"
)

// secretPath stands for a token embedded in a webhook URL; it must never
// appear in a result.
const secretPath = "/hook/SECRET-TOKEN"

func newDelivery(recipient string) *pluginhost.Delivery {
	return &pluginhost.Delivery{
		MessageID: "m1", Channel: "webhook", Recipient: recipient, Conversation: "c1",
		Text: "hello", Sequence: 42, Attempt: 2, Metadata: map[string]string{"k": "v"},
	}
}

var ignoreDescription = cmpopts.IgnoreFields(pluginhost.Result{}, "Description")

func TestDeliverClassifiesHTTPAnswers(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    pluginhost.Result
	}{
		{
			name: "2xx with provider id",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Message-Id", "prov-77")
				w.WriteHeader(http.StatusOK)
			},
			want: pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "prov-77"},
		},
		{
			name:    "2xx without provider id",
			handler: func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) },
			want:    pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "webhook:m1:204"},
		},
		{
			name: "4xx is permanent",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "bad", http.StatusBadRequest)
			},
			want: pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_001", ProviderCode: "400"},
		},
		{
			name:    "410 gone is permanent",
			handler: func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusGone) },
			want:    pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_001", ProviderCode: "410"},
		},
		{
			name:    "408 request timeout is retryable",
			handler: func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusRequestTimeout) },
			want:    pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "408"},
		},
		{
			name: "429 is retryable after Retry-After",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "12")
				w.WriteHeader(http.StatusTooManyRequests)
			},
			want: pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "429", RetryAfter: 12 * time.Second},
		},
		{
			name: "5xx with retry-after",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "7")
				w.WriteHeader(http.StatusServiceUnavailable)
			},
			want: pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "503", RetryAfter: 7 * time.Second},
		},
		{
			name: "redirect is not followed",
			handler: func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/elsewhere" {
					w.WriteHeader(http.StatusOK)
					return
				}
				http.Redirect(w, r, "/elsewhere", http.StatusFound)
			},
			want: pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "302"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type seen struct {
				method, webhookID, contentType string
				body                           map[string]any
			}
			requests := make(chan seen, 4)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var body map[string]any
				b, _ := io.ReadAll(r.Body)
				_ = json.Unmarshal(b, &body)
				requests <- seen{r.Method, r.Header.Get("webhook-id"), r.Header.Get("Content-Type"), body}
				tt.handler(w, r)
			}))
			defer srv.Close()
			a := webhook.New(webhook.Options{})
			defer a.Close()

			got := a.Deliver(t.Context(), newDelivery(srv.URL+secretPath))
			if diff := cmp.Diff(tt.want, got, ignoreDescription); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			if strings.Contains(got.Description, "SECRET-TOKEN") {
				t.Errorf("description leaks the URL: %q", got.Description)
			}

			r := <-requests
			wantBody := map[string]any{
				"id": "m1", "conversation": "c1", "sequence": float64(42), "text": "hello",
				"metadata": map[string]any{"k": "v"}, "attempt": float64(2),
			}
			if r.method != http.MethodPost || r.webhookID != "m1" || r.contentType != "application/json" {
				t.Errorf("request = %s webhook-id=%q content-type=%q, want POST m1 application/json", r.method, r.webhookID, r.contentType)
			}
			if diff := cmp.Diff(wantBody, r.body); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
			if len(requests) != 0 {
				t.Errorf("%d extra requests (redirect followed?)", len(requests))
			}
		})
	}
}

func TestDeliverClassifiesTransportFailures(t *testing.T) {
	// A port with nothing listening: take one, then free it.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedURL := "http://" + lis.Addr().String() + secretPath
	lis.Close()

	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done() // never answer; the client gives up
	}))
	defer hang.Close()

	reset := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST instead of FIN
		}
		conn.Close()
	}))
	defer reset.Close()

	tests := []struct {
		name      string
		recipient string
		timeout   time.Duration
		want      pluginhost.Result
	}{
		{
			name:      "connection refused is retryable, not sent",
			recipient: refusedURL,
			timeout:   5 * time.Second,
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_005"},
		},
		{
			name:      "timeout after send is unknown",
			recipient: hang.URL + secretPath,
			timeout:   200 * time.Millisecond,
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "PLG_006"},
		},
		{
			name:      "reset after send is unknown",
			recipient: reset.URL + secretPath,
			timeout:   5 * time.Second,
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "PLG_006"},
		},
		{
			name:      "deadline already passed is not sent",
			recipient: hang.URL + secretPath,
			timeout:   -time.Second,
			want:      pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_005"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := webhook.New(webhook.Options{})
			defer a.Close()
			ctx, cancel := context.WithTimeout(t.Context(), tt.timeout)
			defer cancel()
			got := a.Deliver(ctx, newDelivery(tt.recipient))
			if diff := cmp.Diff(tt.want, got, ignoreDescription); diff != "" {
				t.Errorf("result (-want +got):\n%s\ndescription: %s", diff, got.Description)
			}
			if got.Description == "" || strings.Contains(got.Description, "SECRET-TOKEN") {
				t.Errorf("description %q is empty or leaks the URL", got.Description)
			}
		})
	}
}

func TestDeliverRejectsInvalidRecipients(t *testing.T) {
	for _, recipient := range []string{"", "not a url", "ftp://example.com/x", "mailto:a@b.c", "http://", "/relative/path"} {
		t.Run(recipient, func(t *testing.T) {
			got := webhook.New(webhook.Options{}).Deliver(t.Context(), newDelivery(recipient))
			want := pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_004"}
			if diff := cmp.Diff(want, got, ignoreDescription); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeliverReusesConnections(t *testing.T) {
	conns := make(chan struct{}, 100)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("x", 1000))) // a body that must be drained
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns <- struct{}{}
		}
	}
	srv.Start()
	defer srv.Close()
	a := webhook.New(webhook.Options{})
	defer a.Close()
	for range 5 {
		if got := a.Deliver(t.Context(), newDelivery(srv.URL)); got.Outcome != pluginsv1.Outcome_OUTCOME_DELIVERED {
			t.Fatalf("outcome %v: %s", got.Outcome, got.Description)
		}
	}
	if n := len(conns); n != 1 {
		t.Errorf("%d connections for 5 sequential calls, want 1", n)
	}
}

// A webhook receiver cannot be asked what it received: reconciliation
// cannot answer, and makes no request (the webhook channel's policy is
// redeliver: receivers deduplicate by webhook-id).
func TestReconcileCannotAnswer(t *testing.T) {
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { requests++ }))
	defer srv.Close()
	a := webhook.New(webhook.Options{})
	defer a.Close()
	got := a.Reconcile(t.Context(), &pluginhost.Delivery{MessageID: "m1", Recipient: srv.URL, AttemptStarted: time.Now()})
	if got.Answer != pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER || got.ErrorCode != "PLG_009" || !strings.Contains(got.Description, "webhook=redeliver") {
		t.Fatalf("got %+v, want CANNOT_ANSWER PLG_009 with a hint", got)
	}
	if requests != 0 {
		t.Fatalf("%d requests to the receiver, want none", requests)
	}
}
