package store

import (
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// clock is an injected clock that tests move by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Unix(1_800_000_000, 0)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func openTest(t *testing.T, fs vfs.FS, c *clock, policy UnknownPolicy) *Store {
	t.Helper()
	s, err := Open("db", Options{FS: fs, Now: c.Now, UnknownPolicy: func(string) UnknownPolicy { return policy }, CacheSize: 8 << 20})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

func newMessage(conv string) *storev1.Message {
	return &storev1.Message{
		Id:           ulid.Make().String(),
		Tenant:       "t1",
		Channel:      "mock",
		Recipient:    "ok",
		Conversation: conv,
		Text:         "hello",
	}
}

func mustAccept(t *testing.T, s *Store, m *storev1.Message) Accepted {
	t.Helper()
	a, err := s.Accept(m)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	return a
}

func leaseIDs(t *testing.T, s *Store, max int) []Leased {
	t.Helper()
	l, err := s.Lease("w", max, 30*time.Second, nil, false)
	if err != nil {
		t.Fatalf("lease: %v", err)
	}
	return l
}

func deliver(t *testing.T, s *Store, l Leased) {
	t.Helper()
	res, err := s.Complete([]Outcome{{MessageID: l.Message.Id, LeaseToken: l.Delivery.LeaseToken, Result: ResultDelivered, ProviderMessageID: "p-" + l.Message.Id}})
	if err != nil || !res[0].Applied {
		t.Fatalf("complete %s: %v %+v", l.Message.Id, err, res)
	}
}

func TestConversationOrder(t *testing.T) {
	c := newClock()
	s := openTest(t, vfs.NewMem(), c, PolicyFail)
	defer s.Close()
	var ids []string
	for range 3 {
		ids = append(ids, mustAccept(t, s, newMessage("c1")).Message.Id)
	}
	other := mustAccept(t, s, newMessage("c2")).Message.Id

	for i, want := range ids {
		got := leaseIDs(t, s, 10)
		gotIDs := map[string]bool{}
		for _, l := range got {
			gotIDs[l.Message.Id] = true
		}
		if !gotIDs[want] {
			t.Fatalf("round %d: lease %v lacks head %s", i, gotIDs, want)
		}
		for _, later := range ids[i+1:] {
			if gotIDs[later] {
				t.Fatalf("round %d: %s leased before its predecessor finished", i, later)
			}
		}
		for _, l := range got {
			if l.Message.Id == want {
				if l.Message.Sequence != uint64(i+1) {
					t.Errorf("sequence: got %d, want %d", l.Message.Sequence, i+1)
				}
				deliver(t, s, l)
			} else if l.Message.Id != other {
				t.Fatalf("unexpected lease %s", l.Message.Id)
			}
		}
	}
}

func TestIdempotentAccept(t *testing.T) {
	s := openTest(t, vfs.NewMem(), newClock(), PolicyFail)
	defer s.Close()
	m := newMessage("c1")
	m.IdempotencyKey = "k1"
	first := mustAccept(t, s, m)
	again := newMessage("c1")
	again.IdempotencyKey = "k1"
	second := mustAccept(t, s, again)
	if !second.Duplicate || second.Message.Id != first.Message.Id {
		t.Fatalf("repeat: got id %s dup=%v, want id %s dup=true", second.Message.Id, second.Duplicate, first.Message.Id)
	}
	other := newMessage("c1")
	other.IdempotencyKey = "k1"
	other.Tenant = "t2"
	if got := mustAccept(t, s, other); got.Duplicate {
		t.Fatal("idempotency keys must be scoped per tenant")
	}
	if n := s.RecoverySize(); n != 2 {
		t.Fatalf("recovery size: got %d, want 2", n)
	}
}

func TestStaleLeaseCannotComplete(t *testing.T) {
	c := newClock()
	s := openTest(t, vfs.NewMem(), c, PolicyRedeliver)
	defer s.Close()
	mustAccept(t, s, newMessage("c1"))
	first := leaseIDs(t, s, 1)[0]
	c.Advance(31 * time.Second)
	if n, err := s.ExpireLeases(10); err != nil || n != 1 {
		t.Fatalf("expire: n=%d err=%v", n, err)
	}
	second := leaseIDs(t, s, 1)
	if len(second) != 1 || second[0].Delivery.LeaseToken <= first.Delivery.LeaseToken {
		t.Fatalf("redelivered lease: %+v", second)
	}
	res, err := s.Complete([]Outcome{{MessageID: first.Message.Id, LeaseToken: first.Delivery.LeaseToken, Result: ResultDelivered, ProviderMessageID: "p"}})
	if err != nil || res[0].Applied {
		t.Fatalf("stale completion applied: %+v %v", res, err)
	}
	deliver(t, s, second[0])
	_, d, timeline, err := s.Get(first.Message.Id)
	if err != nil {
		t.Fatal(err)
	}
	if d.State != storev1.State_STATE_DELIVERED || d.Attempts != 2 {
		t.Fatalf("state %s attempts %d, want DELIVERED 2", d.State, d.Attempts)
	}
	var types []string
	for _, ev := range timeline {
		types = append(types, ev.Type)
	}
	want := fmt.Sprint([]string{EventAccepted, EventLeased, EventUnknown, EventRedeliver, EventLeased, EventDelivered})
	if fmt.Sprint(types) != want {
		t.Fatalf("timeline: got %v, want %v", types, want)
	}
}

func TestUnknownOutcomeFailPolicyNeverResends(t *testing.T) {
	c := newClock()
	s := openTest(t, vfs.NewMem(), c, PolicyFail)
	defer s.Close()
	a := mustAccept(t, s, newMessage("c1"))
	next := mustAccept(t, s, newMessage("c1"))
	l := leaseIDs(t, s, 1)[0]
	res, err := s.Complete([]Outcome{{MessageID: l.Message.Id, LeaseToken: l.Delivery.LeaseToken, Result: ResultUnknown, ErrorCode: "PLG_006"}})
	if err != nil || !res[0].Applied {
		t.Fatalf("complete: %+v %v", res, err)
	}
	_, d, _, _ := s.Get(a.Message.Id)
	if d.State != storev1.State_STATE_FAILED || d.Reason != ReasonOutcomeUnknown {
		t.Fatalf("got %s %q, want FAILED outcome_unknown", d.State, d.Reason)
	}
	// The dead letter releases the conversation: the next message goes.
	got := leaseIDs(t, s, 10)
	if len(got) != 1 || got[0].Message.Id != next.Message.Id {
		t.Fatalf("after dead letter: leased %v, want the next message", got)
	}
}

func TestRetryKeepsAttemptsAndDueTime(t *testing.T) {
	c := newClock()
	s := openTest(t, vfs.NewMem(), c, PolicyFail)
	defer s.Close()
	mustAccept(t, s, newMessage("c1"))
	l := leaseIDs(t, s, 1)[0]
	retryAt := c.Now().Add(5 * time.Second)
	if _, err := s.Complete([]Outcome{{MessageID: l.Message.Id, LeaseToken: l.Delivery.LeaseToken, Result: ResultRetry, RetryAt: retryAt, ErrorCode: "PLG_001"}}); err != nil {
		t.Fatal(err)
	}
	if got := leaseIDs(t, s, 1); len(got) != 0 {
		t.Fatal("leased before its retry time")
	}
	c.Advance(5 * time.Second)
	got := leaseIDs(t, s, 1)
	if len(got) != 1 || got[0].Delivery.Attempts != 2 || got[0].Delivery.LastErrorCode != "PLG_001" {
		t.Fatalf("retry lease: %+v", got)
	}
}

// TestEventsFilterSkipsWithoutDecoding: a filtered read returns exactly the
// events a full decode would select, in order, and continues after the last
// event it read even when none of a page matched.
func TestEventsFilterSkipsWithoutDecoding(t *testing.T) {
	s := openTest(t, vfs.NewMem(), newClock(), PolicyFail)
	defer s.Close()
	var aborted []string
	for i := range 30 {
		m := newMessage(fmt.Sprint("c", i))
		if i%3 == 0 {
			m.Channel = "slack"
		}
		mustAccept(t, s, m)
		if i%4 == 0 {
			if _, err := s.Abort(m.Id, "test"); err != nil {
				t.Fatal(err)
			}
			aborted = append(aborted, m.Id)
		}
	}
	all, _, read, err := s.Events(0, 1000, EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if read != len(all) || read < 30+len(aborted) {
		t.Fatalf("unfiltered read: %d events, read=%d", len(all), read)
	}
	for _, f := range []EventFilter{
		{Type: EventAborted},
		{Channel: "slack"},
		{Type: EventAborted, Channel: "slack"},
		{Type: EventAccepted, Channel: "mock"},
		{Type: "no.such.event"},
	} {
		matches := func(ev *storev1.Event) bool {
			return (f.Type == "" || ev.Type == f.Type) && (f.Channel == "" || ev.Channel == f.Channel)
		}
		var want []uint64
		for _, ev := range all {
			if matches(ev) {
				want = append(want, ev.Sequence)
			}
		}
		// Pages of 4 events, most of which match nothing.
		var got []uint64
		var after uint64
		for {
			evs, last, read, err := s.Events(after, 4, f)
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range evs {
				if !matches(ev) {
					t.Fatalf("filter %+v returned %s on %s", f, ev.Type, ev.Channel)
				}
				got = append(got, ev.Sequence)
			}
			if read < 4 {
				if last != all[len(all)-1].Sequence {
					t.Fatalf("filter %+v: last read %d, newest event %d", f, last, all[len(all)-1].Sequence)
				}
				break
			}
			if last <= after {
				t.Fatalf("filter %+v: a full page did not advance (after %d, last %d)", f, after, last)
			}
			after = last
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("filter %+v: got sequences %v, want %v", f, got, want)
		}
	}
	if got, _, _, _ := s.Events(0, 1000, EventFilter{Type: EventAborted}); len(got) != len(aborted) {
		t.Fatalf("%d aborted events, want %d", len(got), len(aborted))
	}
}

// TestEventsOfATypeSkipTheLogOnlyWhenNoneCame: a read of one type reads
// nothing when no event of that type was numbered after where it starts,
// and still finds the events of the type logged before the store was
// opened and those logged while writers run.
func TestEventsOfATypeSkipTheLogOnlyWhenNoneCame(t *testing.T) {
	fs := vfs.NewMem()
	s := openTest(t, fs, newClock(), PolicyFail)
	abort := func(s *Store, conv string) string {
		m := newMessage(conv)
		mustAccept(t, s, m)
		if _, err := s.Abort(m.Id, "test"); err != nil {
			t.Fatal(err)
		}
		return m.Id
	}
	var before []string
	for i := range 3 {
		mustAccept(t, s, newMessage(fmt.Sprint("a", i)))
		before = append(before, abort(s, fmt.Sprint("b", i)))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, fs, newClock(), PolicyFail)
	defer s.Close()
	ids := func(evs []*storev1.Event) (out []string) {
		for _, ev := range evs {
			out = append(out, ev.MessageId)
		}
		return out
	}
	evs, last, _, err := s.Events(0, 1000, EventFilter{Type: EventAborted})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids(evs)) != fmt.Sprint(before) {
		t.Fatalf("after a reopen: aborted events of %v, want %v", ids(evs), before)
	}

	// Events of other types only: nothing is read, and the reader moves to
	// the newest event.
	for i := range 10 {
		mustAccept(t, s, newMessage(fmt.Sprint("c", i)))
	}
	newest := s.LastEvent()
	evs, got, read, err := s.Events(last, 4, EventFilter{Type: EventAborted})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 0 || read != 0 || got != newest {
		t.Fatalf("no abort since %d: %d events, read %d, last %d; want none, 0 read, last %d", last, len(evs), read, got, newest)
	}
	last = got

	// A follower of aborts while writers accept and abort.
	var want []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				if i%5 == 0 {
					id := abort(s, fmt.Sprint("w", g, "-", i))
					mu.Lock()
					want = append(want, id)
					mu.Unlock()
				} else {
					mustAccept(t, s, newMessage(fmt.Sprint("w", g, "-", i)))
				}
			}
		}()
	}
	var seen []string
	catchUp := func() { // reads pages until it reaches the newest event
		for {
			evs, got, read, err := s.Events(last, 3, EventFilter{Type: EventAborted})
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, ids(evs)...)
			last = got
			if read < 3 {
				return
			}
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true // one more catch-up after the writers end
		default:
		}
		catchUp()
	}
	slices.Sort(seen)
	slices.Sort(want)
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("the follower saw %d aborts, want %d:\n got %v\nwant %v", len(seen), len(want), seen, want)
	}
}

