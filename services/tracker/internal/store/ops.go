package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// Event types written to the event log.
const (
	EventAccepted     = "message.accepted"
	EventLeased       = "delivery.leased"
	EventDelivered    = "delivery.succeeded"
	EventRetry        = "delivery.retry"
	EventFailed       = "delivery.failed"
	EventUnknown      = "delivery.unknown"
	EventRedeliver    = "delivery.redeliver"
	EventDeadLettered = "message.dead_lettered"
	EventExpired      = "message.expired"
	EventAborted      = "message.aborted"
	EventRedriven     = "message.redriven"

	EventReconcileLeased   = "delivery.reconcile_leased"
	EventReconciled        = "delivery.reconciled"
	EventReconcileNotFound = "delivery.reconcile_not_found"
	EventReconcileRetry    = "delivery.reconcile_retry"
	EventReconcileFailed   = "delivery.reconcile_failed"
)

// Reasons recorded on terminal states.
const (
	ReasonOutcomeUnknown = "outcome_unknown"
	ReasonExpired        = "ttl_expired"
)

// Accepted is the answer to Accept.
type Accepted struct {
	Message  *storev1.Message
	Delivery *storev1.Delivery
	// Duplicate is true when the idempotency key matched an earlier message;
	// nothing was written.
	Duplicate bool
}

// duplicate returns the message an idempotency key already points to (ok),
// under the key's stripe lock, which the caller holds.
func (s *Store) duplicate(m *storev1.Message) (Accepted, bool, error) {
	if m.IdempotencyKey == "" {
		return Accepted{}, false, nil
	}
	v, closer, err := s.db.Get(idempotencyKey(m.Tenant, m.IdempotencyKey))
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		return Accepted{}, false, nil
	case err != nil:
		return Accepted{}, false, fmt.Errorf("read idempotency key: %w", err)
	}
	id := string(v)
	closer.Close()
	orig, err := s.getMessage(id)
	if err != nil {
		return Accepted{}, false, fmt.Errorf("idempotency key points to %s: %w", id, err)
	}
	d, err := s.getDelivery(id)
	if err != nil {
		return Accepted{}, false, fmt.Errorf("idempotency key points to %s: %w", id, err)
	}
	return Accepted{Message: orig, Delivery: d, Duplicate: true}, true, nil
}

// acceptLocked writes a new message under its conversation's and id's
// stripe locks, which the caller holds. extra adds writes to the same batch.
func (s *Store) acceptLocked(m *storev1.Message, extra func(t *txn)) (Accepted, error) {
	if s.index.size() >= s.max {
		return Accepted{}, s.full()
	}
	t := s.newTxn()
	defer t.close()
	a, err := t.accept(m, extra, nil)
	if err != nil {
		return Accepted{}, err
	}
	t.commit()
	return a, nil
}

func (s *Store) full() error {
	return fmt.Errorf("%w: %d messages are not yet delivered", ErrFull, s.max)
}

