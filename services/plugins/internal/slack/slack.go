// Package slack is the slack channel adapter: it posts each delivery with
// the Web API's chat.postMessage and classifies the answer. Each post
// carries message metadata (event type herald_message, payload
// herald_message_id) so that Reconcile can find it again with
// conversations.history when its outcome is unknown.
//
// The recipient is a channel id ("C0123456789") or a user id for a direct
// message. The adapter does not retry. The token travels only in the
// Authorization header, which no span, log or description records.
package slack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/httpcall"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
)

// DefaultBaseURL is the Web API's address.
const DefaultBaseURL = "https://slack.com"

// Options configures an Adapter.
type Options struct {
	// Token is a bot or user token ("xoxb-..."). Empty is allowed: the
	// adapter then answers every delivery PERMANENT, PLG_008.
	Token string
	// BaseURL is the Web API's address; default DefaultBaseURL. Tests point
	// it at a fake.
	BaseURL string
	// TracerProvider records client spans; nil uses the global one.
	TracerProvider trace.TracerProvider
	// Now is the clock for Retry-After dates; default time.Now.
	Now func() time.Time
}

// Adapter delivers through slack's chat.postMessage. It is safe for
// concurrent use.
type Adapter struct {
	client   *http.Client
	token    string
	endpoint string // chat.postMessage
	history  string // conversations.history
	now      func() time.Time
}

// New returns a slack adapter with its own pooled, traced HTTP client. It
// fails only on an unusable BaseURL. Call Close to release idle
// connections.
func New(opts Options) (*Adapter, error) {
	base := opts.BaseURL
	if base == "" {
		base = DefaultBaseURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("slack base URL %q: want an absolute http or https URL such as %s", base, DefaultBaseURL)
	}
	u.RawPath, u.RawQuery, u.Fragment = "", "", ""
	api := strings.TrimRight(u.Path, "/") + "/api/"
	u.Path = api + "chat.postMessage"
	endpoint := u.String()
	u.Path = api + "conversations.history"
	a := &Adapter{
		client:   httpcall.NewClient(httpcall.ClientOptions{TracerProvider: opts.TracerProvider}),
		token:    strings.TrimSpace(opts.Token),
		endpoint: endpoint,
		history:  u.String(),
		now:      opts.Now,
	}
	if a.now == nil {
		a.now = time.Now
	}
	return a, nil
}

// Name returns "slack".
func (a *Adapter) Name() string { return "slack" }

// Close releases idle connections.
func (a *Adapter) Close() { a.client.CloseIdleConnections() }

// Deliver posts d.Text to the channel d.Recipient, with herald's message id
// in the post's metadata.
//
//   - no token configured: PERMANENT, PLG_008 (no call is made)
//   - empty recipient: PERMANENT, PLG_004
//   - HTTP 200, "ok": true with ts: DELIVERED, provider message id
//     "<channel>:<ts>"; without ts: UNKNOWN, DLV_003
//   - HTTP 200, "ok": false: PLG_001 with ProviderCode = slack's error;
//     ratelimited and service_unavailable are RETRYABLE; internal_error
//     and fatal_error are UNKNOWN (slack documents that part of the
//     operation may have succeeded); any other error (channel_not_found,
//     not_in_channel, is_archived, invalid_auth, ...) is PERMANENT
//   - HTTP 429: RETRYABLE after Retry-After; 5xx: RETRYABLE; any other
//     status: PERMANENT for 4xx, RETRYABLE otherwise
//   - no answer: RETRYABLE, PLG_005 when the request was never sent;
//     UNKNOWN, PLG_006 when it may have been
func (a *Adapter) Deliver(ctx context.Context, d *pluginhost.Delivery) pluginhost.Result {
	if a.token == "" {
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeNotConfigured,
			Description: "slack token not configured: set --slack-token or HERALD_SLACK_TOKEN",
		}
	}
	if strings.TrimSpace(d.Recipient) == "" {
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeInvalidRecipient,
			Description: "recipient is empty: want a slack channel or user id",
		}
	}
	body, err := json.Marshal(request{Channel: d.Recipient, Text: d.Text, Metadata: &metadata{
		EventType:    metadataEventType,
		EventPayload: map[string]string{metadataMessageID: d.MessageID},
	}})
	if err != nil {
		// Strings always marshal; this is unreachable.
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeInvalidRecipient,
			Description: fmt.Sprintf("encode chat.postMessage body: %v", err),
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.endpoint, bytes.NewReader(body))
	if err != nil {
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeNotConfigured,
			Description: "slack base URL cannot be used for a request",
		}
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, mayHaveSent, err := httpcall.Do(a.client, req)
	if err != nil {
		return httpcall.TransportFailure(err, mayHaveSent, "slack chat.postMessage", a.token)
	}
	return a.classify(resp)
}

