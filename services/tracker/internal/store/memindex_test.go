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

// Every transition replaces the live copy of the delivery record: what a
// transition reads from the live set is what Pebble holds, through a
// promotion inside another message's batch, retries, an UNKNOWN outcome, a
// dead letter, an abort and expired leases.
func TestLiveDeliveriesFollowEveryTransition(t *testing.T) {
	c := newClock()
	s := openTest(t, vfs.NewMem(), c, PolicyRedeliver)
	defer s.Close()
	check := func(step string) {
		t.Helper()
		s.live.mu.Lock()
		defer s.live.mu.Unlock()
		for id, e := range s.live.m {
			live, stored := &storev1.Delivery{}, &storev1.Delivery{}
			if err := proto.Unmarshal(e.delivery, live); err != nil {
				t.Fatal(err)
			}
			if ok, err := s.getProto(deliveryKey(id), stored); !ok || err != nil {
				t.Fatalf("%s: read %s from Pebble: %v %v", step, id, ok, err)
			}
			if !proto.Equal(live, stored) {
				t.Fatalf("%s: live delivery of %s is\n%v\nPebble holds\n%v", step, id, live, stored)
			}
		}
	}
	a1, a2 := newMessage("a"), newMessage("a")
	for _, m := range []*storev1.Message{a1, a2, newMessage("b"), newMessage("c"), newMessage("d")} {
		mustAccept(t, s, m)
	}
	check("accepted")
	leased := leaseIDs(t, s, 10)
	if len(leased) != 4 {
		t.Fatalf("leased %d, want 4 (a's second message waits)", len(leased))
	}
	check("leased")
	results := []Result{ResultDelivered, ResultRetry, ResultUnknown, ResultFailed}
	outs := make([]Outcome, len(leased))
	for i, l := range leased {
		outs[i] = Outcome{MessageID: l.Message.Id, LeaseToken: l.Delivery.LeaseToken, Result: results[i], ProviderMessageID: "p", RetryAt: c.Now().Add(time.Second), ErrorCode: "PLG_001"}
	}
	if leased[0].Message.Id != a1.Id {
		t.Fatalf("first leased %s, want a's first message", leased[0].Message.Id)
	}
	if _, err := s.Complete(outs); err != nil {
		t.Fatal(err)
	}
	check("completed: delivered (promoting a's second), retry, unknown, failed")
	c.Advance(2 * time.Second)
	if again := leaseIDs(t, s, 10); len(again) < 2 {
		t.Fatalf("leased %d after the retry time, want a's second message and the retry", len(again))
	}
	check("leased again")
	if _, err := s.Abort(a2.Id, "test"); err != nil {
		t.Fatal(err)
	}
	check("abort requested in flight")
	c.Advance(time.Minute)
	if _, err := s.ExpireLeases(10); err != nil {
		t.Fatal(err)
	}
	check("leases expired")
	if s.live.len() == 0 {
		t.Fatal("no live messages left to compare")
	}
}

// The live messages never hold more than their byte bound; what does not
// fit, or grows past it, is read from Pebble.
func TestLiveMessagesStayWithinTheirBound(t *testing.T) {
	l := newLiveMessages(16)
	four, two := make([]byte, 4), make([]byte, 2)
	l.update(map[string][]byte{"a": four, "b": four, "c": four}, map[string][]byte{"a": four, "b": four, "c": four}, nil)
	if l.bytes > 16 || l.len() != 2 {
		t.Fatalf("%d messages, %d bytes; want 2 within 16", l.len(), l.bytes)
	}
	in := ""
	for id := range l.m {
		in = id
	}
	l.update(nil, map[string][]byte{in: two}, nil)
	if l.bytes != 14 || l.len() != 2 {
		t.Fatalf("%d messages, %d bytes after a delivery shrank; want 2 in 14", l.len(), l.bytes)
	}
	l.update(nil, map[string][]byte{in: make([]byte, 9)}, nil)
	if l.bytes > 16 || l.len() != 1 {
		t.Fatalf("%d messages, %d bytes after a delivery grew past the bound; want 1 within 16", l.len(), l.bytes)
	}
	l.update(nil, nil, []string{"a", "b", "c"})
	if l.bytes != 0 || l.len() != 0 {
		t.Fatalf("%d messages, %d bytes after all finished; want none", l.len(), l.bytes)
	}
}
