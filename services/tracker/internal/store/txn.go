package store

import (
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// txn gathers one batch: record writes, recovery-index edits, counter deltas
// and events. Its caller holds the stripe locks of every conversation the
// batch touches. commit makes it durable, then publishes the events and the
// index edits, in that order, before the locks are released.
type txn struct {
	s       *Store
	b       *pebble.Batch
	now     int64
	changes []change
	events  []*storev1.Event
	counts  map[storev1.State]int64
	// deliveries overlays the batch's own writes on the store, so that two
	// transitions in one batch see each other.
	deliveries map[string]*storev1.Delivery
	// inactive holds the messages the batch takes out of their
	// conversation's active set; activeEdits, every change to the sets,
	// applied after the commit.
	inactive    map[string]bool
	activeEdits []activeEdit
	// blockedAdded counts the blocked index entries the batch added.
	blockedAdded int
	// accepted and finished are the messages the batch accepts (their
	// stored form, by id) and those it moves to a terminal state: the
	// store's live messages change by them after the commit.
	accepted map[string][]byte
	finished []string
	// written holds the delivery records the batch writes, by id.
	written map[string][]byte
}

func (s *Store) newTxn() *txn {
	return &txn{
		s:          s,
		b:          s.db.NewBatch(),
		now:        s.now().UnixNano(),
		counts:     map[storev1.State]int64{},
		deliveries: map[string]*storev1.Delivery{},
		inactive:   map[string]bool{},
	}
}

// delivery returns the message's delivery as this batch would leave it.
// The caller may modify the copy it gets and pass it to transition.
func (t *txn) delivery(id string) (*storev1.Delivery, error) {
	if d, ok := t.deliveries[id]; ok {
		return proto.CloneOf(d), nil
	}
	return t.s.getDelivery(id)
}

// indexPlace is where a delivery belongs in the recovery index; ok is false
// for terminal states, which are never in it.
func indexPlace(d *storev1.Delivery) (kind byte, at int64, ok bool) {
	switch d.GetState() {
	case storev1.State_STATE_PENDING:
		if d.GetBlocked() {
			return recoveryBlocked, 0, true
		}
		return recoveryDue, d.GetDueUnixNano(), true
	case storev1.State_STATE_IN_FLIGHT:
		return recoveryLeased, d.GetLeaseExpiresUnixNano(), true
	case storev1.State_STATE_UNKNOWN:
		if d.GetReconciling() {
			return recoveryReconciling, d.GetLeaseExpiresUnixNano(), true
		}
		if at := d.GetReconcileAtUnixNano(); at != 0 {
			return recoveryUnknown, at, true
		}
		return recoveryUnknown, d.GetUnknownSinceUnixNano(), true // written by schema version 1
	}
	return 0, 0, false
}

// IsTerminal reports whether no further transition follows st (until an
// operator redrives a FAILED message).
func IsTerminal(st storev1.State) bool {
	switch st {
	case storev1.State_STATE_DELIVERED, storev1.State_STATE_FAILED, storev1.State_STATE_ABORTED, storev1.State_STATE_EXPIRED:
		return true
	}
	return false
}

func (t *txn) setIndex(m *storev1.Message, d *storev1.Delivery) {
	kind, at, ok := indexPlace(d)
	if !ok {
		return
	}
	e := entry{at: at, id: m.GetId(), channel: m.GetChannel(), tenant: m.GetTenant(), conversation: m.GetConversation()}
	t.b.Set(recoveryKey(kind, at, e.id), recoveryValue(e.channel, e.tenant, e.conversation, m.GetSequence()), nil)
	t.changes = append(t.changes, change{add: true, kind: kind, e: e})
	if kind == recoveryBlocked {
		t.blockedAdded++
	}
}

func (t *txn) deleteIndex(m *storev1.Message, d *storev1.Delivery) {
	kind, at, ok := indexPlace(d)
	if !ok {
		return
	}
	e := entry{at: at, id: m.GetId(), channel: m.GetChannel(), tenant: m.GetTenant(), conversation: m.GetConversation()}
	// Each entry key is set once and deleted once (a key holds a message's
	// place at one moment), so a single delete is exact, and Pebble drops it
	// together with its set as soon as they meet in a flush. A plain
	// tombstone would stay in the index's key range until a compaction
	// reached the last level, and every startup scan would step over the
	// tombstones of the whole history.
	t.b.SingleDelete(recoveryKey(kind, at, e.id), nil)
	t.changes = append(t.changes, change{add: false, kind: kind, e: e})
}

// insert writes a new message's delivery (Accept).
func (t *txn) insert(m *storev1.Message, d *storev1.Delivery) {
	d.UpdatedUnixNano = t.now
	t.setDelivery(m.GetId(), d)
	t.setIndex(m, d)
	t.counts[d.GetState()]++
}

// setDelivery makes d the message's delivery as the batch leaves it; commit
// writes it, with the sequences of the batch's events of the message added.
func (t *txn) setDelivery(id string, d *storev1.Delivery) {
	t.deliveries[id] = d
}

// transition moves m from old to next: the delivery record, its recovery-
// index entry and the per-state counts change together. next is a copy of
// old with the changes made (so it keeps old's event sequences, the
// message's timeline so far). Entering a terminal
// state also leaves the conversation's active set and lets the next message
// of the conversation go.
func (t *txn) transition(m *storev1.Message, old, next *storev1.Delivery) error {
	next.UpdatedUnixNano = t.now
	id := m.GetId()
	t.setDelivery(id, next)
	oldKind, oldAt, oldIn := indexPlace(old)
	newKind, newAt, newIn := indexPlace(next)
	if !oldIn || !newIn || oldKind != newKind || oldAt != newAt {
		t.deleteIndex(m, old)
		t.setIndex(m, next)
	}
	if old.GetState() != next.GetState() {
		t.counts[old.GetState()]--
		t.counts[next.GetState()]++
	}
	if next.GetState() == storev1.State_STATE_FAILED && old.GetState() != storev1.State_STATE_FAILED {
		t.b.Set(deadLetterKey(t.now, id), nil, nil)
	}
	if IsTerminal(next.GetState()) && !IsTerminal(old.GetState()) {
		t.finished = append(t.finished, id)
		return t.leaveConversation(m)
	}
	return nil
}

// leaveConversation removes m from its conversation's active set (in
// memory: durably, leaving the recovery index, which the caller's
// transition does, is leaving the conversation) and, if that makes another
// message the head, unblocks it.
func (t *txn) leaveConversation(m *storev1.Message) error {
	t.inactive[m.GetId()] = true
	t.activeEdit(false, m)
	// Only a blocked message is ever promoted, and the memory index counts
	// them. With none indexed and none added by this batch there is none to
	// promote, and neither the head nor its delivery record need be read. A
	// blocked message of this conversation is written and indexed under its
	// stripe lock, which the caller holds, so the count cannot miss one.
	if t.blockedAdded == 0 && t.s.index.blockedCount() == 0 {
		return nil
	}
	headID := t.head(m.GetTenant(), m.GetConversation())
	if headID == "" {
		return nil
	}
	d, err := t.delivery(headID)
	if err != nil {
		return fmt.Errorf("promote %s: %w", headID, err)
	}
	if d.GetState() != storev1.State_STATE_PENDING || !d.GetBlocked() {
		return nil
	}
	hm, err := t.s.getMessage(headID)
	if err != nil {
		return fmt.Errorf("promote %s: %w", headID, err)
	}
	next := proto.CloneOf(d)
	next.Blocked = false
	next.DueUnixNano = t.now
	return t.transition(hm, d, next)
}

// head returns the id of the conversation's first active message as this
// batch would leave the set, or "" when none is. (A message the batch adds
// to the set is not counted: a batch holds at most one accept or redrive
// per conversation, and asks before it adds.)
func (t *txn) head(tenant, conversation string) string {
	return t.s.active.first(t.s.stripe(tenant, conversation), convKey{tenant, conversation}, t.inactive)
}

// activeEdit records that m joins (add) or leaves its conversation's
// active set, as the batch's recovery-index entries do durably.
func (t *txn) activeEdit(add bool, m *storev1.Message) {
	t.activeEdits = append(t.activeEdits, activeEdit{
		add:    add,
		stripe: t.s.stripe(m.GetTenant(), m.GetConversation()),
		conv:   convKey{m.GetTenant(), m.GetConversation()},
		ref:    activeRef{seq: m.GetSequence(), id: m.GetId()},
	})
}

// event adds an event to the batch; its sequence is set at commit.
func (t *txn) event(typ string, m *storev1.Message, d *storev1.Delivery, errorCode, detail string) *storev1.Event {
	traceID, spanID := parseTraceparent(m.GetTraceparent())
	ev := &storev1.Event{
		TimeUnixNano: t.now,
		Type:         typ,
		MessageId:    m.GetId(),
		Tenant:       m.GetTenant(),
		Channel:      m.GetChannel(),
		Conversation: m.GetConversation(),
		State:        d.GetState(),
		Attempt:      d.GetAttempts(),
		ErrorCode:    errorCode,
		Detail:       detail,
		TraceId:      traceID,
		SpanId:       spanID,
	}
	t.events = append(t.events, ev)
	return ev
}

// commit makes the batch durable (fsync), then publishes its events and
// recovery-index edits. The caller still holds the stripe locks.
func (t *txn) commit() {
	first := t.seal()
	t.s.commit(t.b)
	t.s.events.publish(first, len(t.events))
	t.apply()
}

// commitSharedThenUnlock commits the batch without an fsync of its own
// (see syncShare) and applies its recovery-index and memory edits, as
// commit does; then it releases the caller's stripe locks (unlock) and
// waits until a later fsync has made the batch durable, and publishes its
// events. The locks go first so that the commits it waits for (an Accept
// into one of its conversations, say) are not waiting for it; the caller
// answers nobody before it returns. Until then, a read may see the batch's
// writes, and any synced commit made after them makes them durable with
// it. With sharing off it is a synced commit of its own, then the unlock.
func (t *txn) commitSharedThenUnlock(unlock func()) {
	if t.s.shareDelay < 0 {
		t.commit()
		unlock()
		return
	}
	start := time.Now()
	first := t.seal()
	need := t.s.commitUnsynced(t.b)
	t.apply()
	unlock()
	t.s.awaitSync(need, start)
	t.s.events.publish(first, len(t.events))
}

// seal writes the batch's events, delivery records and counter deltas
// into it, and returns the first event's sequence.
func (t *txn) seal() (first uint64) {
	if len(t.events) > 0 {
		first = t.s.events.reserve(t.events)
		for _, ev := range t.events {
			t.b.Set(eventKey(ev.Sequence), mustMarshal(ev), nil)
			// The message's timeline points to the event by its sequence
			// (the event is written once, in the log): in its delivery
			// record, which nearly every batch with an event of a message
			// rewrites, or else in a timeline key.
			if d, ok := t.deliveries[ev.GetMessageId()]; ok {
				d.EventSequences = append(d.EventSequences, ev.Sequence)
			} else {
				t.b.Set(timelineKey(ev.GetMessageId(), ev.Sequence), nil, nil)
			}
		}
	}
	t.written = make(map[string][]byte, len(t.deliveries))
	for id, d := range t.deliveries {
		v := mustMarshal(d)
		t.b.Set(deliveryKey(id), v, nil)
		t.written[id] = v
	}
	for st, n := range t.counts {
		if n != 0 {
			t.b.Merge(countKey(byte(st)), counterDelta(n), nil)
		}
	}
	return first
}

// apply makes the committed batch's edits to the store's memory.
func (t *txn) apply() {
	t.s.index.apply(t.changes)
	t.s.active.apply(t.activeEdits)
	t.s.live.update(t.accepted, t.written, t.finished)
}

func (t *txn) close() { t.b.Close() }

// parseTraceparent extracts the trace and parent span ids of a W3C
// traceparent ("00-<trace>-<span>-<flags>").
func parseTraceparent(tp string) (traceID, spanID string) {
	parts := strings.Split(tp, "-")
	if len(parts) != 4 || len(parts[1]) != 32 || len(parts[2]) != 16 {
		return "", ""
	}
	return parts[1], parts[2]
}

func seqBytes(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
