package store

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// ErrReplyNotOpen: a chunk was appended to a reply that is closed or
// aborted; nothing was written.
var ErrReplyNotOpen = errors.New("reply is not open")

// ErrChunkGap: a chunk index skips ahead of the next expected one.
var ErrChunkGap = errors.New("chunk index out of order")

// OpenReply records a new streamed reply. Id, Tenant, Channel and Recipient
// are required; an empty Conversation becomes the recipient. Opening an id
// that exists returns the existing reply unchanged (idempotent).
func (s *Store) OpenReply(r *storev1.Reply) (*storev1.Reply, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	probe := &storev1.Message{Id: r.GetId(), Tenant: r.GetTenant(), Channel: r.GetChannel(), Recipient: r.GetRecipient(), Conversation: r.GetConversation()}
	if err := validateMessage(probe); err != nil {
		return nil, err
	}
	if r.Conversation == "" {
		r.Conversation = r.Recipient
	}
	stripes := s.lock(lockSet{s.stripe(r.Tenant, r.Conversation)})
	defer s.unlock(stripes)
	if old, err := s.getReply(r.Id); err == nil {
		return old, nil
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	now := s.now().UnixNano()
	r.State = storev1.ReplyState_REPLY_STATE_OPEN
	r.OpenedAtUnixNano, r.UpdatedUnixNano = now, now
	b := s.db.NewBatch()
	defer b.Close()
	b.Set(replyKey(r.Id), mustMarshal(r), nil)
	s.commit(b)
	return r, nil
}

func (s *Store) getReply(id string) (*storev1.Reply, error) {
	r := &storev1.Reply{}
	ok, err := s.getProto(replyKey(id), r)
	if err != nil {
		return nil, fmt.Errorf("read reply %s: %w", id, err)
	}
	if !ok {
		return nil, ErrNotFound
	}
	return r, nil
}

// AppendChunk makes chunk index of a reply durable as a message of the
// reply's conversation (m carries its id and text) and returns it. Chunks
// are delivered in index order, each once. Idempotent by index: appending
// an index already written returns that chunk (Duplicate) and writes
// nothing. Errors: ErrNotFound, ErrReplyNotOpen, ErrChunkGap, and Accept's.
func (s *Store) AppendChunk(replyID string, index uint32, m *storev1.Message) (Accepted, error) {
	if s.closed.Load() {
		return Accepted{}, ErrClosed
	}
	r, err := s.getReply(replyID)
	if err != nil {
		return Accepted{}, err
	}
	stripes := s.lock(lockSet{s.stripe(r.Tenant, r.Conversation), s.idStripe(m.GetId())})
	defer s.unlock(stripes)
	if r, err = s.getReply(replyID); err != nil { // under the lock
		return Accepted{}, err
	}
	if index < r.GetChunks() {
		v, closer, err := s.db.Get(replyChunkKey(replyID, index))
		if err != nil {
			return Accepted{}, fmt.Errorf("read chunk %d of %s: %w", index, replyID, err)
		}
		id := string(v)
		closer.Close()
		orig, err := s.getMessage(id)
		if err != nil {
			return Accepted{}, err
		}
		d, err := s.getDelivery(id)
		if err != nil {
			return Accepted{}, err
		}
		s.settled() // answers with what it read
		return Accepted{Message: orig, Delivery: d, Duplicate: true}, nil
	}
	if r.GetState() != storev1.ReplyState_REPLY_STATE_OPEN {
		return Accepted{}, fmt.Errorf("%w: %s is %s", ErrReplyNotOpen, replyID, r.GetState())
	}
	if index > r.GetChunks() {
		return Accepted{}, fmt.Errorf("%w: chunk %d appended to %s, which has %d chunks; append %d next", ErrChunkGap, index, replyID, r.GetChunks(), r.GetChunks())
	}
	m.Tenant, m.Channel, m.Recipient, m.Conversation = r.Tenant, r.Channel, r.Recipient, r.Conversation
	m.ReplyId, m.ChunkIndex = replyID, index
	if m.Traceparent == "" {
		m.Traceparent, m.Tracestate = r.Traceparent, r.Tracestate
	}
	m.IdempotencyKey = ""
	if err := validateMessage(m); err != nil {
		return Accepted{}, err
	}
	next := proto.CloneOf(r)
	next.Chunks = index + 1
	return s.acceptLocked(m, func(t *txn) {
		next.UpdatedUnixNano = t.now
		t.b.Set(replyKey(replyID), mustMarshal(next), nil)
		t.b.Set(replyChunkKey(replyID, index), []byte(m.Id), nil)
	})
}

// CloseReply marks a reply complete: no more chunks. Closing a closed or
// aborted reply returns it unchanged.
func (s *Store) CloseReply(replyID string) (*storev1.Reply, error) {
	r, err := s.getReply(replyID)
	if err != nil {
		return nil, err
	}
	stripes := s.lock(lockSet{s.stripe(r.Tenant, r.Conversation)})
	defer s.unlock(stripes)
	if r, err = s.getReply(replyID); err != nil {
		return nil, err
	}
	if r.GetState() != storev1.ReplyState_REPLY_STATE_OPEN {
		return r, nil
	}
	r.State = storev1.ReplyState_REPLY_STATE_CLOSED
	r.UpdatedUnixNano = s.now().UnixNano()
	b := s.db.NewBatch()
	defer b.Close()
	b.Set(replyKey(replyID), mustMarshal(r), nil)
	s.commit(b)
	return r, nil
}

// Reply returns a reply's record.
func (s *Store) Reply(replyID string) (*storev1.Reply, error) {
	defer s.settled() // answers with what it read
	return s.getReply(replyID)
}

// GetReply returns a reply and its chunks' message ids in order.
func (s *Store) GetReply(replyID string) (*storev1.Reply, []string, error) {
	defer s.settled() // answers with what it read
	r, err := s.getReply(replyID)
	if err != nil {
		return nil, nil, err
	}
	p := idKey(prefixReplyChunk, replyID)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return nil, nil, err
	}
	defer it.Close()
	var ids []string
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, nil, err
		}
		ids = append(ids, string(v))
	}
	return r, ids, it.Error()
}

