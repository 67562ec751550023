package store

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// Get returns a message, its delivery and its timeline (oldest event
// first). Errors: ErrNotFound.
func (s *Store) Get(id string) (*storev1.Message, *storev1.Delivery, []*storev1.Event, error) {
	defer s.settled() // answers with what it read
	if len(id) != idLen {
		return nil, nil, nil, ErrNotFound
	}
	m, err := s.getMessage(id)
	if err != nil {
		return nil, nil, nil, err
	}
	d, err := s.getDelivery(id)
	if err != nil {
		return nil, nil, nil, err
	}
	// The timeline: the sequences in the delivery record (schema 3) and
	// timeline keys (schema 2, and events of a batch that did not rewrite
	// the delivery), whose value is empty or, in stores written before
	// schema 2's last change, a copy of the event.
	seqs := slices.Clone(d.GetEventSequences())
	var copies []*storev1.Event
	p := idKey(prefixTimeline, id)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return nil, nil, nil, err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, nil, nil, err
		}
		if len(v) == 0 {
			k := it.Key()
			seqs = append(seqs, binary.BigEndian.Uint64(k[len(k)-8:]))
			continue
		}
		ev := &storev1.Event{}
		if err := proto.Unmarshal(v, ev); err != nil {
			return nil, nil, nil, fmt.Errorf("decode timeline of %s: %w", id, err)
		}
		copies = append(copies, ev)
	}
	if err := it.Error(); err != nil {
		return nil, nil, nil, err
	}
	timeline := copies
	for _, seq := range seqs {
		ev := &storev1.Event{}
		ok, err := s.getProto(eventKey(seq), ev)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("read event %d of %s: %w", seq, id, err)
		}
		if !ok {
			return nil, nil, nil, fmt.Errorf("timeline of %s: event %d is missing from the event log", id, seq)
		}
		timeline = append(timeline, ev)
	}
	slices.SortFunc(timeline, func(a, b *storev1.Event) int { return cmp.Compare(a.GetSequence(), b.GetSequence()) })
	return m, d, timeline, nil
}

// Delivery returns a message's delivery state without its timeline.
// Errors: ErrNotFound.
func (s *Store) Delivery(id string) (*storev1.Delivery, error) {
	defer s.settled() // answers with what it read
	return s.getDelivery(id)
}

// ConversationHistory returns up to limit messages of a conversation, newest
// first.
func (s *Store) ConversationHistory(tenant, conversation string, limit int) ([]Leased, error) {
	defer s.settled() // answers with what it read
	p := convPrefix(prefixConvHistory, tenant, conversation)
	return s.history(p, limit, func(k, v []byte) string { return string(v) })
}

// RecipientHistory returns up to limit messages sent to a recipient, newest
// first; with channel set, only that channel's.
func (s *Store) RecipientHistory(tenant, channel, recipient string, limit int) ([]Leased, error) {
	defer s.settled() // answers with what it read
	p := recipientPrefix(tenant, recipient)
	var keep func(*storev1.Message) bool
	if channel != "" {
		keep = func(m *storev1.Message) bool { return m.GetChannel() == channel }
	}
	return s.historyWhere(p, limit, func(k, v []byte) string { return string(k[len(p):]) }, keep)
}

func (s *Store) history(p []byte, limit int, idOf func(k, v []byte) string) ([]Leased, error) {
	return s.historyWhere(p, limit, idOf, nil)
}

// historyWhere walks the index under p newest first, keeping the messages
// keep accepts (all when keep is nil), up to limit.
func (s *Store) historyWhere(p []byte, limit int, idOf func(k, v []byte) string, keep func(*storev1.Message) bool) ([]Leased, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []Leased
	for ok := it.Last(); ok && len(out) < limit; ok = it.Prev() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		id := idOf(it.Key(), v)
		m, err := s.getMessage(id)
		if err != nil {
			return nil, err
		}
		if keep != nil && !keep(m) {
			continue
		}
		d, err := s.getDelivery(id)
		if err != nil {
			return nil, err
		}
		out = append(out, Leased{Message: m, Delivery: d})
	}
	return out, it.Error()
}

// EventFilter selects events by type and channel; an empty field matches
// every event.
type EventFilter struct {
	Type    string
	Channel string
}

