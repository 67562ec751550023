package store

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// waitConvFilter waits until the conversation filter's load has ended,
// and checks how it loaded ("saved" or "scan"; "" for either).
func waitConvFilter(t *testing.T, s *Store, how string) {
	t.Helper()
	<-s.convs.done
	s.convs.mu.Lock()
	defer s.convs.mu.Unlock()
	if !s.convs.ready {
		t.Fatal("the conversation filter's load ended without making it ready")
	}
	if how != "" && s.convs.loaded != how {
		t.Fatalf("the conversation filter loaded by %q, want %q", s.convs.loaded, how)
	}
}

// acceptEach accepts one message into each conversation, through single
// Accepts (point lookups) for the first half and one AcceptBatch (a round
// whose lookups readRound makes) for the rest, and returns the sequences.
func acceptEach(t *testing.T, s *Store, convs []string) map[string]uint64 {
	t.Helper()
	seqs := map[string]uint64{}
	half := len(convs) / 2
	for _, c := range convs[:half] {
		seqs[c] = mustAccept(t, s, newMessage(c)).Message.GetSequence()
	}
	var msgs []*storev1.Message
	for _, c := range convs[half:] {
		msgs = append(msgs, newMessage(c))
	}
	res, errs := s.AcceptBatch(msgs)
	for i, m := range msgs {
		if errs[i] != nil {
			t.Fatalf("accept into %s: %v", m.Conversation, errs[i])
		}
		seqs[m.Conversation] = res[i].Message.GetSequence()
	}
	return seqs
}

func conversations(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

// An Accept into a conversation stored before a restart continues its
// sequence, once the filter answers for new conversations: the load at
// Open gave the filter every stored conversation (more than one chunk of
// them), from the filter Close saved or, without it, from a scan. Without
// their keys the filter would call them new, and their sequences would
// start again at 1.
func TestConversationFilterKnowsTheStoredConversations(t *testing.T) {
	for _, how := range []string{"saved", "scan"} {
		t.Run(how, func(t *testing.T) {
			fs := vfs.NewMem()
			c := newClock()
			s := openTest(t, fs, c, PolicyFail)
			waitConvFilter(t, s, "") // Close saves only a filter whose load has ended
			old := conversations("old", 2500)
			for c, seq := range acceptEach(t, s, old) {
				if seq != 1 {
					t.Fatalf("%s: first sequence %d", c, seq)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if how == "scan" {
				forgetSavedFilter(t, fs)
			}

			s = openTest(t, fs, c, PolicyFail)
			defer s.Close()
			waitConvFilter(t, s, how)
			for c, seq := range acceptEach(t, s, old) {
				if seq != 2 {
					t.Fatalf("%s: sequence %d after a restart, want 2", c, seq)
				}
			}
			// And it does its job: new conversations are not looked up.
			lookups := 0
			for _, c := range conversations("new", 1000) {
				if s.convs.mayExist(convSeqKey("t1", c)) {
					lookups++
				}
			}
			if lookups > 50 {
				t.Fatalf("%d of 1000 new conversations would be looked up; the filter should rule out nearly all", lookups)
			}
		})
	}
}

func forgetSavedFilter(t *testing.T, fs vfs.FS) {
	t.Helper()
	if err := fs.Remove(fs.PathJoin("db", convFilterFile)); err != nil {
		t.Fatalf("remove the saved conversation filter: %v", err)
	}
}

// Accepts made while the scan is under way: conversations the scan has
// not reached yet are looked up (the filter answers nothing before the
// scan ends), and conversations started meanwhile are in the filter
// although the scan's view of the store predates them: their Accepts gave
// them to it.
func TestConversationFilterDuringTheScan(t *testing.T) {
	fs := vfs.NewMem()
	c := newClock()
	old := conversations("old", 3000)
	storeConversations(t, fs, c, old)
	forgetSavedFilter(t, fs)

	paused, resume := make(chan struct{}), make(chan struct{})
	first := true
	s, err := Open("db", Options{FS: fs, Now: c.Now, CacheSize: 8 << 20, convFilterScanned: func() {
		if first {
			first = false
			close(paused)
			<-resume
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-paused // the scan has given the filter one chunk of old
	some, fresh := old[2000:2200:2200], conversations("fresh", 200)
	// expect checks one more message in each of some and fresh, the
	// fresh conversations' sequences one behind the others'.
	expect := func(when string, want uint64) {
		t.Helper()
		for c, seq := range acceptEach(t, s, append(some, fresh...)) {
			if w := want - uint64(strings.Count(c[:1], "f")); seq != w {
				t.Fatalf("%s, %s: sequence %d, want %d", when, c, seq, w)
			}
		}
	}
	expect("during the scan", 2)
	close(resume)
	waitConvFilter(t, s, "scan")
	expect("after the scan", 3)
}

// Past its limit the filter is dropped, and every Accept looks its
// conversation up again.
func TestConversationFilterPastItsLimit(t *testing.T) {
	c := newClock()
	s, err := Open("db", Options{FS: vfs.NewMem(), Now: c.Now, CacheSize: 8 << 20, convFilterMax: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitConvFilter(t, s, "")
	convs := conversations("c", 300)
	acceptEach(t, s, convs)
	s.convs.mu.Lock()
	dropped := s.convs.filter == nil
	s.convs.mu.Unlock()
	if !dropped {
		t.Fatalf("after 300 conversations with a limit of 100: the filter was kept")
	}
	for c, seq := range acceptEach(t, s, convs) {
		if seq != 2 {
			t.Fatalf("%s: sequence %d, want 2", c, seq)
		}
	}
}

// The filter answers for every key it was given, rules out nearly every
// other, and counts a key given twice once.
func TestConversationFilterAnswers(t *testing.T) {
	f := newConvFilter(1<<16, 1<<20)
	f.ready = true
	for range 2 {
		for i := range 1000 {
			f.add(fmt.Appendf(nil, "k%d", i))
		}
	}
	if f.keys < 990 || f.keys > 1000 {
		t.Fatalf("%d keys counted after adding 1000 twice", f.keys)
	}
	for i := range 1000 {
		if !f.mayExist(fmt.Appendf(nil, "k%d", i)) {
			t.Fatalf("k%d was added but the filter rules it out", i)
		}
	}
	out := 0
	for i := range 1000 {
		if !f.mayExist(fmt.Appendf(nil, "other%d", i)) {
			out++
		}
	}
	if out < 950 {
		t.Fatalf("only %d of 1000 keys never added are ruled out", out)
	}
}
