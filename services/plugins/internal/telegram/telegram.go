// Package telegram is the telegram channel adapter: it sends each delivery
// with the Bot API's sendMessage and classifies the answer.
//
// The recipient is a chat id ("-1001234567890") or a channel username
// ("@news"). The adapter does not retry, except once when telegram answers
// that the chat migrated to a supergroup: the same message then goes to the
// new chat id and that call's outcome is the answer.
//
// The bot token is part of every request's path. It is inserted below the
// tracing layer, so spans, *url.Error texts and descriptions only ever see
// "/botREDACTED/": it never reaches a log, a trace or a caller.
package telegram

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

// DefaultBaseURL is the Bot API's address.
const DefaultBaseURL = "https://api.telegram.org"

// redacted stands for the token in every URL above the transport.
const redacted = "REDACTED"

// Options configures an Adapter.
type Options struct {
	// Token is the bot token ("123456:ABC-DEF..."). Empty is allowed: the
	// adapter then answers every delivery PERMANENT, PLG_008.
	Token string
	// BaseURL is the Bot API's address; default DefaultBaseURL. Tests point
	// it at a fake.
	BaseURL string
	// TracerProvider records client spans; nil uses the global one.
	TracerProvider trace.TracerProvider
	// Now is the clock for Retry-After dates; default time.Now.
	Now func() time.Time
}

// Adapter delivers through the telegram Bot API. It is safe for concurrent
// use.
type Adapter struct {
	client *http.Client
	token  string
	// endpoint is the sendMessage URL with the token replaced by redacted.
	endpoint string
	now      func() time.Time
}

// New returns a telegram adapter with its own pooled, traced HTTP client.
// It fails only on an unusable BaseURL or a token that cannot be a path
// segment. Call Close to release idle connections.
func New(opts Options) (*Adapter, error) {
	base := opts.BaseURL
	if base == "" {
		base = DefaultBaseURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("telegram base URL %q: want an absolute http or https URL such as %s", base, DefaultBaseURL)
	}
	token := strings.TrimSpace(opts.Token)
	if strings.ContainsAny(token, "/?#% ") {
		// Say nothing about the token's value.
		return nil, errors.New("telegram bot token contains '/', '?', '#', '%' or a space: give the token exactly as BotFather issued it")
	}
	u.Path = strings.TrimRight(u.Path, "/") + "/bot" + redacted + "/sendMessage"
	u.RawPath, u.RawQuery, u.Fragment = "", "", ""
	a := &Adapter{token: token, endpoint: u.String(), now: opts.Now}
	if a.now == nil {
		a.now = time.Now
	}
	a.client = httpcall.NewClient(httpcall.ClientOptions{
		TracerProvider: opts.TracerProvider,
		Wrap: func(next http.RoundTripper) http.RoundTripper {
			return tokenTransport{next: next, token: token}
		},
	})
	return a, nil
}

// Name returns "telegram".
func (a *Adapter) Name() string { return "telegram" }

// Reconcile implements pluginhost.Reconciler: it always answers
// CANNOT_ANSWER, PLG_009. The Bot API has no way for a bot to read back the
// messages it sent to a chat, so nothing can tell whether a sendMessage
// whose answer was lost reached the chat; the telegram channel's
// unknown-outcome policy should be fail.
func (a *Adapter) Reconcile(context.Context, *pluginhost.Delivery) pluginhost.ReconcileResult {
	return pluginhost.ReconcileResult{
		Answer:      pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER,
		ErrorCode:   pluginhost.CodeCannotReconcile,
		Description: "telegram: the Bot API cannot read back sent messages, so it cannot tell whether this one arrived; use --unknown-policy telegram=fail",
	}
}

// Close releases idle connections.
func (a *Adapter) Close() { a.client.CloseIdleConnections() }

