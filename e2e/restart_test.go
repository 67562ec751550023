package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldchat/herald/e2e/harness"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// stopTimeout bounds a SIGTERM stop: above the queue's --drain-timeout (5s
// in startCluster) and the tracker's default --grace (10s).
const stopTimeout = 20 * time.Second

// repeat is how many restart rounds TestRestartDoesNotReplay runs:
// HERALD_E2E_REPEAT, or def.
func repeat(t *testing.T, def int) int {
	t.Helper()
	v := os.Getenv("HERALD_E2E_REPEAT")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("HERALD_E2E_REPEAT=%q: give a positive integer", v)
	}
	return n
}

// stopAll sends SIGTERM to every service in the given order and fails the
// test unless each one exits with status 0 within stopTimeout.
func stopAll(t *testing.T, c *harness.Cluster, order []string) {
	t.Helper()
	for _, name := range order {
		start := time.Now()
		if err := c.Stop(name, stopTimeout); err != nil {
			t.Fatalf("SIGTERM %s: want exit status 0 within %s, got: %v", name, stopTimeout, err)
		}
		t.Logf("%s stopped cleanly in %s", name, time.Since(start).Round(time.Millisecond))
	}
}

func startInOrder(t *testing.T, c *harness.Cluster, order []string) {
	t.Helper()
	for _, name := range order {
		if err := c.Start(name); err != nil {
			t.Fatalf("restart %s: %v", name, err)
		}
	}
}

func shuffled(r *rand.Rand) []string {
	s := slices.Clone(harness.Services)
	r.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
	return s
}