// abortReply aborts a reply and, in the same batch, every chunk not yet
// finished: a pending or unknown chunk becomes ABORTED and leaves the
// recovery index; a chunk in flight is marked abort_requested (it ends
// DELIVERED only if the provider confirmed it). The reply records how many
// chunks were delivered when the abort was recorded. Aborting an aborted
// reply returns ErrTerminal.
func (s *Store) abortReply(r *storev1.Reply, reason string) (*storev1.Reply, error) {
	stripes := s.lock(lockSet{s.stripe(r.Tenant, r.Conversation)})
	defer s.unlock(stripes)
	r, ids, err := s.GetReply(r.Id)
	if err != nil {
		return nil, err
	}
	if r.GetState() == storev1.ReplyState_REPLY_STATE_ABORTED {
		s.settled() // answers with what it read
		return r, fmt.Errorf("%w: reply %s is already aborted", ErrTerminal, r.Id)
	}
	t := s.newTxn()
	defer t.close()
	delivered := uint32(0)
	for _, id := range ids {
		m, err := s.getMessage(id)
		if err != nil {
			return nil, err
		}
		d, err := t.delivery(id)
		if err != nil {
			return nil, err
		}
		if d.GetState() == storev1.State_STATE_DELIVERED {
			delivered++
		}
		if IsTerminal(d.GetState()) || d.GetAbortRequested() {
			continue
		}
		if _, err := t.abort(m, d, reason); err != nil {
			return nil, err
		}
	}
	r.State = storev1.ReplyState_REPLY_STATE_ABORTED
	r.DeliveredAtAbort = delivered
	r.Reason = reason
	r.UpdatedUnixNano = t.now
	t.b.Set(replyKey(r.Id), mustMarshal(r), nil)
	t.commit()
	return r, nil
}

// AbortReply aborts a streamed reply (see abortReply).
func (s *Store) AbortReply(replyID, reason string) (*storev1.Reply, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	r, err := s.getReply(replyID)
	if err != nil {
		return nil, err
	}
	return s.abortReply(r, reason)
}
