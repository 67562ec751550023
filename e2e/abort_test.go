package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/heraldchat/herald/e2e/harness"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// Issue 4: an aborted reply is never re-sent. Each trial opens a webhook
// reply to its own path on a sink the test hosts, appends 1–4 chunks with
// random pauses and aborts it at a random moment: before the first chunk,
// between chunks, or while the sink holds a chunk's request open (the abort
// lands during the provider call). A chunk whose request reached the sink
// (its first byte arrived at the sink's socket, by the kernel's receive
// timestamp) after the Abort RPC returned was sent after the abort was
// acknowledged; a webhook-id that reached the sink twice was sent twice.
// Both must never happen.

// abortMode is when a trial aborts.
type abortMode int

const (
	abortBeforeFirst abortMode = iota // after OpenReply, before any chunk
	abortBetween                      // after some chunks were appended
	abortHeld                         // while the sink holds a chunk's request
	abortModes
)

func (m abortMode) String() string {
	return [...]string{"before-first-chunk", "between-chunks", "during-provider-call"}[m]
}

// abortTrial is one trial's plan and what happened.
type abortTrial struct {
	n       int
	path    string // the recipient's path and query on the sink
	mode    abortMode
	replyID string
	chunks  []string // chunk message ids, by index
	texts   []string
	heldArr bool      // the held request arrived before the abort
	ackAt   time.Time // when the Abort RPC returned OK
	abort   *gatewayv1.AbortResponse
	errs    []string // protocol violations seen by the trial itself
}

// abortTrialConfig shapes a trial's timing.
type abortTrialConfig struct {
	// holdMin, holdSpread: the sink holds a chosen request for
	// holdMin + [0, holdSpread).
	holdMin, holdSpread time.Duration
	// maxPause bounds the random pause between steps.
	maxPause time.Duration
	// rpcTimeout bounds each gateway call; arriveTimeout bounds the wait for
	// the held request.
	rpcTimeout, arriveTimeout time.Duration
}

func chunkText(trial, i int) string { return fmt.Sprintf("trial-%d chunk-%d", trial, i) }

// runAbortTrial runs trial n. mode < 0 picks one at random. When afterAck is
// set it is called right after the abort is acknowledged (the held request,
// if any, still open).
//
// The chunk checks after the abort (checkAppendAfterAbort) run at once
// unless afterAck is set; then the caller runs them.
func runAbortTrial(gw gatewayv1.GatewayServiceClient, sink *harness.HoldSink, run string, n int, r *rand.Rand, mode abortMode, cfg abortTrialConfig, afterAck func()) *abortTrial {
	tr := &abortTrial{n: n, path: fmt.Sprintf("/abort/%s/%d?trial=%d", run, n, n)}
	if mode < 0 {
		mode = abortMode(r.IntN(int(abortModes)))
	}
	tr.mode = mode
	planned := 1 + r.IntN(4)
	pause := func() {
		if cfg.maxPause > 0 {
			time.Sleep(time.Duration(r.Int64N(int64(cfg.maxPause))))
		}
	}
	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), cfg.rpcTimeout)
	}
	fail := func(format string, args ...any) { tr.errs = append(tr.errs, fmt.Sprintf(format, args...)) }

	ctx, cancel := call()
	open, err := gw.OpenReply(ctx, &gatewayv1.OpenReplyRequest{Channel: "webhook", Recipient: sink.URL + tr.path})
	cancel()
	if err != nil {
		fail("OpenReply: %v", err)
		return tr
	}
	tr.replyID = open.GetReplyId()

	appendChunk := func(i int) bool {
		text := chunkText(n, i)
		ctx, cancel := call()
		resp, err := gw.AppendChunk(ctx, &gatewayv1.AppendChunkRequest{ReplyId: tr.replyID, Index: uint32(i), Text: text})
		cancel()
		if err != nil {
			fail("AppendChunk %d: %v", i, err)
			return false
		}
		tr.chunks = append(tr.chunks, resp.GetId())
		tr.texts = append(tr.texts, text)
		return true
	}

	// Build the plan: how many chunks to append before the abort, and which
	// one the sink holds.
	before := 0
	var hold *harness.Hold
	switch mode {
	case abortBeforeFirst:
		before = 0
	case abortBetween:
		before = 1 + r.IntN(planned) // after chunk before-1 (possibly the last)
	case abortHeld:
		h := r.IntN(planned)
		holdFor := cfg.holdMin + time.Duration(r.Int64N(int64(cfg.holdSpread)))
		path, text := tr.path, chunkText(n, h)
		hold = sink.HoldNext(func(p, t string) bool { return p == path && t == text }, holdFor)
		before = h + 1 + r.IntN(planned-h) // the held chunk, maybe some behind it
		defer hold.Release()
	}
	for i := range before {
		if !appendChunk(i) {
			return tr
		}
		pause()
	}
	if hold != nil {
		select {
		case <-hold.Arrived():
			tr.heldArr = true
			// Abort at a random moment within the first part of the hold.
			time.Sleep(time.Duration(r.Int64N(int64(cfg.holdMin / 2))))
		case <-time.After(cfg.arriveTimeout):
			fail("the chunk to hold never reached the sink within %s", cfg.arriveTimeout)
		}
	} else {
		pause()
	}

	ctx, cancel = call()
	ab, err := gw.Abort(ctx, &gatewayv1.AbortRequest{Id: tr.replyID, Reason: "trial " + fmt.Sprint(n)})
	cancel()
	if err != nil {
		fail("Abort: %v", err)
		return tr
	}
	tr.ackAt = time.Now()
	tr.abort = ab
	if afterAck != nil {
		afterAck()
	}
	if ab.GetReplyState() != gatewayv1.ReplyState_REPLY_STATE_ABORTED || ab.GetAlreadyFinal() {
		fail("Abort answered %v, want reply ABORTED, not already final", ab)
	}
	if int(ab.GetReplyChunks()) != len(tr.chunks) {
		fail("Abort reports %d chunks, %d were appended", ab.GetReplyChunks(), len(tr.chunks))
	}

	if afterAck == nil {
		checkAppendAfterAbort(gw, tr, r, cfg)
	}
	return tr
}