// Deliver sends d.Text to the chat d.Recipient.
//
//   - no bot token configured: PERMANENT, PLG_008 (no call is made)
//   - empty recipient: PERMANENT, PLG_004
//   - "ok": true with result.message_id: DELIVERED, provider message id
//     "<message_id>"; without one: UNKNOWN, DLV_003
//   - "ok": false: PLG_001 with ProviderCode = error_code and Description
//     = telegram's description; 429 is RETRYABLE after
//     parameters.retry_after, 5xx is RETRYABLE, any other 4xx (chat not
//     found, bot blocked or kicked, unauthorized) is PERMANENT
//   - parameters.migrate_to_chat_id: the call is repeated once to the new
//     chat id; its outcome is the answer, and the description says the chat
//     migrated and to which id
//   - no answer: RETRYABLE, PLG_005 when the request was never sent;
//     UNKNOWN, PLG_006 when it may have been
func (a *Adapter) Deliver(ctx context.Context, d *pluginhost.Delivery) pluginhost.Result {
	if a.token == "" {
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeNotConfigured,
			Description: "telegram bot token not configured: set --telegram-token or HERALD_TELEGRAM_TOKEN",
		}
	}
	if strings.TrimSpace(d.Recipient) == "" {
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeInvalidRecipient,
			Description: "recipient is empty: want a telegram chat id or @channelusername",
		}
	}
	res, migratedTo := a.send(ctx, d.Recipient, d.Text)
	if migratedTo == "" {
		return res
	}
	res, again := a.send(ctx, migratedTo, d.Text)
	note := "chat migrated to supergroup " + migratedTo + " (update the recipient)"
	if again != "" {
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeProviderRejected,
			Description: note + "; the new chat migrated again, to " + again + "; not following a second time",
		}
	}
	if res.Description == "" {
		res.Description = note
	} else {
		res.Description = note + "; " + res.Description
	}
	return res
}

// sendMessage's request and answer, as the Bot API documents them.
type (
	request struct {
		ChatID string `json:"chat_id"`
		Text   string `json:"text"`
	}
	answer struct {
		OK     *bool `json:"ok"`
		Result *struct {
			MessageID *int64 `json:"message_id"`
		} `json:"result"`
		ErrorCode   int    `json:"error_code"`
		Description string `json:"description"`
		Parameters  *struct {
			RetryAfter      int   `json:"retry_after"`
			MigrateToChatID int64 `json:"migrate_to_chat_id"`
		} `json:"parameters"`
	}
)

// send makes one sendMessage call. When telegram answers that the chat
// migrated, it returns the new chat id and a zero Result.
func (a *Adapter) send(ctx context.Context, chatID, text string) (pluginhost.Result, string) {
	body, err := json.Marshal(request{ChatID: chatID, Text: text})
	if err != nil {
		// Strings always marshal; this is unreachable.
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeInvalidRecipient,
			Description: fmt.Sprintf("encode sendMessage body: %v", err),
		}, ""
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.endpoint, bytes.NewReader(body))
	if err != nil {
		// endpoint was validated in New; the text is token-free.
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeNotConfigured,
			Description: "telegram base URL cannot be used for a request: " + httpcall.Redact(err.Error(), a.token),
		}, ""
	}
	req.Header.Set("Content-Type", "application/json")
	resp, mayHaveSent, err := httpcall.Do(a.client, req)
	if err != nil {
		return httpcall.TransportFailure(err, mayHaveSent, "telegram sendMessage", a.token), ""
	}
	return a.classify(resp)
}

