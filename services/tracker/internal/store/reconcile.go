package store

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// Reconciliation (the reconcile unknown-outcome policy) asks the provider
// whether it has a message whose outcome is unknown, instead of sending it
// again blindly (ARCHITECTURE.md §3). The message stays UNKNOWN throughout:
//
//	UNKNOWN ──(grace, then Lease with reconcile)──▶ UNKNOWN reconciling, under a new lease token
//	UNKNOWN reconciling ──found──────────▶ DELIVERED (the provider's message id)
//	                    ──not found──────▶ PENDING, due at once: a new attempt
//	                    ──cannot answer──▶ FAILED outcome_unknown
//	                    ──error / lease expired──▶ UNKNOWN, asked again after a
//	                        backoff; FAILED outcome_unknown when the attempts
//	                        (Options.ReconcileAttempts) are spent
//
// A reconcile lease never sends anything, so an expired one cannot have
// delivered the message: it goes back to UNKNOWN, never to PENDING. An
// abort of an UNKNOWN message, reconciling or not, makes it ABORTED at once
// (see Abort); the reconcile lease's answer is then stale and refused.

// maxReconcileBackoff caps the wait between two tries.
const maxReconcileBackoff = 10 * time.Minute

// leaveUnknown clears the fields that only an UNKNOWN message carries.
func leaveUnknown(d *storev1.Delivery) {
	d.UnknownSinceUnixNano = 0
	d.ReconcileAtUnixNano = 0
	d.Reconciling = false
}

// leaseReconcile hands the UNKNOWN message of index entry e to worker under
// a new lease token, marked reconciling. If its channel's policy is no
// longer reconcile (the tracker restarted with another --unknown-policy),
// it applies that policy instead. ok is false when nothing was leased.
func (t *txn) leaseReconcile(e entry, worker string, leaseFor time.Duration) (Leased, bool, error) {
	d, err := t.delivery(e.id)
	if err != nil {
		return Leased{}, false, err
	}
	if kind, at, _ := indexPlace(d); d.GetState() != storev1.State_STATE_UNKNOWN || kind != recoveryUnknown || at != e.at {
		return Leased{}, false, nil // changed since it was indexed; its new place is indexed
	}
	m, err := t.s.getMessage(e.id)
	if err != nil {
		return Leased{}, false, err
	}
	next := proto.CloneOf(d)
	if t.s.policy(m.GetChannel()) != PolicyReconcile {
		return Leased{}, false, t.applyPolicy(m, d, next, "")
	}
	next.Reconciling = true
	next.ReconcileAttempts++
	next.LeaseToken++
	next.LeaseExpiresUnixNano = t.now + leaseFor.Nanoseconds()
	if err := t.transition(m, d, next); err != nil {
		return Leased{}, false, err
	}
	t.event(EventReconcileLeased, m, next, "", fmt.Sprintf("%s (try %d of %d)", worker, next.ReconcileAttempts, t.s.reconcileAttempts))
	return Leased{Message: m, Delivery: next}, true, nil
}

// completeReconcile applies a reconcile lease's answer to m, a compare-and-
// set on (UNKNOWN reconciling, lease token). refused says why it did not
// apply it; it is "" when it did.
func (t *txn) completeReconcile(m *storev1.Message, d *storev1.Delivery, o Outcome) (refused string, err error) {
	if d.GetState() != storev1.State_STATE_UNKNOWN || !d.GetReconciling() || d.GetLeaseToken() != o.LeaseToken {
		return fmt.Sprintf("stale reconcile lease: message is %s (reconciling=%v) with lease %d, answer has lease %d",
			d.GetState(), d.GetReconciling(), d.GetLeaseToken(), o.LeaseToken), nil
	}
	if o.Result == ResultReconcileFound && o.ProviderMessageID == "" {
		return "found without a provider message id (DLV_003); left to lease expiry", nil
	}
	return "", t.applyReconcile(m, d, o)
}