// checkAppendAfterAbort: a backend's retry after the abort cannot sneak a
// chunk in: the next index is refused with FAILED_PRECONDITION, and a repeat
// of an appended index returns the same chunk (or is refused) without
// creating a new one.
func checkAppendAfterAbort(gw gatewayv1.GatewayServiceClient, tr *abortTrial, r *rand.Rand, cfg abortTrialConfig) {
	if tr.abort == nil {
		return
	}
	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), cfg.rpcTimeout)
	}
	fail := func(format string, args ...any) { tr.errs = append(tr.errs, fmt.Sprintf(format, args...)) }
	// A backend retries UNAVAILABLE with the same index (a service may just
	// have restarted); bounded.
	appendRetrying := func(req *gatewayv1.AppendChunkRequest) (*gatewayv1.AppendChunkResponse, error) {
		deadline := time.Now().Add(cfg.rpcTimeout)
		for {
			ctx, cancel := call()
			resp, err := gw.AppendChunk(ctx, req)
			cancel()
			if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
				return resp, err
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	late, err := appendRetrying(&gatewayv1.AppendChunkRequest{ReplyId: tr.replyID, Index: uint32(len(tr.chunks)), Text: "late"})
	if status.Code(err) != codes.FailedPrecondition {
		fail("AppendChunk %d after the abort: %v %v, want FAILED_PRECONDITION", len(tr.chunks), late, err)
	}
	if len(tr.chunks) > 0 {
		i := r.IntN(len(tr.chunks))
		again, err := appendRetrying(&gatewayv1.AppendChunkRequest{ReplyId: tr.replyID, Index: uint32(i), Text: tr.texts[i]})
		switch {
		case status.Code(err) == codes.FailedPrecondition:
		case err != nil:
			fail("repeat of chunk %d after the abort: %v", i, err)
		case !again.GetDuplicate() || again.GetId() != tr.chunks[i]:
			fail("repeat of chunk %d after the abort answered %v, want the same chunk %s as a duplicate", i, again, tr.chunks[i])
		}
	}
}

// abortTally is what a set of trials amounts to.
type abortTally struct {
	trials, aborted, appended                      int
	reached, delivered, abortedChunks, otherStates int
	arrivals, sentAfterAbort, duplicates           int
	unknownArrivals, heldCut                       int
	byMode                                         [abortModes]int
	problems                                       []string
}

func (a *abortTally) String() string {
	return fmt.Sprintf("trials=%d (before-first=%d between=%d during-call=%d) aborted=%d chunks appended=%d "+
		"reached sink=%d (requests %d, held requests cut by the abort=%d) chunks DELIVERED=%d ABORTED=%d other=%d "+
		"sent-after-abort=%d duplicates=%d unknown-arrivals=%d",
		a.trials, a.byMode[abortBeforeFirst], a.byMode[abortBetween], a.byMode[abortHeld], a.aborted, a.appended,
		a.reached, a.arrivals, a.heldCut, a.delivered, a.abortedChunks, a.otherStates,
		a.sentAfterAbort, a.duplicates, a.unknownArrivals)
}

// settleAndTally waits (bounded) until every chunk is terminal, then for
// linger more so that a stray re-send would show up, and counts.
func settleAndTally(t *testing.T, gw gatewayv1.GatewayServiceClient, sink *harness.HoldSink, trials []*abortTrial, settle, linger time.Duration) *abortTally {
	t.Helper()
	tally := &abortTally{trials: len(trials)}
	var ids []string
	for _, tr := range trials {
		ids = append(ids, tr.chunks...)
	}
	states := make(map[string]gatewayv1.DeliveryState, len(ids))
	var mu sync.Mutex
	deadline := time.Now().Add(settle)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var st gatewayv1.DeliveryState
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				resp, err := gw.GetMessage(ctx, &gatewayv1.GetMessageRequest{Id: id})
				cancel()
				if err == nil {
					st = resp.GetMessage().GetState()
					if terminal(st) {
						break
					}
				}
				if time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			mu.Lock()
			states[id] = st
			mu.Unlock()
		}()
	}
	wg.Wait()
	time.Sleep(linger)

	byPath := map[string][]harness.Arrival{}
	for _, a := range sink.Arrivals() {
		byPath[a.Path] = append(byPath[a.Path], a)
	}
	for _, tr := range trials {
		tally.byMode[tr.mode]++
		tally.appended += len(tr.chunks)
		for _, e := range tr.errs {
			tally.problems = append(tally.problems, fmt.Sprintf("trial %d (%s): %s", tr.n, tr.mode, e))
		}
		if tr.abort != nil {
			tally.aborted++
		}
		own := map[string]int{}
		for i, id := range tr.chunks {
			own[id] = i
			switch st := states[id]; st {
			case gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED:
				tally.delivered++
			case gatewayv1.DeliveryState_DELIVERY_STATE_ABORTED:
				tally.abortedChunks++
			default:
				tally.otherStates++
				if tr.abort != nil {
					tally.problems = append(tally.problems, fmt.Sprintf("trial %d (%s): chunk %d %s is %s after the abort, want DELIVERED or ABORTED", tr.n, tr.mode, i, id, st))
				}
			}
		}
		seen := map[string]int{}
		for _, a := range byPath[tr.path] {
			tally.arrivals++
			i, ok := own[a.ID]
			if !ok {
				tally.unknownArrivals++
				tally.problems = append(tally.problems, fmt.Sprintf("trial %d (%s): the sink got webhook-id %q (text %q), not a chunk of this reply", tr.n, tr.mode, a.ID, a.Text))
				continue
			}
			seen[a.ID]++
			if seen[a.ID] == 1 {
				tally.reached++
			}
			if seen[a.ID] == 2 {
				tally.duplicates++
				tally.problems = append(tally.problems, fmt.Sprintf("trial %d (%s): chunk %d %s reached the sink twice", tr.n, tr.mode, i, a.ID))
			}
			if a.Held && !a.Answered {
				tally.heldCut++
			}
			if tr.abort != nil && a.FirstByte.After(tr.ackAt) {
				tally.sentAfterAbort++
				tally.problems = append(tally.problems, fmt.Sprintf("trial %d (%s): chunk %d %s (state %s) reached the sink %s after the abort was acknowledged (abort answered chunks=%d delivered=%d)",
					tr.n, tr.mode, i, a.ID, states[a.ID], a.FirstByte.Sub(tr.ackAt), tr.abort.GetReplyChunks(), tr.abort.GetReplyDelivered()))
				tally.problems = append(tally.problems, "  its timeline, times after the abort's ack: "+timelineSince(gw, a.ID, tr.ackAt))
			}
		}
	}
	return tally
}

