package gateway

import (
	"fmt"
	"math"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// Limits on what Send accepts. They are part of the public API: raising one is
// compatible, lowering one is not.
const (
	// DefaultTenant is used when a request names no tenant.
	DefaultTenant = "default"

	maxChannelLen        = 64
	maxTenantLen         = 64
	maxRecipientLen      = 2048
	maxConversationLen   = 512
	maxTextLen           = 64 << 10
	maxIdempotencyKeyLen = 256
	maxMetadataEntries   = 32
	maxMetadataKeyLen    = 128
	maxMetadataValueLen  = 4 << 10
	// maxTTLSeconds keeps expires_at_unix_nano far from int64 overflow: ten years.
	maxTTLSeconds = 10 * 366 * 24 * 60 * 60

	defaultHistoryLimit = 20
	maxHistoryLimit     = 1000

	defaultDeadLetterLimit = 100
	maxDeadLetterLimit     = 1000
	maxErrorCodeLen        = 64
)

// violations collects what is wrong with a request so that one answer lists
// every problem, not only the first.
type violations []*errdetails.BadRequest_FieldViolation

func (v *violations) add(field, format string, args ...any) {
	*v = append(*v, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// err returns nil when nothing was wrong, or an InvalidArgument status whose
// message lists every violation and whose details carry them as a BadRequest.
func (v violations) err() error {
	if len(v) == 0 {
		return nil
	}
	msgs := make([]string, len(v))
	for i, fv := range v {
		msgs[i] = fv.GetField() + ": " + fv.GetDescription()
	}
	st := status.New(codes.InvalidArgument, "invalid request: "+strings.Join(msgs, "; "))
	if withDetails, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: v}); err == nil {
		st = withDetails
	}
	return st.Err()
}

// sendRequest is a SendRequest after validation, with defaults applied.
type sendRequest struct {
	tenant       string
	conversation string
}

// validateSend checks a SendRequest against the limits above and returns the
// tenant and conversation with their defaults applied. It never modifies req.
func validateSend(req *gatewayv1.SendRequest) (sendRequest, error) {
	var v violations
	out := sendRequest{tenant: req.GetTenant(), conversation: req.GetConversation()}

	if out.tenant == "" {
		out.tenant = DefaultTenant
	} else {
		checkTenant(&v, out.tenant)
	}

	switch ch := req.GetChannel(); {
	case ch == "":
		v.add("channel", "required: name the channel to deliver on, such as webhook, telegram or slack")
	case !validName(ch, maxChannelLen, isChannelByte):
		v.add("channel", "%q is not a channel name: use 1 to %d characters of a-z, 0-9, '_' and '-'", truncate(ch), maxChannelLen)
	}

	recipient := req.GetRecipient()
	switch {
	case recipient == "":
		v.add("recipient", "required: give the channel-specific address, such as a webhook URL or a chat id")
	case len(recipient) > maxRecipientLen:
		v.add("recipient", "is %d bytes long: at most %d bytes are allowed", len(recipient), maxRecipientLen)
	case !utf8.ValidString(recipient):
		v.add("recipient", "is not valid UTF-8")
	}

	if out.conversation == "" {
		out.conversation = recipient
		// Report a bad default against the field the caller can set.
		if recipient != "" && len(recipient) <= maxRecipientLen {
			if problem := conversationProblem(recipient); problem != "" {
				v.add("conversation", "defaults to the recipient, which %s: set conversation explicitly", problem)
			}
		}
	} else if problem := conversationProblem(out.conversation); problem != "" {
		v.add("conversation", "%s", problem)
	}

	text := req.GetText()
	if len(text) > maxTextLen {
		v.add("text", "is %d bytes long: at most %d bytes (64 KiB) are allowed; split it into several messages", len(text), maxTextLen)
	} else if !utf8.ValidString(text) {
		v.add("text", "is not valid UTF-8: encode the text as UTF-8")
	}

	if key := req.GetIdempotencyKey(); len(key) > maxIdempotencyKeyLen {
		v.add("idempotency_key", "is %d bytes long: at most %d bytes are allowed; hash longer keys", len(key), maxIdempotencyKeyLen)
	} else if strings.IndexByte(key, 0) >= 0 {
		v.add("idempotency_key", "contains a NUL byte: remove it")
	}

	md := req.GetMetadata()
	if len(md) > maxMetadataEntries {
		v.add("metadata", "has %d entries: at most %d are allowed", len(md), maxMetadataEntries)
	} else {
		for k, val := range md {
			switch {
			case k == "":
				v.add("metadata", "has an empty key: every entry needs a name")
			case len(k) > maxMetadataKeyLen:
				v.add("metadata", "key %q is %d bytes long: at most %d bytes are allowed", truncate(k), len(k), maxMetadataKeyLen)
			}
			if len(val) > maxMetadataValueLen {
				v.add("metadata", "value of %q is %d bytes long: at most %d bytes are allowed", truncate(k), len(val), maxMetadataValueLen)
			}
		}
	}

	switch ttl := req.GetTtlSeconds(); {
	case ttl < 0:
		v.add("ttl_seconds", "is %d: use 0 for no time-to-live or a positive number of seconds", ttl)
	case ttl > maxTTLSeconds:
		v.add("ttl_seconds", "is %d: at most %d seconds (10 years) are allowed; use 0 for no time-to-live", ttl, maxTTLSeconds)
	}

	return out, v.err()
}

// checkTenant adds a violation when tenant is not a valid tenant name.
func checkTenant(v *violations, tenant string) {
	if !validName(tenant, maxTenantLen, isTenantByte) {
		v.add("tenant", "%q is not a tenant name: use 1 to %d characters of A-Z, a-z, 0-9, '_', '.' and '-', or leave it empty for %q",
			truncate(tenant), maxTenantLen, DefaultTenant)
	}
}

// conversationProblem says what is wrong with a conversation name, or returns
// "" when it is acceptable.
func conversationProblem(c string) string {
	if len(c) > maxConversationLen {
		return fmt.Sprintf("is %d bytes long: at most %d bytes are allowed", len(c), maxConversationLen)
	}
	if !utf8.ValidString(c) {
		return "is not valid UTF-8"
	}
	for _, r := range c {
		if unicode.IsControl(r) {
			return fmt.Sprintf("contains the control character %U: remove NUL, newlines and other control characters", r)
		}
	}
	return ""
}

func validName(s string, maxLen int, ok func(byte) bool) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

func isChannelByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func isTenantByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
}

