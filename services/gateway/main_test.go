package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    config
		wantErr string
	}{
		{name: "defaults", want: config{listen: "127.0.0.1:7300", tracker: "127.0.0.1:7301", queue: "127.0.0.1:7302", plugins: "127.0.0.1:7303", metrics: "127.0.0.1:9300", gracePeriod: 10 * time.Second}},
		{name: "environment fills flags not given",
			args: []string{"--queue", "q:1"},
			env:  map[string]string{"HERALD_TRACKER_ADDR": "t:1", "HERALD_QUEUE_ADDR": "ignored:2", "HERALD_LOG_LEVEL": "debug", "HERALD_GATEWAY_METRICS_LISTEN": "0.0.0.0:9400"},
			want: config{listen: "127.0.0.1:7300", tracker: "t:1", queue: "q:1", plugins: "127.0.0.1:7303", metrics: "0.0.0.0:9400", logLevel: -4, gracePeriod: 10 * time.Second}},
		{name: "empty metrics address disables metrics", args: []string{"--metrics-listen", ""},
			want: config{listen: "127.0.0.1:7300", tracker: "127.0.0.1:7301", queue: "127.0.0.1:7302", plugins: "127.0.0.1:7303", gracePeriod: 10 * time.Second}},
		{name: "bad metrics address", args: []string{"--metrics-listen", "9300"}, wantErr: "--metrics-listen"},
		{name: "bad address", args: []string{"--tracker", "localhost"}, wantErr: "--tracker"},
		{name: "bad port", args: []string{"--listen", "127.0.0.1:http"}, wantErr: "--listen"},
		{name: "bad log level", args: []string{"--log-level", "loud"}, wantErr: "--log-level"},
		{name: "stray argument", args: []string{"serve"}, wantErr: "unexpected argument"},
		{name: "unknown flag", args: []string{"--port", "1"}, wantErr: "not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(tt.args, func(k string) string { return tt.env[k] }, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseFlags() error = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("parseFlags() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe to read while run writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunServesUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--grace-period", "2s"}, func(string) string { return "" }, &stdout, io.Discard)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), "gateway listening on 127.0.0.1:") {
		if time.Now().After(deadline) {
			t.Fatalf("no listening line on stdout; got %q", stdout.String())
		}
		select {
		case err := <-done:
			t.Fatalf("run() returned early: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run() = %v, want nil after cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run() did not return after cancel")
	}
}
