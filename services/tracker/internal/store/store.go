// Package store is the tracker's durable state: messages, their delivery
// state machine, the recovery index, idempotency keys, conversation
// sequences, history and the event log, all in one Pebble database.
//
// It is the only package in herald that imports Pebble. Every method that
// changes state returns only after its batch is committed with pebble.Sync;
// concurrent callers share fsyncs through Pebble's group commit, because no
// lock is held across commits except the stripe locks of the conversations a
// batch touches. The store does not schedule work, retry, or talk to
// providers: callers decide what happens; the store makes it durable and
// refuses transitions that do not start from the expected state and lease.
package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// Errors returned by the store. Callers test them with errors.Is.
var (
	// ErrNotFound: no message with that id.
	ErrNotFound = errors.New("message not found")
	// ErrInvalid: the request breaks a rule of the store (a missing field, a
	// NUL byte in a key part); nothing was written.
	ErrInvalid = errors.New("invalid request")
	// ErrExists: a different message already has this id; nothing was written.
	ErrExists = errors.New("message id already exists")
	// ErrFull: the number of non-terminal messages reached MaxPending;
	// nothing was written.
	ErrFull = errors.New("pending limit reached")
	// ErrClosed: the store is closed.
	ErrClosed = errors.New("store closed")
	// ErrSchema: the data directory holds another on-disk format version.
	ErrSchema = errors.New("unsupported schema version")
)

// Options configure Open. The zero value of each field picks a default.
type Options struct {
	// FS is the filesystem; nil means the operating system's. Tests use
	// vfs.NewMem or vfs.NewCrashableMem.
	FS vfs.FS
	// Now is the clock for due times, lease expiries and event times.
	Now func() time.Time
	// MaxPending bounds non-terminal messages; Accept fails with ErrFull at
	// the bound. Zero means 1,000,000.
	MaxPending int
	// UnknownPolicy returns what to do with a message of channel whose
	// outcome became unknown. Nil means PolicyFail for every channel.
	UnknownPolicy func(channel string) UnknownPolicy
	Logger        *slog.Logger
	// ReconcileGrace is how long an UNKNOWN message of a reconcile channel
	// waits before the provider is first asked about it, so that the
	// provider call whose outcome is unknown has surely ended (the plugin
	// host bounds every call by the queue's deliver timeout). It is also the
	// first backoff after a failed try; the backoff doubles per try, up to
	// 10 minutes. Zero means 30s.
	ReconcileGrace time.Duration
	// ReconcileAttempts bounds the reconcile leases per unknown outcome:
	// when the last one fails or expires, the message is dead-lettered with
	// reason outcome_unknown. Zero means 5.
	ReconcileAttempts int
	// CacheSize is Pebble's block cache in bytes; zero means 64 MiB.
	CacheSize int64
	// noAutoCompactions keeps Pebble from compacting on its own (tests
	// that need tables to stay as flushed).
	noAutoCompactions bool
	// convFilterMax is the most keys the conversation filter takes before
	// it is dropped (0: convFilterMaxKeys); tests set less.
	convFilterMax uint
	// convFilterScanned is called after each chunk of the conversation
	// filter's scan at Open (tests pause it).
	convFilterScanned func()
	// convFilterReplayMax is the most events the conversation filter's
	// load replays after the saved filter (0: convFilterReplayMax); tests
	// set less.
	convFilterReplayMax uint
	// SyncShareDelay is how long a lease batch or a batch of delivery
	// outcomes, committed without an fsync of its own, waits for another
	// commit's fsync to make it durable before it syncs the WAL itself
	// (see syncShare); nothing is answered before it is durable. Zero means
	// DefaultSyncShareDelay; a negative delay gives each batch its own
	// fsync.
	SyncShareDelay time.Duration
	// OnCommit, if set, is called after every successful commit with how
	// long it took to become durable (its fsync, or for a shared batch the
	// wait for a later one). It runs on the committing goroutine, for a
	// synced commit with the batch's stripe locks held: it must be fast.
	OnCommit func(time.Duration)
}

// UnknownPolicy is what the store does with a message whose provider outcome
// is unknown (ARCHITECTURE.md §3).
type UnknownPolicy int

const (
	// PolicyFail dead-letters it with reason outcome_unknown.
	PolicyFail UnknownPolicy = iota
	// PolicyRedeliver makes it PENDING again at once: only for sinks that
	// deduplicate on the message id.
	PolicyRedeliver
	// PolicyReconcile leaves it UNKNOWN; after Options.ReconcileGrace Lease
	// hands it to a worker that asks the provider whether it has it (see
	// Complete's RESULT_RECONCILE_* results).
	PolicyReconcile
)

