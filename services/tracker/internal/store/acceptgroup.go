package store

import (
	"sync"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// maxAcceptGroups is how many groups of concurrent Accepts commit at once.
// While that many are under way, new Accepts wait and go together in the
// next group, one AcceptBatch for all of them; below it, an Accept commits
// at once, so a lone one waits for nothing but its own commit. More than
// one group keeps commits overlapping in Pebble's pipeline (one group's
// fsync shares the next group's), so the grouping is not a serialization
// point in front of the commit.
const maxAcceptGroups = 4

// acceptGroups gathers concurrent Accepts into shared batches: the way
// Pebble's commit pipeline shares an fsync between concurrent commits, one
// level up, where an Accept's own cost (a batch, its locks, its index and
// record updates, a commit) is paid once per group instead of once per
// message.
type acceptGroups struct {
	mu       sync.Mutex
	waiting  []*acceptCall
	underWay int
}

// acceptCall is one Accept waiting for its group's result.
type acceptCall struct {
	m   *storev1.Message
	res Accepted
	err error
	// wake gets the group to run when this call leads the next one, or nil
	// when another call's group has answered it.
	wake chan []*acceptCall
}

// Accept makes a new message durable with its idempotency key, conversation
// sequence, recovery-index entry, history entries and event, in one synced
// batch, which it may share with Accepts made at the same time (each with
// its own result, exactly as alone; see AcceptBatch). m.Id, Tenant, Channel
// and Recipient are required; an empty Conversation becomes the recipient.
// Accept sets m.Sequence and m.AcceptedAtUnixNano. Errors: ErrInvalid,
// ErrExists, ErrFull, ErrClosed.
func (s *Store) Accept(m *storev1.Message) (Accepted, error) {
	c := &acceptCall{m: m}
	g := &s.groups
	g.mu.Lock()
	if g.underWay < maxAcceptGroups {
		g.underWay++
		g.mu.Unlock()
		s.runAcceptGroup([]*acceptCall{c})
		return c.res, c.err
	}
	c.wake = make(chan []*acceptCall, 1)
	g.waiting = append(g.waiting, c)
	g.mu.Unlock()
	if group := <-c.wake; group != nil {
		s.runAcceptGroup(group)
	}
	return c.res, c.err
}

// runAcceptGroup accepts the group's messages in one AcceptBatch and
// answers them; then it hands its place to the calls that gathered
// meanwhile, whose first call leads them, or gives the place up.
func (s *Store) runAcceptGroup(group []*acceptCall) {
	msgs := make([]*storev1.Message, len(group))
	for i, c := range group {
		msgs[i] = c.m
	}
	res, errs := s.AcceptBatch(msgs)
	for i, c := range group {
		c.res, c.err = res[i], errs[i]
	}
	g := &s.groups
	g.mu.Lock()
	next := g.waiting
	g.waiting = nil
	if len(next) == 0 {
		g.underWay--
	}
	g.mu.Unlock()
	// group[0] runs this group and returns by itself; the others wait.
	for _, c := range group[1:] {
		c.wake <- nil
	}
	if len(next) > 0 {
		next[0].wake <- next
	}
}
