package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2/sstable"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// Check is the startup consistency check. Unlike Verify, its cost follows
// the number of non-terminal messages, not the length of the history, so a
// restart takes as long with a million delivered messages as with none. It
// checks, against one snapshot: every recovery-index entry points to a
// message in the matching state, once, and carries its channel, tenant,
// conversation and sequence (from which Open built the conversations'
// active sets); the per-state counters of non-terminal states add up to
// the index. Report.Counts holds the counters; Messages is their sum.
// Block checksums of the whole store are Scrub's job.
func (s *Store) Check() Report {
	c, done := s.newChecker()
	defer done()
	r := c.r

	type pending struct {
		key, value []byte
		kind       byte
		at         int64
		id         string
	}
	var entries []pending
	indexed := map[string]bool{}
	c.scan(prefixRecovery, func(k, v []byte) {
		r.RecoveryEntries++
		kind, at, id, err := parseRecoveryKey(k)
		if err != nil {
			c.problem("%v", err)
			return
		}
		if indexed[id] {
			c.problem("message %s is in the recovery index more than once", id)
			return
		}
		indexed[id] = true
		entries = append(entries, pending{key: bytes.Clone(k), value: bytes.Clone(v), kind: kind, at: at, id: id})
	})
	// The records are read in id order with seeks, not point lookups: a
	// lookup consults each level's bloom filter, and with a long history
	// those filter blocks (large, one per table) would fill the block
	// cache at every start. Pending messages are mostly recent, so their
	// ids (ULIDs) are near each other and the seeks read a few blocks.
	slices.SortFunc(entries, func(a, b pending) int { return strings.Compare(a.id, b.id) })
	deliveries := c.seeker(prefixDelivery)
	defer deliveries.close()
	messages := c.seeker(prefixMessage)
	defer messages.close()
	for _, e := range entries {
		d := &storev1.Delivery{}
		if ok, err := deliveries.get(deliveryKey(e.id), d); err != nil || !ok {
			c.problem("recovery entry %x points to message %s, whose delivery record cannot be read (found=%v): %v", e.key, e.id, ok, err)
			continue
		}
		wantKind, wantAt, ok := indexPlace(d)
		switch {
		case !ok:
			c.problem("recovery entry for %s, which is terminal (%s)", e.id, d.GetState())
		case wantKind != e.kind || wantAt != e.at:
			c.problem("recovery entry for %s has kind %d at %d; its state %s wants kind %d at %d", e.id, e.kind, e.at, d.GetState(), wantKind, wantAt)
		}
		m := &storev1.Message{}
		if ok, err := messages.get(messageKey(e.id), m); err != nil || !ok {
			c.problem("recovery entry for %s: message record cannot be read (found=%v): %v", e.id, ok, err)
			continue
		}
		checkRecoveryValue(c, e.id, e.value, m)
	}

	c.scan(prefixCount, func(k, v []byte) {
		if len(k) != 2 || len(v) != 8 {
			c.problem("counter %x: bad shape", k)
			return
		}
		n := int64(counterValue(v))
		r.Counts[storev1.State(k[1])] = n
		r.Messages += int(n)
		if n < 0 {
			c.problem("counter for %s is negative (%d)", storev1.State(k[1]), n)
		}
	})
	open := r.Counts[storev1.State_STATE_PENDING] + r.Counts[storev1.State_STATE_IN_FLIGHT] + r.Counts[storev1.State_STATE_UNKNOWN]
	if open != int64(len(indexed)) {
		c.problem("the counters say %d messages are not finished, the recovery index holds %d", open, len(indexed))
	}
	return *r
}

// checkRecoveryValue reports a recovery-index value that does not carry
// its message's channel, tenant, conversation and sequence: the sequence
// orders the message in its conversation's active set.
func checkRecoveryValue(c *checker, id string, v []byte, m *storev1.Message) {
	f, err := parseRecoveryValue(v)
	if err != nil || f.channel != m.GetChannel() || f.tenant != m.GetTenant() || f.conversation != m.GetConversation() ||
		f.seq != m.GetSequence() {
		c.problem("recovery entry for %s carries %q, want its channel, tenant, conversation and sequence %d", id, v, m.GetSequence())
	}
}

// Scrub reads every block of every table and checks its checksum, without
// going through the block cache, pausing pause between tables so that it
// yields to serving. It returns an error naming the first damaged table.
// Tables that a compaction removed while it ran are skipped: their data
// lives on in the compaction's output.
func (s *Store) Scrub(ctx context.Context, pause time.Duration) (tables int, err error) {
	levels, err := s.db.SSTables()
	if err != nil {
		return 0, fmt.Errorf("list tables: %w", err)
	}
	for _, level := range levels {
		for _, t := range level {
			if err := ctx.Err(); err != nil {
				return tables, err
			}
			path := s.fs.PathJoin(s.dir, fmt.Sprintf("%s.sst", t.BackingSSTNum))
			err := s.scrubTable(path)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				s.damage.add(path)
				return tables, fmt.Errorf("%s: %w", path, err)
			}
			tables++
			if pause > 0 {
				select {
				case <-ctx.Done():
					return tables, ctx.Err()
				case <-time.After(pause):
				}
			}
		}
	}
	return tables, nil
}

func (s *Store) scrubTable(path string) error {
	f, err := s.fs.Open(path)
	if err != nil {
		return err
	}
	readable, err := sstable.NewSimpleReadable(f)
	if err != nil {
		f.Close()
		return err
	}
	r, err := sstable.NewReader(context.Background(), readable, s.popts.MakeReaderOptions())
	if err != nil {
		readable.Close()
		return err
	}
	defer r.Close() // closes readable
	return r.ValidateBlockChecksums()
}