// accept adds a new message to the batch: it reads what it needs first and
// writes nothing when it fails. The message's conversation must not have
// another message in the batch (its sequence and head are read from the
// store), and the caller holds the id's stripe (claimNewest). known, when
// not nil, holds the round's lookups (readRound), made under the same locks.
func (t *txn) accept(m *storev1.Message, extra func(t *txn), known *roundReads) (Accepted, error) {
	s := t.s
	exists := false
	if known != nil {
		exists = known.exists[m.Id]
	} else if !s.claimNewest(m.Id) { // an id newer than every stored one needs no lookup
		if _, closer, err := s.db.Get(messageKey(m.Id)); err == nil {
			closer.Close()
			exists = true
		} else if !errors.Is(err, pebble.ErrNotFound) {
			return Accepted{}, fmt.Errorf("read message %s: %w", m.Id, err)
		}
	}
	if exists {
		return Accepted{}, fmt.Errorf("%w: %s", ErrExists, m.Id)
	}
	seqKey := convSeqKey(m.Tenant, m.Conversation)
	var last uint64
	var err error
	if known != nil {
		last = known.lastSeq[string(seqKey)]
	} else if s.convs.mayExist(seqKey) {
		if last, err = s.lastSequence(seqKey); err != nil {
			return Accepted{}, err
		}
	}
	var head string
	if last > 0 { // a new conversation has no active message to wait for
		head = t.head(m.Tenant, m.Conversation)
	}
	m.Sequence = last + 1
	m.AcceptedAtUnixNano = t.now
	d := &storev1.Delivery{State: storev1.State_STATE_PENDING}
	if head != "" {
		d.Blocked = true
	} else {
		d.DueUnixNano = t.now
	}
	stored := mustMarshal(m)
	t.b.Set(messageKey(m.Id), stored, nil)
	if t.accepted == nil {
		t.accepted = map[string][]byte{}
	}
	t.accepted[m.Id] = stored
	t.insert(m, d)
	if m.IdempotencyKey != "" {
		t.b.Set(idempotencyKey(m.Tenant, m.IdempotencyKey), []byte(m.Id), nil)
	}
	if last == 0 {
		s.convs.add(seqKey) // a new conversation, before the commit: see convFilter
	}
	t.b.Set(seqKey, seqBytes(m.Sequence), nil)
	t.activeEdit(true, m)
	t.b.Set(convSeqEntryKey(prefixConvHistory, m.Tenant, m.Conversation, m.Sequence), []byte(m.Id), nil)
	t.b.Set(append(recipientPrefix(m.Tenant, m.Recipient), m.Id...), nil, nil)
	if extra != nil {
		extra(t)
	}
	t.event(EventAccepted, m, d, "", "")
	return Accepted{Message: m, Delivery: d}, nil
}

// lastSequence reads a conversation's last sequence (0: none yet) from its
// conversation-sequence key.
func (s *Store) lastSequence(seqKey []byte) (uint64, error) {
	v, closer, err := s.db.Get(seqKey)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read conversation sequence: %w", err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("conversation sequence of %d bytes", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func validateMessage(m *storev1.Message) error {
	if _, err := ulid.ParseStrict(m.GetId()); err != nil || len(m.GetId()) != idLen {
		return fmt.Errorf("%w: id %q is not a ULID", ErrInvalid, m.GetId())
	}
	for _, f := range []struct{ name, v string }{
		{"tenant", m.GetTenant()}, {"channel", m.GetChannel()}, {"recipient", m.GetRecipient()},
	} {
		if f.v == "" {
			return fmt.Errorf("%w: %s is required", ErrInvalid, f.name)
		}
	}
	for _, f := range []struct{ name, v string }{
		{"tenant", m.GetTenant()}, {"channel", m.GetChannel()}, {"recipient", m.GetRecipient()},
		{"conversation", m.GetConversation()}, {"idempotency key", m.GetIdempotencyKey()},
	} {
		if strings.IndexByte(f.v, 0) >= 0 {
			return fmt.Errorf("%w: %s contains a NUL byte", ErrInvalid, f.name)
		}
	}
	return nil
}

// Leased is a message handed to a worker, with the delivery that holds its
// lease token.
type Leased struct {
	Message  *storev1.Message
	Delivery *storev1.Delivery
}

