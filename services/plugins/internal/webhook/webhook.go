// Package webhook is the webhook channel adapter: it POSTs each delivery as
// JSON to the recipient URL, signed per the Standard Webhooks specification
// when a secret is configured, and classifies the HTTP exchange.
//
// It does not retry (the queue decides) and does not follow redirects (a
// redirected POST would become a GET to somewhere else, and its 2xx would be
// a false success).
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/httpcall"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
)

// secretPrefix starts every Standard Webhooks secret; base64 of the key
// bytes follows it.
const secretPrefix = "whsec_"

// EndpointSecret is the signing key for every recipient URL that starts
// with Prefix.
type EndpointSecret struct {
	Prefix string
	Key    []byte
}

// Options configures an Adapter.
type Options struct {
	// Secret signs calls to endpoints no EndpointSecret covers. Empty: those
	// calls carry no webhook-signature header.
	Secret []byte
	// Secrets are per-endpoint keys; the longest matching prefix wins.
	Secrets []EndpointSecret
	// Now is the clock for webhook-timestamp and Retry-After dates;
	// default time.Now.
	Now func() time.Time
	// TracerProvider records client spans; nil uses the global one.
	TracerProvider trace.TracerProvider
}

// Adapter delivers over HTTP webhooks. It is safe for concurrent use.
type Adapter struct {
	client  *http.Client
	secret  []byte
	secrets []EndpointSecret // longest prefix first
	now     func() time.Time
}

// New returns a webhook adapter with its own pooled, traced HTTP client.
// Call Close to release idle connections.
func New(opts Options) *Adapter {
	a := &Adapter{
		client:  httpcall.NewClient(httpcall.ClientOptions{TracerProvider: opts.TracerProvider}),
		secret:  opts.Secret,
		secrets: append([]EndpointSecret(nil), opts.Secrets...),
		now:     opts.Now,
	}
	if a.now == nil {
		a.now = time.Now
	}
	// Longest first, so the first match is the longest.
	slices.SortStableFunc(a.secrets, func(x, y EndpointSecret) int { return len(y.Prefix) - len(x.Prefix) })
	return a
}

// Name returns "webhook".
func (a *Adapter) Name() string { return "webhook" }

// Reconcile implements pluginhost.Reconciler: it always answers
// CANNOT_ANSWER, PLG_009. A webhook receiver offers no way to ask what it
// received; it deduplicates by the webhook-id header (the message id)
// instead, which is what the redeliver policy relies on.
func (a *Adapter) Reconcile(context.Context, *pluginhost.Delivery) pluginhost.ReconcileResult {
	return pluginhost.ReconcileResult{
		Answer:      pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER,
		ErrorCode:   pluginhost.CodeCannotReconcile,
		Description: "webhook: a receiver cannot be asked what it received; use --unknown-policy webhook=redeliver (receivers deduplicate by webhook-id)",
	}
}

// Close releases idle connections.
func (a *Adapter) Close() { a.client.CloseIdleConnections() }

// ParseSecret decodes a Standard Webhooks secret: "whsec_" followed by the
// base64 of the key bytes. Its errors never quote the secret.
func ParseSecret(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), secretPrefix)
	if !ok {
		return nil, errors.New(`webhook secret does not start with "whsec_": give "whsec_" followed by the base64 of the key`)
	}
	key, err := base64.StdEncoding.DecodeString(rest)
	if err != nil {
		return nil, errors.New(`webhook secret after "whsec_" is not valid standard base64`)
	}
	if len(key) == 0 {
		return nil, errors.New(`webhook secret has an empty key after "whsec_"`)
	}
	return key, nil
}

// ParseSecrets parses "url-prefix=whsec_...,url-prefix=whsec_..." into
// per-endpoint secrets. Empty spec gives none. Its errors name entries by
// position and never quote a secret or a prefix (which may hold a token).
func ParseSecrets(spec string) ([]EndpointSecret, error) {
	var out []EndpointSecret
	seen := map[string]bool{}
	n := 0
	for entry := range strings.SplitSeq(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		n++
		// base64 may end in '=', so split at the "=whsec_" marker.
		i := strings.Index(entry, "="+secretPrefix)
		if i <= 0 {
			return nil, fmt.Errorf("entry %d: want url-prefix=whsec_<base64 key>", n)
		}
		prefix := strings.TrimSpace(entry[:i])
		key, err := ParseSecret(entry[i+1:])
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", n, err)
		}
		if seen[prefix] {
			return nil, fmt.Errorf("entry %d: its url prefix is listed twice", n)
		}
		seen[prefix] = true
		out = append(out, EndpointSecret{Prefix: prefix, Key: key})
	}
	return out, nil
}

