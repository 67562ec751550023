package store

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/google/btree"
)

// entry is one recovery-index entry held in memory.
type entry struct {
	at           int64 // due time, lease expiry or unknown-since
	id           string
	channel      string
	tenant       string
	conversation string
}

func entryLess(a, b entry) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	return a.id < b.id
}

// memIndex mirrors the durable recovery index so that leasing and the lease
// sweep never scan Pebble, where the tombstones of finished messages would
// make every scan as slow as the history is long. It is rebuilt from Pebble
// at Open and changed only after the batch that changed the durable index has
// committed, under the stripe lock of the message's conversation, so it never
// shows an entry that is not durable. It is a hint: every transition re-reads
// and checks the durable state before writing.
type memIndex struct {
	mu          sync.Mutex
	due         channelTrees         // PENDING, by channel, then due time
	leased      *btree.BTreeG[entry] // IN_FLIGHT, by lease expiry
	unknown     *btree.BTreeG[entry] // UNKNOWN, by when to reconcile
	reconciling *btree.BTreeG[entry] // UNKNOWN under a reconcile lease, by lease expiry
	blocked     int                  // PENDING behind an earlier message
	wake        chan struct{}        // closed and replaced when due or unknown work is added
	closed      bool
}

func newMemIndex() *memIndex {
	return &memIndex{
		due:         channelTrees{by: map[string]*btree.BTreeG[entry]{}},
		leased:      btree.NewG(32, entryLess),
		unknown:     btree.NewG(32, entryLess),
		reconciling: btree.NewG(32, entryLess),
		wake:        make(chan struct{}),
	}
}

func (x *memIndex) tree(kind byte) *btree.BTreeG[entry] {
	switch kind {
	case recoveryLeased:
		return x.leased
	case recoveryUnknown:
		return x.unknown
	case recoveryReconciling:
		return x.reconciling
	}
	return nil
}

// change is one edit of the recovery index, applied to memory after commit.
type change struct {
	add  bool
	kind byte
	e    entry
}

// apply applies committed edits.
func (x *memIndex) apply(changes []change) {
	if len(changes) == 0 {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	woke := false
	for _, c := range changes {
		if c.kind == recoveryBlocked {
			if c.add {
				x.blocked++
			} else {
				x.blocked--
			}
			continue
		}
		switch t := x.tree(c.kind); {
		case c.kind == recoveryDue && c.add:
			x.due.insert(c.e)
			woke = true
		case c.kind == recoveryDue:
			x.due.delete(c.e)
		case c.add:
			t.ReplaceOrInsert(c.e)
			woke = woke || c.kind == recoveryUnknown
		default:
			t.Delete(c.e)
		}
	}
	if woke && !x.closed {
		close(x.wake)
		x.wake = make(chan struct{})
	}
}

// blockedCount is the number of PENDING messages behind an earlier one.
func (x *memIndex) blockedCount() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.blocked
}

// size is the number of entries, every kind together.
func (x *memIndex) size() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.due.Len() + x.leased.Len() + x.unknown.Len() + x.reconciling.Len() + x.blocked
}

// take removes and returns up to max entries that are due (at ≤ now),
// skipping channels without free slots: with reconcile, UNKNOWN entries
// whose time to ask the provider has come first, then PENDING ones. Taken
// entries are the caller's to lease; if leasing one fails, whoever changed
// its state owns its index entry.
func (x *memIndex) take(now int64, max int, slots map[string]uint32, reconcile bool) (unknown, due []entry) {
	x.mu.Lock()
	defer x.mu.Unlock()
	used := map[string]uint32{}
	if reconcile {
		// Few messages are ever UNKNOWN: one tree, skipping full channels.
		x.unknown.Ascend(func(e entry) bool {
			if e.at > now || len(unknown) >= max {
				return false
			}
			if free, limited := slots[e.channel]; limited && used[e.channel] >= free {
				return true
			}
			used[e.channel]++
			unknown = append(unknown, e)
			return true
		})
		for _, e := range unknown {
			x.unknown.Delete(e)
		}
	}
	return unknown, x.due.take(now, max-len(unknown), slots, used)
}

// liveMessagesMax bounds the bytes liveMessages holds: 64 MiB keeps about
// 180,000 messages of 256 bytes of text, more than a backlog the pipeline
// drains in ten seconds here.
const liveMessagesMax = 64 << 20

