package slack

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/httpcall"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
)

// The message metadata every post carries, so that Reconcile can find it.
const (
	metadataEventType = "herald_message"
	metadataMessageID = "herald_message_id"
)

const (
	// historyPage is the page size asked of conversations.history. Slack
	// may return fewer (apps outside the Marketplace get at most 15);
	// the cursor covers the rest.
	historyPage = 100
	// maxHistoryPages bounds one Reconcile: beyond it the channel is too
	// busy to tell, and the answer is CANNOT_ANSWER.
	maxHistoryPages = 20
	// maxHistoryBytes bounds one page's body.
	maxHistoryBytes = 8 << 20
	// clockSkew widens the window back from the attempt's start: herald's
	// clock and slack's may disagree by this much.
	clockSkew = 2 * time.Minute
)

type (
	metadata struct {
		EventType    string            `json:"event_type"`
		EventPayload map[string]string `json:"event_payload"`
	}
	// historyAnswer is conversations.history's answer, as the Web API
	// documents it, reduced to what Reconcile reads.
	historyAnswer struct {
		OK       *bool  `json:"ok"`
		Error    string `json:"error"`
		Needed   string `json:"needed"` // with missing_scope
		Messages []struct {
			TS       string `json:"ts"`
			Metadata *struct {
				EventType    string         `json:"event_type"`
				EventPayload map[string]any `json:"event_payload"`
			} `json:"metadata"`
		} `json:"messages"`
		HasMore          bool `json:"has_more"`
		ResponseMetadata struct {
			NextCursor string `json:"next_cursor"`
		} `json:"response_metadata"`
	}
)

// historyTransient lists the "ok": false errors of conversations.history
// after which asking again later can help. Every other error (missing_scope,
// not_in_channel, channel_not_found, invalid_auth, ...) means this token
// cannot read the channel: CANNOT_ANSWER.
var historyTransient = map[string]bool{
	"ratelimited":         true,
	"service_unavailable": true,
	"internal_error":      true,
	"fatal_error":         true,
	"request_timeout":     true,
}

// Reconcile implements pluginhost.Reconciler: it reads the recipient
// channel's history since the attempt started (conversations.history with
// include_all_metadata, paged) and looks for a post whose metadata carries
// d.MessageID.
//
//   - found: FOUND, provider message id "<channel>:<ts>" as Deliver gives it
//   - the whole window read, not found: NOT_FOUND
//   - no token: CANNOT_ANSWER, PLG_008; empty recipient: CANNOT_ANSWER, PLG_004
//   - "ok": false with ratelimited, service_unavailable, internal_error,
//     fatal_error or request_timeout, HTTP 429 or 5xx, no answer: ERROR
//     (after Retry-After if given)
//   - any other "ok": false (missing_scope, not_in_channel,
//     channel_not_found, invalid_auth, ...) or another HTTP status:
//     CANNOT_ANSWER, PLG_009, with slack's error as ProviderCode
//   - more than maxHistoryPages pages since the attempt: CANNOT_ANSWER
//
// The token needs channels:history (groups:history, im:history,
// mpim:history for private channels and direct messages) and the app must
// be in the channel. A recipient given as a user id (a direct message) is
// not a conversation id and answers channel_not_found: give the D… id of
// the direct message instead to have it reconciled.
func (a *Adapter) Reconcile(ctx context.Context, d *pluginhost.Delivery) pluginhost.ReconcileResult {
	if a.token == "" {
		return cannot(pluginhost.CodeNotConfigured, "", "slack token not configured: set --slack-token or HERALD_SLACK_TOKEN")
	}
	channel := strings.TrimSpace(d.Recipient)
	if channel == "" {
		return cannot(pluginhost.CodeInvalidRecipient, "", "recipient is empty: want a slack channel id")
	}
	form := url.Values{
		"channel":              {channel},
		"include_all_metadata": {"true"},
		"limit":                {strconv.Itoa(historyPage)},
	}
	if !d.AttemptStarted.IsZero() {
		form.Set("oldest", slackTS(d.AttemptStarted.Add(-clockSkew)))
		form.Set("inclusive", "true")
	}
	for range maxHistoryPages {
		ans, fail := a.historyPage(ctx, form)
		if fail != nil {
			return *fail
		}
		for _, m := range ans.Messages {
			if m.Metadata == nil || m.Metadata.EventType != metadataEventType {
				continue
			}
			if id, _ := m.Metadata.EventPayload[metadataMessageID].(string); id == d.MessageID && m.TS != "" {
				return pluginhost.ReconcileResult{
					Answer:            pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND,
					ProviderMessageID: channel + ":" + m.TS,
				}
			}
		}
		if !ans.HasMore {
			return pluginhost.ReconcileResult{Answer: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND}
		}
		if ans.ResponseMetadata.NextCursor == "" {
			return pluginhost.ReconcileResult{
				Answer:      pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR,
				ErrorCode:   pluginhost.CodeProviderRejected,
				Description: "slack conversations.history: has_more without a next_cursor",
			}
		}
		form.Set("cursor", ans.ResponseMetadata.NextCursor)
	}
	return cannot(pluginhost.CodeCannotReconcile, "",
		fmt.Sprintf("slack conversations.history: more than %d pages of messages since the attempt; cannot tell whether it arrived", maxHistoryPages))
}

