package telemetry

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestStatelessProcsTakeHalfAtLeastOne(t *testing.T) {
	for procs, want := range map[int]int{1: 1, 2: 1, 3: 1, 4: 2, 16: 8} {
		if got := statelessProcs(procs); got != want {
			t.Errorf("statelessProcs(%d) = %d, want %d", procs, got, want)
		}
	}
}

// TuneStateless leaves what the operator set alone and sets the rest.
func TestTuneStatelessKeepsTheOperatorsSettings(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	gc := debug.SetGCPercent(100)
	t.Cleanup(func() {
		runtime.GOMAXPROCS(procs)
		debug.SetGCPercent(gc)
	})

	t.Setenv("GOGC", "150")
	t.Setenv("GOMAXPROCS", "3")
	runtime.GOMAXPROCS(3)
	TuneStateless()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GC percent = %d with GOGC set, want it untouched (100)", got)
	}
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Errorf("GOMAXPROCS = %d with GOMAXPROCS set to 3, want 3", got)
	}

	t.Setenv("GOGC", "")
	t.Setenv("GOMAXPROCS", "")
	runtime.GOMAXPROCS(4)
	TuneStateless()
	if got := debug.SetGCPercent(100); got != statelessGCPercent {
		t.Errorf("GC percent = %d, want %d", got, statelessGCPercent)
	}
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Errorf("GOMAXPROCS = %d from 4, want 2", got)
	}
}
