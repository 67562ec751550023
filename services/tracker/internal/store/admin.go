package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// ErrTerminal: the message already reached a terminal state; nothing was
// changed. Returned by Abort and Redrive with the message's current state.
var ErrTerminal = errors.New("message already finished")

// ErrNotDeadLetter: redrive or purge of a message that is not FAILED.
var ErrNotDeadLetter = errors.New("message is not a dead letter")

// Abort cancels a message durably. A PENDING or UNKNOWN message (an
// UNKNOWN one even while a reconcile lease asks the provider about it)
// becomes ABORTED and leaves the recovery index in the same batch, so no
// restart sends it. An IN_FLIGHT message keeps its lease, marked
// abort_requested: its attempt may still be confirmed by the provider (then
// DELIVERED, which is the truth); any other end makes it ABORTED, never a
// retry. Aborting a message already terminal (or already aborting) returns
// ErrTerminal with its delivery and changes nothing.
func (s *Store) Abort(id, reason string) (*storev1.Delivery, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	m, err := s.getMessage(id)
	if err != nil {
		return nil, err
	}
	stripes := s.lock(lockSet{s.stripe(m.Tenant, m.Conversation)})
	defer s.unlock(stripes)
	t := s.newTxn()
	defer t.close()
	d, err := t.delivery(id)
	if err != nil {
		return nil, err
	}
	if IsTerminal(d.GetState()) || d.GetAbortRequested() {
		s.settled() // answers with what it read
		return d, fmt.Errorf("%w: %s is %s", ErrTerminal, id, d.GetState())
	}
	next, err := t.abort(m, d, reason)
	if err != nil {
		return nil, err
	}
	t.commit()
	return next, nil
}

// abort aborts one unfinished message in t: a PENDING or UNKNOWN one
// becomes ABORTED and leaves the recovery index; an IN_FLIGHT one is marked
// abort_requested (its attempt ends ABORTED unless the provider confirmed).
func (t *txn) abort(m *storev1.Message, d *storev1.Delivery, reason string) (*storev1.Delivery, error) {
	next := proto.CloneOf(d)
	next.Reason = reason
	switch d.GetState() {
	case storev1.State_STATE_IN_FLIGHT:
		next.AbortRequested = true
	case storev1.State_STATE_UNKNOWN:
		// Reconciling or not: the abort wins, and a reconcile lease's
		// answer is then refused as stale.
		abortedEnd(next)
		leaveUnknown(next)
	default:
		next.State = storev1.State_STATE_ABORTED
	}
	if err := t.transition(m, d, next); err != nil {
		return nil, err
	}
	t.event(EventAborted, m, next, "", reason)
	return next, nil
}

// abortedEnd turns the end of an attempt whose message was aborted in
// flight into ABORTED, unless the provider confirmed it.
func abortedEnd(next *storev1.Delivery) {
	next.State = storev1.State_STATE_ABORTED
	next.LeaseExpiresUnixNano = 0
	next.UnknownSinceUnixNano = 0
	next.DueUnixNano = 0
}

// DeadLetterFilter selects dead letters; zero fields match all.
type DeadLetterFilter struct {
	Channel string
	Since   time.Time
	Code    string
	Limit   int
}