// timelineSince describes a message's events with their times relative to
// at, for a failure's report.
func timelineSince(gw gatewayv1.GatewayServiceClient, id string, at time.Time) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := gw.GetMessage(ctx, &gatewayv1.GetMessageRequest{Id: id})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for i, ev := range resp.GetTimeline() {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s %s %s", ev.GetType(), ev.GetState(), ev.GetTime().AsTime().Sub(at))
		if c := ev.GetErrorCode(); c != "" {
			fmt.Fprintf(&b, " %s %q", c, ev.GetDetail())
		}
	}
	return b.String()
}

func terminal(s gatewayv1.DeliveryState) bool {
	switch s {
	case gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, gatewayv1.DeliveryState_DELIVERY_STATE_ABORTED,
		gatewayv1.DeliveryState_DELIVERY_STATE_FAILED, gatewayv1.DeliveryState_DELIVERY_STATE_EXPIRED:
		return true
	}
	return false
}

func reportTally(t *testing.T, name string, tally *abortTally) {
	t.Helper()
	t.Logf("%s: %s", name, tally)
	for i, p := range tally.problems {
		if i == 20 {
			t.Errorf("... and %d more problems", len(tally.problems)-20)
			break
		}
		t.Error(p)
	}
	if tally.sentAfterAbort != 0 || tally.duplicates != 0 {
		t.Errorf("sent-after-abort=%d duplicates=%d, want 0 and 0", tally.sentAfterAbort, tally.duplicates)
	}
}