// Store is the tracker's database. Its methods are safe for concurrent use.
type Store struct {
	db     *pebble.DB
	dir    string
	fs     vfs.FS
	popts  *pebble.Options
	now    func() time.Time
	log    *slog.Logger
	policy func(string) UnknownPolicy
	max    int

	reconcileGrace    time.Duration
	reconcileAttempts uint32

	locks [lockStripes]sync.Mutex
	seed  maphash.Seed

	groups acceptGroups
	events sequencer
	index  *memIndex
	// syncs tells a batch committed without an fsync when a later one has
	// made it durable (commitSharedThenUnlock).
	syncs      syncShare
	shareDelay time.Duration // Options.SyncShareDelay
	// active holds each conversation's non-terminal messages (activeSets).
	active activeSets
	// live holds the stored message and delivery records of messages
	// accepted since Open that have not finished (up to liveMessagesMax
	// bytes), so that leasing and completing them read nothing from Pebble.
	live liveMessages
	// newest is the greatest message id stored or being accepted: an
	// Accept of a greater id, under the id's stripe lock, knows without a
	// lookup that no message has it (see claimNewest).
	newest struct {
		sync.Mutex
		id string
	}
	// convs tells an Accept into a new conversation that it need not look
	// up the conversation's sequence (convFilter).
	convs *convFilter
	// recoveryDead: dead entries the scan of the recovery index at Open
	// met.
	recoveryDead atomic.Int64

	closed atomic.Bool
	damage *damagedFiles

	onCommit func(time.Duration) // nil: nobody listens
}

