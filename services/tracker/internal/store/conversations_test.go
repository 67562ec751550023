package store

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// activeInIndex returns each non-terminal message as the durable recovery
// index holds it, "tenant|conversation|sequence" → id.
func activeInIndex(t *testing.T, s *Store) map[string]string {
	t.Helper()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRecovery}, UpperBound: []byte{prefixRecovery + 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	out := map[string]string{}
	for ok := it.First(); ok; ok = it.Next() {
		_, _, id, err := parseRecoveryKey(it.Key())
		if err != nil {
			t.Fatal(err)
		}
		f, err := parseRecoveryValue(it.Value())
		if err != nil {
			t.Fatal(err)
		}
		out[activeName(f.tenant, f.conversation, f.seq)] = id
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	return out
}

func activeName(tenant, conversation string, seq uint64) string {
	return fmt.Sprintf("%s|%s|%d", tenant, conversation, seq)
}

// activeInMemory returns the active sets named as activeInIndex names
// them, checking that
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
				out[activeName(c.tenant, c.conversation, r.seq)] = r.id
			}
		}
	}
	return out
}

// The active sets in memory hold what the durable recovery index holds,
// through every way a message joins or leaves its conversation's active set
// (accept, delivery with a promotion, dead letter, redrive before a later
// message, abort from the middle of a conversation, expiry), and after a
// restart, which builds them from the index.
func TestActiveSetsFollowTheRecoveryIndex(t *testing.T) {
	fs := vfs.NewMem()
	c := newClock()
	s := openTest(t, fs, c, PolicyRedeliver)
	defer func() { s.Close() }()
	check := func(step string) {
		t.Helper()
		mem, disk := activeInMemory(t, s), activeInIndex(t, s)
		if !maps.Equal(mem, disk) {
			t.Fatalf("%s: in memory %d active messages %v\nin the recovery index %d %v", step, len(mem), mem, len(disk), disk)
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
	if n := len(activeInIndex(t, s)); n != 0 {
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

// recoveryValueV3 is a recovery-index value as schema 3 and before wrote
// it: no sequence.
func recoveryValueV3(channel, tenant, conversation string) []byte {
	return []byte(channel + "\x00" + tenant + "\x00" + conversation)
}

// TestSchemaUpgradeFromVersion3RebuildsActiveSets: a version 3 store kept
// each conversation's active messages under their own keys, and its index
// entries carry no sequence. Open upgrades it: the retired keys are gone,
// each entry carries its message's sequence, the active sets come from the
// index, so a blocked message still waits for its conversation's head and
// goes next.
func TestSchemaUpgradeFromVersion3RebuildsActiveSets(t *testing.T) {
	fs := vfs.NewMem()
	c := newClock()
	s := openTest(t, fs, c, PolicyFail)
	first, second, other := newMessage("a"), newMessage("a"), newMessage("b")
	for _, m := range []*storev1.Message{first, second, other} {
		mustAccept(t, s, m)
	}
	writeAsVersion3(t, s)
	s.Close()

	s = openTest(t, fs, c, PolicyFail)
	defer s.Close()
	checkUpgraded(t, s, 3)
	if r := s.Verify(true); len(r.Problems) > 0 {
		t.Fatalf("verify after the upgrade: %v", r.Problems)
	}
	if mem, disk := activeInMemory(t, s), activeInIndex(t, s); len(mem) != 3 || !maps.Equal(mem, disk) {
		t.Fatalf("active after the upgrade: in memory %v, in the index %v; want the 3 messages", mem, disk)
	}
	// a's second waits for a's first: leasing gives a's first and b's.
	leased := leaseIDs(t, s, 10)
	if len(leased) != 2 || leased[0].Message.Id == second.Id || leased[1].Message.Id == second.Id {
		t.Fatalf("leased %v, want a's first and b's message, not a's second", leased)
	}
	for _, l := range leased {
		deliver(t, s, l)
	}
	next := leaseIDs(t, s, 10)
	if len(next) != 1 || next[0].Message.Id != second.Id {
		t.Fatalf("after a's first was delivered, leased %v, want a's second", next)
	}
	// The entry carries its sequence (given by the upgrade, kept at lease).
	f := indexValueOf(t, s, second.Id)
	if f.seq != 2 {
		t.Fatalf("a's second's entry after the lease carries sequence %d, want 2", f.seq)
	}
	deliver(t, s, next[0])
	if r := s.Verify(true); len(r.Problems) > 0 {
		t.Fatalf("verify: %v", r.Problems)
	}
}

// writeAsVersion3 rewrites the store's index and active messages as schema
// 3 wrote them: index values without a sequence, a conversation-active key
// per unfinished message.
func writeAsVersion3(t *testing.T, s *Store) {
	t.Helper()
	b := s.db.NewBatch()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRecovery}, UpperBound: []byte{prefixRecovery + 1}})
	if err != nil {
		t.Fatal(err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		f, err := parseRecoveryValue(it.Value())
		if err != nil {
			t.Fatal(err)
		}
		_, _, id, _ := parseRecoveryKey(it.Key())
		b.Set(slices.Clone(it.Key()), recoveryValueV3(f.channel, f.tenant, f.conversation), nil)
		b.Set(convSeqEntryKey(prefixConvActiveRetired, f.tenant, f.conversation, f.seq), []byte(id), nil)
	}
	it.Close()
	b.Set(metaSchemaKey, binary.BigEndian.AppendUint32(nil, 3), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeGivesEveryEntryItsSequence: the upgrade rewrites more index
// entries than one of its batches holds, and each ends up with its
// message's sequence.
func TestUpgradeGivesEveryEntryItsSequence(t *testing.T) {
	fs := vfs.NewMem()
	c := newClock()
	s := openTest(t, fs, c, PolicyFail)
	const n = upgradeBatch + 10
	for done := 0; done < n; done += 512 {
		msgs := make([]*storev1.Message, min(512, n-done))
		for i := range msgs {
			msgs[i] = newMessage(fmt.Sprint("c", (done+i)%10))
		}
		if _, errs := s.AcceptBatch(msgs); errs[0] != nil {
			t.Fatal(errs[0])
		}
	}
	writeAsVersion3(t, s)
	s.Close()

	s = openTest(t, fs, c, PolicyFail)
	defer s.Close()
	checkUpgraded(t, s, 3)
	if r := s.Check(); len(r.Problems) > 0 || r.RecoveryEntries != n {
		t.Fatalf("check after the upgrade: %d entries (want %d), problems %v", r.RecoveryEntries, n, r.Problems)
	}
	if mem := activeInMemory(t, s); len(mem) != n || !maps.Equal(mem, activeInIndex(t, s)) {
		t.Fatalf("after the upgrade %d active in memory, want %d, as the index holds them", len(mem), n)
	}
}

// indexValueOf returns the recovery-index value of a non-terminal message.
func indexValueOf(t *testing.T, s *Store, id string) recoveryFields {
	t.Helper()
	d, err := s.getDelivery(id)
	if err != nil {
		t.Fatal(err)
	}
	kind, at, ok := indexPlace(d)
	if !ok {
		t.Fatalf("%s is %s: not in the index", id, d.GetState())
	}
	v, closer, err := s.db.Get(recoveryKey(kind, at, id))
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	f, err := parseRecoveryValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return f
}
