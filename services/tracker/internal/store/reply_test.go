package store

import (
	"errors"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

func chunk(text string) *storev1.Message {
	return &storev1.Message{Id: ulid.Make().String(), Text: text}
}

// A reply's chunks go out in order, once each; an abort after the first is
// delivered and while the second is in flight ends the rest ABORTED (the
// in-flight one too, as its provider did not confirm), records 1 of 3, and
// refuses further chunks.
func TestReplyAbortAfterFirstChunk(t *testing.T) {
	c := newClock()
	s := openTest(t, vfs.NewMem(), c, PolicyRedeliver)
	defer s.Close()
	r, err := s.OpenReply(&storev1.Reply{Id: ulid.Make().String(), Tenant: "t1", Channel: "mock", Recipient: "ok", Conversation: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i, text := range []string{"Generating", " report", "..."} {
		a, err := s.AppendChunk(r.Id, uint32(i), chunk(text))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, a.Message.Id)
	}
	if again, err := s.AppendChunk(r.Id, 1, chunk("again")); err != nil || !again.Duplicate || again.Message.Id != ids[1] {
		t.Fatalf("re-append of chunk 1: %v %+v", err, again)
	}
	if _, err := s.AppendChunk(r.Id, 5, chunk("gap")); !errors.Is(err, ErrChunkGap) {
		t.Fatalf("gap: got %v, want ErrChunkGap", err)
	}
	first := leaseIDs(t, s, 10)
	if len(first) != 1 || first[0].Message.Id != ids[0] {
		t.Fatalf("first lease %v, want only chunk 0", first)
	}
	deliver(t, s, first[0])
	second := leaseIDs(t, s, 10)
	if len(second) != 1 || second[0].Message.Id != ids[1] {
		t.Fatalf("second lease %v, want only chunk 1", second)
	}
	ar, err := s.AbortReply(r.Id, "user pressed stop")
	if err != nil {
		t.Fatal(err)
	}
	if ar.State != storev1.ReplyState_REPLY_STATE_ABORTED || ar.DeliveredAtAbort != 1 || ar.Chunks != 3 {
		t.Fatalf("aborted reply: %v, want ABORTED after 1 of 3", ar)
	}
	if _, err := s.AbortReply(r.Id, "again"); !errors.Is(err, ErrTerminal) {
		t.Fatalf("second abort: %v, want ErrTerminal", err)
	}
	if _, err := s.AppendChunk(r.Id, 3, chunk("late")); !errors.Is(err, ErrReplyNotOpen) {
		t.Fatalf("append after abort: %v, want ErrReplyNotOpen", err)
	}
	// The in-flight chunk's attempt fails: it ends ABORTED, never retried.
	if _, err := s.Complete([]Outcome{{MessageID: ids[1], LeaseToken: second[0].Delivery.LeaseToken, Result: ResultRetry, RetryAt: c.Now()}}); err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Minute)
	if _, err := s.ExpireLeases(10); err != nil {
		t.Fatal(err)
	}
	if got := leaseIDs(t, s, 10); len(got) != 0 {
		t.Fatalf("leased %d chunks after the abort", len(got))
	}
	want := []storev1.State{storev1.State_STATE_DELIVERED, storev1.State_STATE_ABORTED, storev1.State_STATE_ABORTED}
	for i, id := range ids {
		_, d, _, err := s.Get(id)
		if err != nil || d.State != want[i] {
			t.Fatalf("chunk %d: %v %v, want %s", i, d.GetState(), err, want[i])
		}
	}
	if rep := s.Verify(true); len(rep.Problems) > 0 {
		t.Fatalf("verify: %v", rep.Problems)
	}
}
