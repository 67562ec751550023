package telemetry

import (
	"os"
	"runtime/debug"
)

// statelessGCPercent is the garbage collector's target for the services
// that hold no data (gateway, queue, plugin host): their live heap is a few
// MiB of requests in flight, so letting it grow 4× between collections costs
// little memory and takes most of the collector off each call's path
// (measured: Send@64 about 5-10% faster). The tracker, whose heap holds the
// store's caches, keeps Go's default.
const statelessGCPercent = 400

// TuneGC sets the GC target of a stateless service unless the operator set
// GOGC.
func TuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(statelessGCPercent)
	}
}
