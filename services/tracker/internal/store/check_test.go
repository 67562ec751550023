package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// deliverAll accepts n messages in separate conversations and delivers them.
func deliverAll(t *testing.T, s *Store, n int) {
	t.Helper()
	for i := range n {
		mustAccept(t, s, newMessage("conv-"+string(rune('a'+i%26))+string(rune('a'+i/26%26))))
		for _, l := range leaseIDs(t, s, 100) {
			deliver(t, s, l)
		}
	}
	for {
		ls := leaseIDs(t, s, 100)
		if len(ls) == 0 {
			break
		}
		for _, l := range ls {
			deliver(t, s, l)
		}
	}
}

// TestHistoryLeavesNoTombstonesInRecoveryIndex: once delivered messages'
// index entries are flushed, a scan of the recovery index (what every
// restart does) steps over none of them. With plain deletes, every
// delivered message leaves two tombstones there until a compaction reaches
// the last level, and restart time grows with the history.
func TestHistoryLeavesNoTombstonesInRecoveryIndex(t *testing.T) {
	s := openTest(t, vfs.NewMem(), newClock(), PolicyFail)
	defer s.Close()
	const n = 2000
	deliverAll(t, s, n)
	pending := mustAccept(t, s, newMessage("still-pending")).Message.Id
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, family := range []byte{prefixRecovery} {
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{family}, UpperBound: []byte{family + 1}})
		if err != nil {
			t.Fatal(err)
		}
		live := 0
		for ok := it.First(); ok; ok = it.Next() {
			live++
		}
		stats := it.Stats()
		it.Close()
		if live != 1 {
			t.Errorf("family %#x: %d live entries, want 1 (message %s)", family, live, pending)
		}
		if got := stats.InternalStats.PointCount; got > 10 {
			t.Errorf("family %#x: a scan stepped over %d internal points for 1 live entry after %d deliveries: finished messages left tombstones", family, got, n)
		}
	}
	if r := s.Check(); len(r.Problems) > 0 || r.RecoveryEntries != 1 {
		t.Fatalf("check: %d entries, problems %v", r.RecoveryEntries, r.Problems)
	}
}