// Lease moves up to max due PENDING messages to IN_FLIGHT under new lease
// tokens and returns them; expired messages become EXPIRED instead. With
// reconcile, it also hands out reconcile leases first: UNKNOWN messages
// whose time to ask the provider has come stay UNKNOWN, marked reconciling
// under a new lease token (Delivery.Reconciling tells them apart). slots
// limits channels (a channel absent from slots is limited by max only). The
// whole lease batch is one commit, which shares the next synced commit's
// fsync (commitSharedThenUnlock): Lease returns once it is durable. An
// empty result is not an error: wait on DueSignal and call again.
func (s *Store) Lease(worker string, max int, leaseFor time.Duration, slots map[string]uint32, reconcile bool) ([]Leased, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	now := s.now().UnixNano()
	unknown, entries := s.index.take(now, max, slots, reconcile)
	if len(unknown)+len(entries) == 0 {
		return nil, nil
	}
	// On an error nothing is committed: put back what was taken; the
	// durable index still has it.
	putBack := func() {
		s.index.apply(readd(recoveryUnknown, unknown))
		s.index.apply(readd(recoveryDue, entries))
	}
	stripes := make(lockSet, 0, len(unknown)+len(entries))
	for _, es := range [][]entry{unknown, entries} {
		for _, e := range es {
			stripes = append(stripes, s.stripe(e.tenant, e.conversation))
		}
	}
	stripes = s.lock(stripes)
	unlock := sync.OnceFunc(func() { s.unlock(stripes) })
	defer unlock()

	t := s.newTxn()
	defer t.close()
	out := make([]Leased, 0, len(unknown)+len(entries))
	for _, e := range unknown {
		l, ok, err := t.leaseReconcile(e, worker, leaseFor)
		if err != nil {
			putBack()
			return nil, err
		}
		if ok {
			out = append(out, l)
		}
	}
	for _, e := range entries {
		d, err := t.delivery(e.id)
		if err != nil {
			putBack()
			return nil, err
		}
		if d.GetState() != storev1.State_STATE_PENDING || d.GetBlocked() || d.GetDueUnixNano() != e.at {
			continue // changed since it was indexed; its new place is indexed
		}
		m, err := s.getMessage(e.id)
		if err != nil {
			putBack()
			return nil, err
		}
		next := proto.CloneOf(d)
		if exp := m.GetExpiresAtUnixNano(); exp != 0 && t.now >= exp {
			next.State = storev1.State_STATE_EXPIRED
			next.Reason = ReasonExpired
			if err := t.transition(m, d, next); err != nil {
				putBack()
				return nil, err
			}
			t.event(EventExpired, m, next, "DLV_004", "time-to-live passed before delivery")
			continue
		}
		next.State = storev1.State_STATE_IN_FLIGHT
		next.Attempts++
		next.LeaseToken++
		next.LeaseExpiresUnixNano = t.now + leaseFor.Nanoseconds()
		next.AttemptStartedUnixNano = t.now
		if err := t.transition(m, d, next); err != nil {
			putBack()
			return nil, err
		}
		t.event(EventLeased, m, next, "", worker)
		out = append(out, Leased{Message: m, Delivery: next})
	}
	t.commitSharedThenUnlock(unlock)
	return out, nil
}

func readd(kind byte, entries []entry) []change {
	out := make([]change, len(entries))
	for i, e := range entries {
		out[i] = change{add: true, kind: kind, e: e}
	}
	return out
}

// DueSignal returns the earliest time at which Lease has work (ok=false
// when there is none): PENDING messages' due times and, with reconcile,
// when UNKNOWN messages may next be asked about. changed is closed when new
// such work is indexed.
func (s *Store) DueSignal(reconcile bool) (next time.Time, ok bool, changed <-chan struct{}) {
	s.index.mu.Lock()
	defer s.index.mu.Unlock()
	e, ok := s.index.due.Min()
	if reconcile {
		if u, uok := s.index.unknown.Min(); uok && (!ok || u.at < e.at) {
			e, ok = u, true
		}
	}
	return time.Unix(0, e.at), ok, s.index.wake
}

// Result is what a delivery attempt came to.
type Result int

