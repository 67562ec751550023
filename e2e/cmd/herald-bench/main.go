// Command herald-bench measures herald end to end with the real binaries:
// durable Send throughput and latency at 1 and 64 concurrent clients, and
// delivered throughput, beside the raw Pebble Sync-commit rate on the same
// disk in the same run. It prints one table with the ratios.
//
// It opens Pebble directly only to measure the disk's floor; herald's
// services reach Pebble only through the tracker's store.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/heraldchat/herald/bench/load"
	"github.com/heraldchat/herald/e2e/harness"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

func main() {
	bin := flag.String("bin", "bin", "folder with the herald binaries (make build)")
	dur := flag.Duration("duration", 3*time.Second, "measuring time per subject")
	dir := flag.String("dir", "", "folder on the disk to measure (default: a temporary folder)")
	noQueue := flag.Bool("no-queue", false, "run without the queue: measures Send alone (no delivery)")
	flag.StringVar(&profileDir, "profile", "", "write each service's CPU profile of each herald subject into this folder (from /debug/pprof on its metrics port)")
	flag.Parse()
	if err := run(*bin, *dir, *dur, *noQueue); err != nil {
		fmt.Fprintf(os.Stderr, "herald-bench: %v\n", err)
		os.Exit(1)
	}
}

type result struct {
	name     string
	ops      int
	elapsed  time.Duration
	p50, p99 time.Duration
}

func (r result) rate() float64 { return float64(r.ops) / r.elapsed.Seconds() }

func run(bin, dir string, dur time.Duration, noQueue bool) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "herald-bench")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	var results []result

	// Raw Pebble floor on the same disk.
	for _, n := range []int{1, 64} {
		r, err := rawPebble(filepath.Join(dir, fmt.Sprintf("raw%d", n)), n, dur)
		if err != nil {
			return err
		}
		results = append(results, r)
	}

	c, err := harness.New(abs, filepath.Join(dir, "tracker"), nil)
	if err != nil {
		return err
	}
	c.Env = []string{"HERALD_LOG_LEVEL=error"}
	defer c.Close()
	for _, svc := range harness.Services {
		if noQueue && svc == "queue" {
			continue
		}
		if err := c.Start(svc); err != nil {
			return err
		}
	}
	conn, err := grpc.NewClient(c.Addr["gateway"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	gw := gatewayv1.NewGatewayServiceClient(conn)
	payload := make([]byte, 128)
	rand.Read(payload)
	text := fmt.Sprintf("%x", payload) // 256 bytes

	var total int
	for _, n := range []int{1, 64} {
		stop := profile(c, fmt.Sprintf("send%d", n), dur)
		r, err := sends(gw, n, dur, text)
		stop()
		if err != nil {
			return err
		}
		total += r.ops
		results = append(results, r)
	}
	// Delivered throughput: from the first Send of the last round until every
	// message is DELIVERED (the mock adapter answers at once).
	if !noQueue {
		stop := profile(c, "e2e", 10*time.Second)
		r, err := drain(gw, total)
		stop()
		if err != nil {
			return err
		}
		results = append(results, r)
	}

	fmt.Printf("\nherald-bench %s, payload 256 B, %s per subject\n\n", time.Now().Format(time.RFC3339), dur)
	fmt.Printf("%-34s %12s %10s %10s\n", "subject", "ops/s", "p50", "p99")
	for _, r := range results {
		p50, p99 := "-", "-"
		if r.p50 > 0 {
			p50, p99 = r.p50.Round(time.Microsecond).String(), r.p99.Round(time.Microsecond).String()
		}
		fmt.Printf("%-34s %12.0f %10s %10s\n", r.name, r.rate(), p50, p99)
	}
	by := map[string]result{}
	for _, r := range results {
		by[r.name] = r
	}
	fmt.Printf("\nratios (same run):\n")
	fmt.Printf("  Send@1  / raw Pebble Sync@1  = %.2f\n", by["herald Send @1"].rate()/by["raw pebble Sync @1"].rate())
	fmt.Printf("  Send@64 / raw Pebble Sync@64 = %.2f\n", by["herald Send @64"].rate()/by["raw pebble Sync @64"].rate())
	fmt.Printf("  delivered/s / Send@64        = %.2f\n", by["herald end-to-end delivered"].rate()/by["herald Send @64"].rate())
	return nil
}

func rawPebble(dir string, writers int, dur time.Duration) (result, error) {
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		return result{}, err
	}
	defer db.Close()
	val := make([]byte, 256)
	var next atomic.Uint64
	lat, _, err := load.ClosedLoop(context.Background(), writers, dur, func(context.Context, int) error {
		k := next.Add(1)
		key := fmt.Appendf(nil, "k%016d", k)
		return db.Set(key, val, pebble.Sync)
	})
	if err != nil {
		return result{}, err
	}
	return summarize(fmt.Sprintf("raw pebble Sync @%d", writers), lat, dur), nil
}

