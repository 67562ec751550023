package store

import (
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// PlanItem is one message recovery would act on, and why.
type PlanItem struct {
	ID      string
	Channel string
	Kind    string // due, in_flight, unknown, blocked (reconciling messages are unknown)
	At      time.Time
	Action  string
}

// Plan is what recovery would do now, from the recovery index alone.
type Plan struct {
	Due, InFlight, Blocked int
	// Unknown counts UNKNOWN messages by the policy that will decide them.
	Unknown map[string]int
	// AbortedExcluded is the number of ABORTED messages: never in the index,
	// never sent again.
	AbortedExcluded int64
	Items           []PlanItem
}

func policyName(p UnknownPolicy) string {
	switch p {
	case PolicyRedeliver:
		return "redeliver"
	case PolicyReconcile:
		return "reconcile"
	}
	return "fail"
}

// RecoveryPlan reports what recovery would do right now: messages due to be
// sent, leases that will expire into the unknown-outcome policy, unknown
// outcomes by policy, and messages waiting behind their conversation's head.
// It reads the recovery index, never a status filter. With list, up to limit
// items name each message and the reason.
func (s *Store) RecoveryPlan(list bool, limit int) (Plan, error) {
	defer s.settled() // answers with what it read
	now := s.now()
	p := Plan{Unknown: map[string]int{}}
	add := func(it PlanItem) {
		if list && len(p.Items) < limit {
			p.Items = append(p.Items, it)
		}
	}
	s.index.mu.Lock()
	p.Due, p.InFlight, p.Blocked = s.index.due.Len(), s.index.leased.Len(), s.index.blocked
	walk := func(t ascender, fn func(entry)) { t.Ascend(func(e entry) bool { fn(e); return true }) }
	walk(&s.index.due, func(e entry) {
		action := "send now"
		if at := time.Unix(0, e.at); at.After(now) {
			action = fmt.Sprintf("send at %s (retry backoff)", at.UTC().Format(time.RFC3339))
		}
		add(PlanItem{ID: e.id, Channel: e.channel, Kind: "due", At: time.Unix(0, e.at), Action: action})
	})
	walk(s.index.leased, func(e entry) {
		add(PlanItem{ID: e.id, Channel: e.channel, Kind: "in_flight", At: time.Unix(0, e.at),
			Action: fmt.Sprintf("await the outcome; if the lease expires: %s", policyName(s.policy(e.channel)))})
	})
	walk(s.index.unknown, func(e entry) {
		policy := s.policy(e.channel)
		name := policyName(policy)
		p.Unknown[name]++
		action := "outcome unknown: " + name
		switch at := time.Unix(0, e.at); {
		case policy != PolicyReconcile:
			action += " (applied when its time comes; the channel's policy changed since it became unknown)"
		case at.After(now):
			action = fmt.Sprintf("outcome unknown: reconcile: ask the provider at %s; found: delivered, not found: send again", at.UTC().Format(time.RFC3339))
		default:
			action = "outcome unknown: reconcile: ask the provider now; found: delivered, not found: send again"
		}
		add(PlanItem{ID: e.id, Channel: e.channel, Kind: "unknown", At: time.Unix(0, e.at), Action: action})
	})
	walk(s.index.reconciling, func(e entry) {
		p.Unknown[policyName(PolicyReconcile)]++
		add(PlanItem{ID: e.id, Channel: e.channel, Kind: "unknown", At: time.Unix(0, e.at),
			Action: "outcome unknown: reconcile: asking the provider now; if the lease expires: ask again later, never a blind re-send"})
	})
	s.index.mu.Unlock()
	if list && len(p.Items) < limit {
		lower := []byte{prefixRecovery, recoveryBlocked}
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(lower)})
		if err != nil {
			return p, err
		}
		for ok := it.First(); ok && len(p.Items) < limit; ok = it.Next() {
			_, _, id, err := parseRecoveryKey(it.Key())
			if err != nil {
				it.Close()
				return p, err
			}
			v, _ := it.ValueAndErr()
			f, _ := parseRecoveryValue(v)
			add(PlanItem{ID: id, Channel: f.channel, Kind: "blocked", Action: "send after the earlier messages of its conversation"})
		}
		if err := it.Close(); err != nil {
			return p, err
		}
	}
	counts, err := s.Counts()
	if err != nil {
		return p, err
	}
	p.AbortedExcluded = counts[storev1.State_STATE_ABORTED]
	return p, nil
}