func TestEventsResumeWithoutGaps(t *testing.T) {
	s := openTest(t, vfs.NewMem(), newClock(), PolicyFail)
	defer s.Close()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if _, err := s.Accept(newMessage(fmt.Sprint("c", g))); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	var seen []uint64
	var after uint64
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) < 160 && time.Now().Before(deadline) {
		evs, last, _, err := s.Events(after, 7, EventFilter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			seen = append(seen, ev.Sequence)
		}
		after = last
	}
	wg.Wait()
	for i, seq := range seen {
		if seq != uint64(i+1) {
			t.Fatalf("event %d has sequence %d: the log skipped or repeated", i, seq)
		}
	}
	if len(seen) != 160 {
		t.Fatalf("saw %d events, want 160", len(seen))
	}
}

// TestCrashKeepsAcknowledgedWrites crashes the filesystem (dropping every
// write that was not synced) while writers run, and checks that every
// Accept and Complete acknowledged before the crash survived with its index
// entries. A store that committed without pebble.Sync fails it.
func TestCrashKeepsAcknowledgedWrites(t *testing.T) {
	for trial := range 5 {
		t.Run(fmt.Sprint("trial", trial), func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			c := newClock()
			s := openTest(t, fs, c, PolicyFail)

			var (
				mu        sync.Mutex
				accepted  = map[string]bool{}
				delivered = map[string]bool{}
				stop      atomic.Bool
				wg        sync.WaitGroup
			)
			for g := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; !stop.Load() && i < 400; i++ {
						a, err := s.Accept(newMessage(fmt.Sprintf("c%d-%d", g, i%5)))
						if err != nil {
							if errors.Is(err, ErrClosed) {
								return
							}
							t.Error(err)
							return
						}
						mu.Lock()
						accepted[a.Message.Id] = true
						mu.Unlock()
					}
				}()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					ls, err := s.Lease("w", 32, time.Minute, nil, false)
					if err != nil {
						return
					}
					var outs []Outcome
					for _, l := range ls {
						outs = append(outs, Outcome{MessageID: l.Message.Id, LeaseToken: l.Delivery.LeaseToken, Result: ResultDelivered, ProviderMessageID: "p"})
					}
					res, err := s.Complete(outs)
					if err != nil {
						return
					}
					mu.Lock()
					for _, r := range res {
						if r.Applied {
							delivered[r.MessageID] = true
						}
					}
					mu.Unlock()
				}
			}()

			rng := rand.New(rand.NewSource(int64(trial)))
			deadline := time.Now().Add(10 * time.Second)
			target := 200 + rng.Intn(800)
			for time.Now().Before(deadline) {
				mu.Lock()
				n := len(accepted)
				mu.Unlock()
				if n >= target {
					break
				}
				time.Sleep(time.Millisecond)
			}
			// Everything acknowledged up to here must survive the crash.
			mu.Lock()
			wantAccepted := copyKeys(accepted)
			wantDelivered := copyKeys(delivered)
			crashed := fs.CrashClone(vfs.CrashCloneCfg{})
			mu.Unlock()
			stop.Store(true)
			wg.Wait()
			s.Close()

			r := openTest(t, crashed, c, PolicyFail)
			defer r.Close()
			if len(wantAccepted) == 0 {
				t.Fatal("no message was acknowledged before the crash")
			}
			for id := range wantAccepted {
				_, d, _, err := r.Get(id)
				if err != nil {
					t.Fatalf("acknowledged message %s lost in the crash: %v", id, err)
				}
				if wantDelivered[id] && d.State != storev1.State_STATE_DELIVERED {
					t.Fatalf("acknowledged delivery of %s lost in the crash: state %s", id, d.State)
				}
			}
			if problems := r.Verify(true); len(problems.Problems) > 0 {
				t.Fatalf("store inconsistent after crash: %v", problems.Problems)
			}
			t.Logf("acknowledged before crash: %d accepted, %d delivered", len(wantAccepted), len(wantDelivered))
		})
	}
}

