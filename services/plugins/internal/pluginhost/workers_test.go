package pluginhost

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// A call never waits for a busy worker: with every worker busy, run starts
// another; and the workers end when the host's lifetime does.
func TestWorkersNeverHoldACallBehindABusyOne(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	base := runtime.NumGoroutine()
	w := newWorkers(ctx, time.Minute)

	release := make(chan struct{})
	busy := make(chan struct{})
	w.run(func() { close(busy); <-release })
	<-busy
	ran := make(chan struct{})
	go w.run(func() { close(ran) }) // apart, so that a run that waits fails the test instead of hanging it
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("a call waited behind a busy worker")
	}
	close(release)

	// Both workers now idle; a burst of calls reuses and adds as needed.
	done := make(chan struct{}, 100)
	for range 100 {
		w.run(func() { done <- struct{}{} })
	}
	for range 100 {
		<-done
	}

	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after the lifetime ended, want %d", runtime.NumGoroutine(), base)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
