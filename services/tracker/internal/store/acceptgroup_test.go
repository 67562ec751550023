package store

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// Accepts that arrive while maxAcceptGroups groups are under way wait and
// commit together, in one batch, each with the result it would have had
// alone: sequences in arrival order, a repeated idempotency key answered
// with the first message, a stored id and an invalid message refused.
func TestConcurrentAcceptsShareOneCommit(t *testing.T) {
	c := newClock()
	var commits atomic.Int64
	s, err := Open("db", Options{FS: vfs.NewMem(), Now: c.Now, CacheSize: 8 << 20, OnCommit: func(time.Duration) { commits.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stored := mustAccept(t, s, newMessage("old")).Message.Id

	// The first maxAcceptGroups Accepts hold every group place: their
	// conversation's stripe is locked, so they wait inside AcceptBatch.
	block := newMessage("blocked")
	stripe := s.stripe(block.Tenant, block.Conversation)
	s.locks[stripe].Lock()
	var wg sync.WaitGroup
	for range maxAcceptGroups {
		wg.Go(func() {
			if _, err := s.Accept(newMessage("blocked")); err != nil {
				t.Error(err)
			}
		})
	}
	waitFor(t, "the groups to fill", func() bool {
		s.groups.mu.Lock()
		defer s.groups.mu.Unlock()
		return s.groups.underWay == maxAcceptGroups
	})

	k1, k2 := newMessage("k1"), newMessage("k2")
	k1.IdempotencyKey, k2.IdempotencyKey = "key", "key"
	a1, a2 := newMessage("a"), newMessage("a")
	again := newMessage("again")
	again.Id = stored
	invalid := newMessage("invalid")
	invalid.Channel = ""
	msgs := []*storev1.Message{k1, a1, invalid, k2, again, a2}
	res := make([]Accepted, len(msgs))
	errs := make([]error, len(msgs))
	for i, m := range msgs { // one at a time, so the group keeps this order
		wg.Go(func() { res[i], errs[i] = s.Accept(m) })
		waitFor(t, "the Accept to wait", func() bool {
			s.groups.mu.Lock()
			defer s.groups.mu.Unlock()
			return len(s.groups.waiting) == i+1
		})
	}
	before := commits.Load()
	s.locks[stripe].Unlock()
	wg.Wait()

	if got := commits.Load() - before; got != maxAcceptGroups+2 {
		t.Errorf("%d commits, want %d: one per blocked Accept, then the waiting six in one group (two rounds: the repeated key and conversation go in the second)", got, maxAcceptGroups+2)
	}
	if errs[0] != nil || res[0].Duplicate {
		t.Errorf("first with the key: %+v, %v", res[0], errs[0])
	}
	if errs[3] != nil || !res[3].Duplicate || res[3].Message.GetId() != k1.Id {
		t.Errorf("second with the key: %+v, %v; want the first message, as a duplicate", res[3], errs[3])
	}
	if errs[1] != nil || errs[5] != nil || res[1].Message.GetSequence() != 1 || res[5].Message.GetSequence() != 2 {
		t.Errorf("conversation a: sequences %d, %d (%v, %v); want 1, 2 in arrival order", res[1].Message.GetSequence(), res[5].Message.GetSequence(), errs[1], errs[5])
	}
	if res[5].Delivery.GetBlocked() != true {
		t.Errorf("a's second message is not blocked behind its first")
	}
	if !errors.Is(errs[2], ErrInvalid) {
		t.Errorf("invalid message: %v, want ErrInvalid", errs[2])
	}
	if !errors.Is(errs[4], ErrExists) {
		t.Errorf("stored id: %v, want ErrExists", errs[4])
	}
	s.groups.mu.Lock()
	defer s.groups.mu.Unlock()
	if s.groups.underWay != 0 || len(s.groups.waiting) != 0 {
		t.Errorf("after all answered: %d groups under way, %d waiting; want none", s.groups.underWay, len(s.groups.waiting))
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