// DeadLetters lists FAILED messages, oldest failure first.
func (s *Store) DeadLetters(f DeadLetterFilter) ([]Leased, error) {
	defer s.settled() // answers with what it read
	lower := []byte{prefixDeadLetter}
	if !f.Since.IsZero() {
		lower = binary.BigEndian.AppendUint64(lower, uint64(f.Since.UnixNano()))
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: []byte{prefixDeadLetter + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []Leased
	for ok := it.First(); ok && (f.Limit <= 0 || len(out) < f.Limit); ok = it.Next() {
		k := it.Key()
		if len(k) != 1+8+idLen {
			return nil, fmt.Errorf("dead-letter key %x: bad length", k)
		}
		id := string(k[9:])
		m, err := s.getMessage(id)
		if err != nil {
			return nil, err
		}
		d, err := s.getDelivery(id)
		if err != nil {
			return nil, err
		}
		if (f.Channel != "" && m.GetChannel() != f.Channel) || (f.Code != "" && d.GetLastErrorCode() != f.Code && d.GetReason() != f.Code) {
			continue
		}
		out = append(out, Leased{Message: m, Delivery: d})
	}
	return out, it.Error()
}

// Redrive makes a FAILED message PENDING again with a fresh attempt budget;
// its history and lease tokens are kept. It rejoins its conversation: it is
// due at once unless another message of the conversation is active, in
// which case it waits its turn by sequence. Errors: ErrNotFound,
// ErrNotDeadLetter.
func (s *Store) Redrive(id string) (*storev1.Delivery, error) {
	return s.changeDeadLetter(id, func(t *txn, m *storev1.Message, d *storev1.Delivery) (*storev1.Delivery, error) {
		head := t.head(m.Tenant, m.Conversation)
		next := proto.CloneOf(d)
		next.State = storev1.State_STATE_PENDING
		next.Attempts = 0
		next.Reason = ""
		next.Blocked = head != ""
		next.DueUnixNano = 0
		if !next.Blocked {
			next.DueUnixNano = t.now
		}
		t.activeEdit(true, m)
		if err := t.transition(m, d, next); err != nil {
			return nil, err
		}
		t.event(EventRedriven, m, next, "", "")
		return next, nil
	})
}

// Purge removes a FAILED message from the dead-letter list. The message,
// its state and its history stay; only its place in the list goes.
func (s *Store) Purge(id string) (*storev1.Delivery, error) {
	return s.changeDeadLetter(id, func(t *txn, m *storev1.Message, d *storev1.Delivery) (*storev1.Delivery, error) {
		t.event("message.purged", m, d, "", "removed from the dead-letter list")
		return d, nil
	})
}

func (s *Store) changeDeadLetter(id string, fn func(*txn, *storev1.Message, *storev1.Delivery) (*storev1.Delivery, error)) (*storev1.Delivery, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	m, err := s.getMessage(id)
	if err != nil {
		return nil, err
	}
	stripes := s.lock(lockSet{s.stripe(m.Tenant, m.Conversation)})
	defer s.unlock(stripes)
	t := s.newTxn()
	defer t.close()
	d, err := t.delivery(id)
	if err != nil {
		return nil, err
	}
	if d.GetState() != storev1.State_STATE_FAILED {
		s.settled() // answers with what it read
		return d, fmt.Errorf("%w: %s is %s", ErrNotDeadLetter, id, d.GetState())
	}
	dl := deadLetterKey(d.GetUpdatedUnixNano(), id)
	if _, closer, err := s.db.Get(dl); err != nil {
		if errors.Is(err, pebble.ErrNotFound) {
			s.settled() // answers with what it read
			return d, fmt.Errorf("%w: %s was purged from the dead-letter list", ErrNotDeadLetter, id)
		}
		return nil, err
	} else {
		closer.Close()
	}
	t.b.Delete(dl, nil)
	next, err := fn(t, m, d)
	if err != nil {
		return nil, err
	}
	t.commit()
	return next, nil
}

// Checkpoint writes a consistent copy of the store into dir (which must not
// exist) while the store serves. The copy opens as a store of its own.
func (s *Store) Checkpoint(dir string) error {
	if err := s.db.Checkpoint(dir, pebble.WithFlushedWAL()); err != nil {
		return fmt.Errorf("checkpoint into %s: %w", dir, err)
	}
	return nil
}

// Backup writes a checkpoint named by time into root and keeps the newest
// keep checkpoints there, removing older ones. It returns the new folder.
func (s *Store) Backup(root string, keep int, now time.Time) (string, error) {
	if keep < 1 {
		return "", fmt.Errorf("%w: keep must be at least 1", ErrInvalid)
	}
	if err := os.MkdirAll(root, 0o750); err != nil {
		return "", fmt.Errorf("create backup folder %s: %w", root, err)
	}
	dir := filepath.Join(root, "herald-"+now.UTC().Format("20060102T150405.000000000Z"))
	if err := s.Checkpoint(dir); err != nil {
		return "", err
	}
	entries, err := filepath.Glob(filepath.Join(root, "herald-*"))
	if err != nil {
		return dir, err
	}
	sort.Strings(entries) // names sort by time
	for len(entries) > keep {
		if err := os.RemoveAll(entries[0]); err != nil {
			return dir, fmt.Errorf("remove old backup %s: %w", entries[0], err)
		}
		entries = entries[1:]
	}
	return dir, nil
}
