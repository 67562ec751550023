package harness

import (
	"encoding/binary"
	"io"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// arrivalReader reads a TCP connection with recvmsg and takes each read's
// kernel receive timestamp (SO_TIMESTAMPING, software): the moment the
// bytes reached this socket, not the later moment this process got round to
// reading them. On a loaded machine the sink's goroutine can read a request
// milliseconds after it arrived, and the abort tests compare its arrival
// with the moment an abort was acknowledged. For TCP the timestamp is that
// of the newest segment the read consumed, so it is never earlier than the
// first byte's arrival.
type arrivalReader struct {
	raw syscall.RawConn // nil: no timestamps, plain reads
	oob []byte
}

func newArrivalReader(c net.Conn) arrivalReader {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return arrivalReader{}
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return arrivalReader{}
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPING,
			unix.SOF_TIMESTAMPING_RX_SOFTWARE|unix.SOF_TIMESTAMPING_SOFTWARE)
	})
	if err != nil || serr != nil {
		return arrivalReader{}
	}
	return arrivalReader{raw: raw, oob: make([]byte, unix.CmsgSpace(3*16))}
}

// read reads c (the connection r was made for) into b and returns when the
// bytes arrived.
func (r *arrivalReader) read(c net.Conn, b []byte) (int, time.Time, error) {
	if r.raw == nil {
		n, err := c.Read(b)
		return n, time.Now(), err
	}
	var n, oobn int
	var rerr error
	// RawConn.Read waits for readability and honours the connection's
	// read deadline, as the net.Conn's Read would.
	err := r.raw.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = unix.Recvmsg(int(fd), b, r.oob, 0)
		return rerr != unix.EAGAIN
	})
	now := time.Now()
	switch {
	case err != nil:
		return 0, now, err
	case rerr != nil:
		return 0, now, rerr
	case n == 0 && len(b) > 0:
		return 0, now, io.EOF
	}
	return n, kernelTime(r.oob[:oobn], now), nil
}

// kernelTime returns the software receive timestamp in oob, or def when
// it holds none.
func kernelTime(oob []byte, def time.Time) time.Time {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return def
	}
	for _, m := range msgs {
		// SCM_TIMESTAMPING: three timespecs, the software one first.
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SO_TIMESTAMPING || len(m.Data) < 16 {
			continue
		}
		sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
		nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
		if sec == 0 && nsec == 0 {
			return def
		}
		return time.Unix(sec, nsec)
	}
	return def
}
