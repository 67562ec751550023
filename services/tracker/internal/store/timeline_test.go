package store

import (
	"encoding/binary"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// timelineOf returns the types of a message's events, checking that their
// sequences strictly increase.
func timelineOf(t *testing.T, s *Store, id string) []string {
	t.Helper()
	_, _, timeline, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for i, ev := range timeline {
		if ev.GetMessageId() != id {
			t.Fatalf("timeline of %s holds an event of %s", id, ev.GetMessageId())
		}
		if i > 0 && ev.GetSequence() <= timeline[i-1].GetSequence() {
			t.Fatalf("timeline of %s: sequence %d after %d", id, ev.GetSequence(), timeline[i-1].GetSequence())
		}
		types = append(types, ev.GetType())
	}
	return types
}

// A message's timeline holds each of its events once, in order, through a
// whole life: events of batches that rewrite its delivery record (listed
// there) and a purge, which does not (listed by a timeline key).
func TestTimelineFollowsTheWholeLife(t *testing.T) {
	c := newClock()
	s := openTest(t, vfs.NewMem(), c, PolicyFail)
	defer s.Close()
	fail := func(id string) {
		t.Helper()
		l := leaseIDs(t, s, 1)
		if len(l) != 1 || l[0].Message.Id != id {
			t.Fatalf("leased %v, want %s", l, id)
		}
		if _, err := s.Complete([]Outcome{{MessageID: id, LeaseToken: l[0].Delivery.LeaseToken, Result: ResultFailed, ErrorCode: "PLG_001", ErrorDetail: "403"}}); err != nil {
			t.Fatal(err)
		}
	}
	a := mustAccept(t, s, newMessage("c1")).Message.Id
	fail(a)
	if _, err := s.Redrive(a); err != nil {
		t.Fatal(err)
	}
	deliver(t, s, leaseIDs(t, s, 1)[0])
	want := []string{EventAccepted, EventLeased, EventFailed, EventDeadLettered, EventRedriven, EventLeased, EventDelivered}
	if got := timelineOf(t, s, a); !slices.Equal(got, want) {
		t.Fatalf("timeline:\n got %v\nwant %v", got, want)
	}

	b := mustAccept(t, s, newMessage("c2")).Message.Id
	fail(b)
	if _, err := s.Purge(b); err != nil {
		t.Fatal(err)
	}
	want = []string{EventAccepted, EventLeased, EventFailed, EventDeadLettered, "message.purged"}
	if got := timelineOf(t, s, b); !slices.Equal(got, want) {
		t.Fatalf("timeline with a purge:\n got %v\nwant %v", got, want)
	}
	if r := s.Verify(true); len(r.Problems) > 0 {
		t.Fatalf("verify: %v", r.Problems)
	}
}

// checkUpgraded fails the test unless the store, written as version from,
// now says it is the current version.
func checkUpgraded(t *testing.T, s *Store, from uint32) {
	t.Helper()
	v, closer, err := s.db.Get(metaSchemaKey)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	if got := binary.BigEndian.Uint32(v); got != schemaVersion {
		t.Fatalf("schema version %d after opening a version %d store, want %d", got, from, schemaVersion)
	}
}

// A store of schema version 2 (every event listed by a timeline key) opens,
// is upgraded to the current version, and its messages' timelines go on: the events
// before the upgrade from their keys, those after from the delivery record.
func TestSchemaUpgradeFromVersion2KeepsTimelines(t *testing.T) {
	fs := vfs.NewMem()
	c := newClock()
	s := openTest(t, fs, c, PolicyFail)
	id := mustAccept(t, s, newMessage("c1")).Message.Id
	l := leaseIDs(t, s, 1)[0]
	// Rewrite the message as version 2 wrote it: no sequences in the
	// delivery record, a timeline key per event.
	d, err := s.Delivery(id)
	if err != nil || len(d.EventSequences) != 2 {
		t.Fatalf("delivery %v (%v): want 2 event sequences", d, err)
	}
	b := s.db.NewBatch()
	for _, seq := range d.EventSequences {
		b.Set(timelineKey(id, seq), nil, nil)
	}
	d.EventSequences = nil
	b.Set(deliveryKey(id), mustMarshal(d), nil)
	b.Set(metaSchemaKey, binary.BigEndian.AppendUint32(nil, 2), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = openTest(t, fs, c, PolicyFail)
	defer s.Close()
	checkUpgraded(t, s, 2)
	deliver(t, s, l)
	want := []string{EventAccepted, EventLeased, EventDelivered}
	if types := timelineOf(t, s, id); !slices.Equal(types, want) {
		t.Fatalf("timeline across the upgrade:\n got %v\nwant %v", types, want)
	}
	if r := s.Verify(true); len(r.Problems) > 0 {
		t.Fatalf("verify: %v", r.Problems)
	}
}
