package clock

import (
	"testing"
	"time"
)

func TestMonotonicAdvancesWithElapsedTime(t *testing.T) {
	now := Monotonic()
	a := now()
	start := time.Now()
	time.Sleep(20 * time.Millisecond)
	b := now()
	elapsed := time.Since(start)
	if d := b.Sub(a); d < 20*time.Millisecond || d > elapsed+5*time.Millisecond {
		t.Fatalf("clock advanced %s over %s of elapsed time", d, elapsed)
	}
	if got := a.Sub(time.Now()); got > time.Second || got < -time.Second {
		t.Fatalf("clock is %s away from the wall time at start", got)
	}
}
