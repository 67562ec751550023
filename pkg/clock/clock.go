// Package clock provides the wall clock herald's services schedule with: one
// that an operating-system clock step (an NTP correction, a manual change)
// cannot move while the process runs.
package clock

import "time"

// Monotonic returns a clock that reads the wall time once, at the call, and
// from then on advances by the monotonic clock. Due times and lease expiries
// computed from it neither jump forward (expiring every lease at once) nor
// backward (holding every retry) when the system clock is stepped. It is
// re-anchored to the wall clock at each process start.
func Monotonic() func() time.Time {
	base := time.Now() // carries a monotonic reading
	wall := base.Round(0)
	return func() time.Time {
		return wall.Add(time.Since(base))
	}
}
