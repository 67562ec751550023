package pluginhost

import (
	"context"
	"time"
)

// workerIdle is how long a worker waits for its next call.
const workerIdle = 10 * time.Second

// workers runs functions on goroutines that outlive them: a goroutine that
// has run its function waits up to idle for the next one before it exits
// (or until done closes). A new goroutine's stack starts small and grows by
// copying as a delivery goes deeper (adapter, HTTP or gRPC client, spans):
// with a goroutine per delivery, growing stacks was a fifth of the plugin
// host's CPU under load. A warm worker keeps its grown stack. run never
// blocks and never queues: with no idle worker it starts a goroutine, so a
// slow provider call never holds another delivery back.
type workers struct {
	idle time.Duration
	done <-chan struct{}
	work chan func()
}

func newWorkers(ctx context.Context, idle time.Duration) *workers {
	return &workers{idle: idle, done: ctx.Done(), work: make(chan func())}
}

// run calls f on an idle worker or a new one.
func (w *workers) run(f func()) {
	select {
	case w.work <- f:
	default:
		go w.loop(f)
	}
}

func (w *workers) loop(f func()) {
	t := time.NewTimer(w.idle)
	defer t.Stop()
	for {
		f()
		t.Reset(w.idle)
		select {
		case f = <-w.work:
		case <-t.C:
			return
		case <-w.done:
			return
		}
	}
}