// classify maps a sendMessage answer to an outcome. It is the one place
// that does.
func (a *Adapter) classify(resp *httpcall.Response) (pluginhost.Result, string) {
	var ans answer
	if err := json.Unmarshal(resp.Body, &ans); err != nil || ans.OK == nil {
		return a.classifyStatus(resp), ""
	}
	if *ans.OK {
		if ans.Result == nil || ans.Result.MessageID == nil {
			return pluginhost.Result{
				Outcome:     pluginsv1.Outcome_OUTCOME_UNKNOWN,
				ErrorCode:   pluginhost.CodeFalseSuccess,
				Description: "telegram answered ok without result.message_id",
			}, ""
		}
		return pluginhost.Result{
			Outcome:           pluginsv1.Outcome_OUTCOME_DELIVERED,
			ProviderMessageID: strconv.FormatInt(*ans.Result.MessageID, 10),
		}, ""
	}
	if p := ans.Parameters; p != nil && p.MigrateToChatID != 0 {
		return pluginhost.Result{}, strconv.FormatInt(p.MigrateToChatID, 10)
	}
	code := ans.ErrorCode
	if code == 0 {
		code = resp.StatusCode
	}
	res := pluginhost.Result{
		Outcome:      outcomeFor(code),
		ErrorCode:    pluginhost.CodeProviderRejected,
		ProviderCode: strconv.Itoa(code),
		Description:  httpcall.Redact(ans.Description, a.token),
	}
	if res.Description == "" {
		res.Description = "telegram answered ok:false with error_code " + res.ProviderCode
	}
	if code == http.StatusTooManyRequests {
		if p := ans.Parameters; p != nil && p.RetryAfter > 0 {
			res.RetryAfter = time.Duration(p.RetryAfter) * time.Second
		} else {
			res.RetryAfter = httpcall.RetryAfter(resp.Header.Get("Retry-After"), a.now())
		}
	}
	return res, ""
}

// classifyStatus classifies an answer whose body is not a Bot API
// response (a proxy's error page, a truncated body).
func (a *Adapter) classifyStatus(resp *httpcall.Response) pluginhost.Result {
	code := resp.StatusCode
	if code >= 200 && code <= 299 {
		// Telegram may have sent the message; nothing confirms it did.
		return pluginhost.Result{
			Outcome:      pluginsv1.Outcome_OUTCOME_UNKNOWN,
			ErrorCode:    pluginhost.CodeFalseSuccess,
			ProviderCode: strconv.Itoa(code),
			Description:  "telegram answered HTTP " + resp.Status + " without a Bot API response body",
		}
	}
	return pluginhost.Result{
		Outcome:      outcomeFor(code),
		ErrorCode:    pluginhost.CodeProviderRejected,
		ProviderCode: strconv.Itoa(code),
		Description:  "telegram answered HTTP " + resp.Status + " without a Bot API response body",
		RetryAfter:   httpcall.RetryAfter(resp.Header.Get("Retry-After"), a.now()),
	}
}

// outcomeFor maps a failed call's error code: 429 and 5xx can succeed
// later; any other 4xx (bad chat, blocked, kicked, bad token) cannot; the
// rest (a redirect, an unexpected status) is treated as transient.
func outcomeFor(code int) pluginsv1.Outcome {
	switch {
	case code == http.StatusTooManyRequests, code >= 500:
		return pluginsv1.Outcome_OUTCOME_RETRYABLE
	case code >= 400:
		return pluginsv1.Outcome_OUTCOME_PERMANENT
	default:
		return pluginsv1.Outcome_OUTCOME_RETRYABLE
	}
}

// tokenTransport puts the bot token into the request path. It sits under
// otelhttp, so the span and the client's errors see only the redacted URL.
type tokenTransport struct {
	next  http.RoundTripper
	token string
}

func (t tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r2 := r.Clone(r.Context()) // a RoundTripper must not modify its request
	r2.URL.Path = strings.Replace(r.URL.Path, "/bot"+redacted+"/", "/bot"+t.token+"/", 1)
	r2.URL.RawPath = ""
	resp, err := t.next.RoundTrip(r2)
	if resp != nil {
		resp.Request = r // keep the token-bearing request out of callers' reach
	}
	if err != nil && t.token != "" && strings.Contains(err.Error(), t.token) {
		// No transport error is known to quote the path; if one ever does,
		// its identity is worth less than the token.
		return resp, errors.New(httpcall.Redact(err.Error(), t.token))
	}
	return resp, err
}
