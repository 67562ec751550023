package store

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// A batch that no Send waits for (a lease batch, a batch of delivery
// outcomes) need not have an fsync of its own: committed without one, it
// is in the WAL ahead of every later commit, and the fsync of the next
// synced commit (an Accept's, at any load) makes it durable too. Its caller
// still gets no answer before then, so nothing it acts on can be lost.
// Alone, each such batch made its own fsync: a lone Send's Accept then
// found the disk busy with the previous message's lease or outcome about
// half the time and waited for that fsync before its own (ghz with one
// caller: p50 0.88 ms with the queue stopped, 1.25 ms with it delivering,
// three commits and 2.6 fsyncs per message).
//
// syncShare tells such a batch when a later fsync has completed: every
// synced commit takes a ticket before it starts and reports it when it
// returns; a batch committed before ticket n was handed out is durable once
// a ticket ≥ n has returned. Tickets return in any order: the WAL is one
// sequence, so any later fsync covers every earlier record.
//
// A shared batch is visible to reads from its commit on, before it is
// durable. A read that answers a caller waits (settled) until every batch
// it could have seen is durable, so that herald never reports a state a
// crash could still take back.
type syncShare struct {
	mu      sync.Mutex
	handed  uint64        // tickets handed out
	done    uint64        // the greatest ticket returned
	changed chan struct{} // closed and replaced when done grows
	// unsynced counts the shared batches committed and not yet known
	// durable.
	unsynced atomic.Int64
}

// DefaultSyncShareDelay is Options.SyncShareDelay's default: longer than
// the time between two Sends of one caller (about 1.2 ms here), so that a
// lone caller's Accepts carry the deliveries' batches.
const DefaultSyncShareDelay = 2 * time.Millisecond

func (w *syncShare) init() { w.changed = make(chan struct{}) }

// take hands out the next ticket, to a synced commit about to start.
func (w *syncShare) take() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.handed++
	return w.handed
}

// give reports that the commit holding ticket has returned.
func (w *syncShare) give(ticket uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ticket > w.done {
		w.done = ticket
		close(w.changed)
		w.changed = make(chan struct{})
	}
}

// next is the first ticket not yet handed out: one handed out from now on
// belongs to a commit that starts after every commit that has returned.
func (w *syncShare) next() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.handed + 1
}

func (w *syncShare) watch() (done uint64, changed <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.done, w.changed
}

// commitUnsynced applies a batch, written to the WAL but not synced; it is
// durable once a ticket ≥ the returned one has returned (awaitSync).
func (s *Store) commitUnsynced(b *pebble.Batch) (need uint64) {
	s.syncs.unsynced.Add(1)
	if err := b.Commit(pebble.NoSync); err != nil {
		s.commitFailed(err)
	}
	return s.syncs.next()
}

// awaitSync waits until the shared batch that commitUnsynced returned need
// for is durable.
func (s *Store) awaitSync(need uint64, start time.Time) {
	s.waitSynced(need)
	s.syncs.unsynced.Add(-1)
	if s.onCommit != nil {
		s.onCommit(time.Since(start))
	}
}

// settled waits until every shared batch a read just made could have seen
// is durable: at once when none is waiting for its fsync. Every method
// that answers a caller with what it read calls it.
func (s *Store) settled() {
	if s.syncs.unsynced.Load() == 0 {
		return // any batch the read saw was counted before its commit, and is durable
	}
	s.waitSynced(s.syncs.next())
}

// waitSynced waits until a commit holding ticket need or a later one has
// returned, syncing the WAL itself after Options.SyncShareDelay.
func (s *Store) waitSynced(need uint64) {
	var timeout <-chan time.Time
	for {
		done, changed := s.syncs.watch()
		if done >= need {
			return
		}
		if timeout == nil {
			t := time.NewTimer(s.shareDelay)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-changed:
		case <-timeout:
			ticket := s.syncs.take()
			if err := s.db.LogData(nil, pebble.Sync); err != nil {
				s.commitFailed(err)
			}
			s.syncs.give(ticket)
		}
	}
}

func (s *Store) commitFailed(err error) {
	s.log.Error("store commit failed; the tracker must stop and restart from the durable state", "error_code", "TRK_001", "err", err)
	panic(fmt.Sprintf("herald tracker: store commit failed: %v", err))
}
