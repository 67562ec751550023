package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// server is one process the harness started. It is stopped by its PID only.
type server struct {
	name string
	cmd  *exec.Cmd
	exit chan error
}

// startServer starts a process with its output appended to log. The
// process is killed if the harness dies first (Pdeathsig).
func startServer(name string, log io.Writer, env []string, dir string, argv ...string) (*server, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s := &server{name: name, cmd: cmd, exit: make(chan error, 1)}
	go func() { s.exit <- cmd.Wait() }()
	return s, nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// waitListening polls addr until it accepts a TCP connection, the process
// exits, or timeout passes.
func (s *server) waitListening(ctx context.Context, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-s.exit:
			s.exit <- err
			return fmt.Errorf("%s exited during start (%v); see its log", s.name, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not listen on %s within %s", s.name, addr, timeout)
}

// stop sends SIGTERM to the process and, if it has not exited within
// grace, SIGKILL.
func (s *server) stop(grace time.Duration) error {
	select {
	case err := <-s.exit:
		s.exit <- err
		return nil
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("signal %s: %w", s.name, err)
	}
	select {
	case err := <-s.exit:
		s.exit <- err
		return nil
	case <-time.After(grace):
		s.cmd.Process.Kill()
		err := <-s.exit
		s.exit <- err
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", s.name, grace)
	}
}

// freeAddr returns a loopback address whose port was free when asked.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func freePort() (int, error) {
	a, err := freeAddr()
	if err != nil {
		return 0, err
	}
	_, p, err := net.SplitHostPort(a)
	if err != nil {
		return 0, err
	}
	var n int
	_, err = fmt.Sscan(p, &n)
	return n, err
}
