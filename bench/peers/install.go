package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// rabbitScript is the Debian package's start script, run directly: the
// /usr/sbin wrapper would switch to the rabbitmq user, which cannot write
// the harness's temporary folder.
const rabbitScript = "/usr/lib/rabbitmq/bin/rabbitmq-server"

// ensureRabbitMQ installs Debian's rabbitmq-server when it is missing. The
// package's own service is not started: policy-rc.d refuses it (one is put
// in place for the install when the machine has none).
func ensureRabbitMQ(ctx context.Context, log io.Writer) error {
	if _, err := os.Stat(rabbitScript); err == nil {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s is missing and installing it needs root: run 'apt-get install rabbitmq-server' as root, or run the harness as root", rabbitScript)
	}
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\n# herald bench-peers: no service starts during its install\nexit 101\n"), 0o755); err != nil {
			return fmt.Errorf("write %s: %w", policy, err)
		}
		defer os.Remove(policy)
	}
	fmt.Fprintln(log, "installing rabbitmq-server from Debian's packages (apt-get update; apt-get install)")
	env := []string{"DEBIAN_FRONTEND=noninteractive"}
	if err := runLogged(ctx, log, env, "apt-get", "update"); err != nil {
		return err
	}
	if err := runLogged(ctx, log, env, "apt-get", "install", "-y", "--no-install-recommends", "rabbitmq-server"); err != nil {
		return err
	}
	if _, err := os.Stat(rabbitScript); err != nil {
		return fmt.Errorf("rabbitmq-server installed but %s is missing: %w", rabbitScript, err)
	}
	return nil
}

// ensureNATS installs nats-server at version into tools through the Go
// module proxy unless that version is already there, and returns its path.
func ensureNATS(ctx context.Context, log io.Writer, tools, version string) (string, error) {
	bin := filepath.Join(tools, "nats-server")
	if out, err := exec.CommandContext(ctx, bin, "--version").Output(); err == nil && strings.Contains(string(out), version) {
		return bin, nil
	}
	if err := os.MkdirAll(tools, 0o755); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "installing nats-server %s into %s (go install)\n", version, tools)
	gobin, err := filepath.Abs(tools)
	if err != nil {
		return "", err
	}
	env := []string{"GOBIN=" + gobin, "GOTOOLCHAIN=local", "CGO_ENABLED=0"}
	if err := runLogged(ctx, log, env, goCommand(), "install", "github.com/nats-io/nats-server/v2@"+version); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil || !strings.Contains(string(out), version) {
		return "", fmt.Errorf("%s --version gave %q (%v), want %s", bin, out, err, version)
	}
	return bin, nil
}

// goCommand is the go tool: $GO, or go on the PATH.
func goCommand() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

func runLogged(ctx context.Context, log io.Writer, env []string, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return nil
}
