package telemetry

import (
	"os"
	"runtime"
	"runtime/debug"
)

// statelessGCPercent is the garbage collector's target for the services
// that hold no data (gateway, queue, plugin host): their live heap is a few
// MiB of requests in flight, so letting it grow 4× between collections costs
// little memory and takes most of the collector off each call's path
// (measured: Send@64 about 5-10% faster). The tracker, whose heap holds the
// store's caches, keeps Go's default.
const statelessGCPercent = 400

// TuneStateless sets the runtime of a stateless service: its GC target
// (statelessGCPercent) unless the operator set GOGC, and its processors
// (statelessProcs) unless the operator set GOMAXPROCS.
func TuneStateless() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(statelessGCPercent)
	}
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(statelessProcs(runtime.GOMAXPROCS(0)))
	}
}

// statelessProcs is how many processors a stateless service runs Go code
// on, given Go's default (the CPUs it may use, container limits included):
// half, at least one. These services relay each message with a few µs of
// work between waits; with a processor idle, the scheduler wakes another
// thread for every goroutine a network read or an answer makes ready, and
// on a virtual machine a wake-up of an idle CPU costs more than the work.
// Measured on 2 CPUs beside the tracker: Send@1 p50 0.60–0.66 → 0.56–0.58
// ms; the queue and plugin host 3–5 µs less CPU per delivered message.
// The tracker keeps them all: its commits, flushes and compactions run in
// parallel.
func statelessProcs(procs int) int { return max(1, procs/2) }
