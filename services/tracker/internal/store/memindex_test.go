package store

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

func dueEntry(channel string, at int64) entry {
	return entry{at: at, id: fmt.Sprintf("%s-%03d", channel, at), channel: channel, tenant: "t", conversation: fmt.Sprint(at)}
}

func addDue(x *memIndex, es ...entry) {
	changes := make([]change, len(es))
	for i, e := range es {
		changes[i] = change{add: true, kind: recoveryDue, e: e}
	}
	x.apply(changes)
}

func ids(es []entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.id
	}
	return out
}

// take gives each channel at most its free slots, the earliest due entries
// first across channels, never one that is not due yet, and counts what a
// reconcile lease takes against its channel's slots.
func TestTakeHonoursSlotsAndTakesTheEarliest(t *testing.T) {
	x := newMemIndex()
	addDue(x,
		dueEntry("a", 1), dueEntry("a", 2), dueEntry("a", 3), dueEntry("a", 4), dueEntry("a", 5),
		dueEntry("b", 2), dueEntry("b", 4), dueEntry("b", 6),
		dueEntry("c", 3), dueEntry("c", 7))

	_, got := x.take(6, 3, map[string]uint32{"a": 2, "b": 0}, false)
	if want := []string{"a-001", "a-002", "c-003"}; fmt.Sprint(ids(got)) != fmt.Sprint(want) {
		t.Fatalf("take = %v, want %v (a limited to 2, b full, c unlimited; the 3 earliest)", ids(got), want)
	}
	if n := x.due.Len(); n != 7 {
		t.Fatalf("%d entries left, want 7", n)
	}
	_, got = x.take(6, 10, map[string]uint32{"a": 2, "b": 1}, false)
	if want := []string{"a-003", "a-004", "b-002"}; fmt.Sprint(slices.Sorted(slices.Values(ids(got)))) != fmt.Sprint(want) {
		t.Fatalf("second take = %v, want %v (c-007 is not due at 6)", ids(got), want)
	}
	if e, ok := x.due.Min(); !ok || e.id != "b-004" {
		t.Fatalf("earliest left = %v, want b-004", e.id)
	}

	// An UNKNOWN message to reconcile uses its channel's slot.
	x.apply([]change{{add: true, kind: recoveryUnknown, e: dueEntry("b", 0)}})
	unknown, got := x.take(6, 10, map[string]uint32{"b": 1}, true)
	if fmt.Sprint(ids(unknown)) != "[b-000]" {
		t.Fatalf("reconcile take = %v, want [b-000]", ids(unknown))
	}
	if want := []string{"a-005"}; fmt.Sprint(ids(got)) != fmt.Sprint(want) {
		t.Fatalf("due take beside it = %v, want %v (b's only slot went to the reconcile)", ids(got), want)
	}
	if x.due.Len() != 3 || len(x.due.by) != 2 {
		t.Fatalf("left %d entries in %d channel trees, want 3 in 2 (a's emptied tree removed)", x.due.Len(), len(x.due.by))
	}
}

// BenchmarkTakeBesideAFullChannel: a Lease for a channel with free slots
// while another channel's backlog of 100,000 waits at its limit. One tree
// by time walked the whole backlog at every Lease, holding the index's
// lock.
func BenchmarkTakeBesideAFullChannel(b *testing.B) {
	x := newMemIndex()
	const backlog = 100_000
	es := make([]entry, 0, backlog+16)
	for i := range backlog {
		es = append(es, dueEntry("full", int64(i)))
	}
	for i := range 16 {
		es = append(es, dueEntry("free", int64(backlog+i)))
	}
	addDue(x, es...)
	slots := map[string]uint32{"full": 0}
	now := int64(2 * backlog)
	b.ResetTimer()
	for b.Loop() {
		_, got := x.take(now, 16, slots, false)
		if len(got) != 16 {
			b.Fatalf("took %d, want 16", len(got))
		}
		addDue(x, got...)
	}
}

// The store keeps the accepted, unfinished messages' records in memory,
// identical to what it stored, and drops each when it finishes: delivered,
// aborted, or accepted straight into a final state.
func TestLiveMessagesFollowPendingWork(t *testing.T) {
	s := openTest(t, vfs.NewMem(), newClock(), PolicyFail)
	defer s.Close()
	var ids []string
	for i := range 5 {
		m := newMessage(fmt.Sprint("conv-", i))
		m.Metadata = map[string]string{"k": fmt.Sprint(i)}
		if _, err := s.Accept(m); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.GetId())
	}
	if n := s.live.len(); n != 5 {
		t.Fatalf("%d live messages after 5 accepts, want 5", n)
	}
	for _, id := range ids {
		got, err := s.getMessage(id)
		if err != nil {
			t.Fatal(err)
		}
		stored := &storev1.Message{}
		if ok, err := s.getProto(messageKey(id), stored); !ok || err != nil {
			t.Fatalf("read %s from Pebble: %v %v", id, ok, err)
		}
		if !proto.Equal(got, stored) {
			t.Fatalf("live message %v differs from the stored %v", got, stored)
		}
	}
	leased, err := s.Lease("w", 3, time.Minute, nil, false)
	if err != nil || len(leased) != 3 {
		t.Fatalf("Lease = %d, %v", len(leased), err)
	}
	outs := make([]Outcome, len(leased))
	for i, l := range leased {
		outs[i] = Outcome{MessageID: l.Message.GetId(), LeaseToken: l.Delivery.GetLeaseToken(), Result: ResultDelivered, ProviderMessageID: "p"}
	}
	if _, err := s.Complete(outs); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Abort(ids[4], "test"); err != nil {
		t.Fatal(err)
	}
	if n := s.live.len(); n != 1 {
		t.Fatalf("%d live messages after 3 delivered and 1 aborted of 5, want 1", n)
	}
}

// The live messages never hold more than their byte bound; what does not
// fit is read from Pebble.
func TestLiveMessagesStayWithinTheirBound(t *testing.T) {
	l := liveMessages{m: map[string][]byte{}, max: 10}
	l.update(map[string][]byte{"a": make([]byte, 4), "b": make([]byte, 4), "c": make([]byte, 4)}, nil)
	if l.bytes > 10 || l.len() != 2 {
		t.Fatalf("%d messages, %d bytes; want 2 within 10", l.len(), l.bytes)
	}
	l.update(nil, []string{"a", "b", "c"})
	if l.bytes != 0 || l.len() != 0 {
		t.Fatalf("%d messages, %d bytes after all finished; want none", l.len(), l.bytes)
	}
}