// chat.postMessage's request and answer, as the Web API documents them.
type (
	request struct {
		Channel  string    `json:"channel"`
		Text     string    `json:"text"`
		Metadata *metadata `json:"metadata,omitempty"`
	}
	answer struct {
		OK      *bool  `json:"ok"`
		Channel string `json:"channel"`
		TS      string `json:"ts"`
		Error   string `json:"error"`
	}
)

// errorOutcomes lists the "ok": false errors that are not PERMANENT.
var errorOutcomes = map[string]pluginsv1.Outcome{
	"ratelimited":         pluginsv1.Outcome_OUTCOME_RETRYABLE,
	"service_unavailable": pluginsv1.Outcome_OUTCOME_RETRYABLE,
	// "It's possible some aspect of the operation succeeded before the
	// error was raised."
	"internal_error": pluginsv1.Outcome_OUTCOME_UNKNOWN,
	"fatal_error":    pluginsv1.Outcome_OUTCOME_UNKNOWN,
}

// classify maps a chat.postMessage answer to an outcome. It is the one
// place that does.
func (a *Adapter) classify(resp *httpcall.Response) pluginhost.Result {
	status := resp.StatusCode
	retryAfter := httpcall.RetryAfter(resp.Header.Get("Retry-After"), a.now())
	if status != http.StatusOK {
		res := pluginhost.Result{
			Outcome:      pluginsv1.Outcome_OUTCOME_RETRYABLE,
			ErrorCode:    pluginhost.CodeProviderRejected,
			ProviderCode: strconv.Itoa(status),
			Description:  "slack answered HTTP " + resp.Status,
			RetryAfter:   retryAfter,
		}
		if status >= 400 && status <= 499 && status != http.StatusTooManyRequests {
			res.Outcome = pluginsv1.Outcome_OUTCOME_PERMANENT
		}
		return res
	}
	var ans answer
	if err := json.Unmarshal(resp.Body, &ans); err != nil || ans.OK == nil {
		// Slack may have posted it; nothing confirms it did.
		return pluginhost.Result{
			Outcome:      pluginsv1.Outcome_OUTCOME_UNKNOWN,
			ErrorCode:    pluginhost.CodeFalseSuccess,
			ProviderCode: strconv.Itoa(status),
			Description:  "slack answered HTTP 200 without a Web API response body",
		}
	}
	if *ans.OK {
		if ans.TS == "" {
			return pluginhost.Result{
				Outcome:     pluginsv1.Outcome_OUTCOME_UNKNOWN,
				ErrorCode:   pluginhost.CodeFalseSuccess,
				Description: "slack answered ok without ts",
			}
		}
		id := ans.TS
		if ans.Channel != "" {
			id = ans.Channel + ":" + ans.TS
		}
		return pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: id}
	}
	code := httpcall.Redact(ans.Error, a.token)
	if code == "" {
		code = "unknown_error"
	}
	outcome, ok := errorOutcomes[code]
	if !ok {
		outcome = pluginsv1.Outcome_OUTCOME_PERMANENT
	}
	res := pluginhost.Result{
		Outcome:      outcome,
		ErrorCode:    pluginhost.CodeProviderRejected,
		ProviderCode: code,
		Description:  "slack chat.postMessage: " + code,
	}
	if outcome == pluginsv1.Outcome_OUTCOME_RETRYABLE {
		res.RetryAfter = retryAfter
	}
	return res
}