// keyFor returns the signing key for recipient, nil when none applies.
func (a *Adapter) keyFor(recipient string) []byte {
	for _, s := range a.secrets {
		if strings.HasPrefix(recipient, s.Prefix) {
			return s.Key
		}
	}
	if len(a.secret) > 0 {
		return a.secret
	}
	return nil
}

// sign returns the Standard Webhooks signature header value:
// "v1," + base64(HMAC-SHA256(key, id + "." + timestamp + "." + body)).
func sign(key []byte, id, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + timestamp + "."))
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// payload is the JSON body of a webhook call.
type payload struct {
	ID           string            `json:"id"`
	Conversation string            `json:"conversation"`
	Sequence     uint64            `json:"sequence"`
	Text         string            `json:"text"`
	Metadata     map[string]string `json:"metadata"`
	Attempt      uint32            `json:"attempt"`
}

// Deliver POSTs d to d.Recipient with headers webhook-id (the message id)
// and webhook-timestamp (unix seconds), and webhook-signature when a secret
// covers the recipient.
//
//   - recipient not an absolute http/https URL: PERMANENT, PLG_004
//   - 2xx: DELIVERED; provider message id from X-Message-Id, else
//     "webhook:<message id>:<status>"
//   - any other status: PLG_001, see classifyResponse
//   - failure before a connection was obtained (DNS, connection refused,
//     cancelled while connecting): RETRYABLE, PLG_005
//   - failure after (timeout, reset, cancellation while waiting for the
//     answer): UNKNOWN, PLG_006, since the provider may have received it
func (a *Adapter) Deliver(ctx context.Context, d *pluginhost.Delivery) pluginhost.Result {
	u, err := url.Parse(d.Recipient)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The recipient may embed a token: do not echo it.
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeInvalidRecipient,
			Description: "recipient is not an absolute http or https URL",
		}
	}

	md := d.Metadata
	if md == nil {
		md = map[string]string{}
	}
	body, err := json.Marshal(payload{
		ID: d.MessageID, Conversation: d.Conversation, Sequence: d.Sequence,
		Text: d.Text, Metadata: md, Attempt: d.Attempt,
	})
	if err != nil {
		// Strings and integers always marshal; this is unreachable.
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeInvalidRecipient,
			Description: fmt.Sprintf("encode webhook body: %v", err),
		}
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeInvalidRecipient,
			Description: "recipient URL cannot be used for a request",
		}
	}
	ts := strconv.FormatInt(a.now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("webhook-id", d.MessageID)
	req.Header.Set("webhook-timestamp", ts)
	if key := a.keyFor(d.Recipient); key != nil {
		req.Header.Set("webhook-signature", sign(key, d.MessageID, ts, body))
	}

	resp, mayHaveSent, err := httpcall.Do(a.client, req)
	if err != nil {
		return httpcall.TransportFailure(err, mayHaveSent, "webhook")
	}
	return classifyResponse(d.MessageID, resp.Response, a.now())
}

// classifyResponse classifies an HTTP answer. It is the one place that maps
// endpoint statuses to outcomes: 2xx is DELIVERED; 408, 429 and 5xx are
// RETRYABLE (after Retry-After, if given); any other 4xx is PERMANENT; the
// rest (3xx, which is not followed, and 1xx) is RETRYABLE.
func classifyResponse(messageID string, resp *http.Response, now time.Time) pluginhost.Result {
	code := strconv.Itoa(resp.StatusCode)
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		id := resp.Header.Get("X-Message-Id")
		if id == "" {
			id = "webhook:" + messageID + ":" + code
		}
		return pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: id}
	}
	res := pluginhost.Result{
		Outcome:      pluginsv1.Outcome_OUTCOME_RETRYABLE,
		ErrorCode:    pluginhost.CodeProviderRejected,
		ProviderCode: code,
		Description:  "webhook answered HTTP " + resp.Status,
		RetryAfter:   httpcall.RetryAfter(resp.Header.Get("Retry-After"), now),
	}
	switch s := resp.StatusCode; {
	case s == http.StatusRequestTimeout, s == http.StatusTooManyRequests, s >= 500:
	case s >= 400:
		res.Outcome = pluginsv1.Outcome_OUTCOME_PERMANENT
		res.RetryAfter = 0
	}
	return res
}