// Events reads up to limit events of the log after sequence after and
// returns those that match f, oldest first, with the sequence of the last
// event it read, matching or not: the next call continues after it. read
// is how many it read; when read < limit it reached the newest durable
// event. Events that do not match are skipped on their type and channel
// fields alone, without decoding them: a watcher of rare events (the
// queue's abort follower) does not pay for the log's every event; with a
// type, when no event of that type was numbered after after, it reads
// nothing and returns the durable watermark as last. It never reads an
// event while an earlier one is still being committed, so a reader that
// resumes from last misses nothing.
func (s *Store) Events(after uint64, limit int, f EventFilter) (evs []*storev1.Event, last uint64, read int, err error) {
	last = after
	var durable uint64
	if f.Type == "" {
		durable, _ = s.events.watch()
	} else {
		var mayHold uint64
		if durable, mayHold = s.events.watchType(f.Type); mayHold <= after {
			// No event of the type after after: none to read up to durable.
			return nil, max(after, durable), 0, nil
		}
	}
	if after >= durable {
		return nil, last, 0, nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: eventKey(after + 1), UpperBound: eventKey(durable + 1)})
	if err != nil {
		return nil, last, 0, err
	}
	defer it.Close()
	for ok := it.First(); ok && read < limit; ok = it.Next() {
		read++
		k := it.Key()
		if last, err = parseEventKey(k); err != nil {
			return nil, after, read, err
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, last, read, err
		}
		if match, err := f.matchEncoded(v); err != nil {
			return nil, last, read, fmt.Errorf("decode event %x: %w", k, err)
		} else if !match {
			continue
		}
		ev := &storev1.Event{}
		if err := proto.Unmarshal(v, ev); err != nil {
			return nil, last, read, fmt.Errorf("decode event %x: %w", k, err)
		}
		evs = append(evs, ev)
	}
	return evs, last, read, it.Error()
}

// Event fields matchEncoded reads; see storev1.Event.
const (
	eventFieldType    protowire.Number = 3
	eventFieldChannel protowire.Number = 6
)

// matchEncoded reports whether an encoded storev1.Event matches f, reading
// only its type and channel fields.
func (f EventFilter) matchEncoded(v []byte) (bool, error) {
	if f.Type == "" && f.Channel == "" {
		return true, nil
	}
	var typ, channel []byte
	for len(v) > 0 {
		num, wt, n := protowire.ConsumeTag(v)
		if n < 0 {
			return false, protowire.ParseError(n)
		}
		v = v[n:]
		if wt == protowire.BytesType && (num == eventFieldType || num == eventFieldChannel) {
			b, n := protowire.ConsumeBytes(v)
			if n < 0 {
				return false, protowire.ParseError(n)
			}
			// The last occurrence of a field wins, as in proto.Unmarshal.
			if num == eventFieldType {
				typ = b
			} else {
				channel = b
			}
			v = v[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, wt, v)
		if n < 0 {
			return false, protowire.ParseError(n)
		}
		v = v[n:]
	}
	return (f.Type == "" || string(typ) == f.Type) && (f.Channel == "" || string(channel) == f.Channel), nil
}

// WaitEvents blocks until an event after seq is committed, ctx ends, or the
// store closes.
func (s *Store) WaitEvents(ctx context.Context, seq uint64) error {
	for {
		durable, changed := s.events.watch()
		if durable > seq {
			return nil
		}
		if s.closed.Load() {
			return ErrClosed
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// LastEvent returns the sequence of the newest committed event.
func (s *Store) LastEvent() uint64 {
	d, _ := s.events.watch()
	return d
}

// Counts returns the number of messages per state.
func (s *Store) Counts() (map[storev1.State]int64, error) {
	defer s.settled() // answers with what it read
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixCount}, UpperBound: []byte{prefixCount + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := map[storev1.State]int64{}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		if len(it.Key()) != 2 || len(v) != 8 {
			return nil, fmt.Errorf("counter %x: bad shape", it.Key())
		}
		out[storev1.State(it.Key()[1])] = int64(binary.LittleEndian.Uint64(v))
	}
	return out, it.Error()
}

// RecoverySize is the number of recovery-index entries (non-terminal
// messages).
func (s *Store) RecoverySize() int { return s.index.size() }

// Metrics exposes Pebble's metrics (WAL fsyncs, compactions) for benchmarks
// and the metrics endpoint.
func (s *Store) Metrics() *pebble.Metrics { return s.db.Metrics() }

// WALFsyncs is the number of WAL fsyncs a Pebble instance has made since
// it opened, from its metrics (Store.Metrics, or any pebble.DB's): the
// sample count of its fsync-latency histogram. Group commit lets one fsync
// serve many Sync commits.
func WALFsyncs(pm *pebble.Metrics) uint64 {
	h := pm.LogWriter.FsyncLatency
	if h == nil {
		return 0
	}
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		return 0
	}
	return m.GetHistogram().GetSampleCount()
}
