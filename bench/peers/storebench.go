package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// storeResult is the JSON line herald-storebench prints.
type storeResult struct {
	Ops        int     `json:"ops"`
	Seconds    float64 `json:"seconds"`
	P50ns      int64   `json:"p50_ns"`
	P99ns      int64   `json:"p99_ns"`
	WALFsyncs  uint64  `json:"wal_fsyncs"`
	CPUSeconds float64 `json:"cpu_seconds"`
	VmHWMKiB   int64   `json:"vmhwm_kib"`
}

// storeBench runs herald-storebench once in a new process on a new folder:
// subject "pebble" (raw pebble.Sync commits) or "store" (the tracker
// store's Accept), writers concurrent writers for dur, with extra flags
// (-keys). Its CPU time and peak RSS are the process's own; the harness
// only waits.
func storeBench(ctx context.Context, e *env, subject string, writers int, dur time.Duration, extra ...string) (sample, error) {
	dir, err := tempDir(e.tmp, "store-")
	if err != nil {
		return sample{}, err
	}
	defer os.RemoveAll(dir)
	log, err := e.logFile("storebench")
	if err != nil {
		return sample{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, dur+2*time.Minute)
	defer cancel()
	args := append([]string{"-subject", subject, "-writers", strconv.Itoa(writers), "-duration", dur.String(), "-dir", filepath.Join(dir, "db")}, extra...)
	cmd := exec.CommandContext(ctx, filepath.Join(e.cfg.bin, "herald-storebench"), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		return sample{}, fmt.Errorf("herald-storebench %s: %w (see %s)", strings.Join(args[:2], " "), err, log.Name())
	}
	var r storeResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return sample{}, fmt.Errorf("herald-storebench printed %q: %w", out.String(), err)
	}
	s := sample{
		ops: r.Ops, elapsed: time.Duration(r.Seconds * float64(time.Second)),
		p50: time.Duration(r.P50ns), p99: time.Duration(r.P99ns),
		srvCPU: time.Duration(r.CPUSeconds * float64(time.Second)), rssKiB: r.VmHWMKiB,
	}
	if r.WALFsyncs > 0 {
		s.commitsPerFsync = float64(r.Ops) / float64(r.WALFsyncs)
	}
	return s, nil
}