// Open opens (or creates) the store in dir. It checks the schema version and
// loads the recovery index; a damaged or foreign store is an error and
// nothing is deleted. Only one process may have dir open: a second Open
// fails while the first holds Pebble's lock file.
func Open(dir string, o Options) (*Store, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.convFilterMax == 0 {
		o.convFilterMax = convFilterMaxKeys
	}
	if o.MaxPending == 0 {
		o.MaxPending = 1_000_000
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.UnknownPolicy == nil {
		o.UnknownPolicy = func(string) UnknownPolicy { return PolicyFail }
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.CacheSize == 0 {
		o.CacheSize = 64 << 20
	}
	if o.ReconcileGrace <= 0 {
		o.ReconcileGrace = 30 * time.Second
	}
	if o.ReconcileAttempts <= 0 {
		o.ReconcileAttempts = 5
	}
	if o.SyncShareDelay == 0 {
		o.SyncShareDelay = DefaultSyncShareDelay
	}
	cache := pebble.NewCache(o.CacheSize)
	defer cache.Unref()
	damage := newDamagedFiles()
	popts := &pebble.Options{
		FS:     o.FS,
		Cache:  cache,
		Merger: counterMerger,
		Logger: pebbleLogger{o.Logger},
		// Pebble's default listener calls Fatalf on a checksum failure,
		// which panics with a stack trace. Log it with the file's path
		// instead: the read that found it returns an error that names the
		// file, and DamagedFiles lists it for the startup check.
		EventListener: &pebble.EventListener{DataCorruption: func(info pebble.DataCorruptionInfo) {
			damage.add(info.Path)
			o.Logger.Error("on-disk corruption: restore the data directory from a backup", "error_code", "TRK_002", "component", "pebble", "file", info.Path, "err", info.Details)
		}},
		// Every Accept looks up keys that do not exist yet, and the memtable
		// has no bloom filter: a lookup walks its skiplist. At 64 MiB that
		// walk was the largest cost of a Send once the memtable had filled
		// (Send@64 fell to half over a benchmark run); at 16 MiB Send@64
		// holds at 0.9 × the gRPC skeleton, and flushes stay rare enough.
		MemTableSize: 16 << 20,
		// Each L0 → Lbase compaction rewrites the Lbase tables its input
		// spans, and a flushed table spans every key family, so it overlaps
		// nearly all of Lbase: the fewer, larger those compactions, the
		// fewer times Lbase is rewritten. At Pebble's default (4 sublevels)
		// the tracker fell behind under a steady backlog (a million
		// messages' lives left 37 L0 tables and 348 MB of compaction debt)
		// and wrote Lbase 3.2 times over; at 16 it wrote it 1.6 times,
		// with 62 MB of debt left, and BenchmarkLifecycle spent 20 % less
		// CPU per message. Reads pay with more L0 sublevels to consult,
		// which bloom filters keep cheap. Writes stop at 48 sublevels.
		L0CompactionThreshold:       16,
		L0StopWritesThreshold:       48,
		MaxOpenFiles:                1000,
		DisableAutomaticCompactions: o.noAutoCompactions,
		ErrorIfExists:               false,
	}
	// Accept looks up keys that do not exist yet (a new message id, a new
	// conversation, a new idempotency key); bloom filters answer those
	// without reading every level's index, so Accept does not slow down as
	// the history grows.
	for i := range popts.Levels {
		popts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, popts)
	if err != nil {
		return nil, describeOpenError(dir, err)
	}
	s := &Store{
		db:     db,
		dir:    dir,
		fs:     popts.FS,
		popts:  popts,
		now:    o.Now,
		log:    o.Logger,
		policy: o.UnknownPolicy,
		max:    o.MaxPending,
		seed:   maphash.MakeSeed(),
		index:  newMemIndex(),
		live:   newLiveMessages(liveMessagesMax),
		damage: damage,

		reconcileGrace:    o.ReconcileGrace,
		reconcileAttempts: uint32(o.ReconcileAttempts),

		onCommit:   o.OnCommit,
		shareDelay: o.SyncShareDelay,
	}
	if err := s.checkSchema(); err != nil {
		db.Close()
		return nil, describeOpenError(dir, err)
	}
	last, err := s.lastEventSequence()
	if err != nil {
		db.Close()
		return nil, describeOpenError(dir, err)
	}
	s.events.init(last)
	s.syncs.init()
	if s.newest.id, err = s.lastMessageID(); err != nil {
		db.Close()
		return nil, describeOpenError(dir, err)
	}
	if err := s.loadIndex(); err != nil {
		db.Close()
		return nil, describeOpenError(dir, err)
	}
	s.convs = newConvFilter(convFilterBits, o.convFilterMax)
	s.convs.scanned = o.convFilterScanned
	if o.convFilterReplayMax > 0 {
		s.convs.replayMax = o.convFilterReplayMax
	}
	go s.convs.load(db, s.fs, s.fs.PathJoin(dir, convFilterFile), last, s.log)
	return s, nil
}

// DamagedFiles lists the files found corrupt (a checksum mismatch) since
// Open, by a read or by Scrub, in the order found.
func (s *Store) DamagedFiles() []string { return s.damage.list() }

// Damaged is closed when the first damaged file is found. The tracker stops
// serving then: every later read could meet the same damage.
func (s *Store) Damaged() <-chan struct{} { return s.damage.found }

// damagedFiles collects the paths of corrupt files.
type damagedFiles struct {
	mu    sync.Mutex
	paths []string
	found chan struct{}
}

func newDamagedFiles() *damagedFiles { return &damagedFiles{found: make(chan struct{})} }

func (d *damagedFiles) add(path string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.paths {
		if p == path {
			return
		}
	}
	if len(d.paths) == 0 {
		close(d.found)
	}
	d.paths = append(d.paths, path)
}

func (d *damagedFiles) list() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.paths...)
}

// describeOpenError turns Pebble's open errors into ones an operator can act on.
func describeOpenError(dir string, err error) error {
	msg := err.Error()
	switch {
	// Pebble's flock on LOCK fails with EAGAIN (EWOULDBLOCK) while another
	// process holds it; the error text does not say "lock".
	case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK) ||
		strings.Contains(msg, "lock") && (strings.Contains(msg, "resource temporarily unavailable") || strings.Contains(msg, "held")):
		return fmt.Errorf("open store %s: the data directory is in use by another tracker; stop it or choose another --data-dir: %w", dir, err)
	case pebble.IsCorruptionError(err) || strings.Contains(msg, "corrupt") || strings.Contains(msg, "checksum"):
		file := "a file"
		if info := pebble.ExtractDataCorruptionInfo(err); info != nil {
			file = info.Path
		}
		return fmt.Errorf("open store %s: the store is damaged (%s failed its checks: %v); nothing was deleted: stop the tracker and restore the data directory from a backup (herald backup, see README): %w", dir, file, msg, err)
	}
	return fmt.Errorf("open store %s: %w", dir, err)
}

