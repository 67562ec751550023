package pluginhost

// Stable error codes for plugin outcomes. Operators search logs for them and
// the README documents them; never change a code's meaning.
const (
	// CodeProviderRejected (PLG_001): the provider answered but did not
	// accept the message (for the webhook, a non-2xx status; for telegram
	// and slack, "ok": false or an error status). ProviderCode and
	// Description carry the provider's own code and text; the outcome says
	// whether a retry can help.
	CodeProviderRejected = "PLG_001"
	// CodeUnknownChannel (PLG_002): the delivery names a channel this host
	// does not serve. Permanent.
	CodeUnknownChannel = "PLG_002"
	// CodeAdapterPanic (PLG_003): the adapter panicked. The outcome is
	// UNKNOWN because the provider call may already have happened.
	CodeAdapterPanic = "PLG_003"
	// CodeInvalidRecipient (PLG_004): the recipient cannot be used by the
	// channel's adapter (for the webhook, not an http/https URL). Permanent.
	CodeInvalidRecipient = "PLG_004"
	// CodeNotSent (PLG_005): the request never reached the provider
	// (connection refused, DNS failure, cancelled before sending).
	// Retryable.
	CodeNotSent = "PLG_005"
	// CodeNoAnswer (PLG_006): the request may have reached the provider but
	// no answer came back (timeout, reset, cancellation after sending, or
	// the adapter ignored its deadline). Unknown.
	CodeNoAnswer = "PLG_006"
	// CodeFalseSuccess (DLV_003): an adapter claimed success without a
	// provider message id, or returned no outcome at all. The host reports
	// UNKNOWN instead: the silent-failure guard.
	CodeFalseSuccess = "DLV_003"
	// CodeOrphanDropped (PLG_007): answers the queue did not acknowledge
	// could not be reported to the tracker; their leases expire into the
	// unknown-outcome policy.
	CodeOrphanDropped = "PLG_007"
	// CodeNotConfigured (PLG_008): the channel's adapter lacks the
	// credential it needs (a telegram bot token, a slack token); the
	// description names the flag that sets it. No provider call is made.
	// Permanent: a retry cannot help until the operator configures it.
	CodeNotConfigured = "PLG_008"
	// CodeCannotReconcile (PLG_009): asked whether its provider has a
	// message whose outcome is unknown, the adapter cannot tell: the
	// provider offers no way to read sent messages back (telegram, a
	// webhook receiver), or the credential lacks the permission to (slack
	// missing_scope, not_in_channel). The message is dead-lettered with
	// reason outcome_unknown; an operator decides.
	CodeCannotReconcile = "PLG_009"
)
