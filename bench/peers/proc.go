package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// Linux fixes it at 100 for user space whatever the kernel's HZ.
const clockTicks = 100

// procStat reads a process's parent and its user+system CPU time from
// /proc/<pid>/stat.
func procStat(pid int) (ppid int, cpu time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name is in parentheses and may hold spaces and
	// parentheses itself: the fields start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat ppid: %w", pid, err)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return ppid, time.Duration(ut+st) * time.Second / clockTicks, nil
}

// vmHWM is a process's peak resident set size in KiB (VmHWM in
// /proc/<pid>/status).
func vmHWM(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmHWM", pid)
}

// withDescendants returns roots and every live process descended from them
// (RabbitMQ's start script runs the Erlang VM, which runs helpers).
func withDescendants(roots []int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return roots
	}
	children := map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, _, err := procStat(pid)
		if err != nil {
			continue
		}
		children[ppid] = append(children[ppid], pid)
	}
	seen := map[int]bool{}
	var out []int
	var walk func(int)
	walk = func(pid int) {
		if seen[pid] {
			return
		}
		seen[pid] = true
		out = append(out, pid)
		for _, c := range children[pid] {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	return out
}

// usage is a snapshot of CPU time: the harness's own (getrusage) and each
// server process's (/proc).
type usage struct {
	self time.Duration
	proc map[int]time.Duration
}

func snapshot(pids []int) usage {
	u := usage{self: selfCPU(), proc: map[int]time.Duration{}}
	for _, p := range pids {
		if _, cpu, err := procStat(p); err == nil {
			u.proc[p] = cpu
		}
	}
	return u
}

// since returns the harness's and the servers' CPU time between a and b. A
// process that appeared in between counts from zero.
func since(a, b usage) (self, servers time.Duration) {
	for _, cpu := range perProcess(a, b) {
		servers += cpu
	}
	return b.self - a.self, servers
}

// perProcess returns each server process's CPU time between a and b, by
// PID; a process that appeared in between counts from zero.
func perProcess(a, b usage) map[int]time.Duration {
	out := make(map[int]time.Duration, len(b.proc))
	for p, cpu := range b.proc {
		out[p] = cpu - a.proc[p]
	}
	return out
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// peakRSS sums the VmHWM of pids, in KiB.
func peakRSS(pids []int) int64 {
	var sum int64
	for _, p := range pids {
		if kb, err := vmHWM(p); err == nil {
			sum += kb
		}
	}
	return sum
}

// tempDir makes a folder under parent ("" for the system's) that the
// caller removes.
func tempDir(parent, pattern string) (string, error) {
	if parent != "" {
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return "", err
		}
	}
	d, err := os.MkdirTemp(parent, pattern)
	if err != nil {
		return "", err
	}
	return filepath.Abs(d)
}