// Close waits for nothing: callers stop calling first. It flushes and closes
// Pebble; every acknowledged write was already synced.
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	s.index.close()
	s.events.close()
	s.convs.close()
	if err := s.saveConvFilter(); err != nil {
		s.log.Warn("conversation filter not saved; the next start scans the conversations instead", "err", err)
	}
	if err := s.db.Flush(); err != nil {
		s.db.Close()
		return fmt.Errorf("flush store: %w", err)
	}
	return s.db.Close()
}

func (s *Store) checkSchema() error {
	v, closer, err := s.db.Get(metaSchemaKey)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		it, err := s.db.NewIter(nil)
		if err != nil {
			return fmt.Errorf("check schema: %w", err)
		}
		empty := !it.First()
		if err := it.Close(); err != nil {
			return fmt.Errorf("check schema: %w", err)
		}
		if !empty {
			return fmt.Errorf("%w: the store has data but no schema version; it was not written by herald", ErrSchema)
		}
		return s.db.Set(metaSchemaKey, binary.BigEndian.AppendUint32(nil, schemaVersion), pebble.Sync)
	case err != nil:
		return fmt.Errorf("read schema version: %w", err)
	}
	defer closer.Close()
	if len(v) != 4 {
		return fmt.Errorf("%w: schema key holds %d bytes", ErrSchema, len(v))
	}
	got := binary.BigEndian.Uint32(v)
	if got >= 1 && got < schemaVersion {
		if err := s.upgrade(); err != nil {
			return fmt.Errorf("upgrade schema version %d to %d: %w", got, schemaVersion, err)
		}
		s.log.Info("store upgraded in place", "from_schema", got, "to_schema", schemaVersion)
		return nil
	}
	if got != schemaVersion {
		return fmt.Errorf("%w: the store is version %d, this build reads versions 1 to %d", ErrSchema, got, schemaVersion)
	}
	return nil
}

// upgradeBatch bounds the index entries one batch of upgrade rewrites.
const upgradeBatch = 4096

