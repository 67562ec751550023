package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/heraldchat/herald/e2e/harness"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds the real binaries once per test process.
func binaries(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test with the real binaries; skipped with -short")
	}
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "herald-e2e-bin")
		if buildErr == nil {
			buildErr = harness.Build(binDir)
		}
	})
	if buildErr != nil {
		t.Fatalf("build: %v", buildErr)
	}
	return binDir
}

func startCluster(t *testing.T) (*harness.Cluster, *harness.Sink, gatewayv1.GatewayServiceClient) {
	t.Helper()
	bin := binaries(t)
	c, err := harness.New(bin, filepath.Join(t.TempDir(), "tracker"), testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	// Short timeouts so that a lost outcome surfaces within the test.
	c.Args["queue"] = []string{"--deliver-timeout", "2s", "--lease", "6s", "--retry-initial", "100ms", "--retry-max-delay", "1s", "--drain-timeout", "5s"}
	c.Env = []string{"HERALD_LOG_LEVEL=warn"}
	t.Cleanup(c.Close)
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}
	sink, err := harness.NewSink()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	conn, err := grpc.NewClient(c.Addr["gateway"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return c, sink, gatewayv1.NewGatewayServiceClient(conn)
}

// testLog sends service logs to the test log (shown on failure or -v).
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Logf("%s", b)
	return len(b), nil
}

// sender keeps sending until stopped; each message is retried with its
// idempotency key until Send answers OK, as a well-behaved backend does.
type sender struct {
	gw    gatewayv1.GatewayServiceClient
	url   string
	sent  atomic.Int64
	mu    sync.Mutex
	acked map[string]string // id → key
}

func (s *sender) run(ctx context.Context, g int) {
	for i := 0; ctx.Err() == nil; i++ {
		key := fmt.Sprintf("g%d-m%d", g, i)
		s.sent.Add(1)
		for ctx.Err() == nil {
			cctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			resp, err := s.gw.Send(cctx, &gatewayv1.SendRequest{
				Channel: "webhook", Recipient: s.url, Conversation: fmt.Sprintf("conv-%d-%d", g, i%4),
				Text: "hello " + key, IdempotencyKey: key,
			})
			cancel()
			if err == nil {
				s.mu.Lock()
				s.acked[resp.GetId()] = key
				s.mu.Unlock()
				break
			}
			time.Sleep(30 * time.Millisecond)
		}
	}
}

func (s *sender) ackedIDs() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.acked))
	for k, v := range s.acked {
		out[k] = v
	}
	return out
}

// TestKillEachServiceUnderLoad is issue 2's proof: under a steady load of
// Sends, SIGKILL the gateway, the tracker, the queue and the plugin host in
// turn, restarting each. Afterwards every acknowledged message is DELIVERED
// and reached the sink, and none reached it twice unless a plugin-host kill
// cut its provider call.
func TestKillEachServiceUnderLoad(t *testing.T) {
	c, sink, gw := startCluster(t)
	s := &sender{gw: gw, url: sink.URL, acked: map[string]string{}}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); s.run(ctx, g) }()
	}

	var pluginKills []time.Time
	time.Sleep(time.Second)
	for _, name := range []string{"gateway", "tracker", "queue", "plugins"} {
		before := sink.Total()
		if name == "plugins" {
			pluginKills = append(pluginKills, time.Now())
		}
		if err := c.Kill(name); err != nil {
			t.Fatal(err)
		}
		if name == "plugins" {
			// Requests the host wrote just before it died may be read by
			// the sink a little after: the kill still cut them.
			pluginKills[len(pluginKills)-1] = time.Now().Add(50 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		if err := c.Start(name); err != nil {
			t.Fatal(err)
		}
		// Wait until deliveries flow again before the next kill.
		deadline := time.Now().Add(20 * time.Second)
		for sink.Total() < before+50 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("killed and restarted %s: %d deliveries so far", name, sink.Total())
	}
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()

	acked := s.ackedIDs()
	deadline := time.Now().Add(60 * time.Second)
	var missing []string
	for {
		counts := sink.Counts()
		missing = missing[:0]
		for id := range acked {
			if counts[id] == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	notDelivered := 0
	for id := range acked {
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := gw.GetMessage(context.Background(), &gatewayv1.GetMessageRequest{Id: id})
			if err == nil && resp.GetMessage().GetState() == gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED {
				break
			}
			if time.Now().After(deadline) {
				notDelivered++
				t.Errorf("message %s: %v %v, want DELIVERED", id, resp.GetMessage().GetState(), err)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	counts := sink.Counts()
	dups, excused := 0, 0
	var unexcused []string
	for id, n := range counts {
		if n < 2 {
			continue
		}
		dups++
		// Excused only when a plugin-host kill fell between the first and
		// the last arrival: the kill cut the call that delivered it first.
		times := sink.Times(id)
		cut := false
		for _, k := range pluginKills {
			if times[0].Before(k) && times[len(times)-1].After(k) {
				cut = true
			}
		}
		if cut {
			excused++
		} else {
			unexcused = append(unexcused, fmt.Sprintf("%s×%d", id, n))
		}
	}
	t.Logf("sent=%d acked=%d delivered=%d lost=%d duplicated=%d (during plugin-host kill: %d)",
		s.sent.Load(), len(acked), len(acked)-len(missing), len(missing), dups, excused)
	if len(missing) > 0 {
		t.Errorf("%d acknowledged messages never reached the sink, e.g. %v", len(missing), missing[:min(5, len(missing))])
	}
	if len(unexcused) > 0 {
		t.Errorf("%d messages reached the sink more than once with no plugin-host kill during their call: %v", len(unexcused), unexcused[:min(5, len(unexcused))])
	}

	// The store is consistent after all of it.
	if err := c.Stop("tracker", 20*time.Second); err != nil {
		t.Errorf("tracker did not stop cleanly: %v", err)
	}
	out, err := exec.Command(filepath.Join(c.Bin, "herald-tracker"), "verify", "--data-dir", c.DataDir).CombinedOutput()
	if err != nil {
		t.Errorf("verify after the run: %v\n%s", err, out)
	}
}
