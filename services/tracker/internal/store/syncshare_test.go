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

// wantAfterCrash reopens a crash of fs (everything not synced is lost)
// and checks the message's state there.
func wantAfterCrash(t *testing.T, fs *vfs.MemFS, c *clock, id string, want storev1.State, when string) {
	t.Helper()
	r := openShared(t, fs.CrashClone(vfs.CrashCloneCfg{}), c, 0)
	defer r.Close()
	d, err := r.getDelivery(id)
	if err != nil {
		t.Fatalf("after a crash %s, %s: %v", when, id, err)
	}
	if d.GetState() != want {
		t.Fatalf("after a crash %s: %s, want %s", when, d.GetState(), want)
	}
}

// acceptOne opens a store on a crashable file system with the given
// share delay and accepts one message; it returns the message's id.
func acceptOne(t *testing.T, delay time.Duration) (*vfs.MemFS, *clock, *Store, string) {
	t.Helper()
	fs := vfs.NewCrashableMem()
	c := newClock()
	s := openShared(t, fs, c, delay)
	t.Cleanup(func() { s.Close() })
	return fs, c, s, mustAccept(t, s, newMessage("c1")).Message.GetId()
}

// notAnswered checks that nothing arrives on ch for 50 ms.
func notAnswered[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("%s answered (%v) before any fsync made what it saw durable", what, v)
	case <-time.After(50 * time.Millisecond):
	}
}

func deliveredOutcome(l Leased) Outcome {
	return Outcome{MessageID: l.Message.GetId(), LeaseToken: l.Delivery.GetLeaseToken(), Result: ResultDelivered, ProviderMessageID: "p1"}
}

// A lease batch and a batch of outcomes have no fsync of their own: they
// answer only once a later synced commit (here an Accept's) has made them
// durable, and a crash after they answered keeps them. The delay is an
// hour, so no sync of their own helps them.
func TestSharedCommitsAnswerAfterAnotherCommitsFsync(t *testing.T) {
	fs, c, s, first := acceptOne(t, time.Hour)

	leased := make(chan []Leased, 1)
	go func() {
		l, err := s.Lease("w", 10, time.Minute, nil, false)
		if err != nil {
			t.Errorf("lease: %v", err)
		}
		leased <- l
	}()
	waitVisible(t, s, first, storev1.State_STATE_IN_FLIGHT) // committed, not durable
	notAnswered(t, leased, "Lease")
	mustAccept(t, s, newMessage("c2"))
	l := <-leased
	if len(l) != 1 || l[0].Message.GetId() != first {
		t.Fatalf("leased %v, want %s", l, first)
	}
	wantAfterCrash(t, fs, c, first, storev1.State_STATE_IN_FLIGHT, "once Lease answered")

	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := s.Complete([]Outcome{deliveredOutcome(l[0])}); err != nil {
			t.Errorf("complete: %v", err)
		}
	}()
	waitVisible(t, s, first, storev1.State_STATE_DELIVERED)
	notAnswered(t, done, "Complete")
	mustAccept(t, s, newMessage("c3"))
	<-done
	wantAfterCrash(t, fs, c, first, storev1.State_STATE_DELIVERED, "once Complete answered")
}

// With no other commit to share, a lease batch and a batch of outcomes
// sync the WAL themselves after the delay, and what they answered
// survives a crash; with sharing off (a negative delay) each makes its
// own fsync at once.
func TestSharedCommitsSyncAloneAfterTheDelay(t *testing.T) {
	for _, delay := range []time.Duration{5 * time.Millisecond, -1} {
		t.Run(delay.String(), func(t *testing.T) {
			fs, c, s, id := acceptOne(t, delay)
			l, err := s.Lease("w", 10, time.Minute, nil, false)
			if err != nil || len(l) != 1 {
				t.Fatalf("lease: %v, %d leased", err, len(l))
			}
			wantAfterCrash(t, fs, c, id, storev1.State_STATE_IN_FLIGHT, "once Lease answered")
			if _, err := s.Complete([]Outcome{deliveredOutcome(l[0])}); err != nil {
				t.Fatal(err)
			}
			wantAfterCrash(t, fs, c, id, storev1.State_STATE_DELIVERED, "once Complete answered")
		})
	}
}

// A read that answers a caller waits until what it saw is durable: a
// lease batch is visible from its commit on, and a Get that answered
// IN_FLIGHT before the batch's fsync would report a state a crash could
// take back.
func TestReadsAnswerOnlyDurableStates(t *testing.T) {
	// Two seconds, not an hour: a Get that reads just after the Accept's
	// fsync, before the lease batch's waiter has counted itself durable,
	// waits for the next fsync, which is then the delay's.
	_, _, s, id := acceptOne(t, 2*time.Second)
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
	notAnswered(t, got, "Get")
	mustAccept(t, s, newMessage("c2"))
	if st := <-got; st != storev1.State_STATE_IN_FLIGHT {
		t.Fatalf("Get answered %s, want IN_FLIGHT", st)
	}
	<-leased
}
