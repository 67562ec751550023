package store

import (
	"maps"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// activeInPebble returns the conversation-active keys as Pebble holds them,
// key → id.
func activeInPebble(t *testing.T, s *Store) map[string]string {
	t.Helper()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixConvActive}, UpperBound: []byte{prefixConvActive + 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	out := map[string]string{}
	for ok := it.First(); ok; ok = it.Next() {
		out[string(it.Key())] = string(it.Value())
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	return out
}

// activeInMemory returns the active sets as the same keys, checking that
// each conversation sits in its stripe's map, in sequence order.
func activeInMemory(t *testing.T, s *Store) map[string]string {
	t.Helper()
	out := map[string]string{}
	for stripe, m := range s.active.byStripe {
		for c, refs := range m {
			if want := s.stripe(c.tenant, c.conversation); stripe != want {
				t.Fatalf("conversation %v in stripe %d, want %d", c, stripe, want)
			}
			if len(refs) == 0 {
				t.Fatalf("conversation %v kept with no active message", c)
			}
			for i, r := range refs {
				if i > 0 && refs[i-1].seq >= r.seq {
					t.Fatalf("conversation %v out of order: %v", c, refs)
				}
				out[string(convSeqEntryKey(prefixConvActive, c.tenant, c.conversation, r.seq))] = r.id
			}
		}
	}
	return out
}

// The active sets in memory hold what Pebble holds, through every way a
// message joins or leaves its conversation's active set (accept, delivery
// with a promotion, dead letter, redrive before a later message, abort from
// the middle of a conversation, expiry), and after a restart.
func TestActiveSetsFollowPebble(t *testing.T) {
	fs := vfs.NewMem()
	c := newClock()
	s := openTest(t, fs, c, PolicyRedeliver)
	defer func() { s.Close() }()
	check := func(step string) {
		t.Helper()
		mem, disk := activeInMemory(t, s), activeInPebble(t, s)
		if !maps.Equal(mem, disk) {
			t.Fatalf("%s: in memory %d active messages %v\nin Pebble %d %v", step, len(mem), mem, len(disk), disk)
		}
	}
	a := []*storev1.Message{newMessage("a"), newMessage("a"), newMessage("a"), newMessage("a")}
	b, d := newMessage("b"), newMessage("d")
	for _, m := range append(a, b, d) {
		mustAccept(t, s, m)
	}
	check("accepted")

	leased := leaseIDs(t, s, 10)
	if len(leased) != 3 {
		t.Fatalf("leased %d, want 3 (a's first, b, d)", len(leased))
	}
	outs := make([]Outcome, len(leased))
	for i, l := range leased {
		res := ResultDelivered
		if l.Message.Id == b.Id {
			res = ResultFailed
		}
		outs[i] = Outcome{MessageID: l.Message.Id, LeaseToken: l.Delivery.LeaseToken, Result: res, ProviderMessageID: "p", ErrorCode: "PLG_001"}
	}
	if _, err := s.Complete(outs); err != nil {
		t.Fatal(err)
	}
	check("a's first delivered (its second promoted), b dead-lettered, d delivered")

	if _, err := s.Abort(a[2].Id, "test"); err != nil {
		t.Fatal(err)
	}
	check("a's third, blocked, aborted")

	b2 := newMessage("b")
	mustAccept(t, s, b2)
	if _, err := s.Redrive(b.Id); err != nil {
		t.Fatal(err)
	}
	check("b redriven behind a later message of its conversation")
	if got := s.active.first(s.stripe(b.Tenant, b.Conversation), convKey{b.Tenant, b.Conversation}, nil); got != b.Id {
		t.Fatalf("b's head is %s, want the redriven message %s (the lower sequence)", got, b.Id)
	}

	e := newMessage("e")
	e.ExpiresAtUnixNano = c.Now().Add(time.Second).UnixNano()
	mustAccept(t, s, e)
	mustAccept(t, s, newMessage("e"))
	c.Advance(2 * time.Second)
	for range 3 {
		for _, l := range leaseIDs(t, s, 10) {
			deliver(t, s, l)
		}
	}
	if _, got, _, err := s.Get(e.Id); err != nil || got.GetState() != storev1.State_STATE_EXPIRED {
		t.Fatalf("e's first message: %v, %v; want EXPIRED", got.GetState(), err)
	}
	check("e's first expired, everything else delivered")
	if n := len(activeInPebble(t, s)); n != 0 {
		t.Fatalf("%d messages still active, want none", n)
	}

	mustAccept(t, s, newMessage("f"))
	mustAccept(t, s, newMessage("f"))
	s.Close()
	s = openTest(t, fs, c, PolicyRedeliver)
	check("reopened")
	if n := len(activeInMemory(t, s)); n != 2 {
		t.Fatalf("%d active after the restart, want f's two", n)
	}
}