// TestAbortedReplyIsNeverResentInProcess runs 1,000 abort trials with
// random timing against the four services in this process.
func TestAbortedReplyIsNeverResentInProcess(t *testing.T) {
	gw, _ := startInProcess(t)
	sink, err := harness.NewHoldSink()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	const trials, parallel = 1000, 32
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	cfg := abortTrialConfig{holdMin: 50 * time.Millisecond, holdSpread: 100 * time.Millisecond, maxPause: 15 * time.Millisecond,
		rpcTimeout: 10 * time.Second, arriveTimeout: 10 * time.Second}
	start := time.Now()
	results := make([]*abortTrial, trials)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for n := range trials {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r := rand.New(rand.NewPCG(seed, uint64(n)))
			results[n] = runAbortTrial(gw, sink, "inproc", n, r, -1, cfg, nil)
		}()
	}
	wg.Wait()
	ran := time.Since(start)
	tally := settleAndTally(t, gw, sink, results, 20*time.Second, 500*time.Millisecond)
	t.Logf("trials took %s, settle and count %s", ran.Round(time.Millisecond), (time.Since(start) - ran).Round(time.Millisecond))
	reportTally(t, "in-process", tally)
}

// TestAbortedReplyIsNeverResentAcrossKills runs abort trials against the real
// binaries in three rounds; after each round's aborts are acknowledged it
// SIGKILLs the queue, the plugin host or the tracker (in turn) right after
// an abort ack, with the sink holding that trial's request open, restarts
// it and lets recovery run. No chunk of an aborted reply may reach the sink
// after its abort was acknowledged, and none twice.
func TestAbortedReplyIsNeverResentAcrossKills(t *testing.T) {
	c, _, gw := startCluster(t)
	sink, err := harness.NewHoldSink()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	cfg := abortTrialConfig{holdMin: 50 * time.Millisecond, holdSpread: 100 * time.Millisecond, maxPause: 15 * time.Millisecond,
		rpcTimeout: 10 * time.Second, arriveTimeout: 10 * time.Second}
	// The trial held at the kill: the sink keeps its request open well past
	// the kill.
	heldCfg := cfg
	heldCfg.holdMin, heldCfg.holdSpread = 600*time.Millisecond, 200*time.Millisecond
	const rounds, perRound = 3, 20
	start := time.Now()
	var all []*abortTrial
	for round, victim := range []string{"queue", "plugins", "tracker"}[:rounds] {
		results := make([]*abortTrial, perRound-1)
		var wg sync.WaitGroup
		for k := range perRound - 1 {
			n := round*perRound + k
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(seed, uint64(n)))
				results[k] = runAbortTrial(gw, sink, "kill", n, r, -1, cfg, nil)
			}()
		}
		wg.Wait()
		// The round's last trial aborts while the sink holds its request;
		// the kill follows the ack at once, the request still open.
		n := round*perRound + perRound - 1
		r := rand.New(rand.NewPCG(seed, uint64(n)))
		var killedAt time.Time
		held := runAbortTrial(gw, sink, "kill", n, r, abortHeld, heldCfg, func() {
			killedAt = time.Now()
			if err := c.Kill(victim); err != nil {
				t.Errorf("kill %s: %v", victim, err)
			}
		})
		results = append(results, held)
		if !held.heldArr {
			t.Errorf("round %d: the held request never arrived", round)
		}
		time.Sleep(200 * time.Millisecond)
		if err := c.Start(victim); err != nil {
			t.Fatalf("restart %s: %v", victim, err)
		}
		// After the restart, the killed trial's reply still refuses chunks.
		checkAppendAfterAbort(gw, held, r, heldCfg)
		time.Sleep(2500 * time.Millisecond) // recovery: expired leases, reconnects, redelivery policy
		if !killedAt.IsZero() {
			t.Logf("round %d: killed %s %s after its abort ack, restarted; %d requests at the sink so far",
				round, victim, killedAt.Sub(held.ackAt).Round(time.Microsecond), len(sink.Arrivals()))
		}
		all = append(all, results...)
	}
	ran := time.Since(start)
	tally := settleAndTally(t, gw, sink, all, 20*time.Second, time.Second)
	t.Logf("rounds took %s, settle and count %s", ran.Round(time.Millisecond), (time.Since(start) - ran).Round(time.Millisecond))
	reportTally(t, "real binaries with kills", tally)
}
