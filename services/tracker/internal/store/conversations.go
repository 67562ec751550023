package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// convKey names a conversation.
type convKey struct{ tenant, conversation string }

// activeRef is one of a conversation's non-terminal messages.
type activeRef struct {
	seq uint64
	id  string
}

// activeSets mirrors the conversation-active key family in memory: each
// conversation's non-terminal messages in sequence order, the first being
// its head. Accept asks whether a conversation has an active message (the
// new one waits behind it) and a message that finishes hands the turn to
// the next; reading the head from Pebble instead opens an iterator over the
// conversation's active keys, which no bloom filter answers and which must
// step over the single deletes of its delivered messages until a
// compaction drops them: a third of the tracker's CPU when conversations
// hold many messages.
//
// A conversation's set lives in the map of its lock stripe and is read and
// changed only under that stripe's lock, which every batch touching the
// conversation holds; a batch changes it after its commit (txn.commit), so
// the sets hold exactly what Pebble holds. Open loads them by scanning the
// key family; a conversation without active messages has no entry, so the
// memory follows the pending work, not the history.
type activeSets struct {
	byStripe [lockStripes]map[convKey][]activeRef
}

// activeEdit is a change of one conversation's set made by a batch.
type activeEdit struct {
	add    bool
	stripe int
	conv   convKey
	ref    activeRef
}

// first returns the id of the conversation's first active message that
// skip does not exclude, or "".
func (a *activeSets) first(stripe int, c convKey, skip map[string]bool) string {
	for _, r := range a.byStripe[stripe][c] {
		if !skip[r.id] {
			return r.id
		}
	}
	return ""
}

// apply makes a committed batch's edits (or Open's load). The caller holds
// the stripe lock of every edited conversation.
func (a *activeSets) apply(edits []activeEdit) {
	for _, e := range edits {
		m := a.byStripe[e.stripe]
		if m == nil {
			m = map[convKey][]activeRef{}
			a.byStripe[e.stripe] = m
		}
		refs := m[e.conv]
		i, found := slices.BinarySearchFunc(refs, e.ref.seq, func(r activeRef, seq uint64) int {
			switch {
			case r.seq < seq:
				return -1
			case r.seq > seq:
				return 1
			}
			return 0
		})
		switch {
		case e.add && !found:
			// Sequences grow, so a new message goes last; a redriven one
			// may go before others.
			refs = slices.Insert(refs, i, e.ref)
		case !e.add && found && i == 0:
			// The head leaves: the usual case. Reslicing drops it without
			// moving the rest; the next append that outgrows the array
			// copies only what remains.
			refs = refs[1:]
		case !e.add && found:
			refs = slices.Delete(refs, i, i+1)
		}
		// An add of a sequence already in the set, or a removal of one
		// not in it, would mean the sets and Pebble disagree; every batch
		// edits both (TestActiveSetsFollowPebble), so neither happens.
		if len(refs) == 0 {
			delete(m, e.conv)
		} else {
			m[e.conv] = refs
		}
	}
}

// loadActive fills the active sets from Pebble (Open, before the store
// serves) and returns how many dead entries the scan stepped over (the
// single deletes of finished messages and what they delete, until a
// compaction brings them together).
func (s *Store) loadActive() (dead int64, err error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixConvActive}, UpperBound: []byte{prefixConvActive + 1}})
	if err != nil {
		return 0, fmt.Errorf("load conversations: %w", err)
	}
	defer it.Close()
	var edits []activeEdit
	for ok := it.First(); ok; ok = it.Next() {
		c, seq, err := parseConvSeqEntryKey(it.Key())
		if err != nil {
			return 0, fmt.Errorf("load conversations: %w", err)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return 0, fmt.Errorf("load conversations: %w", err)
		}
		edits = append(edits, activeEdit{add: true, stripe: s.stripe(c.tenant, c.conversation), conv: c, ref: activeRef{seq: seq, id: string(v)}})
	}
	if err := it.Error(); err != nil {
		return 0, fmt.Errorf("load conversations: %w", err)
	}
	s.active.apply(edits)
	st := it.Stats()
	return int64(st.ForwardStepCount[pebble.InternalIterCall] - st.ForwardStepCount[pebble.InterfaceCall]), nil
}

// parseConvSeqEntryKey parses prefix | tenant | 0x00 | conversation | 0x00 | seq[8].
func parseConvSeqEntryKey(k []byte) (convKey, uint64, error) {
	if len(k) < 1+2+8 {
		return convKey{}, 0, fmt.Errorf("conversation key %x is too short", k)
	}
	body, seq := k[1:len(k)-8], binary.BigEndian.Uint64(k[len(k)-8:])
	i := bytes.IndexByte(body, 0)
	if i < 0 || body[len(body)-1] != 0 || i == len(body)-1 {
		return convKey{}, 0, fmt.Errorf("conversation key %x: no tenant and conversation", k)
	}
	return convKey{tenant: string(body[:i]), conversation: string(body[i+1 : len(body)-1])}, seq, nil
}
