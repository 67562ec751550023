package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// Report is the result of Verify.
type Report struct {
	// Counts of messages per state, from the delivery records.
	Counts map[storev1.State]int64
	// RecoveryEntries is the number of recovery-index entries.
	RecoveryEntries int
	// Messages is the number of message records.
	Messages int
	// Events is the number of event-log entries read (full only).
	Events int
	// EventHoles counts sequence numbers with no event: batches a crash
	// lost before they were acknowledged (full only). Not a problem.
	EventHoles uint64
	// StateHash is a SHA-256 over every key and value; two identical stores
	// agree on it.
	StateHash string
	// Problems lists every inconsistency found; empty means the store is
	// consistent.
	Problems []string
}

// checker reads one snapshot of the store and collects what is wrong with
// it, for Verify and Check.
type checker struct {
	snap *pebble.Snapshot
	r    *Report
}

func (s *Store) newChecker() (*checker, func()) {
	snap := s.db.NewSnapshot()
	return &checker{snap: snap, r: &Report{Counts: map[storev1.State]int64{}}}, func() { snap.Close() }
}

func (c *checker) problem(format string, args ...any) {
	if len(c.r.Problems) < maxProblems {
		c.r.Problems = append(c.r.Problems, fmt.Sprintf(format, args...))
	}
}

// scan calls fn for every key of a family; read errors become problems.
func (c *checker) scan(prefix byte, fn func(k, v []byte)) {
	it, err := c.snap.NewIter(&pebble.IterOptions{LowerBound: []byte{prefix}, UpperBound: []byte{prefix + 1}})
	if err != nil {
		c.problem("open iterator over family %#x: %v", prefix, err)
		return
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			c.problem("read %x: %v", it.Key(), err)
			continue
		}
		fn(it.Key(), v)
	}
	if err := it.Error(); err != nil {
		c.problem("scan family %#x: %v", prefix, err)
	}
}

func (c *checker) get(key []byte, m proto.Message) (bool, error) { return readProto(c.snap, key, m) }

// seeker reads records of one family by key with an iterator: for keys
// asked in increasing order, a seek reads index and data blocks only,
// where a point lookup would also load each level's bloom filter.
type seeker struct {
	it  *pebble.Iterator
	err error
}

func (c *checker) seeker(prefix byte) *seeker {
	it, err := c.snap.NewIter(&pebble.IterOptions{LowerBound: []byte{prefix}, UpperBound: []byte{prefix + 1}})
	return &seeker{it: it, err: err}
}

func (s *seeker) get(key []byte, m proto.Message) (bool, error) {
	if s.err != nil {
		return false, s.err
	}
	if !s.it.SeekGE(key) || !bytes.Equal(s.it.Key(), key) {
		return false, s.it.Error()
	}
	v, err := s.it.ValueAndErr()
	if err != nil {
		return false, err
	}
	return true, decodeProto(key, v, m)
}

func (s *seeker) close() {
	if s.it != nil {
		s.it.Close()
	}
}

// maxProblems bounds the report so a badly damaged store still answers.
const maxProblems = 1000