const (
	ResultDelivered Result = iota + 1
	ResultRetry
	ResultFailed
	ResultUnknown

	// The results of a reconcile lease (see reconcile.go).

	// ResultReconcileFound: the provider has it; DELIVERED.
	ResultReconcileFound
	// ResultReconcileNotFound: the provider definitely does not have it;
	// PENDING, due at once.
	ResultReconcileNotFound
	// ResultReconcileCannotAnswer: the adapter cannot ask; FAILED,
	// outcome_unknown.
	ResultReconcileCannotAnswer
	// ResultReconcileError: asking failed for now; stays UNKNOWN.
	ResultReconcileError
)

// reconcile reports whether r answers a reconcile lease.
func (r Result) reconcile() bool { return r >= ResultReconcileFound && r <= ResultReconcileError }

// Outcome is one attempt's result, fenced by the lease token it ran under.
type Outcome struct {
	MessageID  string
	LeaseToken uint64
	Result     Result
	// ProviderMessageID is required with ResultDelivered.
	ProviderMessageID string
	// RetryAt is when a ResultRetry message is next due; with
	// ResultReconcileError, the earliest time to ask again.
	RetryAt     time.Time
	ErrorCode   string
	ErrorDetail string
	Reason      string // with ResultFailed: why it is dead-lettered
	TraceID     string
	SpanID      string
	// NotAttempted is true when no provider call was made under this lease
	// (the channel's circuit was open, the destination paused, the attempt
	// budget was spent): the lease gives back its attempt. With
	// ResultReconcileError, the provider was not asked: the reconcile lease
	// gives back its try, and the message is asked about at RetryAt.
	NotAttempted bool
}

// Applied reports, per outcome, whether Complete applied it.
type Applied struct {
	MessageID string
	Applied   bool
	Reason    string
}

// Complete records outcomes in one batch, which shares the next synced
// commit's fsync (commitSharedThenUnlock): it returns once the batch is
// durable. Each is a compare-and-set
// on its lease: a delivery result on (IN_FLIGHT, lease token), a reconcile
// result on (UNKNOWN under a reconcile lease, lease token). A stale,
// repeated or mismatched outcome is not applied and changes nothing, so a
// batch can be retried whole.
func (s *Store) Complete(outcomes []Outcome) ([]Applied, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	msgs := make([]*storev1.Message, len(outcomes))
	res := make([]Applied, len(outcomes))
	stripes := make(lockSet, 0, len(outcomes))
	for i, o := range outcomes {
		res[i].MessageID = o.MessageID
		m, err := s.getMessage(o.MessageID)
		if errors.Is(err, ErrNotFound) {
			res[i].Reason = "no such message"
			continue
		}
		if err != nil {
			return nil, err
		}
		msgs[i] = m
		stripes = append(stripes, s.stripe(m.Tenant, m.Conversation))
	}
	stripes = s.lock(stripes)
	unlock := sync.OnceFunc(func() { s.unlock(stripes) })
	defer unlock()

	t := s.newTxn()
	defer t.close()
	for i, o := range outcomes {
		m := msgs[i]
		if m == nil {
			continue
		}
		d, err := t.delivery(m.Id)
		if err != nil {
			return nil, err
		}
		if o.Result.reconcile() {
			refused, err := t.completeReconcile(m, d, o)
			if err != nil {
				return nil, err
			}
			res[i].Reason, res[i].Applied = refused, refused == ""
			continue
		}
		if d.GetState() != storev1.State_STATE_IN_FLIGHT || d.GetLeaseToken() != o.LeaseToken {
			res[i].Reason = fmt.Sprintf("stale lease: message is %s with lease %d, outcome has lease %d",
				d.GetState(), d.GetLeaseToken(), o.LeaseToken)
			continue
		}
		if o.Result == ResultDelivered && o.ProviderMessageID == "" {
			res[i].Reason = "delivered without a provider message id (DLV_003); left to lease expiry"
			continue
		}
		if err := t.applyOutcome(m, d, o); err != nil {
			return nil, err
		}
		res[i].Applied = true
	}
	t.commitSharedThenUnlock(unlock)
	return res, nil
}

