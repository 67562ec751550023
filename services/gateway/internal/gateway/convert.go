package gateway

import (
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// toMessage builds the public view of a stored message and its delivery.
func toMessage(m *storev1.Message, d *storev1.Delivery) *gatewayv1.Message {
	out := &gatewayv1.Message{
		Id:                m.GetId(),
		Tenant:            m.GetTenant(),
		Channel:           m.GetChannel(),
		Recipient:         m.GetRecipient(),
		Conversation:      m.GetConversation(),
		Sequence:          m.GetSequence(),
		Text:              m.GetText(),
		Metadata:          m.GetMetadata(),
		State:             gatewayv1.DeliveryState(d.GetState()),
		Attempts:          d.GetAttempts(),
		LastErrorCode:     d.GetLastErrorCode(),
		LastError:         d.GetLastError(),
		ProviderMessageId: d.GetProviderMessageId(),
		Reason:            d.GetReason(),
		AcceptedAt:        timestamp(m.GetAcceptedAtUnixNano()),
		UpdatedAt:         timestamp(d.GetUpdatedUnixNano()),
		TraceId:           traceIDFromParent(m.GetTraceparent()),
	}
	// A blocked message waits for its predecessor, not for a time.
	if d.GetState() == storev1.State_STATE_PENDING && !d.GetBlocked() {
		out.NextAttemptAt = timestamp(d.GetDueUnixNano())
	}
	return out
}

// toEvent builds the public view of an event-log entry.
func toEvent(e *storev1.Event) *gatewayv1.Event {
	return &gatewayv1.Event{
		Sequence:     e.GetSequence(),
		Time:         timestamp(e.GetTimeUnixNano()),
		Type:         e.GetType(),
		MessageId:    e.GetMessageId(),
		Channel:      e.GetChannel(),
		Conversation: e.GetConversation(),
		State:        gatewayv1.DeliveryState(e.GetState()),
		Attempt:      e.GetAttempt(),
		ErrorCode:    e.GetErrorCode(),
		Detail:       e.GetDetail(),
		TraceId:      e.GetTraceId(),
		SpanId:       e.GetSpanId(),
	}
}

// timestamp converts Unix nanoseconds to a Timestamp; zero means unset.
func timestamp(unixNano int64) *timestamppb.Timestamp {
	if unixNano == 0 {
		return nil
	}
	return timestamppb.New(time.Unix(0, unixNano))
}

// traceIDFromParent extracts the trace id from a W3C traceparent
// ("00-<32 hex trace id>-<16 hex span id>-<2 hex flags>"). It returns "" for
// anything malformed and for the all-zero (invalid) trace id.
func traceIDFromParent(tp string) string {
	parts := strings.Split(tp, "-")
	if len(parts) < 4 || len(parts[0]) != 2 || len(parts[1]) != 32 {
		return ""
	}
	id := parts[1]
	allZero := true
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return ""
		}
		if c != '0' {
			allZero = false
		}
	}
	if allZero {
		return ""
	}
	return id
}

// stateName is the short name of a state, as used in Status counts:
// "PENDING" for STATE_PENDING.
func stateName(trackerKey string) string {
	return strings.TrimPrefix(trackerKey, "STATE_")
}
