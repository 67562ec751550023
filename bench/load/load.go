// Package load runs closed-loop loads for herald's benchmarks: n workers,
// each calling an operation again as soon as its previous call returns,
// for a fixed time. It is used by herald-bench, herald-storebench, the
// tracker's growth benchmark and bench/peers; it is not part of any
// service.
package load

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ClosedLoop runs op from n workers until dur has passed (n calls in
// flight) and returns every successful call's latency and the time until
// the last worker stopped. The first error stops every worker and is
// returned; ctx ending stops them too (its error is returned when no call
// failed). op gets the worker's index.
func ClosedLoop(ctx context.Context, n int, dur time.Duration, op func(ctx context.Context, worker int) error) ([]time.Duration, time.Duration, error) {
	var (
		mu       sync.Mutex
		all      []time.Duration
		firstErr error
		failed   atomic.Bool
		wg       sync.WaitGroup
	)
	start := time.Now()
	stop := start.Add(dur)
	for w := range n {
		wg.Go(func() {
			mine := make([]time.Duration, 0, 1024)
			for !failed.Load() && ctx.Err() == nil {
				t := time.Now()
				if !t.Before(stop) {
					break
				}
				if err := op(ctx, w); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					failed.Store(true)
					break
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return all, time.Since(start), firstErr
}

// Percentiles sorts lat and returns its median and 99th percentile; zero
// for no latencies.
func Percentiles(lat []time.Duration) (p50, p99 time.Duration) {
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100]
}

// CPUTime is the calling process's user and system CPU time so far (0 when
// the system cannot say).
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
