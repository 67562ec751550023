package store

import (
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

const testGrace = 10 * time.Second

func openReconcile(t *testing.T, fs vfs.FS, c *clock, policy UnknownPolicy, attempts int) *Store {
	t.Helper()
	s, err := Open("db", Options{FS: fs, Now: c.Now, UnknownPolicy: func(string) UnknownPolicy { return policy },
		CacheSize: 8 << 20, ReconcileGrace: testGrace, ReconcileAttempts: attempts})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

// unknownMessage accepts a message and a second one behind it in the same
// conversation, leases the first and reports its outcome unknown.
func unknownMessage(t *testing.T, s *Store) (first Leased, next string) {
	t.Helper()
	mustAccept(t, s, newMessage("c1"))
	next = mustAccept(t, s, newMessage("c1")).Message.Id
	first = leaseIDs(t, s, 10)[0]
	res, err := s.Complete([]Outcome{{MessageID: first.Message.Id, LeaseToken: first.Delivery.LeaseToken, Result: ResultUnknown, ErrorCode: "QUE_006"}})
	if err != nil || !res[0].Applied {
		t.Fatalf("complete unknown: %+v %v", res, err)
	}
	return first, next
}

func leaseReconcile(t *testing.T, s *Store) []Leased {
	t.Helper()
	l, err := s.Lease("w", 10, 30*time.Second, nil, true)
	if err != nil {
		t.Fatalf("lease: %v", err)
	}
	return l
}

func answer(t *testing.T, s *Store, l Leased, o Outcome) Applied {
	t.Helper()
	o.MessageID, o.LeaseToken = l.Message.Id, l.Delivery.LeaseToken
	res, err := s.Complete([]Outcome{o})
	if err != nil {
		t.Fatalf("complete: %v", err)
	}
	return res[0]
}

func verifyClean(t *testing.T, s *Store) {
	t.Helper()
	if r := s.Verify(true); len(r.Problems) > 0 {
		t.Fatalf("verify: %v", r.Problems)
	}
}

// Every answer of a reconcile lease moves the UNKNOWN message where the
// policy says, in one batch with its index entry and events, and nothing
// but a "not found" ever makes it sendable again.
func TestReconcileTransitions(t *testing.T) {
	tests := []struct {
		name          string
		answer        Outcome
		wantState     storev1.State
		wantReason    string
		wantEvent     string
		wantAttempts  uint32 // delivery attempts once it settles
		nextGoes      bool   // the conversation's next message is leased after it
		sendableAgain bool
	}{
		{name: "found is delivered", answer: Outcome{Result: ResultReconcileFound, ProviderMessageID: "C1:1700000000.000001"},
			wantState: storev1.State_STATE_DELIVERED, wantEvent: EventReconciled, wantAttempts: 1, nextGoes: true},
		{name: "not found is sent again, as a new attempt", answer: Outcome{Result: ResultReconcileNotFound},
			wantState: storev1.State_STATE_PENDING, wantEvent: EventReconcileNotFound, wantAttempts: 2, sendableAgain: true},
		{name: "cannot answer is dead-lettered", answer: Outcome{Result: ResultReconcileCannotAnswer, ErrorCode: "PLG_009", ErrorDetail: "no API"},
			wantState: storev1.State_STATE_FAILED, wantReason: ReasonOutcomeUnknown, wantEvent: EventReconcileFailed, wantAttempts: 1, nextGoes: true},
		{name: "error stays unknown", answer: Outcome{Result: ResultReconcileError, ErrorCode: "PLG_001", ErrorDetail: "ratelimited"},
			wantState: storev1.State_STATE_UNKNOWN, wantEvent: EventReconcileRetry, wantAttempts: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClock()
			s := openReconcile(t, vfs.NewMem(), c, PolicyReconcile, 5)
			defer s.Close()
			first, next := unknownMessage(t, s)
			id := first.Message.Id
			if d, _ := s.Delivery(id); d.State != storev1.State_STATE_UNKNOWN {
				t.Fatalf("after an unknown outcome: %s, want UNKNOWN", d.State)
			}

			c.Advance(testGrace)
			got := leaseReconcile(t, s)
			if len(got) != 1 || got[0].Message.Id != id {
				t.Fatalf("reconcile lease: got %d leases, want the unknown message", len(got))
			}
			rl := got[0]
			if !rl.Delivery.Reconciling || rl.Delivery.State != storev1.State_STATE_UNKNOWN ||
				rl.Delivery.LeaseToken <= first.Delivery.LeaseToken || rl.Delivery.ReconcileAttempts != 1 || rl.Delivery.Attempts != 1 {
				t.Fatalf("reconcile lease delivery: %v", rl.Delivery)
			}
			if rl.Delivery.AttemptStartedUnixNano != first.Delivery.AttemptStartedUnixNano || rl.Delivery.AttemptStartedUnixNano == 0 {
				t.Fatalf("attempt start %d, want the unknown attempt's %d", rl.Delivery.AttemptStartedUnixNano, first.Delivery.AttemptStartedUnixNano)
			}
			if p, _ := s.RecoveryPlan(false, 0); p.Unknown["reconcile"] != 1 || p.InFlight != 0 {
				t.Fatalf("recovery plan while reconciling: %+v", p)
			}
			verifyClean(t, s)

			if a := answer(t, s, rl, tt.answer); !a.Applied {
				t.Fatalf("answer not applied: %s", a.Reason)
			}
			// The answer is fenced: a repeat changes nothing.
			if a := answer(t, s, rl, tt.answer); a.Applied {
				t.Fatal("a repeated answer was applied")
			}
			d, err := s.Delivery(id)
			if err != nil {
				t.Fatal(err)
			}
			if d.State != tt.wantState || d.Reason != tt.wantReason || d.Reconciling {
				t.Fatalf("after the answer: %s reason %q reconciling=%v, want %s %q", d.State, d.Reason, d.Reconciling, tt.wantState, tt.wantReason)
			}
			if tt.wantState == storev1.State_STATE_DELIVERED && d.ProviderMessageId != tt.answer.ProviderMessageID {
				t.Fatalf("provider id %q, want %q", d.ProviderMessageId, tt.answer.ProviderMessageID)
			}
			if types := timelineOf(t, s, id); !slices.Contains(types, tt.wantEvent) || !slices.Contains(types, EventReconcileLeased) {
				t.Fatalf("timeline %v lacks %s", types, tt.wantEvent)
			}
			verifyClean(t, s)

			// What may be leased now: only a "not found" makes the message
			// sendable, as an ordinary new attempt; the rest never sends it.
			got = leaseReconcile(t, s)
			var ids []string
			for _, l := range got {
				ids = append(ids, l.Message.Id)
				if l.Message.Id == id && (l.Delivery.Reconciling || l.Delivery.State != storev1.State_STATE_IN_FLIGHT || l.Delivery.Attempts != tt.wantAttempts) {
					t.Fatalf("lease after the answer: %v", l.Delivery)
				}
			}
			if slices.Contains(ids, id) != tt.sendableAgain {
				t.Fatalf("leased %v after the answer; sendable again=%v, want %v", ids, slices.Contains(ids, id), tt.sendableAgain)
			}
			if slices.Contains(ids, next) != tt.nextGoes {
				t.Fatalf("leased %v after the answer; the next message goes=%v, want %v", ids, slices.Contains(ids, next), tt.nextGoes)
			}
			if tt.wantState == storev1.State_STATE_FAILED {
				dl, err := s.DeadLetters(DeadLetterFilter{})
				if err != nil || len(dl) != 1 || dl[0].Message.Id != id {
					t.Fatalf("dead letters: %v %v", dl, err)
				}
			}
			verifyClean(t, s)
		})
	}
}

// The provider is first asked only once the grace period since the outcome
// became unknown has passed: the call in question may still be running
// until then.
func TestReconcileWaitsForTheGracePeriod(t *testing.T) {
	c := newClock()
	s := openReconcile(t, vfs.NewMem(), c, PolicyReconcile, 5)
	defer s.Close()
	first, _ := unknownMessage(t, s)
	since := c.Now()

	next, ok, _ := s.DueSignal(true)
	if !ok || !next.Equal(since.Add(testGrace)) {
		t.Fatalf("DueSignal(reconcile) = %v %v, want %v", next, ok, since.Add(testGrace))
	}
	if _, ok, _ := s.DueSignal(false); ok {
		t.Fatal("DueSignal without reconcile reports the unknown message as work")
	}
	c.Advance(testGrace - time.Nanosecond)
	if got := leaseReconcile(t, s); len(got) != 0 {
		t.Fatalf("reconcile leased %s before the grace period passed", got[0].Message.Id)
	}
	c.Advance(time.Nanosecond)
	// A worker that does not know reconciliation never gets one.
	if got := leaseIDs(t, s, 10); len(got) != 0 {
		t.Fatal("a lease without reconcile handed out the unknown message")
	}
	got := leaseReconcile(t, s)
	if len(got) != 1 || got[0].Message.Id != first.Message.Id || !got[0].Delivery.Reconciling {
		t.Fatalf("after the grace period: %v", got)
	}
	// A delivery result cannot complete a reconcile lease.
	if a := answer(t, s, got[0], Outcome{Result: ResultDelivered, ProviderMessageID: "p"}); a.Applied {
		t.Fatal("a delivery result completed a reconcile lease")
	}
	if a := answer(t, s, got[0], Outcome{Result: ResultReconcileFound}); a.Applied {
		t.Fatal("found without a provider message id was applied")
	}
	// And a reconcile answer cannot complete a delivery lease.
	mustAccept(t, s, newMessage("c2"))
	l := leaseIDs(t, s, 10)[0]
	if a := answer(t, s, l, Outcome{Result: ResultReconcileNotFound}); a.Applied {
		t.Fatal("a reconcile answer completed a delivery lease")
	}
}

// A reconcile lease that expires leaves the message UNKNOWN, never PENDING:
// nobody learnt whether the provider has it. Its late answer is refused;
// it is asked again after a backoff, and dead-lettered when the attempts
// are spent.
func TestReconcileLeaseExpiryStaysUnknown(t *testing.T) {
	c := newClock()
	s := openReconcile(t, vfs.NewMem(), c, PolicyReconcile, 2)
	defer s.Close()
	first, next := unknownMessage(t, s)
	id := first.Message.Id

	c.Advance(testGrace)
	r1 := leaseReconcile(t, s)[0]
	c.Advance(31 * time.Second)
	if n, err := s.ExpireLeases(10); err != nil || n != 1 {
		t.Fatalf("expire: n=%d err=%v", n, err)
	}
	d, _ := s.Delivery(id)
	if d.State != storev1.State_STATE_UNKNOWN || d.Reconciling || d.LastErrorCode != "DLV_005" {
		t.Fatalf("after the reconcile lease expired: %v, want UNKNOWN, not reconciling, DLV_005", d)
	}
	if got := leaseReconcile(t, s); len(got) != 0 {
		t.Fatalf("leased %v at once after the expiry, want the backoff first", got[0].Delivery)
	}
	if a := answer(t, s, r1, Outcome{Result: ResultReconcileNotFound}); a.Applied {
		t.Fatal("the expired reconcile lease's answer was applied")
	}
	verifyClean(t, s)

	c.Advance(testGrace) // the first backoff is the grace period
	r2 := leaseReconcile(t, s)
	if len(r2) != 1 || !r2[0].Delivery.Reconciling || r2[0].Delivery.ReconcileAttempts != 2 {
		t.Fatalf("second try: %v", r2)
	}
	c.Advance(31 * time.Second)
	if _, err := s.ExpireLeases(10); err != nil {
		t.Fatal(err)
	}
	d, _ = s.Delivery(id)
	if d.State != storev1.State_STATE_FAILED || d.Reason != ReasonOutcomeUnknown || d.LastErrorCode != "DLV_006" {
		t.Fatalf("after the last try expired: %s %q %s, want FAILED outcome_unknown DLV_006", d.State, d.Reason, d.LastErrorCode)
	}
	if d.Attempts != 1 {
		t.Fatalf("attempts %d: reconcile leases must not count as delivery attempts", d.Attempts)
	}
	got := leaseReconcile(t, s)
	if len(got) != 1 || got[0].Message.Id != next {
		t.Fatalf("after the dead letter: leased %v, want only the next message", got)
	}
	verifyClean(t, s)
}

// A failed try waits for the backoff, or the provider's retry-after if
// later, and the attempts are bounded.
func TestReconcileErrorsBackOffAndEnd(t *testing.T) {
	c := newClock()
	s := openReconcile(t, vfs.NewMem(), c, PolicyReconcile, 3)
	defer s.Close()
	first, _ := unknownMessage(t, s)
	id := first.Message.Id
	c.Advance(testGrace)

	// Try 1 fails with a retry-after later than the backoff (10s).
	l := leaseReconcile(t, s)[0]
	answer(t, s, l, Outcome{Result: ResultReconcileError, ErrorCode: "PLG_001", RetryAt: c.Now().Add(time.Minute)})
	c.Advance(testGrace)
	if got := leaseReconcile(t, s); len(got) != 0 {
		t.Fatal("asked again before the provider's retry-after")
	}
	c.Advance(time.Minute - testGrace)
	l = leaseReconcile(t, s)[0]
	// Try 2 fails without a retry-after: the backoff doubles (20s).
	answer(t, s, l, Outcome{Result: ResultReconcileError, ErrorCode: "PLG_006"})
	c.Advance(2*testGrace - time.Nanosecond)
	if got := leaseReconcile(t, s); len(got) != 0 {
		t.Fatal("asked again before the doubled backoff")
	}
	c.Advance(time.Nanosecond)
	l = leaseReconcile(t, s)[0]
	if l.Delivery.ReconcileAttempts != 3 {
		t.Fatalf("try %d, want 3", l.Delivery.ReconcileAttempts)
	}
	// Try 3 is the last.
	answer(t, s, l, Outcome{Result: ResultReconcileError, ErrorCode: "PLG_006", ErrorDetail: "timeout"})
	d, _ := s.Delivery(id)
	if d.State != storev1.State_STATE_FAILED || d.Reason != ReasonOutcomeUnknown || d.LastErrorCode != "DLV_006" {
		t.Fatalf("after the last try: %s %q %s", d.State, d.Reason, d.LastErrorCode)
	}
	verifyClean(t, s)
}

// An abort of an UNKNOWN message wins over reconciliation: before or during
// a reconcile lease it makes the message ABORTED, and no answer (not even
// "not found") makes it sendable again.
func TestAbortWinsOverReconcile(t *testing.T) {
	for _, during := range []bool{false, true} {
		for _, result := range []Result{ResultReconcileNotFound, ResultReconcileFound, ResultReconcileError} {
			name := "before the reconcile lease"
			if during {
				name = "during the reconcile lease"
			}
			t.Run(name+"/"+map[Result]string{ResultReconcileNotFound: "not found", ResultReconcileFound: "found", ResultReconcileError: "error"}[result], func(t *testing.T) {
				c := newClock()
				s := openReconcile(t, vfs.NewMem(), c, PolicyReconcile, 5)
				defer s.Close()
				first, next := unknownMessage(t, s)
				id := first.Message.Id
				c.Advance(testGrace)
				var rl Leased
				if during {
					rl = leaseReconcile(t, s)[0]
				}
				if _, err := s.Abort(id, "user pressed stop"); err != nil {
					t.Fatal(err)
				}
				if during {
					if a := answer(t, s, rl, Outcome{Result: result, ProviderMessageID: "p"}); a.Applied {
						t.Fatal("the reconcile answer was applied after the abort")
					}
				}
				if d, _ := s.Delivery(id); d.State != storev1.State_STATE_ABORTED {
					t.Fatalf("state %s, want ABORTED", d.State)
				}
				for range 2 {
					for _, l := range leaseReconcile(t, s) {
						if l.Message.Id == id {
							t.Fatalf("the aborted message was leased: %v", l.Delivery)
						}
						if l.Message.Id == next {
							deliver(t, s, l)
						}
					}
					c.Advance(time.Hour)
					if _, err := s.ExpireLeases(10); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := s.Abort(id, "again"); !errors.Is(err, ErrTerminal) {
					t.Fatalf("second abort: %v, want ErrTerminal", err)
				}
				verifyClean(t, s)
			})
		}
	}
}

// An aborted in-flight attempt whose outcome turns unknown never becomes
// UNKNOWN at all, so it is never reconciled into a send.
func TestAbortRequestedIsNeverReconciled(t *testing.T) {
	c := newClock()
	s := openReconcile(t, vfs.NewMem(), c, PolicyReconcile, 5)
	defer s.Close()
	mustAccept(t, s, newMessage("c1"))
	l := leaseIDs(t, s, 1)[0]
	if _, err := s.Abort(l.Message.Id, "stop"); err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Minute)
	if _, err := s.ExpireLeases(10); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.Delivery(l.Message.Id); d.State != storev1.State_STATE_ABORTED {
		t.Fatalf("state %s, want ABORTED", d.State)
	}
	c.Advance(time.Hour)
	if got := leaseReconcile(t, s); len(got) != 0 {
		t.Fatalf("leased %v", got[0].Delivery)
	}
}

// UNKNOWN messages left by a reconcile policy follow the channel's policy
// of the running tracker: a restart with fail dead-letters them, with
// redeliver sends them, when their time comes.
func TestPolicyChangeResolvesWaitingUnknowns(t *testing.T) {
	for _, tt := range []struct {
		policy UnknownPolicy
		want   storev1.State
	}{{PolicyFail, storev1.State_STATE_FAILED}, {PolicyRedeliver, storev1.State_STATE_PENDING}} {
		t.Run(policyName(tt.policy), func(t *testing.T) {
			fs := vfs.NewMem()
			c := newClock()
			s := openReconcile(t, fs, c, PolicyReconcile, 5)
			first, _ := unknownMessage(t, s)
			s.Close()
			s = openReconcile(t, fs, c, tt.policy, 5)
			defer s.Close()
			if got := leaseReconcile(t, s); len(got) != 0 {
				t.Fatal("resolved before the grace period")
			}
			c.Advance(testGrace)
			for _, l := range leaseReconcile(t, s) {
				if l.Delivery.Reconciling {
					t.Fatalf("reconcile lease under policy %s", policyName(tt.policy))
				}
			}
			if d, _ := s.Delivery(first.Message.Id); d.State != tt.want {
				t.Fatalf("state %s, want %s", d.State, tt.want)
			}
			if tt.policy == PolicyRedeliver {
				if got := leaseReconcile(t, s); len(got) != 1 || got[0].Message.Id != first.Message.Id || got[0].Delivery.State != storev1.State_STATE_IN_FLIGHT {
					t.Fatalf("redelivery lease: %v", got)
				}
			}
			verifyClean(t, s)
		})
	}
}

// A store of schema version 1 opens and is upgraded in place; its UNKNOWN
// records (keyed by unknown-since) stay consistent and reconcilable.
// Unknown versions are refused.
func TestSchemaUpgradeFromVersion1(t *testing.T) {
	fs := vfs.NewMem()
	c := newClock()
	s := openReconcile(t, fs, c, PolicyReconcile, 5)
	first, _ := unknownMessage(t, s)
	// Make the record look as version 1 wrote it: no reconcile_at, indexed
	// by unknown-since.
	d, _ := s.Delivery(first.Message.Id)
	old := entry{at: d.ReconcileAtUnixNano, id: first.Message.Id}
	d.ReconcileAtUnixNano = 0
	b := s.db.NewBatch()
	b.Set(deliveryKey(first.Message.Id), mustMarshal(d), nil)
	b.Delete(recoveryKey(recoveryUnknown, old.at, old.id), nil)
	b.Set(recoveryKey(recoveryUnknown, d.UnknownSinceUnixNano, old.id), recoveryValueV3("mock", "t1", "c1"), nil)
	b.Set(metaSchemaKey, binary.BigEndian.AppendUint32(nil, 1), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = openReconcile(t, fs, c, PolicyReconcile, 5)
	verifyClean(t, s)
	got := leaseReconcile(t, s)
	if len(got) != 1 || !got[0].Delivery.Reconciling {
		t.Fatalf("a version 1 unknown record was not reconciled: %v", got)
	}
	verifyClean(t, s)
	if err := s.db.Set(metaSchemaKey, binary.BigEndian.AppendUint32(nil, schemaVersion+1), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open("db", Options{FS: fs, Now: c.Now}); !errors.Is(err, ErrSchema) {
		t.Fatalf("open of version %d: %v, want ErrSchema", schemaVersion+1, err)
	}
}

// A reconcile lease whose question never reached the provider (the plugin
// host was out of reach) gives its try back and is asked again at once,
// without the backoff.
func TestReconcileNotAskedGivesTheTryBack(t *testing.T) {
	c := newClock()
	s := openReconcile(t, vfs.NewMem(), c, PolicyReconcile, 1)
	defer s.Close()
	first, _ := unknownMessage(t, s)
	c.Advance(testGrace)
	for range 3 {
		l := leaseReconcile(t, s)
		if len(l) != 1 || l[0].Delivery.ReconcileAttempts != 1 {
			t.Fatalf("reconcile lease: %v", l)
		}
		if a := answer(t, s, l[0], Outcome{Result: ResultReconcileError, NotAttempted: true, ErrorCode: "QUE_001", RetryAt: c.Now()}); !a.Applied {
			t.Fatal(a.Reason)
		}
		if d, _ := s.Delivery(first.Message.Id); d.State != storev1.State_STATE_UNKNOWN || d.ReconcileAttempts != 0 {
			t.Fatalf("after a question that was not asked: %v", d)
		}
	}
	// The one real try is still there; its failure ends it.
	l := leaseReconcile(t, s)[0]
	answer(t, s, l, Outcome{Result: ResultReconcileError, ErrorCode: "PLG_006"})
	if d, _ := s.Delivery(first.Message.Id); d.State != storev1.State_STATE_FAILED || d.LastErrorCode != "DLV_006" {
		t.Fatalf("after the only try failed: %s %s", d.State, d.LastErrorCode)
	}
}