// TestTidyRecoveryIndexRemovesDeadEntries: a backlog delivered after its
// entries were flushed leaves set/single-delete pairs in different tables;
// every start then steps over them in the recovery index, which Open
// scans, until a compaction brings each pair together. Open counts them
// and TidyRecoveryIndex compacts them away, so the next start scans only
// the pending entries.
func TestTidyRecoveryIndexRemovesDeadEntries(t *testing.T) {
	fs := vfs.NewMem()
	c := newClock()
	// Tables stay as flushed, as they do between the compactions of a
	// store that takes writes faster than it compacts.
	open := func() *Store {
		s, err := Open("db", Options{FS: fs, Now: c.Now, CacheSize: 8 << 20, noAutoCompactions: true})
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		return s
	}
	s := open()
	const n = 300
	for i := range n {
		mustAccept(t, s, newMessage(fmt.Sprintf("backlog-%d", i)))
	}
	pending := mustAccept(t, s, newMessage("still-pending")).Message.Id
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	delivered := 0
	for delivered < n {
		ls := leaseIDs(t, s, 100)
		for _, l := range ls {
			if l.Message.Id == pending {
				continue
			}
			deliver(t, s, l)
			delivered++
		}
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = open()
	// A set and its single delete per message.
	if dead := s.RecoveryDead(); dead < 2*n {
		t.Fatalf("RecoveryDead = %d after delivering a flushed backlog of %d, want at least %d", dead, n, 2*n)
	}
	if tidied, err := s.TidyRecoveryIndex(context.Background(), 10*n); err != nil || tidied {
		t.Fatalf("TidyRecoveryIndex below its threshold = %v, %v; want no compaction", tidied, err)
	}
	if tidied, err := s.TidyRecoveryIndex(context.Background(), 10); err != nil || !tidied {
		t.Fatalf("TidyRecoveryIndex = %v, %v; want a compaction", tidied, err)
	}
	s.Close()

	s = open()
	defer s.Close()
	if dead := s.RecoveryDead(); dead != 0 {
		t.Errorf("RecoveryDead = %d after the compaction, want 0", dead)
	}
	if r := s.Check(); len(r.Problems) > 0 || r.RecoveryEntries != 1 {
		t.Fatalf("check: %d entries (want 1: the message still pending), problems %v", r.RecoveryEntries, r.Problems)
	}
}

// TestCheckFindsWhatVerifyFinds: the startup check catches an index entry
// lost, a stray one, and counters that disagree with the index.
func TestCheckFindsWhatVerifyFinds(t *testing.T) {
	s := openTest(t, vfs.NewMem(), newClock(), PolicyFail)
	defer s.Close()
	deliverAll(t, s, 10)
	a := mustAccept(t, s, newMessage("x")).Message.Id
	mustAccept(t, s, newMessage("y"))
	if r := s.Check(); len(r.Problems) > 0 {
		t.Fatalf("clean store: %v", r.Problems)
	}
	if r := s.Check(); r.RecoveryEntries != 2 || r.Messages != 12 {
		t.Fatalf("clean store: %d entries, %d messages; want 2 and 12", r.RecoveryEntries, r.Messages)
	}

	d, err := s.getDelivery(a)
	if err != nil {
		t.Fatal(err)
	}
	kind, at, _ := indexPlace(d)
	if err := s.db.Delete(recoveryKey(kind, at, a), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	r := s.Check()
	if !hasProblem(r, "the counters say 2") {
		t.Fatalf("lost index entry: problems %v", r.Problems)
	}
	if err := s.db.Set(recoveryKey(recoveryDue, 1, a), recoveryValue("mock", "t1", "x", 1), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if r := s.Check(); !hasProblem(r, "wants kind") {
		t.Fatalf("misplaced index entry: problems %v", r.Problems)
	}
	// An entry for a message that was never stored: the records are read
	// by seeking, which lands on the next id, not on this one.
	ghost := "01000000000000000000000000" // older than every stored id
	if err := s.db.Set(recoveryKey(recoveryDue, 1, ghost), recoveryValue("mock", "t1", "x", 1), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if r := s.Check(); !hasProblem(r, "points to message "+ghost+", whose delivery record cannot be read") {
		t.Fatalf("entry without a message: problems %v", r.Problems)
	}
}

// TestChecksFindAnEntryWithAnotherSequence: the recovery index's entries
// are the conversations' active sets at Open, ordered by the sequence they
// carry: an entry whose sequence is not its message's would put the
// message in the wrong place in its conversation. Check and Verify find it.
func TestChecksFindAnEntryWithAnotherSequence(t *testing.T) {
	s := openTest(t, vfs.NewMem(), newClock(), PolicyFail)
	defer s.Close()
	mustAccept(t, s, newMessage("x"))
	m := mustAccept(t, s, newMessage("x")).Message
	d, err := s.getDelivery(m.Id)
	if err != nil {
		t.Fatal(err)
	}
	kind, at, _ := indexPlace(d)
	if err := s.db.Set(recoveryKey(kind, at, m.Id), recoveryValue(m.Channel, m.Tenant, m.Conversation, 1), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	const want = "want its channel, tenant, conversation and sequence 2"
	if r := s.Check(); !hasProblem(r, want) {
		t.Errorf("check: problems %v, want %q", r.Problems, want)
	}
	if r := s.Verify(false); !hasProblem(r, want) {
		t.Errorf("verify: problems %v, want %q", r.Problems, want)
	}
}

func hasProblem(r Report, sub string) bool {
	for _, p := range r.Problems {
		if strings.Contains(p, sub) {
			return true
		}
	}
	return false
}

// TestScrubNamesDamagedTable: flipped bytes in a table are found by Scrub,
// which names the file and signals Damaged, without changing the file.
func TestScrubNamesDamagedTable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	s, err := Open(dir, Options{CacheSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	deliverAll(t, s, 300)
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Scrub(context.Background(), 0); err != nil || n == 0 {
		t.Fatalf("clean store: scrub verified %d tables: %v", n, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	tables, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	if len(tables) == 0 {
		t.Fatal("no table after close")
	}
	victim := tables[0]
	b, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b)/3 - 8; i < len(b)/3+8; i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(victim, b, 0o640); err != nil {
		t.Fatal(err)
	}

	s, err = Open(dir, Options{CacheSize: 8 << 20})
	if err != nil {
		// Open itself may read the damaged block; then it must name it.
		if !strings.Contains(err.Error(), filepath.Base(victim)) {
			t.Fatalf("open of a damaged store: %v; want the file %s named", err, victim)
		}
		return
	}
	defer s.Close()
	_, err = s.Scrub(context.Background(), 0)
	if err == nil || !strings.Contains(err.Error(), filepath.Base(victim)) {
		t.Fatalf("scrub of a damaged store: %v; want an error naming %s", err, victim)
	}
	select {
	case <-s.Damaged():
	default:
		t.Fatal("Damaged not signalled")
	}
	if got := s.DamagedFiles(); len(got) != 1 || filepath.Base(got[0]) != filepath.Base(victim) {
		t.Fatalf("DamagedFiles = %v, want [%s]", got, victim)
	}
	if after, _ := os.ReadFile(victim); string(after) != string(b) {
		t.Fatal("scrub changed the damaged file")
	}
}

// TestMaxPendingFailsFastAndRecovers: at the configured cap of unfinished
// messages Accept fails at once with ErrFull and a message saying why,
// writing nothing; a finished message makes room again.
func TestMaxPendingFailsFastAndRecovers(t *testing.T) {
	s, err := Open("db", Options{FS: vfs.NewMem(), Now: newClock().Now, MaxPending: 5, CacheSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 5 {
		mustAccept(t, s, newMessage(fmt.Sprint("c", i)))
	}
	before := s.LastEvent()
	_, err = s.Accept(newMessage("c-over"))
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "5 messages are not yet delivered") {
		t.Fatalf("accept at the cap: %v, want ErrFull saying how many are pending", err)
	}
	if s.LastEvent() != before || s.RecoverySize() != 5 {
		t.Fatal("a refused accept wrote something")
	}
	deliver(t, s, leaseIDs(t, s, 1)[0])
	mustAccept(t, s, newMessage("c-room"))
}