// historyPage asks for one page. It returns the answer, or the result to
// give when the page could not be read.
func (a *Adapter) historyPage(ctx context.Context, form url.Values) (*historyAnswer, *pluginhost.ReconcileResult) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.history, strings.NewReader(form.Encode()))
	if err != nil {
		r := cannot(pluginhost.CodeNotConfigured, "", "slack base URL cannot be used for a request")
		return nil, &r
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, mayHaveSent, err := httpcall.DoRead(a.client, req, maxHistoryBytes)
	if err != nil {
		// A read sends nothing: whether it reached slack or not, ask again.
		f := httpcall.TransportFailure(err, mayHaveSent, "slack conversations.history", a.token)
		return nil, &pluginhost.ReconcileResult{
			Answer:      pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR,
			ErrorCode:   f.ErrorCode,
			Description: f.Description,
		}
	}
	retryAfter := httpcall.RetryAfter(resp.Header.Get("Retry-After"), a.now())
	if status := resp.StatusCode; status != http.StatusOK {
		r := pluginhost.ReconcileResult{
			Answer:       pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR,
			ErrorCode:    pluginhost.CodeProviderRejected,
			ProviderCode: strconv.Itoa(status),
			Description:  "slack conversations.history answered HTTP " + resp.Status,
			RetryAfter:   retryAfter,
		}
		if status >= 400 && status <= 499 && status != http.StatusTooManyRequests {
			r = cannot(pluginhost.CodeCannotReconcile, strconv.Itoa(status), r.Description)
		}
		return nil, &r
	}
	var ans historyAnswer
	if err := json.Unmarshal(resp.Body, &ans); err != nil || ans.OK == nil {
		return nil, &pluginhost.ReconcileResult{
			Answer:       pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR,
			ErrorCode:    pluginhost.CodeProviderRejected,
			ProviderCode: "200",
			Description:  "slack conversations.history answered HTTP 200 without a Web API response body",
		}
	}
	if *ans.OK {
		return &ans, nil
	}
	code := httpcall.Redact(ans.Error, a.token)
	if code == "" {
		code = "unknown_error"
	}
	if historyTransient[code] {
		return nil, &pluginhost.ReconcileResult{
			Answer:       pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR,
			ErrorCode:    pluginhost.CodeProviderRejected,
			ProviderCode: code,
			Description:  "slack conversations.history: " + code,
			RetryAfter:   retryAfter,
		}
	}
	desc := "slack conversations.history: " + code
	switch code {
	case "missing_scope":
		desc += fmt.Sprintf(": the token lacks %s; add it to the app to reconcile", cmp.Or(httpcall.Redact(ans.Needed, a.token), "channels:history (groups:history, im:history, mpim:history for other conversations)"))
	case "not_in_channel":
		desc += ": invite the app to the channel to reconcile"
	case "channel_not_found":
		desc += ": the recipient is not a conversation this token can read (a user id? use the D… id of the direct message)"
	}
	r := cannot(pluginhost.CodeCannotReconcile, code, desc)
	return nil, &r
}

func cannot(code, providerCode, desc string) pluginhost.ReconcileResult {
	return pluginhost.ReconcileResult{
		Answer:       pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER,
		ErrorCode:    code,
		ProviderCode: providerCode,
		Description:  desc,
	}
}

// slackTS formats t as a Web API timestamp ("1700000000.000123").
func slackTS(t time.Time) string {
	if t.Before(time.Unix(0, 0)) {
		t = time.Unix(0, 0)
	}
	return fmt.Sprintf("%d.%06d", t.Unix(), t.Nanosecond()/1000)
}
