package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// AcceptBatch accepts many messages with one synced commit for all of
// them, where Accept would make one commit each: the tracker's
// AcceptStream hands it whatever Sends are waiting. Each message gets
// exactly Accept's semantics and its own result or error (errs[i]). Messages
// that share a conversation, an idempotency key or an id with an earlier one
// in the batch go into a later commit, in order, so each sees the one
// before it as Accept would.
func (s *Store) AcceptBatch(msgs []*storev1.Message) ([]Accepted, []error) {
	res := make([]Accepted, len(msgs))
	errs := make([]error, len(msgs))
	todo := make([]int, 0, len(msgs))
	for i, m := range msgs {
		if s.closed.Load() {
			errs[i] = ErrClosed
			continue
		}
		if err := validateMessage(m); err != nil {
			errs[i] = err
			continue
		}
		if m.Conversation == "" {
			m.Conversation = m.Recipient
		}
		todo = append(todo, i)
	}
	for len(todo) > 0 {
		var round []int
		round, todo = splitRound(msgs, todo)
		s.acceptRound(msgs, round, res, errs)
	}
	for _, a := range res {
		if a.Duplicate { // answered with the original's state, as read
			s.settled()
			break
		}
	}
	return res, errs
}

// splitRound takes from todo the messages whose conversation, idempotency
// key and id no earlier message in the round has; the rest wait.
func splitRound(msgs []*storev1.Message, todo []int) (round, rest []int) {
	if len(todo) == 1 {
		return todo, nil
	}
	seen := make(map[string]bool, 3*len(todo))
	for _, i := range todo {
		m := msgs[i]
		keys := []string{"c\x00" + m.Tenant + "\x00" + m.Conversation, "m\x00" + m.Id}
		if m.IdempotencyKey != "" {
			keys = append(keys, "k\x00"+m.Tenant+"\x00"+m.IdempotencyKey)
		}
		clash := false
		for _, k := range keys {
			clash = clash || seen[k]
		}
		if clash {
			rest = append(rest, i)
			continue
		}
		for _, k := range keys {
			seen[k] = true
		}
		round = append(round, i)
	}
	return round, rest
}

func (s *Store) acceptRound(msgs []*storev1.Message, round []int, res []Accepted, errs []error) {
	stripes := make(lockSet, 0, 3*len(round))
	for _, i := range round {
		m := msgs[i]
		stripes = append(stripes, s.stripe(m.Tenant, m.Conversation), s.idStripe(m.Id))
		if m.IdempotencyKey != "" {
			stripes = append(stripes, s.idemStripe(m.Tenant, m.IdempotencyKey))
		}
	}
	stripes = s.lock(stripes)
	defer s.unlock(stripes)

	var known *roundReads
	if len(round) >= roundReadsMin {
		var err error
		if known, err = s.readRound(msgs, round); err != nil {
			for _, i := range round {
				errs[i] = err
			}
			return
		}
	}
	t := s.newTxn()
	defer t.close()
	added := 0
	for _, i := range round {
		m := msgs[i]
		if dup, ok, err := s.duplicate(m); ok || err != nil {
			res[i], errs[i] = dup, err
			continue
		}
		if s.index.size()+added >= s.max {
			errs[i] = s.full()
			continue
		}
		a, err := t.accept(m, nil, known)
		if err != nil {
			errs[i] = err
			continue
		}
		res[i] = a
		added++
	}
	if added > 0 {
		t.commit()
	}
}

// roundReadsMin is the smallest round whose lookups readRound makes. An
// iterator pays for its setup over many keys; a lone Send's round (Send@1)
// keeps its point lookups.
const roundReadsMin = 4

// roundReads is what the Accepts of one round read before writing, looked
// up for the whole round at once: each conversation's last sequence and
// which of the round's ids are stored already.
type roundReads struct {
	lastSeq map[string]uint64 // by convSeqKey; absent: a new conversation
	exists  map[string]bool   // by message id; absent: not stored
}

// readRound looks up the round's conversation sequences and ids, with one
// iterator per key family, seeking in key order. Nearly every one of these
// keys is absent (a new conversation; an id never stored), and a point
// lookup of an absent key opens an iterator on every table whose range
// holds it (one per L0 sublevel, then one per level) before their bloom
// filters can answer: the largest cost of an Accept once L0 holds many
// sublevels. One iterator opens each table once for the whole round. The
// caller holds the round's stripe locks, so what it reads stays true until
// the round commits.
func (s *Store) readRound(msgs []*storev1.Message, round []int) (*roundReads, error) {
	r := &roundReads{lastSeq: make(map[string]uint64, len(round)), exists: map[string]bool{}}
	convs := make([][]byte, 0, len(round))
	var ids [][]byte
	for _, i := range round {
		m := msgs[i]
		if k := convSeqKey(m.Tenant, m.Conversation); s.convs.mayExist(k) {
			convs = append(convs, k)
		}
		if !s.claimNewest(m.Id) { // an id newer than every stored one needs no lookup
			ids = append(ids, messageKey(m.Id))
		}
	}
	err := s.seekEach(prefixConvSeq, convs, func(k, v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("read conversation sequence: %d bytes", len(v))
		}
		r.lastSeq[string(k)] = binary.BigEndian.Uint64(v)
		return nil
	})
	if err == nil {
		err = s.seekEach(prefixMessage, ids, func(k, _ []byte) error {
			r.exists[string(k[1:])] = true
			return nil
		})
	}
	return r, err
}

// seekEach calls found for each of keys (all under prefix) that the store
// holds, seeking one iterator in key order.
func (s *Store) seekEach(prefix byte, keys [][]byte, found func(k, v []byte) error) error {
	if len(keys) == 0 {
		return nil
	}
	slices.SortFunc(keys, bytes.Compare)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefix}, UpperBound: []byte{prefix + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	for _, k := range keys {
		if !it.SeekPrefixGE(k) || !bytes.Equal(it.Key(), k) {
			continue
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if err := found(k, v); err != nil {
			return err
		}
	}
	return it.Error()
}
