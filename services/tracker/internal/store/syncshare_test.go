package store

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

func openShared(t *testing.T, fs vfs.FS, c *clock, delay time.Duration) *Store {
	t.Helper()
	s, err := Open("db", Options{FS: fs, Now: c.Now, CacheSize: 8 << 20, SyncShareDelay: delay})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

// waitVisible waits until a read that does not wait for durability sees
// the message in state: the batch that put it there is committed.
func waitVisible(t *testing.T, s *Store, id string, state storev1.State) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := s.getDelivery(id)
		if err != nil {
			t.Fatal(err)
		}
		if d.GetState() == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is %s after 10 s, want %s", id, d.GetState(), state)
		}
		time.Sleep(time.Millisecond)
	}
}

// stateAfterCrash reopens a crash of fs (everything not synced is lost)
// and returns the message's state there.
func stateAfterCrash(t *testing.T, fs *vfs.MemFS, c *clock, id string) storev1.State {
	t.Helper()
	r := openShared(t, fs.CrashClone(vfs.CrashCloneCfg{}), c, 0)
	defer r.Close()
	d, err := r.getDelivery(id)
	if err != nil {
		t.Fatalf("after a crash, %s: %v", id, err)
	}
	return d.GetState()
}

// A lease batch and a batch of outcomes have no fsync of their own: they
// answer only once a later synced commit (here an Accept's) has made them
// durable, and a crash after they answered keeps them. The delay is an
// hour, so no sync of their own helps them.
func TestSharedCommitsAnswerAfterAnotherCommitsFsync(t *testing.T) {
	fs := vfs.NewCrashableMem()
	c := newClock()
	s := openShared(t, fs, c, time.Hour)
	defer s.Close()
	first := mustAccept(t, s, newMessage("c1")).Message.GetId()

	leased := make(chan []Leased, 1)
	go func() {
		l, err := s.Lease("w", 10, time.Minute, nil, false)
		if err != nil {
			t.Errorf("lease: %v", err)
		}
		leased <- l
	}()
	waitVisible(t, s, first, storev1.State_STATE_IN_FLIGHT) // committed, not durable
	select {
	case <-leased:
		t.Fatal("Lease answered before any fsync made its batch durable")
	case <-time.After(50 * time.Millisecond):
	}
	mustAccept(t, s, newMessage("c2"))
	l := <-leased
	if len(l) != 1 || l[0].Message.GetId() != first {
		t.Fatalf("leased %v, want %s", l, first)
	}
	if st := stateAfterCrash(t, fs, c, first); st != storev1.State_STATE_IN_FLIGHT {
		t.Fatalf("after a crash once Lease answered: %s, want IN_FLIGHT", st)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		o := Outcome{MessageID: first, LeaseToken: l[0].Delivery.GetLeaseToken(), Result: ResultDelivered, ProviderMessageID: "p1"}
		if _, err := s.Complete([]Outcome{o}); err != nil {
			t.Errorf("complete: %v", err)
		}
	}()
	waitVisible(t, s, first, storev1.State_STATE_DELIVERED)
	select {
	case <-done:
		t.Fatal("Complete answered before any fsync made its batch durable")
	case <-time.After(50 * time.Millisecond):
	}
	mustAccept(t, s, newMessage("c3"))
	<-done
	if st := stateAfterCrash(t, fs, c, first); st != storev1.State_STATE_DELIVERED {
		t.Fatalf("after a crash once Complete answered: %s, want DELIVERED", st)
	}
}

// With no other commit to share, a lease batch and a batch of outcomes
// sync the WAL themselves after the delay, and what they answered
// survives a crash.
func TestSharedCommitsSyncAloneAfterTheDelay(t *testing.T) {
	fs := vfs.NewCrashableMem()
	c := newClock()
	s := openShared(t, fs, c, 5*time.Millisecond)
	defer s.Close()
	id := mustAccept(t, s, newMessage("c1")).Message.GetId()
	l, err := s.Lease("w", 10, time.Minute, nil, false)
	if err != nil || len(l) != 1 {
		t.Fatalf("lease: %v, %d leased", err, len(l))
	}
	if st := stateAfterCrash(t, fs, c, id); st != storev1.State_STATE_IN_FLIGHT {
		t.Fatalf("after a crash once Lease answered: %s, want IN_FLIGHT", st)
	}
	o := Outcome{MessageID: id, LeaseToken: l[0].Delivery.GetLeaseToken(), Result: ResultDelivered, ProviderMessageID: "p1"}
	if _, err := s.Complete([]Outcome{o}); err != nil {
		t.Fatal(err)
	}
	if st := stateAfterCrash(t, fs, c, id); st != storev1.State_STATE_DELIVERED {
		t.Fatalf("after a crash once Complete answered: %s, want DELIVERED", st)
	}
}

// A read that answers a caller waits until what it saw is durable: a
// lease batch is visible from its commit on, and a Get that answered
// IN_FLIGHT before the batch's fsync would report a state a crash could
// take back.
func TestReadsAnswerOnlyDurableStates(t *testing.T) {
	fs := vfs.NewCrashableMem()
	c := newClock()
	// Two seconds, not an hour: a Get that reads just after the Accept's
	// fsync, before the lease batch's waiter has counted itself durable,
	// waits for the next fsync, which is then the delay's.
	s := openShared(t, fs, c, 2*time.Second)
	defer s.Close()
	id := mustAccept(t, s, newMessage("c1")).Message.GetId()
	leased := make(chan struct{})
	go func() {
		defer close(leased)
		if _, err := s.Lease("w", 10, time.Minute, nil, false); err != nil {
			t.Errorf("lease: %v", err)
		}
	}()
	waitVisible(t, s, id, storev1.State_STATE_IN_FLIGHT) // committed, not durable
	got := make(chan storev1.State, 1)
	go func() {
		_, d, _, err := s.Get(id)
		if err != nil {
			t.Errorf("get: %v", err)
		}
		got <- d.GetState()
	}()
	select {
	case st := <-got:
		t.Fatalf("Get answered %s before the lease batch it saw was durable", st)
	case <-time.After(50 * time.Millisecond):
	}
	mustAccept(t, s, newMessage("c2"))
	if st := <-got; st != storev1.State_STATE_IN_FLIGHT {
		t.Fatalf("Get answered %s, want IN_FLIGHT", st)
	}
	<-leased
}
