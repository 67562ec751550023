package pluginhost

import (
	"context"
	"time"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
)

// Adapter turns one delivery into one provider call and classifies the
// provider's answer. Implementations must be safe for concurrent use.
type Adapter interface {
	// Name identifies the adapter kind ("webhook", "mock") in channel
	// configuration, responses and logs.
	Name() string
	// Deliver makes one provider call. It must honour ctx cancellation and
	// return promptly once ctx is done. It returns OUTCOME_DELIVERED only
	// when the provider confirmed acceptance, with ProviderMessageID set;
	// when it cannot tell whether the provider received the request it
	// returns OUTCOME_UNKNOWN. The host turns anything else claiming
	// success into UNKNOWN.
	Deliver(ctx context.Context, d *Delivery) Result
}

// Delivery is one attempt to deliver one message through a channel.
type Delivery struct {
	MessageID    string
	Channel      string
	Recipient    string // may hold secrets (tokens in URLs): never log it
	Conversation string
	Text         string
	Sequence     uint64
	Attempt      uint32
	Metadata     map[string]string
}

// Result is an adapter's classification of one provider call.
type Result struct {
	Outcome           pluginsv1.Outcome
	ProviderMessageID string
	// RetryAfter is the provider's requested delay before a retry, if any.
	RetryAfter time.Duration
	// ErrorCode is herald's stable code (see codes.go); empty on success.
	ErrorCode string
	// ProviderCode and Description are the provider's own code and a short
	// human description. They are logged and returned to the caller, so
	// they must not carry the recipient or any credential.
	ProviderCode string
	Description  string
}