// sendAll sends n webhook messages to url with idempotency keys prefix-i,
// retrying each until the gateway acknowledges it, and returns their ids.
func sendAll(t *testing.T, gw gatewayv1.GatewayServiceClient, url, prefix string, n int) []string {
	t.Helper()
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	const workers = 32
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				key := fmt.Sprintf("%s-%d", prefix, i)
				deadline := time.Now().Add(30 * time.Second)
				for {
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
					resp, err := gw.Send(ctx, &gatewayv1.SendRequest{
						Channel: "webhook", Recipient: url, Conversation: fmt.Sprintf("%s-conv-%d", prefix, i%64),
						Text: "hello " + key, IdempotencyKey: key,
					})
					cancel()
					if err == nil {
						ids[i] = resp.GetId()
						break
					}
					if time.Now().After(deadline) {
						select {
						case errs <- fmt.Errorf("send %s: %w", key, err):
						default:
						}
						return
					}
					time.Sleep(30 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	return ids
}

// waitState polls the gateway until every id is in want, and fails the test
// with the first laggards when timeout passes.
func waitState(t *testing.T, gw gatewayv1.GatewayServiceClient, ids []string, want gatewayv1.DeliveryState, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	pending := slices.Clone(ids)
	for {
		var still []string
		var last string
		for _, id := range pending {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			resp, err := gw.GetMessage(ctx, &gatewayv1.GetMessageRequest{Id: id})
			cancel()
			if err != nil || resp.GetMessage().GetState() != want {
				still = append(still, id)
				last = fmt.Sprintf("%s is %v (err %v)", id, resp.GetMessage().GetState(), err)
			}
		}
		if len(still) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages not %v after %s, e.g. %s", len(still), len(ids), want, timeout, last)
		}
		pending = still
		time.Sleep(100 * time.Millisecond)
	}
}

// waitSink polls until every id reached the sink at least once.
func waitSink(t *testing.T, sink *harness.Sink, ids []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		counts := sink.Counts()
		var missing []string
		for _, id := range ids {
			if counts[id] == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages never reached the sink within %s, e.g. %v", len(missing), len(ids), timeout, missing[:min(5, len(missing))])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// diffDeliveries compares two snapshots of the sink's per-id counts and
// returns one line per id whose count changed, sorted. allowed ids may go
// from 0 to 1 (canaries sent on purpose); any other change is a replay.
func diffDeliveries(before, after map[string]int, allowed map[string]bool) []string {
	var out []string
	for id, n := range after {
		if allowed[id] && before[id] == 0 && n == 1 {
			continue
		}
		if before[id] != n {
			out = append(out, fmt.Sprintf("%s: %d → %d", id, before[id], n))
		}
	}
	for id, n := range before {
		if _, ok := after[id]; !ok {
			out = append(out, fmt.Sprintf("%s: %d → 0", id, n)) // a sink never forgets; a bug in the test
		}
	}
	sort.Strings(out)
	return out
}

// assertNoReplay fails the test if anything other than the allowed canaries
// reached the sink between the two snapshots, and if any message reached
// the sink more than once at all. It is deliberately strict: one extra
// webhook call for one old message fails it, with the id.
func assertNoReplay(t *testing.T, before, after map[string]int, allowed map[string]bool) {
	t.Helper()
	if d := diffDeliveries(before, after, allowed); len(d) > 0 {
		t.Errorf("replay after restart: %d messages reached the sink again (want 0): %v", len(d), d[:min(10, len(d))])
	}
	var twice []string
	for id, n := range after {
		if n > 1 {
			twice = append(twice, fmt.Sprintf("%s×%d", id, n))
		}
	}
	sort.Strings(twice)
	if len(twice) > 0 {
		t.Errorf("%d messages reached the sink more than once: %v", len(twice), twice[:min(10, len(twice))])
	}
}

// verifyOffline runs `herald-tracker verify` on a stopped tracker's directory.
func verifyOffline(t *testing.T, bin, dir string) {
	t.Helper()
	out, err := exec.Command(filepath.Join(bin, "herald-tracker"), "verify", "--data-dir", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("herald-tracker verify --data-dir %s: %v\n%s", dir, err, out)
	}
}

// TestRestartDoesNotReplay: 1,000 messages are delivered, every service is
// stopped with SIGTERM (each must exit 0) and restarted in a random order —
// so the queue, the plugin host and the gateway often start before the
// tracker and must wait for it. Once a canary sent after the restart has
// been delivered (the queue leases again) and two more quiet seconds have
// passed, nothing but the canary may have reached the sink. The tracker's
// store then verifies clean offline. HERALD_E2E_REPEAT sets the rounds.
func TestRestartDoesNotReplay(t *testing.T) {
	c, sink, gw := startCluster(t)
	seed := uint64(time.Now().UnixNano())
	r := rand.New(rand.NewPCG(seed, seed))
	t.Logf("seed %d", seed)
	rounds := repeat(t, 3)
	const n = 1000
	for round := range rounds {
		start := time.Now()
		ids := sendAll(t, gw, sink.URL, fmt.Sprintf("r%d", round), n)
		waitState(t, gw, ids, gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, 60*time.Second)
		waitSink(t, sink, ids, 10*time.Second)
		before := sink.Counts()
		if got, want := sink.Total(), (round+1)*n+round; got != want {
			t.Fatalf("round %d: %d deliveries at the sink before the restart, want %d (each message and canary once)", round, got, want)
		}
		delivered := time.Since(start)

		stopOrder, startOrder := shuffled(r), shuffled(r)
		t.Logf("round %d: stop %v, start %v", round, stopOrder, startOrder)
		stopAll(t, c, stopOrder)
		startInOrder(t, c, startOrder)

		canary := sendAll(t, gw, sink.URL, fmt.Sprintf("canary%d", round), 1)
		waitSink(t, sink, canary, 30*time.Second)
		time.Sleep(2 * time.Second)
		assertNoReplay(t, before, sink.Counts(), map[string]bool{canary[0]: true})
		if t.Failed() {
			t.FailNow()
		}

		if err := c.Stop("tracker", stopTimeout); err != nil {
			t.Fatalf("stop tracker: %v", err)
		}
		verifyOffline(t, c.Bin, c.DataDir)
		if err := c.Start("tracker"); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %d delivered in %s; restart round total %s", round, n, delivered.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	}
}

// TestStopEachServiceUnderLoad: under a steady load of Sends, each service
// in turn (random order), then all four at once, gets SIGTERM, must exit 0,
// and is restarted. Afterwards every acknowledged message is DELIVERED and
// reached the sink exactly once: a graceful stop excuses no duplicate.
func TestStopEachServiceUnderLoad(t *testing.T) {
	c, sink, gw := startCluster(t)
	seed := uint64(time.Now().UnixNano())
	r := rand.New(rand.NewPCG(seed, seed))
	t.Logf("seed %d", seed)
	s := &sender{gw: gw, url: sink.URL, acked: map[string]string{}}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); s.run(ctx, g) }()
	}
	defer func() { stop(); wg.Wait() }()

	waitFlow := func(after string) {
		before := sink.Total()
		deadline := time.Now().Add(20 * time.Second)
		for sink.Total() < before+50 {
			if time.Now().After(deadline) {
				t.Fatalf("no deliveries flowed within 20s after %s", after)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	time.Sleep(time.Second)
	for _, name := range shuffled(r) {
		stopAll(t, c, []string{name})
		time.Sleep(200 * time.Millisecond)
		startInOrder(t, c, []string{name})
		waitFlow("restarting " + name)
		t.Logf("stopped and restarted %s: %d deliveries so far", name, sink.Total())
	}
	stopOrder, startOrder := shuffled(r), shuffled(r)
	t.Logf("all at once: stop %v, start %v", stopOrder, startOrder)
	var swg sync.WaitGroup
	stopErrs := make([]error, len(stopOrder))
	for i, name := range stopOrder {
		swg.Add(1)
		go func() { defer swg.Done(); stopErrs[i] = c.Stop(name, stopTimeout) }()
	}
	swg.Wait()
	for i, err := range stopErrs {
		if err != nil {
			t.Fatalf("SIGTERM %s (all at once): want exit status 0, got: %v", stopOrder[i], err)
		}
	}
	startInOrder(t, c, startOrder)
	waitFlow("restarting all four")
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()

	acked := s.ackedIDs()
	ids := slices.Collect(maps.Keys(acked))
	waitSink(t, sink, ids, 60*time.Second)
	waitState(t, gw, ids, gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, 30*time.Second)
	counts := sink.Counts()
	var twice []string
	for id, n := range counts {
		if n > 1 {
			twice = append(twice, fmt.Sprintf("%s×%d", id, n))
		}
	}
	sort.Strings(twice)
	t.Logf("sent=%d acked=%d at sink=%d duplicated=%d", s.sent.Load(), len(acked), len(counts), len(twice))
	if len(twice) > 0 {
		t.Errorf("%d messages reached the sink more than once after graceful stops: %v", len(twice), twice[:min(10, len(twice))])
	}
	for id := range counts {
		if _, ok := acked[id]; !ok {
			// Acknowledged-but-lost answers (a Send whose reply a stop cut)
			// are retried with the same key, so every id should be known.
			t.Logf("sink received %s, which no Send acknowledged (its answer was cut; the retry got another id?)", id)
		}
	}
	if err := c.Stop("tracker", stopTimeout); err != nil {
		t.Fatalf("stop tracker: %v", err)
	}
	verifyOffline(t, c.Bin, c.DataDir)
}

// dirFiles lists the regular files under dir (relative path → size).
func dirFiles(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o750)
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, src); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	if err != nil {
		t.Fatalf("copy %s to %s: %v", from, to, err)
	}
}

// runTracker runs a tracker binary to completion (or until timeout) and
// returns its exit error, stderr and run time.
func runTracker(t *testing.T, bin string, timeout time.Duration, args ...string) (error, string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// No metrics endpoint: its default port may be taken by another herald.
	args = append(args, "--metrics-listen", "")
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "herald-tracker"), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("herald-tracker %v still ran after %s (killed); want it to refuse at once\nstderr:\n%s", args, timeout, stderr.String())
	}
	return err, stderr.String(), time.Since(start)
}

