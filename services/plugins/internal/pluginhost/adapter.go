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

// Reconciler is implemented by adapters that can ask their provider
// whether it has a message (the reconcile unknown-outcome policy). An
// adapter without it answers every reconcile request CANNOT_ANSWER, PLG_009.
type Reconciler interface {
	// Reconcile asks the provider whether it received the delivery d, whose
	// last attempt started at d.AttemptStarted and whose outcome is
	// unknown. It must never send d. It returns RECONCILE_ANSWER_FOUND with
	// ProviderMessageID only when the provider shows the message;
	// RECONCILE_ANSWER_NOT_FOUND only when the provider definitely does not
	// have it (herald then sends it again); RECONCILE_ANSWER_CANNOT_ANSWER
	// when asking cannot work (no such API, a missing permission); and
	// RECONCILE_ANSWER_ERROR when asking failed for now. It must honour ctx
	// like Deliver.
	Reconcile(ctx context.Context, d *Delivery) ReconcileResult
}

// Delivery is one attempt to deliver one message through a channel, or,
// for Reconcile, the message to ask about.
type Delivery struct {
	MessageID    string
	Channel      string
	Recipient    string // may hold secrets (tokens in URLs): never log it
	Conversation string
	Text         string
	Sequence     uint64
	Attempt      uint32
	Metadata     map[string]string
	// AttemptStarted is set for Reconcile: when the attempt whose outcome
	// is unknown started. The provider cannot have received it earlier.
	AttemptStarted time.Time
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

// ReconcileResult is an adapter's answer to a reconcile request.
type ReconcileResult struct {
	Answer pluginsv1.ReconcileAnswer
	// ProviderMessageID is the provider's id of the message, with FOUND.
	ProviderMessageID string
	// RetryAfter is the provider's requested delay before asking again.
	RetryAfter time.Duration
	// ErrorCode, ProviderCode and Description say why the answer is not
	// FOUND or NOT_FOUND, under the same rules as Result's.
	ErrorCode    string
	ProviderCode string
	Description  string
}
