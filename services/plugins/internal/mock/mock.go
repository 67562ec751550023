// Package mock is a scriptable channel adapter for tests and demos. The
// recipient string is the script:
//
//	ok               DELIVERED, provider message id "mock-<message id>"
//	fail:retryable   RETRYABLE, PLG_001
//	fail:permanent   PERMANENT, PLG_001
//	fail:unknown     UNKNOWN, PLG_006
//	delay:<duration> wait (e.g. "delay:200ms"), then as "ok"; if the context
//	                 ends first, UNKNOWN, PLG_006 (the delay stands for a
//	                 provider that received the request and is slow)
//	flaky:<N>        RETRYABLE, PLG_001 while the delivery's Attempt <= N
//	                 (attempts count from 1), then as "ok"
//	lost             accepted and recorded as "ok", but answered UNKNOWN,
//	                 PLG_006: the answer was lost on its way back
//	panic            panics
//
// Anything after a '#' is a label and is ignored ("ok#alice"). Any other
// recipient is PERMANENT, PLG_004.
//
// The adapter keeps a record of every delivery it accepted: the ids of all
// of them in memory, the deliveries themselves (the latest Options.Keep, or
// all) in memory for Deliveries and, optionally, as JSON lines on a writer;
// Replay loads an earlier record, so that the record survives a restart.
// Reconcile answers from that record: FOUND when it holds the message,
// NOT_FOUND otherwise.
package mock

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
)

// Record is one delivery the mock provider accepted.
type Record struct {
	MessageID    string    `json:"message_id"`
	Channel      string    `json:"channel"`
	Conversation string    `json:"conversation"`
	Sequence     uint64    `json:"sequence"`
	Attempt      uint32    `json:"attempt"`
	Text         string    `json:"text"`
	Time         time.Time `json:"time"`
}

// Options configures an Adapter.
type Options struct {
	// Record, when set, receives each accepted delivery as one JSON line,
	// written with a single Write call. The caller owns and closes it.
	Record io.Writer
	// Now is the clock for Record.Time; default time.Now.
	Now func() time.Time
	// Keep bounds the deliveries Deliveries returns to the latest Keep;
	// zero keeps every one. The ids Reconcile answers from are kept
	// whatever Keep says.
	Keep int
}

// Adapter is the mock adapter. It is safe for concurrent use.
type Adapter struct {
	out  io.Writer
	now  func() time.Time
	keep int

	mu       sync.Mutex          // guards records, accepted and writes to out
	records  []Record            // the latest keep, oldest first (all when keep is 0)
	accepted map[string]struct{} // every accepted message id, replayed ones included
}

// New returns a mock adapter.
func New(opts Options) *Adapter {
	a := &Adapter{out: opts.Record, now: opts.Now, keep: opts.Keep, accepted: map[string]struct{}{}}
	if a.now == nil {
		a.now = time.Now
	}
	return a
}

// Replay loads JSON lines an earlier adapter wrote to its Record: what this
// mock provider had already accepted, so that Reconcile answers for it
// after a restart. Call it before the adapter serves. It fails when r
// cannot be read or holds a line that is not a record.
func (a *Adapter) Replay(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	a.mu.Lock()
	defer a.mu.Unlock()
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return fmt.Errorf("mock record line %d: %w", n, err)
		}
		a.accepted[rec.MessageID] = struct{}{}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read mock record: %w", err)
	}
	return nil
}

// Name returns "mock".
func (a *Adapter) Name() string { return "mock" }

// Deliveries returns a copy of the accepted deliveries (the latest
// Options.Keep of them, if set), in acceptance order.
func (a *Adapter) Deliveries() []Record {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]Record(nil), a.records...)
}