// liveMessages holds the stored form of messages accepted since Open that
// have not finished, and of their delivery records, up to liveMessagesMax
// bytes: leasing and completing them then reads nothing from Pebble. A
// message record is written once, at Accept; a delivery record is rewritten
// by every transition, and the copy here is replaced after the batch that
// wrote it commits, under the conversation's stripe lock that every
// transition of the message holds, so a transition never reads a stale
// copy. A message enters after the accepting batch commits and leaves after
// the batch that finishes it. Messages pending at Open, those accepted while
// the set is full and those a grown delivery record pushed out are read
// from Pebble.
type liveMessages struct {
	mu    sync.Mutex
	m     map[string]liveMessage
	bytes int
	max   int // liveMessagesMax
}

// liveMessage is one message's records as stored.
type liveMessage struct {
	message, delivery []byte
}

func (e liveMessage) size() int { return len(e.message) + len(e.delivery) }

func newLiveMessages(max int) liveMessages {
	return liveMessages{m: map[string]liveMessage{}, max: max}
}

func (l *liveMessages) get(id string) (liveMessage, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.m[id]
	return e, ok
}

// update applies one committed batch: it adds the accepted messages (with
// their deliveries) while there is room, replaces the delivery records the
// batch rewrote, then drops the finished messages (a message may be all
// three, as when a chunk of an aborted reply is accepted).
func (l *liveMessages) update(accepted, deliveries map[string][]byte, finished []string) {
	if len(accepted) == 0 && len(deliveries) == 0 && len(finished) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, v := range accepted {
		e := liveMessage{message: v, delivery: deliveries[id]}
		if e.delivery == nil || l.bytes+e.size() > l.max {
			continue
		}
		l.m[id] = e
		l.bytes += e.size()
	}
	for id, v := range deliveries {
		if _, added := accepted[id]; added {
			continue // entered above with this record
		}
		e, ok := l.m[id]
		if !ok {
			continue
		}
		l.bytes -= e.size()
		e.delivery = v
		if l.bytes+e.size() > l.max {
			delete(l.m, id) // read from Pebble from now on
			continue
		}
		l.m[id] = e
		l.bytes += e.size()
	}
	for _, id := range finished {
		if e, ok := l.m[id]; ok {
			l.bytes -= e.size()
			delete(l.m, id)
		}
	}
}

func (l *liveMessages) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// ascender walks entries in order: a btree, or channelTrees.
type ascender interface {
	Ascend(btree.ItemIteratorG[entry])
}

// channelTrees holds entries in a tree per channel, each by time. Taking
// due work then costs what it takes: the backlog of a channel without free
// slots is not walked, as it would be in one tree ordered by time alone
// (every Lease under mem.mu, while that channel's backlog is the whole
// index).
type channelTrees struct {
	by map[string]*btree.BTreeG[entry]
	n  int
}

func (c *channelTrees) insert(e entry) {
	t := c.by[e.channel]
	if t == nil {
		t = btree.NewG(32, entryLess)
		c.by[e.channel] = t
	}
	if _, replaced := t.ReplaceOrInsert(e); !replaced {
		c.n++
	}
}

func (c *channelTrees) delete(e entry) {
	t := c.by[e.channel]
	if t == nil {
		return
	}
	if _, ok := t.Delete(e); ok {
		c.n--
		if t.Len() == 0 {
			delete(c.by, e.channel)
		}
	}
}

// Len is the number of entries.
func (c *channelTrees) Len() int { return c.n }

// Min is the earliest entry of every channel.
func (c *channelTrees) Min() (entry, bool) {
	var first entry
	found := false
	for _, t := range c.by {
		if e, ok := t.Min(); ok && (!found || entryLess(e, first)) {
			first, found = e, true
		}
	}
	return first, found
}

// Ascend calls fn with every entry, channel by channel in name order, each
// channel's by time, until fn returns false.
func (c *channelTrees) Ascend(fn btree.ItemIteratorG[entry]) {
	for _, ch := range slices.Sorted(maps.Keys(c.by)) {
		stopped := false
		c.by[ch].Ascend(func(e entry) bool {
			stopped = !fn(e)
			return !stopped
		})
		if stopped {
			return
		}
	}
}

