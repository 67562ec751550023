package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/heraldchat/herald/e2e/harness"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// holdingTelegram is a Bot API fake that counts every request it receives
// (any path, any token) and holds the first sendMessage open for hold before
// answering success: the message reached the chat, but whoever made the
// call may no longer be there to hear it.
type holdingTelegram struct {
	*httptest.Server
	hold    time.Duration
	arrived chan struct{} // closed when the first sendMessage arrives

	mu       sync.Mutex
	requests []string // paths, in arrival order
}

func newHoldingTelegram(t *testing.T, hold time.Duration) *holdingTelegram {
	f := &holdingTelegram{hold: hold, arrived: make(chan struct{})}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *holdingTelegram) serve(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	f.mu.Lock()
	f.requests = append(f.requests, r.URL.Path)
	n := len(f.requests)
	f.mu.Unlock()
	if n == 1 {
		close(f.arrived)
		// Held even when the caller goes away: the provider sends anyway.
		time.Sleep(f.hold)
	}
	b, _ := json.Marshal(map[string]any{"ok": true, "result": map[string]any{
		"message_id": 1000 + n, "chat": map[string]any{"id": -1001234567890, "type": "supergroup"},
		"date": time.Now().Unix(), "text": "hello",
	}})
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

func (f *holdingTelegram) received() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// unknownTestLog sends service output to the test log.
type unknownTestLog struct{ t *testing.T }

func (l unknownTestLog) Write(b []byte) (int, error) {
	l.t.Logf("%s", b)
	return len(b), nil
}

// A plugin host SIGKILLed while its Telegram call is in flight leaves the
// outcome unknown: the provider may have sent it. Telegram does not
// deduplicate, so its default unknown-outcome policy (fail) must dead-letter
// the message with reason outcome_unknown, and nothing may call Telegram a
// second time for it, not even the restarted plugin host.
func TestKillDuringTelegramCallFailsNotResends(t *testing.T) {
	bin := binaries(t) // skips under -short
	const token = "1234567890:AAE-e2eUnknownOutcomeToken"
	fake := newHoldingTelegram(t, 3*time.Second)

	c, err := harness.New(bin, filepath.Join(t.TempDir(), "tracker"), unknownTestLog{t})
	if err != nil {
		t.Fatal(err)
	}
	// The deliver timeout and lease are longer than the hold: the kill, not
	// a timeout, is what cuts the call.
	c.Args["queue"] = []string{"--deliver-timeout", "10s", "--lease", "15s", "--retry-initial", "100ms", "--retry-max-delay", "1s", "--drain-timeout", "5s"}
	c.Args["plugins"] = []string{"--telegram-base-url", fake.URL, "--telegram-token", token}
	c.Env = []string{"HERALD_LOG_LEVEL=warn"}
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
	resp, err := gw.Send(ctx, &gatewayv1.SendRequest{Channel: "telegram", Recipient: "-1001234567890", Conversation: "unknown-outcome", Text: "hello"})
	cancel()
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	id := resp.GetId()

	select {
	case <-fake.arrived:
	case <-time.After(20 * time.Second):
		t.Fatalf("telegram received no sendMessage within 20s (requests: %v)", fake.received())
	}
	arrivedAt := time.Now()
	if err := c.Kill("plugins"); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	if err := c.Start("plugins"); err != nil {
		t.Fatal(err)
	}
	t.Logf("plugin host SIGKILLed %s after the call arrived (the fake still holds it), restarted %s later",
		killedAt.Sub(arrivedAt).Round(time.Millisecond), time.Since(killedAt).Round(time.Millisecond))

	var m *gatewayv1.Message
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		got, err := gw.GetMessage(ctx, &gatewayv1.GetMessageRequest{Id: id})
		cancel()
		if err == nil {
			m = got.GetMessage()
			if st := m.GetState(); st == gatewayv1.DeliveryState_DELIVERY_STATE_FAILED ||
				st == gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED || st == gatewayv1.DeliveryState_DELIVERY_STATE_ABORTED {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s not finished within 30s of the kill: %v (err %v)", id, m, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	finishedAfter := time.Since(killedAt).Round(time.Millisecond)

	// FAILED is terminal; give a stray resend (retry, lease expiry, the
	// restarted host replaying) time to reach the fake, past the hold and
	// past the queue's lease.
	time.Sleep(5 * time.Second)
	reqs := fake.received()
	t.Logf("outcome: state=%v reason=%q attempts=%d last_error_code=%q last_error=%q; finished %s after the kill; telegram requests=%d",
		m.GetState(), m.GetReason(), m.GetAttempts(), m.GetLastErrorCode(), m.GetLastError(), finishedAfter, len(reqs))
	fmt.Printf("TestKillDuringTelegramCallFailsNotResends: state=%v reason=%s attempts=%d telegram_requests=%d\n",
		m.GetState(), m.GetReason(), m.GetAttempts(), len(reqs))

	if m.GetState() != gatewayv1.DeliveryState_DELIVERY_STATE_FAILED {
		t.Errorf("state = %v, want FAILED", m.GetState())
	}
	if m.GetReason() != "outcome_unknown" {
		t.Errorf("reason = %q, want outcome_unknown", m.GetReason())
	}
	if len(reqs) != 1 {
		t.Errorf("telegram received %d requests, want exactly 1 (a second one is a duplicate message in the chat): %v", len(reqs), reqs)
	}
}
