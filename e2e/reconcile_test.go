package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/heraldchat/herald/e2e/harness"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// holdingSlack is a Slack Web API fake for kill tests. It serves
// chat.postMessage and conversations.history (with message metadata, from
// oldest, newest first) and holds the first chat.postMessage open for hold
// before answering, so that the plugin host can be killed during the call.
// With accept, slack posts that first message when it arrives: the message
// reached the channel whatever happens to the caller. Without, the first
// request never reaches slack's backend: it is held and then dropped, and
// the channel never shows it. Every later post is accepted at once.
type holdingSlack struct {
	*httptest.Server
	token   string
	accept  bool
	hold    time.Duration
	arrived chan struct{} // closed when the first chat.postMessage arrives

	mu           sync.Mutex
	posts        int          // chat.postMessage requests received
	historyCalls int          // conversations.history requests received
	channel      []slackEntry // the messages the channel shows, oldest first
	lastTS       int64        // microseconds
}

type slackEntry struct {
	ts       string
	text     string
	metadata map[string]any
}

func newHoldingSlack(t *testing.T, token string, accept bool, hold time.Duration) *holdingSlack {
	f := &holdingSlack{token: token, accept: accept, hold: hold, arrived: make(chan struct{})}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *holdingSlack) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		io.WriteString(w, `{"ok":false,"error":"invalid_auth"}`)
		return
	}
	switch r.URL.Path {
	case "/api/chat.postMessage":
		f.post(w, r)
	case "/api/conversations.history":
		f.history(w, r)
	default:
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"ok":false,"error":"unknown_method"}`)
	}
}

func (f *holdingSlack) post(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Channel  string         `json:"channel"`
		Text     string         `json:"text"`
		Metadata map[string]any `json:"metadata"`
	}
	json.NewDecoder(r.Body).Decode(&req)
	f.mu.Lock()
	f.posts++
	first := f.posts == 1
	var ts string
	if !first || f.accept {
		ts = f.appendLocked(req.Text, req.Metadata)
	}
	f.mu.Unlock()
	if first {
		close(f.arrived)
		if !f.accept {
			// Never reached slack: no answer, nothing posted.
			select {
			case <-r.Context().Done():
			case <-time.After(f.hold):
			}
			return
		}
		// Posted; the answer is held even when the caller goes away.
		time.Sleep(f.hold)
	}
	b, _ := json.Marshal(map[string]any{"ok": true, "channel": req.Channel, "ts": ts, "message": map[string]any{"type": "message", "ts": ts, "text": req.Text}})
	w.Write(b)
}

func (f *holdingSlack) appendLocked(text string, metadata map[string]any) string {
	us := max(time.Now().UnixMicro(), f.lastTS+1)
	f.lastTS = us
	ts := fmt.Sprintf("%d.%06d", us/1e6, us%1e6)
	f.channel = append(f.channel, slackEntry{ts: ts, text: text, metadata: metadata})
	return ts
}

func (f *holdingSlack) history(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	oldest, _ := strconv.ParseFloat(r.Form.Get("oldest"), 64)
	withMeta := r.Form.Get("include_all_metadata") == "true"
	f.mu.Lock()
	f.historyCalls++
	var msgs []map[string]any
	for _, e := range slices.Backward(f.channel) {
		if ts, _ := strconv.ParseFloat(e.ts, 64); ts < oldest {
			continue
		}
		m := map[string]any{"type": "message", "ts": e.ts, "text": e.text}
		if withMeta && e.metadata != nil {
			m["metadata"] = e.metadata
		}
		msgs = append(msgs, m)
	}
	f.mu.Unlock()
	b, _ := json.Marshal(map[string]any{"ok": true, "messages": msgs, "has_more": false})
	w.Write(b)
}

// counts returns the posts received, the messages the channel shows, and
// the history reads.
func (f *holdingSlack) counts() (posts, shown, historyCalls int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.posts, len(f.channel), f.historyCalls
}

// Issue 4: a plugin host SIGKILLed while its Slack call is in flight leaves
// the outcome unknown, and Slack does not deduplicate. The default policy
// for slack is reconcile: after the grace period the restarted plugin host
// asks Slack (conversations.history, by the message id in the post's
// metadata) whether it has the message. If the post reached the channel
// the message ends DELIVERED with no second post; if it never did, exactly
// one new post delivers it. With the policy set to fail it is dead-lettered
// (outcome_unknown) and Slack is neither asked nor posted to again.
func TestKillDuringSlackCallEndsInPolicyState(t *testing.T) {
	bin := binaries(t) // skips under -short
	const token = "xoxb-e2e-reconcile-SECRET"
	tests := []struct {
		name       string
		accept     bool   // the first post reached the channel
		policy     string // --unknown-policy; "" keeps the default (slack=reconcile)
		wantState  gatewayv1.DeliveryState
		wantReason string
		wantPosts  int // chat.postMessage requests
		wantEvent  string
		wantAsked  bool // conversations.history was read
	}{
		{name: "provider has it", accept: true, wantState: gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED,
			wantPosts: 1, wantEvent: "delivery.reconciled", wantAsked: true},
		{name: "provider never got it", accept: false, wantState: gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED,
			wantPosts: 2, wantEvent: "delivery.reconcile_not_found", wantAsked: true},
		{name: "fail policy", accept: true, policy: "slack=fail,*=fail", wantState: gatewayv1.DeliveryState_DELIVERY_STATE_FAILED,
			wantReason: "outcome_unknown", wantPosts: 1, wantEvent: "message.dead_lettered"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newHoldingSlack(t, token, tt.accept, 3*time.Second)
			c, err := harness.New(bin, filepath.Join(t.TempDir(), "tracker"), testLog{t})
			if err != nil {
				t.Fatal(err)
			}
			// The grace period is short so the test is; the deliver timeout and
			// lease are longer than the hold: the kill, not a timeout, cuts
			// the call.
			c.Args["tracker"] = []string{"--reconcile-grace", "300ms"}
			if tt.policy != "" {
				c.Args["tracker"] = append(c.Args["tracker"], "--unknown-policy", tt.policy)
			}
			c.Args["queue"] = []string{"--deliver-timeout", "10s", "--lease", "15s", "--retry-initial", "100ms", "--retry-max-delay", "1s", "--drain-timeout", "5s"}
			c.Args["plugins"] = []string{"--slack-base-url", fake.URL}
			c.Env = []string{"HERALD_LOG_LEVEL=warn", "HERALD_SLACK_TOKEN=" + token}
			t.Cleanup(c.Close)
			if err := c.StartAll(); err != nil {
				t.Fatal(err)
			}
			conn, err := grpc.NewClient(c.Addr["gateway"], grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			gw := gatewayv1.NewGatewayServiceClient(conn)

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := gw.Send(ctx, &gatewayv1.SendRequest{Channel: "slack", Recipient: "C0123456789", Conversation: "reconcile", Text: "hello"})
			cancel()
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			id := resp.GetId()
			select {
			case <-fake.arrived:
			case <-time.After(15 * time.Second):
				t.Fatal("slack received no chat.postMessage within 15s")
			}
			if err := c.Kill("plugins"); err != nil {
				t.Fatal(err)
			}
			killedAt := time.Now()
			if err := c.Start("plugins"); err != nil {
				t.Fatal(err)
			}

			var m *gatewayv1.Message
			var types []string
			deadline := time.Now().Add(20 * time.Second)
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				got, err := gw.GetMessage(ctx, &gatewayv1.GetMessageRequest{Id: id})
				cancel()
				if err == nil {
					m = got.GetMessage()
					if st := m.GetState(); st == gatewayv1.DeliveryState_DELIVERY_STATE_FAILED || st == gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED || st == gatewayv1.DeliveryState_DELIVERY_STATE_ABORTED {
						types = nil
						for _, ev := range got.GetTimeline() {
							types = append(types, ev.GetType())
						}
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("message %s not finished within 20s of the kill: %v (err %v)", id, m, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			finishedAfter := time.Since(killedAt).Round(time.Millisecond)
			// A terminal state is final; give a stray re-send time to show.
			time.Sleep(2 * time.Second)
			posts, shown, asked := fake.counts()
			t.Logf("state=%v reason=%q attempts=%d provider_id=%q finished %s after the kill; slack posts=%d shown=%d history reads=%d; timeline %s",
				m.GetState(), m.GetReason(), m.GetAttempts(), m.GetProviderMessageId(), finishedAfter, posts, shown, asked, strings.Join(types, " "))
			fmt.Printf("TestKillDuringSlackCallEndsInPolicyState/%s: state=%v reason=%s slack_posts=%d channel_shows=%d history_reads=%d\n",
				tt.name, m.GetState(), m.GetReason(), posts, shown, asked)

			if m.GetState() != tt.wantState || m.GetReason() != tt.wantReason {
				t.Errorf("state %v reason %q, want %v %q", m.GetState(), m.GetReason(), tt.wantState, tt.wantReason)
			}
			if posts != tt.wantPosts {
				t.Errorf("slack received %d posts, want %d", posts, tt.wantPosts)
			}
			if shown != 1 {
				t.Errorf("the channel shows the message %d times, want exactly once", shown)
			}
			if (asked > 0) != tt.wantAsked {
				t.Errorf("conversations.history read %d times; want asked=%v", asked, tt.wantAsked)
			}
			if !slices.Contains(types, tt.wantEvent) {
				t.Errorf("timeline lacks %s", tt.wantEvent)
			}
			if tt.wantState == gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED && !strings.HasPrefix(m.GetProviderMessageId(), "C0123456789:") {
				t.Errorf("provider message id %q, want slack's channel:ts", m.GetProviderMessageId())
			}
		})
	}
}
