package store

import "slices"

// convKey names a conversation.
type convKey struct{ tenant, conversation string }

// activeRef is one of a conversation's non-terminal messages.
type activeRef struct {
	seq uint64
	id  string
}

// activeSets holds each conversation's non-terminal messages in sequence
// order, the first being its head: in memory, the recovery index's entries
// grouped by conversation (each carries its message's sequence). Accept
// asks whether a conversation has an active message (the new one waits
// behind it) and a message that finishes hands the turn to the next; reading the head from Pebble instead opens an iterator over the
// conversation's active keys, which no bloom filter answers and which must
// step over the single deletes of its delivered messages until a
// compaction drops them: a third of the tracker's CPU when conversations
// hold many messages.
//
// A conversation's set lives in the map of its lock stripe and is read and
// changed only under that stripe's lock, which every batch touching the
// conversation holds; a batch changes it after its commit (txn.commit), so
// the sets hold exactly what the durable recovery index holds. Open loads
// them with the index; a conversation without active messages has no
// entry, so the memory follows the pending work, not the history.
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
		// edits both (TestActiveSetsFollowTheRecoveryIndex), so neither happens.
		if len(refs) == 0 {
			delete(m, e.conv)
		} else {
			m[e.conv] = refs
		}
	}
}
