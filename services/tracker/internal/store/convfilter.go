package store

import (
	"sync"

	"github.com/bits-and-blooms/bloom/v3"
	"github.com/cockroachdb/pebble/v2"
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
// Every key is given to it: the ones stored before Open by a scan that
// Open starts in the background (until the scan ends, every lookup reads
// Pebble), and each one written since by the Accept that starts its
// conversation, before its batch commits, under the conversation's stripe
// lock, which every lookup of that conversation holds too. A later Accept
// into the conversation finds its key stored (nothing deletes one) and
// the key in the filter already, from the scan or from that first Accept.
//
// Its memory is fixed, convFilterBits bits (4 MiB), whatever the history.
// A new conversation is looked up anyway about once in 100,000 Accepts
// with a million conversations stored, once in 200 with three million,
// once in 20 with five million; past convFilterMaxKeys (about one in ten)
// the filter is dropped and every lookup reads Pebble, as without it.
type convFilter struct {
	mu     sync.Mutex
	filter *bloom.BloomFilter // nil once past max: every lookup reads Pebble
	keys   uint               // distinct keys added (less the few a false positive hid)
	max    uint               // convFilterMaxKeys; tests set less
	ready  bool               // the scan has given every key stored before Open
	stop   chan struct{}
	done   chan struct{}
	// scanned, when not nil, is called after each chunk of the scan
	// (tests pause the scan with it).
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
		filter: bloom.New(bits, convFilterHashes),
		max:    max,
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
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

// scan gives the filter every conversation-sequence key stored, then
// makes it answer. Open runs it in the background; close stops it.
func (f *convFilter) scan(db *pebble.DB) {
	defer close(f.done)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixConvSeq}, UpperBound: []byte{prefixConvSeq + 1}})
	if err != nil {
		return // never ready: lookups read Pebble
	}
	defer it.Close()
	// A chunk of keys at a time, copied into one reused buffer (no
	// garbage: a long history's scan would otherwise leave its keys in
	// the heap) and added under one hold of the lock, which Accepts wait
	// for only that long.
	const chunk = 1024
	var buf []byte
	ends := make([]int, 0, chunk)
	for valid := it.First(); valid; {
		buf, ends = buf[:0], ends[:0]
		for ; valid && len(ends) < chunk; valid = it.Next() {
			buf = append(buf, it.Key()...)
			ends = append(ends, len(buf))
		}
		f.mu.Lock()
		start := 0
		for _, end := range ends {
			f.addLocked(buf[start:end])
			start = end
		}
		f.mu.Unlock()
		if f.scanned != nil {
			f.scanned()
		}
		select {
		case <-f.stop:
			return
		default:
		}
	}
	if it.Error() != nil {
		return // never ready: lookups read Pebble
	}
	f.mu.Lock()
	f.ready = true
	f.mu.Unlock()
}

// close stops the scan and waits for it.
func (f *convFilter) close() {
	close(f.stop)
	<-f.done
}
