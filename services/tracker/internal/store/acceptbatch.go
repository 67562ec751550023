package store

import (
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
		a, err := t.accept(m, nil)
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
