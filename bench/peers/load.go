package main

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// opTimeout bounds every single operation a subject makes.
const opTimeout = 30 * time.Second

// closedLoop runs op from n workers until dur has passed (each worker waits
// for its call to return before the next: n calls in flight) and returns
// every call's latency and the time until the last worker stopped. The
// first error stops every worker; ctx ending stops them too. op gets the
// worker's index.
func closedLoop(ctx context.Context, n int, dur time.Duration, op func(ctx context.Context, worker int) error) ([]time.Duration, time.Duration, error) {
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
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				err := op(octx, w)
				cancel()
				if err != nil {
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

// percentiles sorts lat and returns its median and 99th percentile.
func percentiles(lat []time.Duration) (p50, p99 time.Duration) {
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100]
}

// window keeps at most size asynchronous operations outstanding: add
// registers one and, when the window is full, first waits for the oldest.
type window[T any] struct {
	size    int
	pending []T
	wait    func(T) error
}

func (w *window[T]) add(t T) error {
	w.pending = append(w.pending, t)
	if len(w.pending) < w.size {
		return nil
	}
	oldest := w.pending[0]
	w.pending = w.pending[1:]
	return w.wait(oldest)
}

// drain waits for every outstanding operation.
func (w *window[T]) drain() error {
	for len(w.pending) > 0 {
		oldest := w.pending[0]
		w.pending = w.pending[1:]
		if err := w.wait(oldest); err != nil {
			return err
		}
	}
	return nil
}