func sends(gw gatewayv1.GatewayServiceClient, clients int, dur time.Duration, text string) (result, error) {
	var seq atomic.Uint64
	lat, _, err := load.ClosedLoop(context.Background(), clients, dur, func(ctx context.Context, _ int) error {
		n := seq.Add(1)
		_, err := gw.Send(ctx, &gatewayv1.SendRequest{
			Channel: "mock", Recipient: "ok", Conversation: fmt.Sprintf("bench-%d-%d", clients, n), Text: text,
		})
		return err
	})
	if err != nil {
		return result{}, fmt.Errorf("a Send failed at %d clients: %w", clients, err)
	}
	return summarize(fmt.Sprintf("herald Send @%d", clients), lat, dur), nil
}

// profileDir, when set, receives CPU profiles: <subject>-<service>.pprof.
var profileDir string

// profile starts a CPU profile of every running service for at most
// seconds; the returned function waits for them and writes them out.
func profile(c *harness.Cluster, subject string, d time.Duration) (wait func()) {
	if profileDir == "" {
		return func() {}
	}
	var wg sync.WaitGroup
	for _, svc := range harness.Services {
		if !c.Running(svc) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", c.MetricsAddr[svc], int(d.Seconds()))
			resp, err := http.Get(url)
			if err != nil {
				fmt.Fprintf(os.Stderr, "herald-bench: profile of %s: %v\n", svc, err)
				return
			}
			defer resp.Body.Close()
			f, err := os.Create(filepath.Join(profileDir, subject+"-"+svc+".pprof"))
			if err != nil {
				fmt.Fprintf(os.Stderr, "herald-bench: %v\n", err)
				return
			}
			defer f.Close()
			io.Copy(f, resp.Body)
		}()
	}
	return wg.Wait
}

func summarize(name string, lat []time.Duration, dur time.Duration) result {
	r := result{name: name, ops: len(lat), elapsed: dur}
	r.p50, r.p99 = load.Percentiles(lat)
	return r
}

// drain sends a fresh burst from 64 clients and measures how fast the
// pipeline turns accepted messages into durable DELIVERED states.
func drain(gw gatewayv1.GatewayServiceClient, already int) (result, error) {
	const burst = 20000
	start := time.Now()
	var seq atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := seq.Add(1)
				if n > burst {
					return
				}
				gw.Send(context.Background(), &gatewayv1.SendRequest{Channel: "mock", Recipient: "ok", Conversation: fmt.Sprintf("drain-%d", n), Text: "x"})
			}
		}()
	}
	wg.Wait()
	want := int64(already + burst)
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		st, err := gw.Status(context.Background(), &gatewayv1.StatusRequest{})
		if err != nil {
			return result{}, err
		}
		if st.GetCounts()["DELIVERED"] >= want {
			el := time.Since(start)
			return result{name: "herald end-to-end delivered", ops: burst, elapsed: el}, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return result{}, fmt.Errorf("backlog did not drain within 5 minutes")
}
