package main

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// fsyncProbe appends 256 B and calls fdatasync, one at a time, for dur in a
// new file under dir: the disk's floor for one durable write. Each round
// runs it at its start and end; a round whose two probes differ by more
// than 2× in ops/s ran through a change of the disk's speed.
func fsyncProbe(ctx context.Context, dir string, dur time.Duration) (sample, error) {
	path := filepath.Join(dir, "fsync-probe")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return sample{}, err
	}
	defer os.Remove(path)
	defer f.Close()
	buf := make([]byte, 256)
	return measureLoop(ctx, nil, 1, dur, func(context.Context, int) error {
		if _, err := f.Write(buf); err != nil {
			return err
		}
		return syscall.Fdatasync(int(f.Fd()))
	})
}