func (t *txn) applyOutcome(m *storev1.Message, d *storev1.Delivery, o Outcome) error {
	next := proto.CloneOf(d)
	next.LeaseExpiresUnixNano = 0
	if o.NotAttempted && o.Result != ResultDelivered && next.Attempts > 0 {
		next.Attempts--
	}
	if d.GetAbortRequested() && o.Result != ResultDelivered {
		// Aborted in flight and not confirmed: it ends here, never retried.
		next.LastErrorCode, next.LastError = o.ErrorCode, o.ErrorDetail
		abortedEnd(next)
		if err := t.transition(m, d, next); err != nil {
			return err
		}
		t.event(EventAborted, m, next, o.ErrorCode, "attempt ended after the abort: "+d.GetReason())
		return nil
	}
	var ev *storev1.Event
	switch o.Result {
	case ResultDelivered:
		next.State = storev1.State_STATE_DELIVERED
		next.ProviderMessageId = o.ProviderMessageID
		if err := t.transition(m, d, next); err != nil {
			return err
		}
		ev = t.event(EventDelivered, m, next, "", o.ProviderMessageID)
	case ResultRetry:
		next.State = storev1.State_STATE_PENDING
		next.DueUnixNano = o.RetryAt.UnixNano()
		next.LastErrorCode, next.LastError = o.ErrorCode, o.ErrorDetail
		if err := t.transition(m, d, next); err != nil {
			return err
		}
		ev = t.event(EventRetry, m, next, o.ErrorCode, o.ErrorDetail)
	case ResultFailed:
		next.State = storev1.State_STATE_FAILED
		next.LastErrorCode, next.LastError = o.ErrorCode, o.ErrorDetail
		next.Reason = o.Reason
		if next.Reason == "" {
			next.Reason = o.ErrorCode
		}
		if err := t.transition(m, d, next); err != nil {
			return err
		}
		ev = t.event(EventFailed, m, next, o.ErrorCode, o.ErrorDetail)
		t.event(EventDeadLettered, m, next, o.ErrorCode, next.Reason)
	case ResultUnknown:
		next.LastErrorCode, next.LastError = o.ErrorCode, o.ErrorDetail
		return t.unknown(m, d, next, o.ErrorCode, o.ErrorDetail, o.TraceID, o.SpanID)
	default:
		return fmt.Errorf("%w: outcome result %d", ErrInvalid, o.Result)
	}
	if o.TraceID != "" {
		ev.TraceId, ev.SpanId = o.TraceID, o.SpanID
	}
	return nil
}

// unknown moves an IN_FLIGHT message whose outcome is unknown into UNKNOWN
// and applies its channel's policy in the same batch. It never makes it
// PENDING unless the channel's sink deduplicates (PolicyRedeliver).
func (t *txn) unknown(m *storev1.Message, d, next *storev1.Delivery, code, detail, traceID, spanID string) error {
	if d.GetAbortRequested() {
		abortedEnd(next)
		if err := t.transition(m, d, next); err != nil {
			return err
		}
		t.event(EventAborted, m, next, code, "outcome unknown after the abort; never retried: "+d.GetReason())
		return nil
	}
	next.State = storev1.State_STATE_UNKNOWN
	next.UnknownSinceUnixNano = t.now
	next.LeaseExpiresUnixNano = 0
	// Under the reconcile policy the provider is first asked after the
	// grace period: by then the call whose outcome is unknown has ended.
	next.ReconcileAtUnixNano = t.now + t.s.reconcileGrace.Nanoseconds()
	next.ReconcileAttempts = 0
	next.Reconciling = false
	ev := t.event(EventUnknown, m, next, code, detail)
	if traceID != "" {
		ev.TraceId, ev.SpanId = traceID, spanID
	}
	return t.applyPolicy(m, d, next, code)
}

