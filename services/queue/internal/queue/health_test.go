package queue_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	"github.com/heraldchat/herald/services/gateway/gatewaytest"
	"github.com/heraldchat/herald/services/plugins/pluginstest"
	"github.com/heraldchat/herald/services/queue/queuetest"
	"github.com/heraldchat/herald/services/tracker/trackertest"
)

// provider is a webhook endpoint that records when each request arrived
// and answers with the status its script gives.
type provider struct {
	mu     sync.Mutex
	times  []time.Time
	answer func(n int) (status int, retryAfter string)
}

func (p *provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.times = append(p.times, time.Now())
	n := len(p.times)
	p.mu.Unlock()
	code, ra := p.answer(n)
	if ra != "" {
		w.Header().Set("Retry-After", ra)
	}
	w.WriteHeader(code)
}

func (p *provider) arrivals() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.times...)
}

func start(t *testing.T) gatewayv1.GatewayServiceClient {
	t.Helper()
	tracker := trackertest.Start(t)
	host := pluginstest.Start(t, tracker)
	queuetest.Start(t, tracker, host.Addr)
	conn, err := grpc.NewClient(gatewaytest.Start(t, tracker), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return gatewayv1.NewGatewayServiceClient(conn)
}

func send(t *testing.T, gw gatewayv1.GatewayServiceClient, url, conv string) {
	t.Helper()
	if _, err := gw.Send(context.Background(), &gatewayv1.SendRequest{Channel: "webhook", Recipient: url, Conversation: conv, Text: "x"}); err != nil {
		t.Fatal(err)
	}
}

// A dead provider is probed, not hammered: after the breaker's consecutive
// failures the channel gets no request until the breaker's timeout (1s in
// queuetest), and a channel.unhealthy event is recorded.
func TestDeadProviderIsProbedNotHammered(t *testing.T) {
	gw := start(t)
	p := &provider{answer: func(int) (int, string) { return http.StatusServiceUnavailable, "" }}
	srv := httptest.NewServer(p)
	defer srv.Close()
	for i := range 20 {
		send(t, gw, srv.URL, "c"+string(rune('a'+i)))
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(p.arrivals()) < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// Calls already under way when the circuit opened still land; count
	// from when they have.
	time.Sleep(300 * time.Millisecond)
	before := len(p.arrivals())
	time.Sleep(2500 * time.Millisecond)
	during := len(p.arrivals()) - before
	// Without a breaker, 20 messages retrying every 20-200ms make dozens of
	// requests in 2.5s; with it, one probe per second (queuetest: 1s).
	if during > 4 {
		t.Fatalf("the dead provider got %d requests in 2.5s with its circuit open; want at most a probe a second", during)
	}
	evs := events(t, gw, "channel.unhealthy")
	if len(evs) == 0 {
		t.Fatal("no channel.unhealthy event after consecutive failures")
	}
}

// A provider's retry-after pauses sends to that destination until it passes.
func TestRetryAfterPausesTheDestination(t *testing.T) {
	gw := start(t)
	p := &provider{answer: func(n int) (int, string) {
		if n == 1 {
			return http.StatusTooManyRequests, "1"
		}
		return http.StatusOK, ""
	}}
	srv := httptest.NewServer(p)
	defer srv.Close()
	send(t, gw, srv.URL, "first")
	deadline := time.Now().Add(5 * time.Second)
	for len(p.arrivals()) < 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	for i := range 5 {
		send(t, gw, srv.URL, "more"+string(rune('a'+i)))
	}
	deadline = time.Now().Add(10 * time.Second)
	for len(p.arrivals()) < 7 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	got := p.arrivals()
	if len(got) < 7 {
		t.Fatalf("got %d requests, want 7 (one 429, then all six)", len(got))
	}
	for _, at := range got[1:] {
		if gap := at.Sub(got[0]); gap < 950*time.Millisecond {
			t.Fatalf("a request reached the destination %s after its 429 with Retry-After: 1", gap)
		}
	}
}

func events(t *testing.T, gw gatewayv1.GatewayServiceClient, typ string) []*gatewayv1.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	stream, err := gw.WatchEvents(ctx, &gatewayv1.WatchEventsRequest{Type: typ})
	if err != nil {
		t.Fatal(err)
	}
	var out []*gatewayv1.Event
	for {
		ev, err := stream.Recv()
		if err != nil {
			return out
		}
		out = append(out, ev)
	}
}
