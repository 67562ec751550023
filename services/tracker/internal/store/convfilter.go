package store

import (
	"log/slog"
	"sync"
	"time"

	"github.com/bits-and-blooms/bloom/v3"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// convFilter answers, without reading Pebble, that a conversation has no
// sequence yet: a bloom filter over the conversation-sequence keys. An
// Accept into a new conversation (the usual case of a Send without one:
// the conversation is the recipient) otherwise looks up a key that does
// not exist, which walks the memtable's skiplist and opens a table per L0
// sublevel before their bloom filters answer: 7 % of the tracker's CPU at
// Send@64, and 20 µs of a lone Send's 360 µs in the tracker. A filter can
// say "maybe" for a key it never saw (then the lookup is made, as
// without it) but never "no" for a key it was given.
//
// Every key is given to it: the ones stored before Open by a load that
// Open starts in the background (until it ends, every lookup reads
// Pebble), and each one written since by the Accept that starts its
// conversation, before its batch commits, under the conversation's stripe
// lock, which every lookup of that conversation holds too. A later Accept
// into the conversation finds its key stored (nothing deletes one) and
// the key in the filter already, from the load or from that first Accept.
//
// The load reads the filter Close saved (convFilterFile) and adds the
// conversations of the message.accepted events logged after it; without a
// saved filter that fits the store (none, damaged, from another store, or
// too many events after it: a crash long after the last clean stop), it
// scans every conversation-sequence key, which steps over each version
// compactions have not yet dropped and leaves the blocks it read in the
// block cache.
//
// Its memory is fixed, convFilterBits bits (4 MiB), whatever the history.
// A new conversation is looked up anyway about once in 100,000 Accepts
// with a million conversations stored, once in 200 with three million,
// once in 20 with five million; past convFilterMaxKeys (about one in ten)
// the filter is dropped and every lookup reads Pebble, as without it.
type convFilter struct {
	mu     sync.Mutex
	filter *bloom.BloomFilter // nil once past max: every lookup reads Pebble
	bits   uint               // the filter's size
	keys   uint               // distinct keys added (less the few a false positive hid)
	max    uint               // convFilterMaxKeys; tests set less
	// replayMax is the most events a load replays after the saved filter
	// (convFilterReplayMax; tests set less).
	replayMax uint
	ready     bool   // the load has given every key stored before Open
	loaded    string // how: "saved" or "scan" (tests and the log)
	stop      chan struct{}
	done      chan struct{}
	// scanned, when not nil, is called after each chunk of a scan or a
	// replay (tests pause the load with it).
	scanned func()
}

const (
	// convFilterBits is the filter's size: 4 MiB.
	convFilterBits = 32 << 20
	// convFilterHashes is the number of bits each key sets: the best
	// false-positive rate at 3 million keys.
	convFilterHashes = 7
	// convFilterMaxKeys is where the false-positive rate nears 10 %.
	convFilterMaxKeys = 6_000_000
)

func newConvFilter(bits, max uint) *convFilter {
	return &convFilter{
		filter:    bloom.New(bits, convFilterHashes),
		bits:      bits,
		max:       max,
		replayMax: convFilterReplayMax,
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
}

// mayExist reports whether key (a conversation-sequence key) may be
// stored: false only when it certainly is not.
func (f *convFilter) mayExist(key []byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.ready || f.filter == nil || f.filter.Test(key)
}

// add gives the filter a key about to be stored.
func (f *convFilter) add(key []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addLocked(key)
}

func (f *convFilter) addLocked(key []byte) {
	if f.filter == nil {
		return
	}
	if !f.filter.TestAndAdd(key) {
		f.keys++
	}
	if f.keys > f.max {
		f.filter = nil
	}
}

// load gives the filter every conversation-sequence key stored before
// Open, from the saved filter and the events logged after it (lastEvent
// is the event log's last sequence at Open) or else by a scan, then makes
// it answer. Open runs it in the background; close stops it.
func (f *convFilter) load(db *pebble.DB, fs vfs.FS, path string, lastEvent uint64, log *slog.Logger) {
	defer close(f.done)
	start := time.Now()
	how := "saved"
	ok, why := f.loadSaved(db, fs, path, lastEvent)
	if !ok && !f.stopped() {
		if why != "" {
			log.Info("conversation filter: scanning the conversations, the saved filter does not fit the store", "file", path, "reason", why)
		}
		how = "scan"
		ok = f.scan(db)
	}
	if !ok {
		return // never ready: lookups read Pebble
	}
	f.mu.Lock()
	f.ready, f.loaded = true, how
	keys, dropped := f.keys, f.filter == nil
	f.mu.Unlock()
	log.Info("conversation filter ready", "from", how, "conversations", keys, "dropped", dropped, "took", time.Since(start).Round(time.Millisecond))
}

// scan gives the filter every conversation-sequence key stored; false
// when it was stopped or could not read them all.
func (f *convFilter) scan(db *pebble.DB) bool {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixConvSeq}, UpperBound: []byte{prefixConvSeq + 1}})
	if err != nil {
		return false
	}
	defer it.Close()
	var c keyChunk
	for valid := it.First(); valid; {
		c.reset()
		for ; valid && !c.full(); valid = it.Next() {
			c.append(it.Key())
		}
		if !f.addChunk(&c) {
			return false
		}
	}
	return it.Error() == nil
}

// keyChunk is a chunk of keys copied into one reused buffer (no garbage:
// a long history's load would otherwise leave its keys in the heap), added
// under one hold of the lock, which Accepts wait for only that long.
type keyChunk struct {
	buf  []byte
	ends []int
}

const keyChunkLen = 1024

func (c *keyChunk) reset()     { c.buf, c.ends = c.buf[:0], c.ends[:0] }
func (c *keyChunk) full() bool { return len(c.ends) >= keyChunkLen }
func (c *keyChunk) append(k []byte) {
	c.buf = append(c.buf, k...)
	c.ends = append(c.ends, len(c.buf))
}

// addChunk adds a chunk's keys; false when the load is to stop.
func (f *convFilter) addChunk(c *keyChunk) bool {
	f.mu.Lock()
	start := 0
	for _, end := range c.ends {
		f.addLocked(c.buf[start:end])
		start = end
	}
	f.mu.Unlock()
	if f.scanned != nil {
		f.scanned()
	}
	return !f.stopped()
}

func (f *convFilter) stopped() bool {
	select {
	case <-f.stop:
		return true
	default:
		return false
	}
}

// close stops the load and waits for it.
func (f *convFilter) close() {
	close(f.stop)
	<-f.done
}
