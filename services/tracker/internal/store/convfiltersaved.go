package store

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// convFilterFile is where Close saves the conversation filter, in the
// store's directory beside Pebble's files (Pebble passes over names it
// did not make). Nothing in it is needed: without it, or when it does not
// fit the store, Open scans the conversations instead.
//
// Its layout, little-endian:
//
//	magic[8] bits[8] hashes[8] keys[8] event[8] eventSum[4] zero[4]
//	words[bits/64 × 8]
//	crc32c of all before [4]
//
// event is the event log's last sequence when it was saved, and eventSum
// the CRC-32C of that event's stored value: the filter holds every
// conversation whose message.accepted event is at or before event, and
// belongs to this store only if the store holds that very event.
const convFilterFile = "herald-conversations.filter"

var convFilterMagic = [8]byte{'h', 'e', 'r', 'a', 'l', 'd', 'c', 'f'}

const (
	convFilterHeaderLen = 48
	// convFilterReplayMax is the most events a load replays after the
	// saved filter (a crash long after the last clean stop); past it a
	// scan of the conversations costs less. Tests set less
	// (Options.convFilterReplayMax).
	convFilterReplayMax = 200_000
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// save writes the filter to path, if it is whole, as of the event log's
// last event (seq, with its stored value): the caller has stopped every
// write. A filter that was dropped removes the file; one whose load did
// not finish leaves the file there, which still fits the store.
func (f *convFilter) save(fs vfs.FS, path string, seq uint64, event []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case !f.ready:
		return nil
	case f.filter == nil || seq == 0:
		if err := fs.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	tmp := path + ".tmp"
	if err := f.writeLocked(fs, tmp, seq, event); err != nil {
		fs.Remove(tmp)
		return err
	}
	if err := fs.Rename(tmp, path); err != nil {
		return err
	}
	dir, err := fs.OpenDir(fs.PathDir(path))
	if err != nil {
		return err
	}
	return errors.Join(dir.Sync(), dir.Close())
}

func (f *convFilter) writeLocked(fs vfs.FS, path string, seq uint64, event []byte) error {
	file, err := fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	sum := crc32.New(castagnoli)
	// The checksum first: a vfs.File may scribble over what it was given
	// (Pebble's MemFS does under its invariants builds, -race included).
	w := bufio.NewWriterSize(io.MultiWriter(sum, file), 1<<16)
	hdr := make([]byte, 0, convFilterHeaderLen)
	hdr = append(hdr, convFilterMagic[:]...)
	hdr = binary.LittleEndian.AppendUint64(hdr, uint64(f.filter.Cap()))
	hdr = binary.LittleEndian.AppendUint64(hdr, uint64(f.filter.K()))
	hdr = binary.LittleEndian.AppendUint64(hdr, uint64(f.keys))
	hdr = binary.LittleEndian.AppendUint64(hdr, seq)
	hdr = binary.LittleEndian.AppendUint32(hdr, crc32.Checksum(event, castagnoli))
	hdr = binary.LittleEndian.AppendUint32(hdr, 0)
	w.Write(hdr)
	var word [8]byte
	for _, x := range f.filter.BitSet().Words() {
		binary.LittleEndian.PutUint64(word[:], x)
		w.Write(word[:]) // a failed write fails the Flush
	}
	err = w.Flush()
	if err == nil {
		_, err = file.Write(binary.LittleEndian.AppendUint32(nil, sum.Sum32()))
	}
	if err == nil {
		err = file.Sync()
	}
	return errors.Join(err, file.Close())
}

// loadSaved gives the filter the saved one's keys and the conversations
// of the message.accepted events after it. Not ok: the filter did not get
// them all (why says what did not fit, "" when there is no file or the
// load was stopped); it may have got some, which only costs lookups.
func (f *convFilter) loadSaved(db *pebble.DB, fs vfs.FS, path string, lastEvent uint64) (ok bool, why string) {
	file, err := fs.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, ""
		}
		return false, err.Error()
	}
	defer file.Close()
	hdr, err := f.checkSaved(file, db, lastEvent)
	if err != nil {
		return false, err.Error()
	}
	if err := f.orSaved(file); err != nil {
		return false, err.Error()
	}
	f.mu.Lock()
	f.keys += uint(hdr.keys)
	if f.keys > f.max {
		f.filter = nil
	}
	f.mu.Unlock()
	ok, err = f.replay(db, hdr.event, lastEvent)
	if err != nil {
		return false, err.Error()
	}
	return ok, ""
}

type savedHeader struct {
	keys, event uint64
}

