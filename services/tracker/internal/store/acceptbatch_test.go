package store

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// TestAcceptBatchIsAcceptManyTimesOver: a batch gets Accept's answers
// message by message (sequences in order within a conversation, a repeated
// idempotency key answered as a duplicate of the first, invalid messages
// refused alone), with one synced commit for every message of distinct
// conversations.
func TestAcceptBatchIsAcceptManyTimesOver(t *testing.T) {
	var commits atomic.Int64
	s, err := Open("db", Options{FS: vfs.NewMem(), Now: newClock().Now, CacheSize: 8 << 20,
		OnCommit: func(time.Duration) { commits.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	commits.Store(0)

	var distinct []*storev1.Message
	for i := range 50 {
		distinct = append(distinct, newMessage(fmt.Sprint("conv-", i)))
	}
	res, errs := s.AcceptBatch(distinct)
	for i := range distinct {
		if errs[i] != nil || res[i].Message.GetSequence() != 1 || res[i].Delivery.GetState() != storev1.State_STATE_PENDING {
			t.Fatalf("message %d: %+v, %v", i, res[i], errs[i])
		}
	}
	if n := commits.Load(); n != 1 {
		t.Fatalf("50 messages of distinct conversations took %d commits, want 1", n)
	}

	a, b, c := newMessage("shared"), newMessage("shared"), newMessage("shared")
	k1, k2 := newMessage("k"), newMessage("k-other")
	k1.IdempotencyKey, k2.IdempotencyKey = "key", "key"
	bad := newMessage("bad")
	bad.Channel = ""
	res, errs = s.AcceptBatch([]*storev1.Message{a, k1, b, bad, k2, c})
	if errs[0] != nil || errs[2] != nil || errs[5] != nil {
		t.Fatalf("same-conversation messages: %v %v %v", errs[0], errs[2], errs[5])
	}
	if res[0].Message.Sequence != 1 || res[2].Message.Sequence != 2 || res[5].Message.Sequence != 3 {
		t.Fatalf("sequences %d %d %d, want 1 2 3", res[0].Message.Sequence, res[2].Message.Sequence, res[5].Message.Sequence)
	}
	if res[2].Delivery.GetBlocked() != true || res[0].Delivery.GetBlocked() {
		t.Fatal("the second message of a conversation must wait for the first")
	}
	if errs[1] != nil || res[1].Duplicate || errs[4] != nil || !res[4].Duplicate || res[4].Message.Id != k1.Id {
		t.Fatalf("idempotency key twice in a batch: %+v %v / %+v %v", res[1], errs[1], res[4], errs[4])
	}
	if !errors.Is(errs[3], ErrInvalid) {
		t.Fatalf("invalid message: %v, want ErrInvalid", errs[3])
	}
	if r := s.Verify(true); len(r.Problems) > 0 {
		t.Fatalf("verify: %v", r.Problems)
	}
}

// TestAcceptBatchReadsWhatAcceptWould: a round's lookups, made for the
// whole round at once, find what is stored, in memory or in tables:
// conversations continue their sequences and a stored id is refused, beside
// new conversations and new ids in the same round.
func TestAcceptBatchReadsWhatAcceptWould(t *testing.T) {
	s := openTest(t, vfs.NewMem(), newClock(), PolicyFail)
	defer s.Close()
	old := []*storev1.Message{newMessage("old-0"), newMessage("old-1"), newMessage("old-2")}
	stored := map[string]bool{}
	for _, m := range old {
		mustAccept(t, s, m)
		stored[m.Id] = true
	}
	mustAccept(t, s, newMessage("old-1")) // old-1 is at sequence 2
	for _, flushed := range []bool{false, true} {
		if flushed {
			if err := s.db.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		var batch []*storev1.Message
		want := map[int]uint64{}
		for i := range 6 {
			batch = append(batch, newMessage(fmt.Sprint("new-", flushed, i)))
			want[len(batch)-1] = 1
		}
		batch = append(batch, newMessage("old-0"), newMessage("old-1"))
		before := map[string]uint64{"old-0": 1, "old-1": 2}
		if flushed {
			before = map[string]uint64{"old-0": 2, "old-1": 3}
		}
		want[6], want[7] = before["old-0"]+1, before["old-1"]+1
		again := proto.CloneOf(old[2])
		again.Conversation = fmt.Sprint("elsewhere-", flushed)
		batch = append(batch, again)
		res, errs := s.AcceptBatch(batch)
		for i, seq := range want {
			if errs[i] != nil || res[i].Message.GetSequence() != seq {
				t.Fatalf("flushed=%v: message %d of %s: sequence %d, %v; want %d", flushed, i, batch[i].Conversation, res[i].Message.GetSequence(), errs[i], seq)
			}
		}
		if !errors.Is(errs[8], ErrExists) {
			t.Fatalf("flushed=%v: a stored id accepted again: %v, want ErrExists", flushed, errs[8])
		}
	}
	if r := s.Verify(true); len(r.Problems) > 0 {
		t.Fatalf("verify: %v", r.Problems)
	}
}

// TestAcceptBatchStopsAtMaxPending: the cap holds inside a batch.
func TestAcceptBatchStopsAtMaxPending(t *testing.T) {
	s, err := Open("db", Options{FS: vfs.NewMem(), Now: newClock().Now, MaxPending: 3, CacheSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var msgs []*storev1.Message
	for i := range 5 {
		msgs = append(msgs, newMessage(fmt.Sprint("c", i)))
	}
	_, errs := s.AcceptBatch(msgs)
	full := 0
	for _, err := range errs {
		if errors.Is(err, ErrFull) {
			full++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if full != 2 || s.RecoverySize() != 3 {
		t.Fatalf("%d refused, %d pending; want 2 and 3", full, s.RecoverySize())
	}
}

// TestAcceptRefusesAnExistingID: a message id is written once. Accept
// skips the lookup of an id newer than every stored one (claimNewest), so
// this covers both paths: the newest id again, an older stored id, an
// older id never stored, the same id from concurrent Accepts, and the
// newest id after a reopen.
func TestAcceptRefusesAnExistingID(t *testing.T) {
	fs := vfs.NewMem()
	c := newClock()
	s := openTest(t, fs, c, PolicyFail)
	older := newMessage("a") // a ULID made before the others: an older id
	first := mustAccept(t, s, newMessage("b")).Message.Id
	second := mustAccept(t, s, newMessage("c")).Message.Id
	for _, id := range []string{second, first} {
		m := newMessage("d")
		m.Id = id
		if _, err := s.Accept(m); !errors.Is(err, ErrExists) {
			t.Errorf("Accept of stored id %s = %v, want ErrExists", id, err)
		}
	}
	if _, err := s.Accept(older); err != nil {
		t.Errorf("Accept of an older id never stored = %v, want it accepted", err)
	}
	// A reply chunk goes through the same path.
	r, err := s.OpenReply(&storev1.Reply{Id: newMessage("").Id, Tenant: "t1", Channel: "mock", Recipient: "ok", Conversation: "reply"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendChunk(r.Id, 0, &storev1.Message{Id: second, Text: "x"}); !errors.Is(err, ErrExists) {
		t.Errorf("AppendChunk with a stored id = %v, want ErrExists", err)
	}
	fresh := chunk("x")
	if _, err := s.AppendChunk(r.Id, 0, fresh); err != nil {
		t.Fatalf("AppendChunk: %v", err)
	}
	m := newMessage("f")
	m.Id = fresh.Id
	if _, err := s.Accept(m); !errors.Is(err, ErrExists) {
		t.Errorf("Accept of a chunk's id = %v, want ErrExists", err)
	}

	// The same new id from many Accepts at once, on different
	// conversations: exactly one writes it.
	for range 50 {
		id := newMessage("").Id
		var wg sync.WaitGroup
		var ok atomic.Int32
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := newMessage(fmt.Sprintf("race-%d", i))
				m.Id = id
				if _, err := s.Accept(m); err == nil {
					ok.Add(1)
				} else if !errors.Is(err, ErrExists) {
					t.Errorf("Accept: %v", err)
				}
			}()
		}
		wg.Wait()
		if n := ok.Load(); n != 1 {
			t.Fatalf("%d Accepts of id %s succeeded, want 1", n, id)
		}
	}
	s.Close()

	s = openTest(t, fs, c, PolicyFail)
	defer s.Close()
	m = newMessage("e")
	m.Id = second
	if _, err := s.Accept(m); !errors.Is(err, ErrExists) {
		t.Errorf("after reopen, Accept of stored id = %v, want ErrExists", err)
	}
	if r := s.Check(); len(r.Problems) > 0 {
		t.Fatalf("check: %v", r.Problems)
	}
}