// take removes and returns up to max entries due at now, earliest first,
// each channel's at most its free slots (slots minus used; a
// channel absent from slots is limited by max only). used counts what it
// takes.
func (c *channelTrees) take(now int64, max int, slots map[string]uint32, used map[string]uint32) []entry {
	if max <= 0 {
		return nil
	}
	var out []entry
	for ch, t := range c.by {
		limit := max
		if free, limited := slots[ch]; limited {
			if used[ch] >= free {
				continue
			}
			limit = min(limit, int(free-used[ch]))
		}
		taken := 0
		t.Ascend(func(e entry) bool {
			if e.at > now || taken >= limit {
				return false
			}
			out = append(out, e)
			taken++
			return true
		})
	}
	// Earliest first across channels (the map's order is random); when
	// more are due than one lease takes, the earliest go.
	slices.SortFunc(out, func(a, b entry) int {
		if entryLess(a, b) {
			return -1
		}
		if entryLess(b, a) {
			return 1
		}
		return 0
	})
	if len(out) > max {
		out = out[:max]
	}
	for _, e := range out {
		used[e.channel]++
		c.delete(e)
	}
	return out
}

// expired returns up to max entries whose lease expired at or before now:
// IN_FLIGHT ones and reconcile leases.
func (x *memIndex) expired(now int64, max int) []entry {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []entry
	walk := func(e entry) bool {
		if e.at > now || len(out) >= max {
			return false
		}
		out = append(out, e)
		return true
	}
	x.leased.Ascend(walk)
	x.reconciling.Ascend(walk)
	return out
}

func (x *memIndex) close() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.closed {
		x.closed = true
		close(x.wake)
	}
}

// loadIndex rebuilds the in-memory index from the durable recovery index.
// Its cost follows the number of non-terminal messages.
func (s *Store) loadIndex() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRecovery}, UpperBound: []byte{prefixRecovery + 1}})
	if err != nil {
		return fmt.Errorf("load recovery index: %w", err)
	}
	defer it.Close()
	var (
		changes []change
		active  []activeEdit
	)
	for ok := it.First(); ok; ok = it.Next() {
		kind, at, id, err := parseRecoveryKey(it.Key())
		if err != nil {
			return fmt.Errorf("load recovery index: %w", err)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("load recovery index: %w", err)
		}
		f, err := parseRecoveryValue(v)
		if err != nil {
			return fmt.Errorf("load recovery index: %w", err)
		}
		if f.seq == 0 { // the upgrade to schema 4 gave every entry one
			return fmt.Errorf("load recovery index: the entry for %s carries no sequence", id)
		}
		changes = append(changes, change{add: true, kind: kind, e: entry{at: at, id: id, channel: f.channel, tenant: f.tenant, conversation: f.conversation}})
		active = append(active, activeEdit{add: true, stripe: s.stripe(f.tenant, f.conversation),
			conv: convKey{f.tenant, f.conversation}, ref: activeRef{seq: f.seq, id: id}})
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("load recovery index: %w", err)
	}
	// Entries the scan stepped over without returning them: finished
	// messages' entries and their single deletes that no compaction has
	// brought together yet (a backlog delivered across memtable flushes
	// leaves them). TidyRecoveryIndex compacts them away.
	st := it.Stats()
	s.recoveryDead.Store(int64(st.ForwardStepCount[pebble.InternalIterCall] - st.ForwardStepCount[pebble.InterfaceCall]))
	s.index.apply(changes)
	s.active.apply(active)
	return nil
}

// RecoveryDead is how many dead entries the scan of the recovery index at
// Open stepped over.
func (s *Store) RecoveryDead() int64 { return s.recoveryDead.Load() }

// TidyRecoveryIndex compacts the key range of the recovery index when the
// scan at Open stepped over more dead entries than live ones (and at least
// minDead): each start scans the range whole, so its cost should follow the
// pending messages, not how many finished ones await a compaction.
// It reports whether it compacted. Pebble compacts the range in the
// background of serving; reads and commits go on meanwhile.
func (s *Store) TidyRecoveryIndex(ctx context.Context, minDead int64) (bool, error) {
	dead := s.recoveryDead.Load()
	if dead < minDead || dead <= 2*int64(s.index.size()) {
		return false, nil
	}
	if err := s.db.Compact(ctx, []byte{prefixRecovery}, []byte{prefixRecovery + 1}, false); err != nil {
		return false, fmt.Errorf("compact the recovery index: %w", err)
	}
	s.recoveryDead.Store(0)
	return true, nil
}
