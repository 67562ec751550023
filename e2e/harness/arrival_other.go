//go:build !linux

package harness

import (
	"net"
	"time"
)

// arrivalReader reads a connection; without kernel receive timestamps on
// this platform, a read's time is when it returned.
type arrivalReader struct{ c net.Conn }

func newArrivalReader(c net.Conn) arrivalReader { return arrivalReader{c: c} }

func (r *arrivalReader) read(b []byte) (int, time.Time, error) {
	n, err := r.c.Read(b)
	return n, time.Now(), err
}
