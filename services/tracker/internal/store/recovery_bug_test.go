package store

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// recoverFunc is a recovery strategy under test: given the filesystem and
// clock of a store that was closed, it returns the ids it would send.
type recoverFunc func(t *testing.T, fs vfs.FS, c *clock) []string

// restartResends is the check behind "no replay after restart" and "abort
// fences recovery". It fills a store with messages that end DELIVERED,
// ABORTED (before a lease, and in flight), FAILED, and some left PENDING;
// calls shutdown (if not nil) on the open store, closes it and runs recover.
// It returns the recovered ids that must never be sent again (finished
// messages) and the pending ids recovery did not return (lost work).
//
// The check is only worth something if it fails for a wrong recovery: the
// tests below run it against the real one (reopen and lease) and against the
// known-bad alternatives of issues 4 and 5, which it must catch.
func restartResends(t *testing.T, shutdown func(t *testing.T, s *Store), recover recoverFunc) (resent, lost []string) {
	t.Helper()
	const perKind = 5
	fs := vfs.NewMem()
	c := newClock()
	s := openTest(t, fs, c, PolicyFail)

	want := map[string]storev1.State{} // id → the state it must end in
	accept := func(kind string, i int) string {
		// One conversation per message: nothing is blocked behind another.
		return mustAccept(t, s, newMessage(fmt.Sprintf("%s-%d", kind, i))).Message.Id
	}
	var toDeliver, toFail, toAbortInFlight []string
	for i := range perKind {
		toDeliver = append(toDeliver, accept("delivered", i))
		toFail = append(toFail, accept("failed", i))
		toAbortInFlight = append(toAbortInFlight, accept("aborted-in-flight", i))
	}
	// Lease everything accepted so far, then end each attempt.
	leased := map[string]Leased{}
	for _, l := range leaseIDs(t, s, 1000) {
		leased[l.Message.Id] = l
	}
	if len(leased) != 3*perKind {
		t.Fatalf("leased %d, want %d", len(leased), 3*perKind)
	}
	for _, id := range toDeliver {
		deliver(t, s, leased[id])
		want[id] = storev1.State_STATE_DELIVERED
	}
	for _, id := range toFail {
		l := leased[id]
		res, err := s.Complete([]Outcome{{MessageID: id, LeaseToken: l.Delivery.LeaseToken, Result: ResultFailed, ErrorCode: "DLV_001", Reason: "rejected"}})
		if err != nil || !res[0].Applied {
			t.Fatalf("fail %s: %v %+v", id, err, res)
		}
		want[id] = storev1.State_STATE_FAILED
	}
	for _, id := range toAbortInFlight {
		if _, err := s.Abort(id, "stop"); err != nil {
			t.Fatalf("abort in flight %s: %v", id, err)
		}
		l := leased[id]
		// The attempt ends without a confirmation: ABORTED, never a retry.
		res, err := s.Complete([]Outcome{{MessageID: id, LeaseToken: l.Delivery.LeaseToken, Result: ResultRetry, RetryAt: c.Now()}})
		if err != nil || !res[0].Applied {
			t.Fatalf("end aborted attempt %s: %v %+v", id, err, res)
		}
		want[id] = storev1.State_STATE_ABORTED
	}
	// Aborted before any lease, and left pending.
	var pending []string
	for i := range perKind {
		id := accept("aborted", i)
		if _, err := s.Abort(id, "stop"); err != nil {
			t.Fatalf("abort %s: %v", id, err)
		}
		want[id] = storev1.State_STATE_ABORTED
		p := accept("pending", i)
		pending = append(pending, p)
		want[p] = storev1.State_STATE_PENDING
	}
	for id, st := range want {
		_, d, _, err := s.Get(id)
		if err != nil || d.GetState() != st {
			t.Fatalf("setup: %s is %v (%v), want %v", id, d.GetState(), err, st)
		}
	}

	if shutdown != nil {
		shutdown(t, s)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}

	got := recover(t, fs, c)
	seen := map[string]bool{}
	for _, id := range got {
		seen[id] = true
		if st, ok := want[id]; ok && IsTerminal(st) {
			resent = append(resent, id)
		}
	}
	for _, id := range pending {
		if !seen[id] {
			lost = append(lost, id)
		}
	}
	slices.Sort(resent)
	return resent, lost
}

// realRecovery is what the tracker does at start: Open loads the recovery
// index, and the lease loop leases everything due. The clock moves a minute
// on so any due time set at shutdown is reached.
func realRecovery(t *testing.T, fs vfs.FS, c *clock) []string {
	t.Helper()
	c.Advance(time.Minute)
	s := openTest(t, fs, c, PolicyFail)
	defer s.Close()
	if _, err := s.ExpireLeases(1000); err != nil {
		t.Fatalf("expire leases: %v", err)
	}
	var ids []string
	for {
		l := leaseIDs(t, s, 1000)
		if len(l) == 0 {
			return ids
		}
		for _, x := range l {
			ids = append(ids, x.Message.Id)
		}
	}
}

