package main

import (
	"context"
	"time"

	"github.com/heraldchat/herald/bench/load"
)

// opTimeout bounds every single operation a subject makes.
const opTimeout = 30 * time.Second

// closedLoop is load.ClosedLoop with every operation bounded by
// opTimeout.
func closedLoop(ctx context.Context, n int, dur time.Duration, op func(ctx context.Context, worker int) error) ([]time.Duration, time.Duration, error) {
	return load.ClosedLoop(ctx, n, dur, func(ctx context.Context, w int) error {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		return op(octx, w)
	})
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
