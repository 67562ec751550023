// Command herald-storebench measures the tracker's store API in process,
// beside raw Pebble on the same disk: N writers commit durably (Sync) for a
// fixed time, and one JSON line reports commits, latency percentiles, WAL
// fsyncs, CPU time and peak RSS. make bench-peers runs it once per round
// and subject; it lives under services/tracker because the store is
// internal to the tracker.
//
//	herald-storebench -subject store|pebble -writers 64 -duration 2.5s -dir DIR
//
// Subjects: store makes each write a store.Accept of a new 256-byte message
// (a new conversation each, as Send with no conversation does); pebble is a
// 256-byte pebble.Set with pebble.Sync under default options, or with
// -keys N a batch of N keys committed with pebble.Sync (the 256-byte value
// and N-1 30-byte ones, each key in a range of its own, as an Accept's keys
// are in their families): what Pebble itself does with an Accept's number
// of keys. DIR must not hold another store; the caller removes it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/oklog/ulid/v2"

	"github.com/heraldchat/herald/bench/load"
	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	"github.com/heraldchat/herald/services/tracker/internal/store"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "herald-storebench: %v\n", err)
		os.Exit(1)
	}
}

// Result is the JSON line printed on stdout.
type Result struct {
	Subject string `json:"subject"`
	Writers int    `json:"writers"`
	// Keys is how many keys each raw Pebble commit writes (-keys).
	Keys    int     `json:"keys,omitempty"`
	Ops     int     `json:"ops"`
	Seconds float64 `json:"seconds"`
	P50ns   int64   `json:"p50_ns"`
	P99ns   int64   `json:"p99_ns"`
	// WALFsyncs are Pebble's WAL fsyncs during the measurement: Ops/WALFsyncs
	// is how many commits shared one fsync.
	WALFsyncs uint64 `json:"wal_fsyncs"`
	// CPUSeconds is this process's user+system time during the measurement.
	CPUSeconds float64 `json:"cpu_seconds"`
	// VmHWMKiB is this process's peak resident set size.
	VmHWMKiB int64 `json:"vmhwm_kib"`
}

func run(args []string) error {
	fs := flag.NewFlagSet("herald-storebench", flag.ContinueOnError)
	subject := fs.String("subject", "store", "store (tracker store Accept) or pebble (raw pebble.Set with Sync)")
	writers := fs.Int("writers", 64, "concurrent writers")
	dur := fs.Duration("duration", 2500*time.Millisecond, "measuring time")
	dir := fs.String("dir", "", "empty folder for the store (required)")
	size := fs.Int("size", 256, "payload bytes")
	keys := fs.Int("keys", 1, "pebble: keys per commit, the payload under one and 30-byte values under the others, each in a key range of its own (a store Accept writes 8)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the measurement to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *dir == "":
		return errors.New("-dir is required: give an empty folder on the disk to measure")
	case *writers < 1:
		return fmt.Errorf("-writers=%d: give at least 1", *writers)
	case *dur <= 0 || *dur > 10*time.Minute:
		return fmt.Errorf("-duration=%s: give a duration between 0 and 10m", *dur)
	case *keys < 1 || *keys > 26:
		return fmt.Errorf("-keys=%d: give 1 to 26", *keys)
	case *keys > 1 && *subject != "pebble":
		return fmt.Errorf("-keys=%d: only the pebble subject takes it (the store writes what an Accept writes)", *keys)
	}
	payload := strings.Repeat("x", *size)

	var (
		write  func() error
		fsyncs func() uint64
		closer func() error
	)
	switch *subject {
	case "store":
		st, err := store.Open(*dir, store.Options{})
		if err != nil {
			return err
		}
		closer = st.Close
		fsyncs = func() uint64 { return store.WALFsyncs(st.Metrics()) }
		var n atomic.Uint64
		write = func() error {
			_, err := st.Accept(&storev1.Message{
				Id: ulid.Make().String(), Tenant: "bench", Channel: "mock", Recipient: "ok",
				Conversation: "c" + strconv.FormatUint(n.Add(1), 10), Text: payload,
			})
			return err
		}
	case "pebble":
		db, err := pebble.Open(*dir, &pebble.Options{})
		if err != nil {
			return err
		}
		closer = db.Close
		fsyncs = func() uint64 { return store.WALFsyncs(db.Metrics()) }
		val := []byte(payload)
		small := []byte(strings.Repeat("y", 30))
		var n atomic.Uint64
		write = func() error {
			i := n.Add(1)
			if *keys == 1 {
				return db.Set(fmt.Appendf(nil, "k%016d", i), val, pebble.Sync)
			}
			b := db.NewBatch()
			defer b.Close()
			for k := range *keys {
				v := small
				if k == 0 {
					v = val
				}
				if err := b.Set(fmt.Appendf(nil, "%c%016d", 'a'+k, i), v, nil); err != nil {
					return err
				}
			}
			return b.Commit(pebble.Sync)
		}
	default:
		return fmt.Errorf("-subject=%q: give store or pebble", *subject)
	}

	stopProfile, err := startCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	f0, cpu0 := fsyncs(), load.CPUTime().Seconds()
	lat, elapsed, err := load.ClosedLoop(context.Background(), *writers, *dur, func(context.Context, int) error { return write() })
	cpu1, f1 := load.CPUTime().Seconds(), fsyncs()
	stopProfile()
	if cerr := closer(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	p50, p99 := load.Percentiles(lat)
	r := Result{Subject: *subject, Writers: *writers, Ops: len(lat), Seconds: elapsed.Seconds(),
		WALFsyncs: f1 - f0, CPUSeconds: cpu1 - cpu0, VmHWMKiB: vmHWM(), P50ns: int64(p50), P99ns: int64(p99)}
	if *subject == "pebble" {
		r.Keys = *keys
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// startCPUProfile writes a CPU profile to path until stop is called; with
// no path it does nothing.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// vmHWM reads the peak resident set size from /proc/self/status (0 when
// it cannot).
func vmHWM() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}