// scanDeliveries calls fn with every delivery record's id and state, read
// straight from the delivery key family.
func scanDeliveries(t *testing.T, s *Store, fn func(id string, d *storev1.Delivery)) {
	t.Helper()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixDelivery}, UpperBound: []byte{prefixDelivery + 1}})
	if err != nil {
		t.Fatalf("iter: %v", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		d := &storev1.Delivery{}
		if err := proto.Unmarshal(it.Value(), d); err != nil {
			t.Fatalf("decode %x: %v", it.Key(), err)
		}
		fn(string(it.Key()[1:]), d)
	}
	if err := it.Error(); err != nil {
		t.Fatalf("iter: %v", err)
	}
}

// statusFilterRecovery is the bug of issue 4 (and the "recovery filters by
// status" half of issue 5): instead of the recovery index it scans every
// delivery record and resends whatever is not DELIVERED, which takes in
// ABORTED and FAILED messages.
func statusFilterRecovery(t *testing.T, fs vfs.FS, c *clock) []string {
	t.Helper()
	s := openTest(t, fs, c, PolicyFail)
	defer s.Close()
	var ids []string
	scanDeliveries(t, s, func(id string, d *storev1.Delivery) {
		if d.GetState() != storev1.State_STATE_DELIVERED {
			ids = append(ids, id)
		}
	})
	return ids
}

// clearDeliveredAtShutdown is the other bug of issue 5: shutdown "tidies"
// the state of delivered messages away, deleting their delivery records.
func clearDeliveredAtShutdown(t *testing.T, s *Store) {
	t.Helper()
	var delivered []string
	scanDeliveries(t, s, func(id string, d *storev1.Delivery) {
		if d.GetState() == storev1.State_STATE_DELIVERED {
			delivered = append(delivered, id)
		}
	})
	if len(delivered) == 0 {
		t.Fatal("setup: no delivered messages to clear")
	}
	b := s.db.NewBatch()
	for _, id := range delivered {
		if err := b.Delete(deliveryKey(id), nil); err != nil {
			t.Fatalf("delete: %v", err)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatalf("commit: %v", err)
	}
}

// noDeliveryRecordRecovery resends every message that has no delivery
// record, taking a missing state for "never sent".
func noDeliveryRecordRecovery(t *testing.T, fs vfs.FS, c *clock) []string {
	t.Helper()
	s := openTest(t, fs, c, PolicyFail)
	defer s.Close()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixMessage}, UpperBound: []byte{prefixMessage + 1}})
	if err != nil {
		t.Fatalf("iter: %v", err)
	}
	defer it.Close()
	var ids []string
	for ok := it.First(); ok; ok = it.Next() {
		id := string(it.Key()[1:])
		if _, err := s.getDelivery(id); errors.Is(err, ErrNotFound) {
			ids = append(ids, id)
		} else if err != nil {
			t.Fatalf("read delivery %s: %v", id, err)
		}
	}
	if err := it.Error(); err != nil {
		t.Fatalf("iter: %v", err)
	}
	return ids
}

func TestRecoveryFromIndexResendsNothingFinished(t *testing.T) {
	resent, lost := restartResends(t, nil, realRecovery)
	t.Logf("real recovery: finished messages resent=%d, pending lost=%d", len(resent), len(lost))
	if len(resent) != 0 {
		t.Errorf("recovery would resend %d finished messages: %v", len(resent), resent)
	}
	if len(lost) != 0 {
		t.Errorf("recovery lost %d pending messages: %v", len(lost), lost)
	}
}

// TestStatusFilterRecoveryIsCaught shows the check is strong enough: the
// known-bad recoveries of issues 4 and 5 make restartResends report resends.
func TestStatusFilterRecoveryIsCaught(t *testing.T) {
	t.Run("status filter includes aborted and failed", func(t *testing.T) {
		resent, _ := restartResends(t, nil, statusFilterRecovery)
		t.Logf("status-filter recovery: finished messages resent=%d", len(resent))
		if len(resent) == 0 {
			t.Fatal("the check did not catch a recovery that resends ABORTED and FAILED messages")
		}
	})
	t.Run("shutdown clears delivered state", func(t *testing.T) {
		resent, _ := restartResends(t, clearDeliveredAtShutdown, noDeliveryRecordRecovery)
		t.Logf("cleared-delivered recovery: finished messages resent=%d", len(resent))
		if len(resent) == 0 {
			t.Fatal("the check did not catch a recovery that resends DELIVERED messages whose state was cleared")
		}
	})
}