// applyPolicy resolves an UNKNOWN message (next, changing from d) by its
// channel's policy: PENDING at once for redeliver, FAILED outcome_unknown
// for fail; for reconcile it stays UNKNOWN until a reconcile lease asks
// the provider.
func (t *txn) applyPolicy(m *storev1.Message, d, next *storev1.Delivery, code string) error {
	final := proto.CloneOf(next)
	switch t.s.policy(m.GetChannel()) {
	case PolicyRedeliver:
		final.State = storev1.State_STATE_PENDING
		final.DueUnixNano = t.now
		leaveUnknown(final)
		if err := t.transition(m, d, final); err != nil {
			return err
		}
		t.event(EventRedeliver, m, final, code, "the sink deduplicates by message id")
	case PolicyFail:
		final.State = storev1.State_STATE_FAILED
		final.Reason = ReasonOutcomeUnknown
		leaveUnknown(final)
		if err := t.transition(m, d, final); err != nil {
			return err
		}
		t.event(EventDeadLettered, m, final, code, ReasonOutcomeUnknown)
	default:
		return t.transition(m, d, next)
	}
	return nil
}

// ExpireLeases moves up to max IN_FLIGHT messages whose lease expired to
// UNKNOWN and applies their channel's policy, and returns UNKNOWN messages
// whose reconcile lease expired to UNKNOWN without a lease (never to
// PENDING: see reconcileLater), in one synced batch. It returns how many it
// moved.
func (s *Store) ExpireLeases(max int) (int, error) {
	if s.closed.Load() {
		return 0, ErrClosed
	}
	entries := s.index.expired(s.now().UnixNano(), max)
	if len(entries) == 0 {
		return 0, nil
	}
	stripes := make(lockSet, 0, len(entries))
	for _, e := range entries {
		stripes = append(stripes, s.stripe(e.tenant, e.conversation))
	}
	stripes = s.lock(stripes)
	defer s.unlock(stripes)
	t := s.newTxn()
	defer t.close()
	n := 0
	for _, e := range entries {
		d, err := t.delivery(e.id)
		if err != nil {
			return 0, err
		}
		if d.GetLeaseExpiresUnixNano() != e.at {
			continue // changed since it was indexed
		}
		inFlight := d.GetState() == storev1.State_STATE_IN_FLIGHT
		reconciling := d.GetState() == storev1.State_STATE_UNKNOWN && d.GetReconciling()
		if !inFlight && !reconciling {
			continue
		}
		m, err := s.getMessage(e.id)
		if err != nil {
			return 0, err
		}
		next := proto.CloneOf(d)
		if inFlight {
			err = t.unknown(m, d, next, "DLV_005", fmt.Sprintf("lease %d expired without an outcome", d.GetLeaseToken()), "", "")
		} else {
			next.Reconciling = false
			next.LeaseExpiresUnixNano = 0
			err = t.reconcileLater(m, d, next, 0, "DLV_005", fmt.Sprintf("reconcile lease %d expired without an answer", d.GetLeaseToken()))
		}
		if err != nil {
			return 0, err
		}
		n++
	}
	t.commit()
	return n, nil
}

// RecordEvent appends an event that belongs to no message (channel health)
// to the event log, in its own synced batch, and returns its sequence.
func (s *Store) RecordEvent(typ, channel, code, detail string) (uint64, error) {
	if s.closed.Load() {
		return 0, ErrClosed
	}
	if typ == "" {
		return 0, fmt.Errorf("%w: event type is required", ErrInvalid)
	}
	b := s.db.NewBatch()
	defer b.Close()
	ev := &storev1.Event{TimeUnixNano: s.now().UnixNano(), Type: typ, Channel: channel, ErrorCode: code, Detail: detail}
	seq := s.events.reserve([]*storev1.Event{ev})
	b.Set(eventKey(seq), mustMarshal(ev), nil)
	s.commit(b)
	s.events.publish(seq, 1)
	return seq, nil
}
