// Package webhook is the webhook channel adapter: it POSTs each delivery as
// JSON to the recipient URL and classifies the HTTP exchange.
//
// It does not retry (the queue decides) and does not follow redirects (a
// redirected POST would become a GET to somewhere else, and its 2xx would be
// a false success).
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
)

// maxDrainBytes bounds how much of a response body is read to let the
// connection be reused; a longer body costs a new connection instead.
const maxDrainBytes = 64 << 10

// Adapter delivers over HTTP webhooks. It is safe for concurrent use.
type Adapter struct {
	client *http.Client
}

// New returns a webhook adapter with its own pooled, traced HTTP client.
// Call Close to release idle connections.
func New() *Adapter {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 256
	tr.MaxIdleConnsPerHost = 64
	return &Adapter{client: &http.Client{
		Transport: otelhttp.NewTransport(tr),
		// No client timeout: each call is bounded by its delivery's context.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// Name returns "webhook".
func (a *Adapter) Name() string { return "webhook" }

// Close releases idle connections.
func (a *Adapter) Close() { a.client.CloseIdleConnections() }

// payload is the JSON body of a webhook call.
type payload struct {
	ID           string            `json:"id"`
	Conversation string            `json:"conversation"`
	Sequence     uint64            `json:"sequence"`
	Text         string            `json:"text"`
	Metadata     map[string]string `json:"metadata"`
	Attempt      uint32            `json:"attempt"`
}

// Deliver POSTs d to d.Recipient with header webhook-id: <message id>.
//
//   - recipient not an absolute http/https URL: PERMANENT, PLG_004
//   - 2xx: DELIVERED; provider message id from X-Message-Id, else
//     "webhook:<message id>:<status>"
//   - any other status: see classifyResponse
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

	// Once the transport holds a connection for this request, bytes may
	// reach the provider; before that, nothing can have.
	var mayHaveSent atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { mayHaveSent.Store(true) },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   pluginhost.CodeInvalidRecipient,
			Description: "recipient URL cannot be used for a request",
		}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("webhook-id", d.MessageID)

	resp, err := a.client.Do(req)
	if err != nil {
		return classifyTransportError(err, mayHaveSent.Load())
	}
	defer func() {
		// Drain so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrainBytes))
		_ = resp.Body.Close()
	}()
	return classifyResponse(d.MessageID, resp)
}

// classifyResponse classifies an HTTP answer. It is the one place that maps
// provider statuses to outcomes.
func classifyResponse(messageID string, resp *http.Response) pluginhost.Result {
	code := strconv.Itoa(resp.StatusCode)
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		id := resp.Header.Get("X-Message-Id")
		if id == "" {
			id = "webhook:" + messageID + ":" + code
		}
		return pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: id}
	}
	return pluginhost.Result{
		Outcome:      pluginsv1.Outcome_OUTCOME_RETRYABLE,
		ErrorCode:    pluginhost.CodeProviderRejected,
		ProviderCode: code,
		Description:  "webhook answered HTTP " + resp.Status,
		RetryAfter:   retryAfter(resp.Header.Get("Retry-After"), time.Now()),
	}
}

// classifyTransportError classifies a request that got no HTTP answer.
// The description names the failure without the URL, which may hold a
// token.
func classifyTransportError(err error, mayHaveSent bool) pluginhost.Result {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err // url.Error's text includes the full URL
	}
	if !mayHaveSent {
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_RETRYABLE,
			ErrorCode:   pluginhost.CodeNotSent,
			Description: "webhook request not sent: " + describe(err),
		}
	}
	return pluginhost.Result{
		Outcome:     pluginsv1.Outcome_OUTCOME_UNKNOWN,
		ErrorCode:   pluginhost.CodeNoAnswer,
		Description: "webhook request may have been received, no answer: " + describe(err),
	}
}

func describe(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline exceeded"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		return "timeout"
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		// dnsErr names only the host, not the path or query.
		return dnsErr.Error()
	}
	return err.Error()
}

// retryAfter parses a Retry-After header (seconds or an HTTP date); 0 when
// absent or invalid.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