// applyReconcile moves an UNKNOWN message under a reconcile lease by the
// provider's answer.
func (t *txn) applyReconcile(m *storev1.Message, d *storev1.Delivery, o Outcome) error {
	next := proto.CloneOf(d)
	next.Reconciling = false
	next.LeaseExpiresUnixNano = 0
	if d.GetAbortRequested() && o.Result != ResultReconcileFound {
		// Abort makes an UNKNOWN message ABORTED at once, so this cannot
		// happen; should a record carry the mark anyway, the abort wins:
		// nothing an abort fenced is ever sent again.
		abortedEnd(next)
		if err := t.transition(m, d, next); err != nil {
			return err
		}
		t.event(EventAborted, m, next, o.ErrorCode, "reconciled after the abort; never sent again: "+d.GetReason())
		return nil
	}
	var ev *storev1.Event
	switch o.Result {
	case ResultReconcileFound:
		next.State = storev1.State_STATE_DELIVERED
		next.ProviderMessageId = o.ProviderMessageID
		leaveUnknown(next)
		if err := t.transition(m, d, next); err != nil {
			return err
		}
		ev = t.event(EventReconciled, m, next, "", "the provider has it: "+o.ProviderMessageID)
	case ResultReconcileNotFound:
		// The provider definitely does not have it: the next attempt is
		// the first that can reach it. It is due at once; the message is
		// still its conversation's head.
		next.State = storev1.State_STATE_PENDING
		next.DueUnixNano = t.now
		next.ReconcileAttempts = 0
		leaveUnknown(next)
		if err := t.transition(m, d, next); err != nil {
			return err
		}
		ev = t.event(EventReconcileNotFound, m, next, o.ErrorCode, "the provider does not have it; sending it again")
	case ResultReconcileCannotAnswer:
		return t.reconcileFailed(m, d, next, o.ErrorCode, o.ErrorDetail)
	case ResultReconcileError:
		if o.NotAttempted {
			// The provider was not asked (the plugin host was out of
			// reach): the try is given back, and it is asked at RetryAt.
			if next.ReconcileAttempts > 0 {
				next.ReconcileAttempts--
			}
			next.ReconcileAtUnixNano = max(o.RetryAt.UnixNano(), t.now)
			next.LastErrorCode, next.LastError = o.ErrorCode, o.ErrorDetail
			if err := t.transition(m, d, next); err != nil {
				return err
			}
			t.event(EventReconcileRetry, m, next, o.ErrorCode, "not asked: "+o.ErrorDetail)
			return nil
		}
		return t.reconcileLater(m, d, next, o.RetryAt.UnixNano(), o.ErrorCode, o.ErrorDetail)
	default:
		return fmt.Errorf("%w: reconcile result %d", ErrInvalid, o.Result)
	}
	if o.TraceID != "" {
		ev.TraceId, ev.SpanId = o.TraceID, o.SpanID
	}
	return nil
}

// reconcileLater keeps next (changing from d) UNKNOWN and schedules the
// next try after a backoff, not before retryAt (unix nanoseconds, 0 for
// none); when the tries are spent it dead-letters it instead.
func (t *txn) reconcileLater(m *storev1.Message, d, next *storev1.Delivery, retryAt int64, code, detail string) error {
	tries := next.GetReconcileAttempts()
	if tries >= t.s.reconcileAttempts {
		return t.reconcileFailed(m, d, next, "DLV_006",
			fmt.Sprintf("reconcile attempts exhausted (%d); last: %s %s", tries, code, detail))
	}
	next.State = storev1.State_STATE_UNKNOWN
	next.ReconcileAtUnixNano = max(t.now+t.s.reconcileBackoff(tries).Nanoseconds(), retryAt)
	next.LastErrorCode, next.LastError = code, detail
	if err := t.transition(m, d, next); err != nil {
		return err
	}
	t.event(EventReconcileRetry, m, next, code, detail)
	return nil
}

// reconcileFailed dead-letters next (changing from d) with reason
// outcome_unknown: nobody can tell whether the provider has it, so an
// operator decides (redrive sends it again).
func (t *txn) reconcileFailed(m *storev1.Message, d, next *storev1.Delivery, code, detail string) error {
	next.State = storev1.State_STATE_FAILED
	next.Reason = ReasonOutcomeUnknown
	next.LastErrorCode, next.LastError = code, detail
	leaveUnknown(next)
	if err := t.transition(m, d, next); err != nil {
		return err
	}
	t.event(EventReconcileFailed, m, next, code, detail)
	t.event(EventDeadLettered, m, next, code, ReasonOutcomeUnknown)
	return nil
}

// reconcileBackoff is the wait after the tries-th failed try: the grace
// period, doubled per further try, up to maxReconcileBackoff.
func (s *Store) reconcileBackoff(tries uint32) time.Duration {
	d := s.reconcileGrace
	for i := uint32(1); i < tries && d < maxReconcileBackoff; i++ {
		d *= 2
	}
	return min(d, maxReconcileBackoff)
}