// checkSaved reads the saved filter's header and checks that it fits this
// filter and this store, and that the whole file is as written.
func (f *convFilter) checkSaved(file vfs.File, db *pebble.DB, lastEvent uint64) (savedHeader, error) {
	var h savedHeader
	st, err := file.Stat()
	if err != nil {
		return h, err
	}
	if want := int64(convFilterHeaderLen + 8*f.words() + 4); st.Size() != want {
		return h, fmt.Errorf("%d bytes, want %d", st.Size(), want)
	}
	sum := crc32.New(castagnoli)
	if _, err := io.Copy(sum, io.NewSectionReader(file, 0, st.Size()-4)); err != nil {
		return h, err
	}
	var b [convFilterHeaderLen]byte
	if _, err := file.ReadAt(b[:4], st.Size()-4); err != nil {
		return h, err
	}
	if binary.LittleEndian.Uint32(b[:4]) != sum.Sum32() {
		return h, errors.New("checksum mismatch")
	}
	if _, err := file.ReadAt(b[:], 0); err != nil {
		return h, err
	}
	le := binary.LittleEndian
	bits, hashes := le.Uint64(b[8:]), le.Uint64(b[16:])
	h.keys, h.event = le.Uint64(b[24:]), le.Uint64(b[32:])
	switch {
	case [8]byte(b[:8]) != convFilterMagic:
		return h, errors.New("not a conversation filter")
	case bits != uint64(f.bits) || hashes != convFilterHashes:
		return h, fmt.Errorf("%d bits and %d hashes, want %d and %d", bits, hashes, f.bits, convFilterHashes)
	case h.event > lastEvent:
		return h, fmt.Errorf("saved at event %d, after the store's last event %d", h.event, lastEvent)
	case lastEvent-h.event > uint64(f.replayMax):
		return h, fmt.Errorf("saved at event %d, %d events before the store's last", h.event, lastEvent-h.event)
	}
	v, closer, err := db.Get(eventKey(h.event))
	if errors.Is(err, pebble.ErrNotFound) {
		return h, fmt.Errorf("saved at event %d, which the store does not hold", h.event)
	} else if err != nil {
		return h, err
	}
	defer closer.Close()
	if crc32.Checksum(v, castagnoli) != le.Uint32(b[40:]) {
		return h, fmt.Errorf("saved at event %d of another store", h.event)
	}
	return h, nil
}

// orSaved adds the saved filter's bits to the filter, a chunk at a time
// under the lock: Accepts have been adding their conversations meanwhile.
func (f *convFilter) orSaved(file vfs.File) error {
	nwords := f.words()
	r := io.NewSectionReader(file, convFilterHeaderLen, int64(8*nwords))
	buf := make([]byte, 8*4096)
	for i := 0; i < nwords; {
		n := min(len(buf)/8, nwords-i)
		if _, err := io.ReadFull(r, buf[:8*n]); err != nil {
			return err
		}
		f.mu.Lock()
		if f.filter != nil {
			words := f.filter.BitSet().Words()
			for j := range n {
				words[i+j] |= binary.LittleEndian.Uint64(buf[8*j:])
			}
		}
		f.mu.Unlock()
		i += n
		if f.stopped() {
			return errors.New("stopped")
		}
	}
	return nil
}

// words is the number of 64-bit words of the filter's bits.
func (f *convFilter) words() int { return int(f.bits+63) / 64 }

// replay adds the conversation of each message.accepted event after from,
// up to the last one at Open; not ok when stopped.
func (f *convFilter) replay(db *pebble.DB, from, last uint64) (bool, error) {
	if from == last {
		return true, nil
	}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: eventKey(from + 1), UpperBound: eventKey(last + 1)})
	if err != nil {
		return false, err
	}
	defer it.Close()
	var c keyChunk
	ev := &storev1.Event{}
	accepted := EventFilter{Type: EventAccepted}
	for valid := it.First(); valid; {
		c.reset()
		for ; valid && !c.full(); valid = it.Next() {
			v, err := it.ValueAndErr()
			if err != nil {
				return false, err
			}
			// Leases and outcomes are most of the log: skipped undecoded.
			match, err := accepted.matchEncoded(v)
			if err == nil && match {
				err = proto.Unmarshal(v, ev)
			}
			if err != nil {
				return false, fmt.Errorf("event %x: %w", it.Key(), err)
			}
			if match {
				c.append(convSeqKey(ev.GetTenant(), ev.GetConversation()))
			}
		}
		if !f.addChunk(&c) {
			return false, nil
		}
	}
	return true, it.Error()
}
