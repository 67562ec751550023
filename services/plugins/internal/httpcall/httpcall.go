// Package httpcall is the HTTP exchange the HTTP-based adapters (webhook,
// telegram, slack) share: a pooled, traced client that follows no
// redirects, a call that tells "never sent" from "maybe sent", and the
// classification of a call that got no HTTP answer.
//
// It knows no provider and maps no status code to an outcome; each adapter
// classifies its provider's answers itself.
package httpcall

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/trace"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
)

// maxBodyBytes bounds how much of a response body Do reads, both to parse
// it and to let the connection be reused.
const maxBodyBytes = 64 << 10

// ClientOptions configures NewClient.
type ClientOptions struct {
	// TracerProvider records the client spans; nil uses the global one.
	TracerProvider trace.TracerProvider
	// Wrap, when set, wraps the pooled transport under the tracing layer:
	// it sees the request after its span is recorded. The telegram adapter
	// uses it to put its token into the URL where no span or error shows it.
	Wrap func(http.RoundTripper) http.RoundTripper
}

// NewClient returns a pooled HTTP client traced with otelhttp that does not
// follow redirects (a redirected POST becomes a GET elsewhere, and its 2xx
// would be a false success) and has no timeout of its own: each call is
// bounded by its delivery's context. Call CloseIdleConnections to release
// it.
func NewClient(opts ClientOptions) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 256
	tr.MaxIdleConnsPerHost = 64
	var base http.RoundTripper = tr
	if opts.Wrap != nil {
		base = opts.Wrap(tr)
	}
	var otelOpts []otelhttp.Option
	if opts.TracerProvider != nil {
		otelOpts = append(otelOpts, otelhttp.WithTracerProvider(opts.TracerProvider))
	}
	return &http.Client{
		Transport:     otelhttp.NewTransport(base, otelOpts...),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Response is a provider's HTTP answer with its body read (up to 64 KiB).
type Response struct {
	*http.Response
	Body []byte
}

// Do sends req and reads the answer (up to 64 KiB of its body). On error,
// mayHaveSent says whether the transport had a connection for the request,
// after which the provider may have received it; before, it cannot have.
func Do(client *http.Client, req *http.Request) (resp *Response, mayHaveSent bool, err error) {
	return DoRead(client, req, maxBodyBytes)
}

// DoRead is Do reading up to limit bytes of the body, for answers that
// list things (a page of a conversation's history).
func DoRead(client *http.Client, req *http.Request, limit int64) (resp *Response, mayHaveSent bool, err error) {
	var sent atomic.Bool
	ctx := httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { sent.Store(true) },
	})
	hresp, err := client.Do(req.WithContext(ctx))
	if err != nil {
		return nil, sent.Load(), err
	}
	defer func() {
		// Drain so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(hresp.Body, maxBodyBytes))
		_ = hresp.Body.Close()
	}()
	body, err := io.ReadAll(io.LimitReader(hresp.Body, limit))
	if err != nil {
		// The provider answered with a status; only the body was cut.
		// Callers classify on what arrived.
		body = nil
	}
	return &Response{Response: hresp, Body: body}, true, nil
}

// TransportFailure classifies a call that got no HTTP answer: RETRYABLE,
// PLG_005 when it was never sent; UNKNOWN, PLG_006 when it may have been.
// what names the call in the description ("telegram sendMessage"). The
// description never holds the request URL, and every secret is replaced by
// "[redacted]" should a lower layer have quoted it.
func TransportFailure(err error, mayHaveSent bool, what string, secrets ...string) pluginhost.Result {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err // url.Error's text includes the full URL
	}
	desc := Redact(describe(err), secrets...)
	if !mayHaveSent {
		return pluginhost.Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_RETRYABLE,
			ErrorCode:   pluginhost.CodeNotSent,
			Description: what + " request not sent: " + desc,
		}
	}
	return pluginhost.Result{
		Outcome:     pluginsv1.Outcome_OUTCOME_UNKNOWN,
		ErrorCode:   pluginhost.CodeNoAnswer,
		Description: what + " request may have been received, no answer: " + desc,
	}
}

// Redact replaces every non-empty secret in s with "[redacted]".
func Redact(s string, secrets ...string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return s
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

// RetryAfter parses a Retry-After header (seconds or an HTTP date); 0 when
// absent or invalid.
func RetryAfter(v string, now time.Time) time.Duration {
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