// TestCorruptStoreRefusesToStartAndBackupRestores damages the largest table
// of a stopped tracker's store: the tracker must refuse to start within
// seconds, name the damaged file, say to restore from a backup, and delete
// nothing. A backup taken with `herald backup` before the damage then starts
// clean in a fresh directory and delivers what was pending when it was taken.
func TestCorruptStoreRefusesToStartAndBackupRestores(t *testing.T) {
	c, sink, gw := startCluster(t)
	done := sendAll(t, gw, sink.URL, "before", 20)
	waitState(t, gw, done, gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, 30*time.Second)

	// With the queue stopped, new messages stay PENDING in the backup.
	stopAll(t, c, []string{"queue"})
	pending := sendAll(t, gw, sink.URL, "pending", 20)
	waitState(t, gw, pending, gatewayv1.DeliveryState_DELIVERY_STATE_PENDING, 5*time.Second)
	out, err := exec.Command(filepath.Join(c.Bin, "herald"), "--gateway", c.Addr["gateway"], "backup").CombinedOutput()
	if err != nil {
		t.Fatalf("herald backup: %v\n%s", err, out)
	}
	backup := strings.TrimSpace(string(out))
	if want := filepath.Join(filepath.Dir(c.DataDir), "backups"); filepath.Dir(backup) != want {
		t.Fatalf("herald backup wrote %q, want a folder in the default backup dir %s", backup, want)
	}
	stopAll(t, c, []string{"gateway", "plugins", "tracker"})

	files := dirFiles(t, c.DataDir)
	var victim string
	for name, size := range files {
		if strings.HasSuffix(name, ".sst") && (victim == "" || size > files[victim]) {
			victim = name
		}
	}
	if victim == "" {
		t.Fatalf("no .sst in %s after a clean stop (the store flushes on Close): %v", c.DataDir, files)
	}
	path := filepath.Join(c.DataDir, victim)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b)/2 - 8; i < len(b)/2+8; i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(path, b, 0o640); err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped 16 bytes in the middle of %s (%d bytes); files: %v", victim, len(b), files)

	err, stderr, took := runTracker(t, c.Bin, 15*time.Second, "--listen", "127.0.0.1:0", "--data-dir", c.DataDir)
	t.Logf("damaged store: tracker exited after %s with %v; stderr:\n%s", took.Round(time.Millisecond), err, stderr)
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() == 0 {
		t.Errorf("tracker on a damaged store: exit %v, want a non-zero exit status", err)
	}
	if took > 5*time.Second {
		t.Errorf("tracker took %s to refuse a damaged store, want under 5s", took)
	}
	if !strings.Contains(stderr, victim) {
		t.Errorf("tracker's stderr does not name the damaged file %s", victim)
	}
	if !strings.Contains(stderr, "restore") || !strings.Contains(stderr, "backup") {
		t.Errorf("tracker's stderr does not say to restore from a backup")
	}
	// Every table survives, unchanged. Pebble's read-write open itself
	// rotates MANIFEST and OPTIONS and drops WALs that were already flushed
	// (their data is in the tables) before the tracker can check anything;
	// those are logged, not failed.
	after := dirFiles(t, c.DataDir)
	var obsolete []string
	for name, size := range files {
		got, ok := after[name]
		switch {
		case strings.HasSuffix(name, ".sst") && !ok:
			t.Errorf("table %s was deleted from the damaged data directory", name)
		case strings.HasSuffix(name, ".sst") && got != size:
			t.Errorf("table %s changed size from %d to %d", name, size, got)
		case !ok:
			obsolete = append(obsolete, name)
		}
	}
	sort.Strings(obsolete)
	t.Logf("files Pebble's open removed as obsolete (no table among them): %v", obsolete)
	if damaged, _ := os.ReadFile(path); !bytes.Equal(damaged, b) {
		t.Errorf("the damaged file %s was rewritten", victim)
	}

	// Restore: the backup, copied into a fresh directory, verifies and serves.
	restored := filepath.Join(t.TempDir(), "tracker")
	copyDir(t, backup, restored)
	verifyOffline(t, c.Bin, restored)
	c.DataDir = restored
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}
	before := sink.Counts()
	waitSink(t, sink, pending, 30*time.Second)
	waitState(t, gw, pending, gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, 10*time.Second)
	waitState(t, gw, done, gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, 5*time.Second)
	allowed := map[string]bool{}
	for _, id := range pending {
		allowed[id] = true
	}
	time.Sleep(time.Second)
	assertNoReplay(t, before, sink.Counts(), allowed)
	stopAll(t, c, []string{"queue", "gateway", "plugins", "tracker"})
	verifyOffline(t, c.Bin, restored)
}

// TestSecondTrackerRefusesDataDirInUse: a second tracker on a running
// tracker's data directory exits non-zero saying the directory is in use,
// and the first keeps serving and stops cleanly.
func TestSecondTrackerRefusesDataDirInUse(t *testing.T) {
	bin := binaries(t)
	c, err := harness.New(bin, filepath.Join(t.TempDir(), "tracker"), testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Start("tracker"); err != nil {
		t.Fatal(err)
	}
	err, stderr, took := runTracker(t, bin, 15*time.Second, "--listen", "127.0.0.1:0", "--data-dir", c.DataDir)
	t.Logf("second tracker exited after %s with %v; stderr:\n%s", took.Round(time.Millisecond), err, stderr)
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() == 0 {
		t.Errorf("second tracker on %s: exit %v, want a non-zero exit status", c.DataDir, err)
	}
	if !strings.Contains(stderr, "in use") {
		t.Errorf("second tracker's stderr does not say the data directory is in use")
	}
	if !c.Running("tracker") {
		t.Fatal("the first tracker is gone")
	}
	if err := c.Stop("tracker", stopTimeout); err != nil {
		t.Fatalf("first tracker: %v", err)
	}
	verifyOffline(t, bin, c.DataDir)
}