func copyKeys(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = Open(dir, Options{})
	if err == nil {
		t.Fatal("a second store opened a data directory in use")
	}
	t.Logf("second open: %v", err)
}

// The clock jumps an hour back and two hours forward between batches of
// work: conversation order follows the durable sequence, not time, and
// nothing is lost. (In production the services' clock is monotonic, so a
// system clock step does not even reach the store; see pkg/clock.)
func TestClockJumpsReorderNothingLoseNothing(t *testing.T) {
	c := newClock()
	s := openTest(t, vfs.NewMem(), c, PolicyFail)
	defer s.Close()
	accepted := map[string][]string{}
	accept := func() {
		for _, conv := range []string{"c1", "c2", "c3"} {
			for range 3 {
				accepted[conv] = append(accepted[conv], mustAccept(t, s, newMessage(conv)).Message.Id)
			}
		}
	}
	delivered := map[string][]string{}
	drain := func() {
		for {
			ls := leaseIDs(t, s, 2)
			if len(ls) == 0 {
				return
			}
			for _, l := range ls {
				delivered[l.Message.Conversation] = append(delivered[l.Message.Conversation], l.Message.Id)
				deliver(t, s, l)
			}
		}
	}
	accept()
	c.Advance(-time.Hour)
	accept()
	drain()
	c.Advance(2 * time.Hour)
	accept()
	drain()
	for conv, ids := range accepted {
		if fmt.Sprint(delivered[conv]) != fmt.Sprint(ids) {
			t.Fatalf("%s: delivered %v, accepted %v", conv, delivered[conv], ids)
		}
	}
	if r := s.Verify(true); len(r.Problems) > 0 || r.Counts[storev1.State_STATE_DELIVERED] != 27 {
		t.Fatalf("verify: %v, delivered %d of 27", r.Problems, r.Counts[storev1.State_STATE_DELIVERED])
	}
}

// History by recipient spans channels, newest first; a channel narrows it.
func TestRecipientHistory(t *testing.T) {
	s := openTest(t, vfs.NewMem(), newClock(), PolicyFail)
	defer s.Close()
	var ids []string
	for i, ch := range []string{"webhook", "mock", "webhook"} {
		m := newMessage(fmt.Sprint("c", i))
		m.Channel, m.Recipient = ch, "user-1"
		ids = append(ids, mustAccept(t, s, m).Message.Id)
		time.Sleep(2 * time.Millisecond) // distinct ULID milliseconds
	}
	all, err := s.RecipientHistory("t1", "", "user-1", 10)
	if err != nil || len(all) != 3 || all[0].Message.Id != ids[2] || all[2].Message.Id != ids[0] {
		t.Fatalf("all channels: %d rows, err %v; want 3 newest first", len(all), err)
	}
	hooks, err := s.RecipientHistory("t1", "webhook", "user-1", 10)
	if err != nil || len(hooks) != 2 || hooks[0].Message.Id != ids[2] {
		t.Fatalf("webhook only: %d rows, err %v; want 2", len(hooks), err)
	}
}
