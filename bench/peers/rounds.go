package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/heraldchat/herald/bench/load"
)

// sample is one subject's measurement in one round.
type sample struct {
	ops     int
	elapsed time.Duration
	// p50 and p99 are per-operation latencies; zero when the subject
	// measures only throughput (end to end).
	p50, p99 time.Duration
	// selfCPU is the harness's CPU time (clients and in-process parts);
	// srvCPU is the subject's server processes'.
	selfCPU, srvCPU time.Duration
	// procCPU is srvCPU by server process (PID); byService names them
	// where the subject knows its processes' names (herald's services).
	procCPU   map[int]time.Duration
	byService map[string]time.Duration
	// rssKiB is the peak RSS (VmHWM) summed over the subject's server
	// processes; zero when it has none.
	rssKiB int64
	// commitsPerFsync is acknowledged writes (a raw Pebble commit, a store
	// Accept, a herald Send) per WAL fsync during the measurement; zero
	// when not known.
	commitsPerFsync float64
}

func (s sample) rate() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.ops) / s.elapsed.Seconds()
}

// cpuPerMsg is all CPU time spent on the subject (harness and servers) per
// message.
func (s sample) cpuPerMsg() time.Duration {
	if s.ops == 0 {
		return 0
	}
	return (s.selfCPU + s.srvCPU) / time.Duration(s.ops)
}

func (s sample) srvCPUPerMsg() time.Duration {
	if s.ops == 0 {
		return 0
	}
	return s.srvCPU / time.Duration(s.ops)
}

type subject struct {
	key   string // used by the targets
	group string // for -only
	name  string
	run   func(ctx context.Context, dur time.Duration) (sample, error)
}

// measureLoop runs op from n concurrent callers for dur (see closedLoop)
// and charges it the CPU time of the harness and of pids, and their peak
// RSS.
func measureLoop(ctx context.Context, pids []int, n int, dur time.Duration, op func(ctx context.Context, worker int) error) (sample, error) {
	before := snapshot(pids)
	lat, elapsed, err := closedLoop(ctx, n, dur, op)
	after := snapshot(pids)
	if err != nil {
		return sample{}, err
	}
	s := sample{ops: len(lat), elapsed: elapsed, rssKiB: peakRSS(pids)}
	s.selfCPU, s.srvCPU = since(before, after)
	s.procCPU = perProcess(before, after)
	s.p50, s.p99 = load.Percentiles(lat)
	return s, nil
}

// round is one round's measurements.
type round struct {
	n                    int
	probeStart, probeEnd sample
	samples              map[string]sample
	discarded            bool
	probeRatio           float64
}

type results struct {
	rounds []round
	// failed holds the error of each subject that could not run; it was
	// left out of the rounds after.
	failed map[string]error
}

// runRounds runs the warm-up and the measured rounds. A subject that fails
// is reported and skipped from then on.
func runRounds(ctx context.Context, e *env, subjects []subject, log io.Writer) results {
	res := results{failed: map[string]error{}}
	cfg := e.cfg
	if cfg.warmup > 0 {
		fmt.Fprintf(log, "warm-up: every subject for %s, not recorded\n", cfg.warmup)
		for _, s := range subjects {
			if ctx.Err() != nil {
				return res
			}
			if _, err := s.run(ctx, cfg.warmup); err != nil {
				res.failed[s.key] = err
				fmt.Fprintf(log, "  %s: FAILED: %v\n", s.name, err)
			}
			e.settle(ctx)
		}
	}
	for r := range cfg.rounds {
		if ctx.Err() != nil {
			return res
		}
		rd := round{n: r + 1, samples: map[string]sample{}}
		var err error
		if rd.probeStart, err = fsyncProbe(ctx, e.tmp, cfg.probe); err != nil {
			res.failed["fsync"] = err
			return res
		}
		fmt.Fprintf(log, "round %d/%d: fsync probe %s/s p50 %s\n", rd.n, cfg.rounds, count(rd.probeStart.rate()), dur(rd.probeStart.p50))
		// Rotate the order so that no subject always follows the same one.
		for i := range subjects {
			s := subjects[(i+r)%len(subjects)]
			if res.failed[s.key] != nil || ctx.Err() != nil {
				continue
			}
			smp, err := s.run(ctx, cfg.dur)
			e.settle(ctx)
			if err != nil {
				res.failed[s.key] = err
				fmt.Fprintf(log, "  %-40s FAILED: %v\n", s.name, err)
				continue
			}
			rd.samples[s.key] = smp
			fmt.Fprintf(log, "  %-40s %10s/s  p50 %9s  p99 %9s  cpu/msg %9s\n", s.name, count(smp.rate()), dur(smp.p50), dur(smp.p99), dur(smp.cpuPerMsg()))
		}
		if ctx.Err() != nil {
			return res
		}
		if rd.probeEnd, err = fsyncProbe(ctx, e.tmp, cfg.probe); err != nil {
			res.failed["fsync"] = err
			return res
		}
		a, b := rd.probeStart.rate(), rd.probeEnd.rate()
		rd.probeRatio = max(a, b) / max(min(a, b), 1e-9)
		rd.discarded = rd.probeRatio > 2
		verdict := "kept"
		if rd.discarded {
			verdict = "DISCARDED (fsync probes differ by more than 2x)"
		}
		fmt.Fprintf(log, "round %d/%d: fsync probe %s/s p50 %s; start/end differ %.2fx: %s\n", rd.n, cfg.rounds, count(b), dur(rd.probeEnd.p50), rd.probeRatio, verdict)
		res.rounds = append(res.rounds, rd)
	}
	return res
}

// settle waits until every long-lived server is idle (together under 10%
// of one CPU over 200ms; at most 5s), so that the work a subject or its
// preparation leaves behind (flushes, compactions, segment writes, garbage
// collection) is not charged to the next measurement.
func (e *env) settle(ctx context.Context) {
	const (
		window = 200 * time.Millisecond
		idle   = window / 10
		limit  = 5 * time.Second
	)
	var pids []int
	for _, f := range e.servers {
		pids = append(pids, f()...)
	}
	if len(pids) == 0 {
		return
	}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		a := snapshot(pids)
		if sleep(ctx, window) != nil {
			return
		}
		if _, busy := since(a, snapshot(pids)); busy < idle {
			return
		}
	}
	fmt.Fprintf(e.log, "  (servers still busy after %s; going on)\n", limit)
}