// upgrade makes a store of an earlier version one of this version. Their
// records are valid records of this one (see schemaVersion), but before
// schema 4 a recovery-index entry carried no sequence and each
// conversation's active messages had keys of their own: upgrade gives
// every entry its message's sequence, then deletes the retired range and
// writes the version key in one synced batch, so that a build that reads
// only the older versions refuses the store. Its cost follows the pending
// messages. A crash part way leaves the old version key, and the next Open
// upgrades again; an entry that already carries its sequence is left as
// it is.
func (s *Store) upgrade() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRecovery}, UpperBound: []byte{prefixRecovery + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	b := s.db.NewBatch()
	defer func() { b.Close() }()
	for ok := it.First(); ok; ok = it.Next() {
		_, _, id, err := parseRecoveryKey(it.Key())
		if err != nil {
			return err
		}
		f, err := parseRecoveryValue(it.Value())
		if err != nil {
			return err
		}
		if f.seq != 0 {
			continue
		}
		m, err := s.getMessage(id)
		if err != nil {
			return fmt.Errorf("recovery entry for %s: %w", id, err)
		}
		if err := b.Set(it.Key(), recoveryValue(f.channel, f.tenant, f.conversation, m.GetSequence()), nil); err != nil {
			return err
		}
		// The last batch's synced commit makes these durable too.
		if b.Count() >= upgradeBatch {
			if err := b.Commit(pebble.NoSync); err != nil {
				return err
			}
			b.Close()
			b = s.db.NewBatch()
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	if err := b.DeleteRange([]byte{prefixConvActiveRetired}, []byte{prefixConvActiveRetired + 1}, nil); err != nil {
		return err
	}
	if err := b.Set(metaSchemaKey, binary.BigEndian.AppendUint32(nil, schemaVersion), nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// saveConvFilter saves the conversation filter as of the last event.
func (s *Store) saveConvFilter() error {
	seq, err := s.lastEventSequence()
	if err != nil {
		return err
	}
	var event []byte
	if seq > 0 {
		v, closer, err := s.db.Get(eventKey(seq))
		if err != nil {
			return err
		}
		defer closer.Close()
		event = v
	}
	return s.convs.save(s.fs, s.fs.PathJoin(s.dir, convFilterFile), seq, event)
}

func (s *Store) lastEventSequence() (uint64, error) {
	k, err := s.lastKey(prefixEvent)
	if k == nil || err != nil {
		return 0, err
	}
	return parseEventKey(k)
}

// lastMessageID is the greatest message id in the store, "" when none.
func (s *Store) lastMessageID() (string, error) {
	k, err := s.lastKey(prefixMessage)
	if k == nil || err != nil {
		return "", err
	}
	return string(k[1:]), nil
}

// lastKey returns a copy of the greatest key of a family, nil when it has
// none.
func (s *Store) lastKey(prefix byte) ([]byte, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefix}, UpperBound: []byte{prefix + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	if !it.Last() {
		return nil, it.Error()
	}
	return bytes.Clone(it.Key()), nil
}

// claimNewest records id as the newest message id if it is greater than
// every id stored or claimed, and reports whether it was. Ids are ULIDs,
// which grow with time: nearly every new message is the newest, and its
// Accept skips the lookup of its id (with a long history, one lookup
// consults every level's bloom filter). The caller holds id's stripe
// (idStripe: Accept and AppendChunk lock it), so a second Accept of the
// same id waits for the first and then, its id no longer greater, looks
// it up.
func (s *Store) claimNewest(id string) bool {
	s.newest.Lock()
	defer s.newest.Unlock()
	if id > s.newest.id {
		s.newest.id = id
		return true
	}
	return false
}

// getProto reads key into m. It reports false when the key is absent.
func (s *Store) getProto(key []byte, m proto.Message) (bool, error) {
	return readProto(s.db, key, m)
}

// readProto reads key from r (the store or a snapshot of it) into m. It
// reports false when the key is absent.
func readProto(r pebble.Reader, key []byte, m proto.Message) (bool, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer closer.Close()
	return true, decodeProto(key, v, m)
}

// decodeProto decodes the value v of key into m.
func decodeProto(key, v []byte, m proto.Message) error {
	if err := proto.Unmarshal(v, m); err != nil {
		return fmt.Errorf("decode %x: %w", key, err)
	}
	return nil
}

func (s *Store) getMessage(id string) (*storev1.Message, error) {
	m := &storev1.Message{}
	ok, err := s.getRecord(messageKey(id), id, func(e liveMessage) []byte { return e.message }, m)
	if err != nil {
		return nil, fmt.Errorf("read message %s: %w", id, err)
	}
	if !ok {
		return nil, ErrNotFound
	}
	return m, nil
}

func (s *Store) getDelivery(id string) (*storev1.Delivery, error) {
	d := &storev1.Delivery{}
	ok, err := s.getRecord(deliveryKey(id), id, func(e liveMessage) []byte { return e.delivery }, d)
	if err != nil {
		return nil, fmt.Errorf("read delivery %s: %w", id, err)
	}
	if !ok {
		return nil, ErrNotFound
	}
	return d, nil
}

// getRecord decodes one of message id's records into m: field's part of the
// live set's copy, or the stored value of key (each read decodes a fresh
// copy). It reports false when the record is in neither.
func (s *Store) getRecord(key []byte, id string, field func(liveMessage) []byte, m proto.Message) (bool, error) {
	if e, live := s.live.get(id); live {
		return true, decodeProto(key, field(e), m)
	}
	return s.getProto(key, m)
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		// Marshalling a valid in-memory proto cannot fail.
		panic(fmt.Sprintf("marshal %T: %v", m, err))
	}
	return b
}

// commit writes b with Sync. A failed commit means the disk refused a write
// whose effects may be partly visible to Pebble's memtable; continuing could
// break the event log's order, so the tracker stops (as etcd does).
func (s *Store) commit(b *pebble.Batch) {
	start := time.Now()
	ticket := s.syncs.take()
	if err := b.Commit(pebble.Sync); err != nil {
		s.commitFailed(err)
	}
	s.syncs.give(ticket)
	if s.onCommit != nil {
		s.onCommit(time.Since(start))
	}
}

// lockStripes is the number of conversation locks. All state changes of a
// message happen under its conversation's stripe, so compare-and-set needs no
// other lock and unrelated conversations commit in parallel.
const lockStripes = 4096

func (s *Store) stripe(tenant, conversation string) int {
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString(tenant)
	h.WriteByte(0)
	h.WriteString(conversation)
	return int(h.Sum64() % lockStripes)
}

// lockSet holds a sorted set of stripes; sorted acquisition prevents
// deadlock between batches.
type lockSet []int

func (s *Store) lock(stripes lockSet) lockSet {
	sort.Ints(stripes)
	out := stripes[:0]
	for i, st := range stripes {
		if i > 0 && st == stripes[i-1] {
			continue
		}
		out = append(out, st)
	}
	for _, st := range out {
		s.locks[st].Lock()
	}
	return out
}

func (s *Store) unlock(stripes lockSet) {
	for i := len(stripes) - 1; i >= 0; i-- {
		s.locks[stripes[i]].Unlock()
	}
}

// idStripe maps a message id to a stripe: Accept locks it so that two
// Accepts of one id never both skip the lookup (claimNewest).
func (s *Store) idStripe(id string) int {
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString("id\x00")
	h.WriteString(id)
	return int(h.Sum64() % lockStripes)
}

// idemStripe maps an idempotency key to a stripe. Accept locks it together
// with the conversation's stripe so two Sends with one key never both write.
func (s *Store) idemStripe(tenant, key string) int {
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString("idem\x00")
	h.WriteString(tenant)
	h.WriteByte(0)
	h.WriteString(key)
	return int(h.Sum64() % lockStripes)
}

// pebbleLogger sends Pebble's log lines to slog.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble", "error_code", "TRK_002")
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble", "error_code", "TRK_002")
	panic(fmt.Sprintf(format, args...))
}

// counterMerger adds int64 little-endian operands: the per-state counters
// change in every batch without a read-modify-write.
var counterMerger = &pebble.Merger{
	Name: "herald.counter.v1",
	Merge: func(key, value []byte) (pebble.ValueMerger, error) {
		c := &counter{}
		return c, c.MergeNewer(value)
	},
}

type counter struct{ n int64 }

func (c *counter) MergeNewer(v []byte) error {
	if len(v) != 8 {
		return fmt.Errorf("counter operand of %d bytes", len(v))
	}
	c.n += int64(binary.LittleEndian.Uint64(v))
	return nil
}

func (c *counter) MergeOlder(v []byte) error { return c.MergeNewer(v) }

func (c *counter) Finish(bool) ([]byte, io.Closer, error) {
	return binary.LittleEndian.AppendUint64(nil, uint64(c.n)), nil, nil
}

func counterDelta(n int64) []byte { return binary.LittleEndian.AppendUint64(nil, uint64(n)) }

func counterValue(v []byte) int64 { return int64(binary.LittleEndian.Uint64(v)) }

// sequencer hands out event-log sequence numbers and tracks the highest one
// below which every batch has committed, so readers of the log never skip a
// sequence that a slower commit fills in later.
type sequencer struct {
	mu      sync.Mutex
	next    uint64          // next sequence to hand out
	durable uint64          // every sequence ≤ durable is committed
	done    map[uint64]bool // committed sequences above durable
	changed chan struct{}   // closed and replaced when durable grows
	closed  bool
	// opened is the last sequence at Open, and lastOf the last sequence
	// handed out to each type since: no event of type t is above
	// max(opened, lastOf[t]). A watcher of one type skips the log up to
	// the durable watermark when none of its type came after it.
	opened uint64
	lastOf map[string]uint64
}

func (q *sequencer) init(last uint64) {
	q.next = last + 1
	q.durable = last
	q.done = make(map[uint64]bool)
	q.changed = make(chan struct{})
	q.opened = last
	q.lastOf = make(map[string]uint64)
}

// reserve numbers evs with consecutive sequences and returns the first.
func (q *sequencer) reserve(evs []*storev1.Event) uint64 {
	q.mu.Lock()
	first := q.next
	for _, ev := range evs {
		ev.Sequence = q.next
		q.lastOf[ev.GetType()] = q.next
		q.next++
	}
	q.mu.Unlock()
	return first
}

// publish marks [first, first+n) committed.
func (q *sequencer) publish(first uint64, n int) {
	if n == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for s := first; s < first+uint64(n); s++ {
		q.done[s] = true
	}
	grew := false
	for q.done[q.durable+1] {
		delete(q.done, q.durable+1)
		q.durable++
		grew = true
	}
	if grew && !q.closed {
		close(q.changed)
		q.changed = make(chan struct{})
	}
}

// watch returns the durable watermark and a channel closed when it grows.
func (q *sequencer) watch() (uint64, <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.durable, q.changed
}

// watchType returns the durable watermark and the last sequence that may
// hold an event of type typ, read together: an event of typ at or below
// the watermark was numbered before it was read, so it is at or below the
// last sequence returned.
func (q *sequencer) watchType(typ string) (durable, last uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.durable, max(q.opened, q.lastOf[typ])
}

func (q *sequencer) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		close(q.changed)
	}
}
