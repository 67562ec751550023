package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

func TestAbort(t *testing.T) {
	tests := []struct {
		name      string
		inFlight  bool
		result    Result // outcome after the abort, for an in-flight message
		expire    bool   // the lease expires instead
		wantState storev1.State
	}{
		{name: "pending is aborted at once", wantState: storev1.State_STATE_ABORTED},
		{name: "in flight then retryable ends aborted", inFlight: true, result: ResultRetry, wantState: storev1.State_STATE_ABORTED},
		{name: "in flight then unknown ends aborted", inFlight: true, result: ResultUnknown, wantState: storev1.State_STATE_ABORTED},
		{name: "in flight then lease expiry ends aborted", inFlight: true, expire: true, wantState: storev1.State_STATE_ABORTED},
		{name: "in flight then confirmed stays delivered", inFlight: true, result: ResultDelivered, wantState: storev1.State_STATE_DELIVERED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClock()
			s := openTest(t, vfs.NewMem(), c, PolicyRedeliver)
			defer s.Close()
			a := mustAccept(t, s, newMessage("c1"))
			next := mustAccept(t, s, newMessage("c1"))
			var l Leased
			if tt.inFlight {
				l = leaseIDs(t, s, 10)[0]
			}
			if _, err := s.Abort(a.Message.Id, "user pressed stop"); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Abort(a.Message.Id, "again"); !errors.Is(err, ErrTerminal) {
				t.Fatalf("second abort: got %v, want ErrTerminal", err)
			}
			if tt.inFlight {
				if tt.expire {
					c.Advance(time.Minute)
					if _, err := s.ExpireLeases(10); err != nil {
						t.Fatal(err)
					}
				} else {
					if _, err := s.Complete([]Outcome{{MessageID: l.Message.Id, LeaseToken: l.Delivery.LeaseToken, Result: tt.result, ProviderMessageID: "p", RetryAt: c.Now()}}); err != nil {
						t.Fatal(err)
					}
				}
			}
			_, d, _, err := s.Get(a.Message.Id)
			if err != nil {
				t.Fatal(err)
			}
			if d.State != tt.wantState {
				t.Fatalf("state: got %s, want %s", d.State, tt.wantState)
			}
			// Never leased again; the conversation moves on.
			got := leaseIDs(t, s, 10)
			if len(got) != 1 || got[0].Message.Id != next.Message.Id {
				t.Fatalf("after abort: leased %d messages, want only the next one", len(got))
			}
			if r := s.Verify(true); len(r.Problems) > 0 {
				t.Fatalf("verify: %v", r.Problems)
			}
		})
	}
}

func TestDeadLetterRedrive(t *testing.T) {
	c := newClock()
	s := openTest(t, vfs.NewMem(), c, PolicyFail)
	defer s.Close()
	a := mustAccept(t, s, newMessage("c1"))
	l := leaseIDs(t, s, 1)[0]
	if _, err := s.Complete([]Outcome{{MessageID: l.Message.Id, LeaseToken: l.Delivery.LeaseToken, Result: ResultFailed, ErrorCode: "PLG_001", ErrorDetail: "403 bot was kicked"}}); err != nil {
		t.Fatal(err)
	}
	dl, err := s.DeadLetters(DeadLetterFilter{Code: "PLG_001"})
	if err != nil || len(dl) != 1 || dl[0].Message.Id != a.Message.Id {
		t.Fatalf("dead letters: %v %v", dl, err)
	}
	if other, _ := s.DeadLetters(DeadLetterFilter{Channel: "telegram"}); len(other) != 0 {
		t.Fatal("channel filter matched another channel")
	}
	d, err := s.Redrive(a.Message.Id)
	if err != nil || d.State != storev1.State_STATE_PENDING || d.Attempts != 0 {
		t.Fatalf("redrive: %v %v", d, err)
	}
	if _, err := s.Redrive(a.Message.Id); !errors.Is(err, ErrNotDeadLetter) {
		t.Fatalf("second redrive: got %v, want ErrNotDeadLetter", err)
	}
	if dl, _ := s.DeadLetters(DeadLetterFilter{}); len(dl) != 0 {
		t.Fatal("redriven message still listed as a dead letter")
	}
	got := leaseIDs(t, s, 1)
	if len(got) != 1 || got[0].Delivery.Attempts != 1 || got[0].Delivery.LeaseToken != 2 {
		t.Fatalf("redriven lease: %+v", got)
	}
	if r := s.Verify(true); len(r.Problems) > 0 {
		t.Fatalf("verify: %v", r.Problems)
	}
}

func TestBackupRestoresPendingWork(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "live"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pending := mustAccept(t, s, newMessage("c1"))
	var backups []string
	for i := range 4 {
		b, err := s.Backup(filepath.Join(dir, "backups"), 3, time.Unix(int64(1000+i), 0))
		if err != nil {
			t.Fatal(err)
		}
		backups = append(backups, b)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "backups", "herald-*"))
	if len(left) != 3 {
		t.Fatalf("kept %d backups, want 3", len(left))
	}
	if _, err := os.Stat(backups[0]); !os.IsNotExist(err) {
		t.Fatal("the oldest backup was not removed")
	}
	r, err := Open(backups[3], Options{})
	if err != nil {
		t.Fatalf("open backup: %v", err)
	}
	defer r.Close()
	if rep := r.Verify(true); len(rep.Problems) > 0 {
		t.Fatalf("backup does not verify: %v", rep.Problems)
	}
	l, err := r.Lease("w", 10, time.Minute, nil, false)
	if err != nil || len(l) != 1 || l[0].Message.Id != pending.Message.Id {
		t.Fatalf("restored store leases %v (%v), want the pending message", l, err)
	}
}

// Recovery status comes from the recovery index: an aborted message is
// counted as excluded and never listed as something to send.
func TestRecoveryPlanExcludesAborted(t *testing.T) {
	c := newClock()
	s := openTest(t, vfs.NewMem(), c, PolicyFail)
	defer s.Close()
	aborted := mustAccept(t, s, newMessage("c1")).Message.Id
	mustAccept(t, s, newMessage("c2"))
	mustAccept(t, s, newMessage("c3"))
	if _, err := s.Abort(aborted, "stop"); err != nil {
		t.Fatal(err)
	}
	leased := leaseIDs(t, s, 1)[0].Message
	mustAccept(t, s, newMessage(leased.Conversation)) // waits behind the leased one
	p, err := s.RecoveryPlan(true, 100)
	if err != nil {
		t.Fatal(err)
	}
	if p.Due != 1 || p.InFlight != 1 || p.Blocked != 1 || p.AbortedExcluded != 1 {
		t.Fatalf("plan: due=%d in_flight=%d blocked=%d aborted=%d, want 1 1 1 1", p.Due, p.InFlight, p.Blocked, p.AbortedExcluded)
	}
	if len(p.Items) != 3 {
		t.Fatalf("listed %d items, want 3", len(p.Items))
	}
	for _, it := range p.Items {
		if it.ID == aborted {
			t.Fatalf("the aborted message is listed as %s: %s", it.Kind, it.Action)
		}
	}
}
