package store

import (
	"io"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// A crash after a clean stop: the filter Close saved holds the
// conversations stored before it, and the load adds those of the
// message.accepted events logged since (more than a chunk of them).
// Without that replay the conversations started after the clean stop
// would be called new, and their sequences would start again at 1.
func TestConversationFilterSavedAndTheEventsAfterIt(t *testing.T) {
	c := newClock()
	before, after := conversations("before", 1500), conversations("after", 1500)
	crashed := crashAfterCleanStop(t, c, before, after)

	s := openTest(t, crashed, c, PolicyFail)
	defer s.Close()
	waitConvFilter(t, s, "saved")
	wantSecondSequence(t, s, append(before, after...))
}

// crashAfterCleanStop stores a message in each of before and stops
// cleanly (Close saves the filter), then opens the store again, stores a
// message in each of after and returns what a crash then leaves.
func crashAfterCleanStop(t *testing.T, c *clock, before, after []string) vfs.FS {
	t.Helper()
	fs := vfs.NewCrashableMem()
	storeConversations(t, fs, c, before)
	s := openTest(t, fs, c, PolicyFail)
	defer s.Close()
	waitConvFilter(t, s, "saved")
	acceptEach(t, s, after)
	return fs.CrashClone(vfs.CrashCloneCfg{})
}

// wantSecondSequence accepts one more message into each conversation and
// checks that it gets sequence 2.
func wantSecondSequence(t *testing.T, s *Store, convs []string) {
	t.Helper()
	for c, seq := range acceptEach(t, s, convs) {
		if seq != 2 {
			t.Fatalf("%s: sequence %d, want 2", c, seq)
		}
	}
}

// A filter saved by another store (a data directory put together by
// hand) does not fit: its last event is not this store's, and the load
// scans instead. Taken, it would miss this store's conversations up to
// that event's sequence.
func TestConversationFilterSavedByAnotherStore(t *testing.T) {
	c := newClock()
	other, fs := vfs.NewMem(), vfs.NewMem()
	storeConversations(t, other, c, conversations("a", 100))
	mine := conversations("b", 1500)
	storeConversations(t, fs, c, mine)
	writeSavedFilter(t, fs, readSavedFilter(t, other))

	reopenByScan(t, fs, c, mine)
}

// A damaged saved filter fails its checksum and the load scans instead:
// here its bits are all cleared, which taken would call every stored
// conversation new.
func TestConversationFilterSavedButDamaged(t *testing.T) {
	fs := vfs.NewMem()
	c := newClock()
	old := conversations("old", 1500)
	storeConversations(t, fs, c, old)
	b := readSavedFilter(t, fs)
	clear(b[convFilterHeaderLen : len(b)-4])
	writeSavedFilter(t, fs, b)

	reopenByScan(t, fs, c, old)
}

// reopenByScan opens the store in fs, checks that the conversation filter
// loaded by a scan, and that one more message into each conversation gets
// sequence 2.
func reopenByScan(t *testing.T, fs vfs.FS, c *clock, convs []string) {
	t.Helper()
	s := openTest(t, fs, c, PolicyFail)
	defer s.Close()
	waitConvFilter(t, s, "scan")
	wantSecondSequence(t, s, convs)
}

// storeConversations opens the store in fs, accepts one message into each
// conversation and closes it, saving the conversation filter (Close saves
// only a filter whose load has ended).
func storeConversations(t *testing.T, fs vfs.FS, c *clock, convs []string) {
	t.Helper()
	s := openTest(t, fs, c, PolicyFail)
	waitConvFilter(t, s, "")
	acceptEach(t, s, convs)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func readSavedFilter(t *testing.T, fs vfs.FS) []byte {
	t.Helper()
	f, err := fs.Open(fs.PathJoin("db", convFilterFile))
	if err != nil {
		t.Fatalf("the saved conversation filter: %v", err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeSavedFilter(t *testing.T, fs vfs.FS, b []byte) {
	t.Helper()
	f, err := fs.Create(fs.PathJoin("db", convFilterFile), vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// A saved filter more events behind the store than a load replays (a crash
// long after the last clean stop) is passed over: the load scans instead.
func TestConversationFilterSavedLongAgoIsPassedOver(t *testing.T) {
	c := newClock()
	before, after := conversations("before", 100), conversations("after", 50) // 50 events after the saved filter
	crashed := crashAfterCleanStop(t, c, before, after)

	s, err := Open("db", Options{FS: crashed, Now: c.Now, CacheSize: 8 << 20, convFilterReplayMax: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitConvFilter(t, s, "scan")
	wantSecondSequence(t, s, append(before, after...))
}
