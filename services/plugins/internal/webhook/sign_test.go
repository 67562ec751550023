package webhook_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/webhook"
)

// verify checks a webhook-signature header the way a receiver following the
// Standard Webhooks specification would, written here from the spec and
// not from the adapter: strip "whsec_", base64-decode the key, HMAC-SHA256
// over "id.timestamp.body", compare with each space-separated "v1,<sig>".
func verify(t *testing.T, secret, id, timestamp string, body []byte, header string) bool {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		t.Fatalf("test secret: %v", err)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id))
	mac.Write([]byte("."))
	mac.Write([]byte(timestamp))
	mac.Write([]byte("."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, sig := range strings.Fields(header) {
		version, b64, ok := strings.Cut(sig, ",")
		if !ok || version != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, want) {
			return true
		}
	}
	return false
}

// The specification's published example; it proves verify itself right.
func TestVerifyMatchesSpecExample(t *testing.T) {
	if !verify(t, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330",
		[]byte(`{"test": 2432232314}`), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=") {
		t.Fatal("verify rejects the specification's example")
	}
}

type signedRequest struct {
	id, timestamp, signature string
	body                     []byte
}

func captureServer(t *testing.T) (*httptest.Server, chan signedRequest) {
	t.Helper()
	got := make(chan signedRequest, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- signedRequest{r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), b}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

func TestDeliverSignsPerStandardWebhooks(t *testing.T) {
	const (
		defaultSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
		tenantSecret  = "whsec_dGVuYW50LWtleS1ieXRlcy0wMTIzNDU2Nzg5YWI=" // ends in '='
		deeperSecret  = "whsec_ZGVlcGVyLWtleS1ieXRlcy0wMTIzNDU2Nzg5YWJj" // longer prefix
	)
	srv, requests := captureServer(t)
	now := time.Unix(1700000000, 0)

	tests := []struct {
		name       string
		secret     string // --webhook-secret
		secrets    string // --webhook-secrets
		path       string
		wantSecret string // "" for no signature
	}{
		{name: "no secret: unsigned", path: "/a"},
		{name: "default secret", secret: defaultSecret, path: "/a", wantSecret: defaultSecret},
		{name: "endpoint secret beats default", secret: defaultSecret, secrets: srv.URL + "/tenant=" + tenantSecret,
			path: "/tenant/x", wantSecret: tenantSecret},
		{name: "longest prefix wins", secrets: srv.URL + "/tenant=" + tenantSecret + "," + srv.URL + "/tenant/deep=" + deeperSecret,
			path: "/tenant/deep/x", wantSecret: deeperSecret},
		{name: "shorter prefix for other paths", secrets: srv.URL + "/tenant/deep=" + deeperSecret + "," + srv.URL + "/tenant=" + tenantSecret,
			path: "/tenant/other", wantSecret: tenantSecret},
		{name: "no matching prefix and no default: unsigned", secrets: srv.URL + "/tenant=" + tenantSecret, path: "/elsewhere"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := webhook.Options{Now: func() time.Time { return now }}
			var err error
			if tt.secret != "" {
				if opts.Secret, err = webhook.ParseSecret(tt.secret); err != nil {
					t.Fatalf("ParseSecret: %v", err)
				}
			}
			if opts.Secrets, err = webhook.ParseSecrets(tt.secrets); err != nil {
				t.Fatalf("ParseSecrets: %v", err)
			}
			a := webhook.New(opts)
			defer a.Close()

			res := a.Deliver(t.Context(), newDelivery(srv.URL+tt.path))
			if res.Outcome != pluginsv1.Outcome_OUTCOME_DELIVERED {
				t.Fatalf("outcome %v: %s", res.Outcome, res.Description)
			}
			r := <-requests
			if r.id != "m1" || r.timestamp != strconv.FormatInt(now.Unix(), 10) {
				t.Errorf("webhook-id %q, webhook-timestamp %q; want m1, %d", r.id, r.timestamp, now.Unix())
			}
			if tt.wantSecret == "" {
				if r.signature != "" {
					t.Errorf("webhook-signature %q, want none", r.signature)
				}
				return
			}
			if !strings.HasPrefix(r.signature, "v1,") {
				t.Errorf("webhook-signature %q does not start with v1,", r.signature)
			}
			if !verify(t, tt.wantSecret, r.id, r.timestamp, r.body, r.signature) {
				t.Errorf("webhook-signature %q does not verify with the expected secret", r.signature)
			}
			// Tampering must break it: a receiver relies on that.
			if verify(t, tt.wantSecret, r.id, r.timestamp, append(r.body, ' '), r.signature) {
				t.Errorf("signature verifies a different body")
			}
		})
	}
}

func TestParseSecretsRejectsMalformedWithoutQuotingThem(t *testing.T) {
	tests := []struct {
		name, spec string
	}{
		{"no whsec_ prefix", "https://a.example/=c2VjcmV0LVNFQ1JFVA=="},
		{"not base64", "https://a.example/=whsec_SECRET!!"},
		{"no prefix", "=whsec_c2VjcmV0LVNFQ1JFVA=="},
		{"empty key", "https://a.example/=whsec_"},
		{"duplicate prefix", "https://a.example/=whsec_c2VjcmV0LVNFQ1JFVA==,https://a.example/=whsec_c2VjcmV0LVNFQ1JFVA=="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := webhook.ParseSecrets(tt.spec)
			if err == nil {
				t.Fatal("ParseSecrets succeeded, want an error")
			}
			if strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "c2VjcmV0") {
				t.Errorf("error %q quotes the secret", err)
			}
		})
	}
	got, err := webhook.ParseSecret("whsec_c2VjcmV0LVNFQ1JFVA==")
	if err != nil {
		t.Fatalf("ParseSecret: %v", err)
	}
	if diff := cmp.Diff([]byte("secret-SECRET"), got); diff != "" {
		t.Errorf("decoded key (-want +got):\n%s", diff)
	}
}