// truncate shortens s for quoting in an error message.
func truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// validateHistory checks a HistoryRequest and returns the tracker request to
// make, with the tenant and limit defaults applied.
func validateHistory(req *gatewayv1.HistoryRequest) (tenant string, limit uint32, err error) {
	var v violations
	tenant = req.GetTenant()
	if tenant == "" {
		tenant = DefaultTenant
	} else {
		checkTenant(&v, tenant)
	}
	conv, rcpt := req.GetConversation(), req.GetRecipient()
	switch {
	case conv == "" && rcpt == "":
		v.add("conversation", "give either conversation or recipient (optionally with its channel) to list history")
	case conv != "" && rcpt != "":
		v.add("conversation", "give either conversation or recipient, not both")
	}
	if ch := req.GetChannel(); ch != "" && !validName(ch, maxChannelLen, isChannelByte) {
		v.add("channel", "%q is not a channel name: use 1 to %d characters of a-z, 0-9, '_' and '-'", truncate(ch), maxChannelLen)
	}
	limit = req.GetLimit()
	switch {
	case limit == 0:
		limit = defaultHistoryLimit
	case limit > maxHistoryLimit:
		limit = maxHistoryLimit
	}
	return tenant, limit, v.err()
}

// validateListDeadLetters checks a ListDeadLettersRequest and returns the
// tracker request to make, with the limit default applied: 100 when unset,
// at most 1000.
func validateListDeadLetters(req *gatewayv1.ListDeadLettersRequest) (*trackerv1.ListDeadLettersRequest, error) {
	var v violations
	out := &trackerv1.ListDeadLettersRequest{Channel: req.GetChannel(), Code: req.GetCode(), Limit: req.GetLimit()}
	if ch := req.GetChannel(); ch != "" && !validName(ch, maxChannelLen, isChannelByte) {
		v.add("channel", "%q is not a channel name: use 1 to %d characters of a-z, 0-9, '_' and '-'", truncate(ch), maxChannelLen)
	}
	if code := req.GetCode(); len(code) > maxErrorCodeLen || !utf8.ValidString(code) {
		v.add("code", "%q is not an error code: give a code such as DLV_003 or PLG_001", truncate(code))
	}
	if since := req.GetSince(); since != nil {
		if err := since.CheckValid(); err != nil {
			v.add("since", "is not a valid time: %v", err)
		} else if t := since.AsTime(); t.After(time.Unix(0, math.MaxInt64)) {
			v.add("since", "is %s: give a time before the year 2262", t.UTC().Format(time.RFC3339))
		} else if t.After(time.Unix(0, 0)) {
			// The tracker counts time in int64 Unix nanoseconds; times at
			// or before the epoch mean "from the beginning".
			out.SinceUnixNano = t.UnixNano()
		}
	}
	switch {
	case out.Limit == 0:
		out.Limit = defaultDeadLetterLimit
	case out.Limit > maxDeadLetterLimit:
		out.Limit = maxDeadLetterLimit
	}
	return out, v.err()
}

// requireID returns an InvalidArgument status when id is empty; hint says
// where to find one.
func requireID(id, hint string) error {
	if id != "" {
		return nil
	}
	var v violations
	v.add("id", "required: %s", hint)
	return v.err()
}