// Deliver runs the recipient's script; see the package comment.
func (a *Adapter) Deliver(ctx context.Context, d *pluginhost.Delivery) pluginhost.Result {
	script, _, _ := strings.Cut(d.Recipient, "#")
	verb, arg, _ := strings.Cut(script, ":")
	switch verb {
	case "ok":
		if arg == "" {
			return a.accept(d)
		}
	case "fail":
		switch arg {
		case "retryable":
			return fail(pluginsv1.Outcome_OUTCOME_RETRYABLE, pluginhost.CodeProviderRejected)
		case "permanent":
			return fail(pluginsv1.Outcome_OUTCOME_PERMANENT, pluginhost.CodeProviderRejected)
		case "unknown":
			return fail(pluginsv1.Outcome_OUTCOME_UNKNOWN, pluginhost.CodeNoAnswer)
		}
	case "delay":
		wait, err := time.ParseDuration(arg)
		if err != nil || wait < 0 {
			break
		}
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
			return a.accept(d)
		case <-ctx.Done():
			return pluginhost.Result{
				Outcome:      pluginsv1.Outcome_OUTCOME_UNKNOWN,
				ErrorCode:    pluginhost.CodeNoAnswer,
				ProviderCode: "mock",
				Description:  "mock: " + ctx.Err().Error() + " during delay",
			}
		}
	case "flaky":
		n, err := strconv.ParseUint(arg, 10, 32)
		if err != nil {
			break
		}
		if uint64(d.Attempt) <= n {
			return fail(pluginsv1.Outcome_OUTCOME_RETRYABLE, pluginhost.CodeProviderRejected)
		}
		return a.accept(d)
	case "lost":
		if arg == "" {
			if res := a.accept(d); res.Outcome != pluginsv1.Outcome_OUTCOME_DELIVERED {
				return res
			}
			return fail(pluginsv1.Outcome_OUTCOME_UNKNOWN, pluginhost.CodeNoAnswer)
		}
	case "panic":
		if arg == "" {
			panic("mock: scripted panic for message " + d.MessageID)
		}
	}
	return pluginhost.Result{
		Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
		ErrorCode:   pluginhost.CodeInvalidRecipient,
		Description: fmt.Sprintf("mock: unknown script %q", script),
	}
}

// accept records d and reports it delivered. A record that cannot be
// written means the mock provider did not accept it: RETRYABLE.
func (a *Adapter) accept(d *pluginhost.Delivery) pluginhost.Result {
	r := Record{
		MessageID: d.MessageID, Channel: d.Channel, Conversation: d.Conversation,
		Sequence: d.Sequence, Attempt: d.Attempt, Text: d.Text, Time: a.now().UTC(),
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.out != nil {
		line, err := json.Marshal(r)
		if err == nil {
			_, err = a.out.Write(append(line, '\n'))
		}
		if err != nil {
			return pluginhost.Result{
				Outcome:      pluginsv1.Outcome_OUTCOME_RETRYABLE,
				ErrorCode:    pluginhost.CodeProviderRejected,
				ProviderCode: "mock",
				Description:  fmt.Sprintf("mock: write record: %v", err),
			}
		}
	}
	if a.keep > 0 && len(a.records) >= a.keep {
		// Drop the oldest: the slice walks forward through its array, and
		// append moves the latest keep to a new one when it reaches the end,
		// so the memory held stays within a few times keep.
		a.records = a.records[1:]
	}
	a.records = append(a.records, r)
	a.accepted[d.MessageID] = struct{}{}
	return pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: providerID(d.MessageID)}
}

func providerID(messageID string) string { return "mock-" + messageID }

// Reconcile implements pluginhost.Reconciler from the mock provider's own
// record: FOUND when it accepted the message, NOT_FOUND when it did not.
// Without Options.Record and Replay the record is this process's only: give
// both when the plugin host restarts and the mock channel reconciles.
func (a *Adapter) Reconcile(ctx context.Context, d *pluginhost.Delivery) pluginhost.ReconcileResult {
	if err := ctx.Err(); err != nil {
		return pluginhost.ReconcileResult{
			Answer:      pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR,
			ErrorCode:   pluginhost.CodeNoAnswer,
			Description: "mock: " + err.Error(),
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.accepted[d.MessageID]; ok {
		return pluginhost.ReconcileResult{Answer: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND, ProviderMessageID: providerID(d.MessageID)}
	}
	return pluginhost.ReconcileResult{Answer: pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND}
}

func fail(o pluginsv1.Outcome, code string) pluginhost.Result {
	return pluginhost.Result{Outcome: o, ErrorCode: code, ProviderCode: "mock", Description: "mock: scripted " + o.String()}
}
