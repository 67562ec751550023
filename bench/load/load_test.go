package load

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestClosedLoopStopsAtTheFirstError(t *testing.T) {
	boom := errors.New("boom")
	var calls atomic.Int64
	lat, _, err := ClosedLoop(context.Background(), 4, time.Minute, func(context.Context, int) error {
		if calls.Add(1) == 100 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the op's error", err)
	}
	if len(lat) < 99-4 || len(lat) >= int(calls.Load()) {
		t.Fatalf("%d latencies for %d calls, one of which failed", len(lat), calls.Load())
	}
}

func TestClosedLoopRunsForItsTime(t *testing.T) {
	workers := make([]atomic.Int64, 3)
	lat, elapsed, err := ClosedLoop(context.Background(), 3, 50*time.Millisecond, func(_ context.Context, w int) error {
		workers[w].Add(1)
		time.Sleep(time.Millisecond)
		return nil
	})
	if err != nil || elapsed < 50*time.Millisecond {
		t.Fatalf("err %v, elapsed %v", err, elapsed)
	}
	total := 0
	for i := range workers {
		if workers[i].Load() == 0 {
			t.Errorf("worker %d never ran", i)
		}
		total += int(workers[i].Load())
	}
	if len(lat) != total {
		t.Fatalf("%d latencies for %d calls", len(lat), total)
	}
	if p50, p99 := Percentiles(lat); p50 < time.Millisecond || p99 < p50 {
		t.Fatalf("p50 %v p99 %v", p50, p99)
	}
}