// Verify checks the store's invariants against one consistent snapshot:
// every recovery-index entry points to a message in the matching state;
// every non-terminal message is in the index exactly once and no terminal
// one is; idempotency keys point to existing messages; per-conversation
// sequences have no gaps; each index entry carries its message's
// conversation and sequence (each conversation's active set); the
// per-state counters match the records. With full, it also checks that
// event sequences strictly increase (holes left by a crash are counted,
// not reported) and that every record decodes. It can run while the store
// serves.
func (s *Store) Verify(full bool) Report {
	c, done := s.newChecker()
	defer done()
	r := c.r

	messages := map[string]*storev1.Message{}
	c.scan(prefixMessage, func(k, v []byte) {
		m := &storev1.Message{}
		if err := proto.Unmarshal(v, m); err != nil {
			c.problem("message %s does not decode: %v", k[1:], err)
			return
		}
		messages[string(k[1:])] = m
	})
	r.Messages = len(messages)

	deliveries := map[string]*storev1.Delivery{}
	c.scan(prefixDelivery, func(k, v []byte) {
		id := string(k[1:])
		d := &storev1.Delivery{}
		if err := proto.Unmarshal(v, d); err != nil {
			c.problem("delivery %s does not decode: %v", id, err)
			return
		}
		deliveries[id] = d
		r.Counts[d.GetState()]++
		if messages[id] == nil {
			c.problem("delivery %s has no message record", id)
		}
	})
	for id := range messages {
		if deliveries[id] == nil {
			c.problem("message %s has no delivery record", id)
		}
	}

	indexed := map[string]int{}
	c.scan(prefixRecovery, func(k, v []byte) {
		r.RecoveryEntries++
		kind, at, id, err := parseRecoveryKey(k)
		if err != nil {
			c.problem("%v", err)
			return
		}
		indexed[id]++
		d := deliveries[id]
		if d == nil {
			c.problem("recovery entry %x points to missing message %s", k, id)
			return
		}
		wantKind, wantAt, ok := indexPlace(d)
		switch {
		case !ok:
			c.problem("recovery entry for %s, which is terminal (%s)", id, d.GetState())
		case wantKind != kind || wantAt != at:
			c.problem("recovery entry for %s has kind %d at %d; its state %s wants kind %d at %d", id, kind, at, d.GetState(), wantKind, wantAt)
		}
		if m := messages[id]; m != nil {
			checkRecoveryValue(c, id, v, m)
		}
	})
	for id, d := range deliveries {
		n := indexed[id]
		switch {
		case !IsTerminal(d.GetState()) && n != 1:
			c.problem("message %s is %s but in the recovery index %d times, want once", id, d.GetState(), n)
		case IsTerminal(d.GetState()) && n != 0:
			c.problem("message %s is terminal (%s) but in the recovery index", id, d.GetState())
		}
	}

	c.scan(prefixIdempotency, func(k, v []byte) {
		if messages[string(v)] == nil {
			c.problem("idempotency key %q points to missing message %s", k[1:], v)
		}
	})

	// Conversations: history gap-free up to the last sequence. (Their
	// active sets are the recovery index's entries, checked above.)
	type convState struct {
		last    uint64
		history []uint64
	}
	convs := map[string]*convState{}
	conv := func(key string) *convState {
		c := convs[key]
		if c == nil {
			c = &convState{}
			convs[key] = c
		}
		return c
	}
	c.scan(prefixConvSeq, func(k, v []byte) {
		if len(v) != 8 {
			c.problem("conversation sequence %q: bad value", k[1:])
			return
		}
		conv(string(k[1:])).last = binary.BigEndian.Uint64(v)
	})
	c.scan(prefixConvHistory, func(k, v []byte) {
		if len(k) < 1+8+2 {
			c.problem("conversation key %x: too short", k)
			return
		}
		key := string(k[1 : len(k)-8])
		seq := binary.BigEndian.Uint64(k[len(k)-8:])
		id := string(v)
		m := messages[id]
		if m == nil {
			c.problem("conversation entry %x points to missing message %s", k, id)
			return
		}
		if m.GetSequence() != seq {
			c.problem("conversation entry %x has sequence %d, message %s has %d", k, seq, id, m.GetSequence())
		}
		conv(key).history = append(conv(key).history, seq)
	})
	// No key of the family retired in schema 4 may remain.
	c.scan(prefixConvActiveRetired, func(k, _ []byte) {
		c.problem("conversation-active key %x remains after the upgrade to schema 4", k)
	})
	keys := make([]string, 0, len(convs))
	for k := range convs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cv := convs[k]
		for i, seq := range cv.history {
			if seq != uint64(i+1) {
				c.problem("conversation %q: sequence %d where %d was expected (a gap)", k, seq, i+1)
				break
			}
		}
		if uint64(len(cv.history)) != cv.last {
			c.problem("conversation %q: last sequence %d but %d history entries", k, cv.last, len(cv.history))
		}
	}

	counters := map[storev1.State]int64{}
	c.scan(prefixCount, func(k, v []byte) {
		if len(k) == 2 && len(v) == 8 {
			counters[storev1.State(k[1])] = int64(binary.LittleEndian.Uint64(v))
		}
	})
	for st := range storev1.State_name {
		state := storev1.State(st)
		if counters[state] != r.Counts[state] {
			c.problem("counter for %s says %d, the records say %d", state, counters[state], r.Counts[state])
		}
	}

	if full {
		var last uint64
		c.scan(prefixEvent, func(k, v []byte) {
			r.Events++
			seq := binary.BigEndian.Uint64(k[1:])
			// Sequences are handed out before Pebble orders the commits, so a
			// crash can lose an unacknowledged batch's events while a later
			// batch's survive: holes are expected, disorder is not.
			if seq <= last {
				c.problem("event log: sequence %d after %d", seq, last)
			}
			if seq > last+1 {
				r.EventHoles += seq - last - 1
			}
			last = seq
			if err := proto.Unmarshal(v, &storev1.Event{}); err != nil {
				c.problem("event %d does not decode: %v", seq, err)
			}
		})
	}

	h := sha256.New()
	it, err := c.snap.NewIter(nil)
	if err != nil {
		c.problem("hash: %v", err)
	} else {
		for ok := it.First(); ok; ok = it.Next() {
			v, err := it.ValueAndErr()
			if err != nil {
				c.problem("hash: read %x: %v", it.Key(), err)
				continue
			}
			var n [4]byte
			binary.BigEndian.PutUint32(n[:], uint32(len(it.Key())))
			h.Write(n[:])
			h.Write(it.Key())
			binary.BigEndian.PutUint32(n[:], uint32(len(v)))
			h.Write(n[:])
			h.Write(v)
		}
		if err := it.Error(); err != nil {
			c.problem("hash: %v", err)
		}
		it.Close()
	}
	r.StateHash = hex.EncodeToString(h.Sum(nil))
	return *r
}
