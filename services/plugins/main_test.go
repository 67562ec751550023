package main

import (
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		wantAddr  string
		wantErrIn string // substring of the error; "" for success
	}{
		{name: "defaults", wantAddr: "127.0.0.1:7303"},
		{name: "env fallback", env: map[string]string{"HERALD_PLUGINS_LISTEN": "127.0.0.1:9999"}, wantAddr: "127.0.0.1:9999"},
		{name: "flag beats env", args: []string{"--listen", "127.0.0.1:1"}, env: map[string]string{"HERALD_PLUGINS_LISTEN": "127.0.0.1:9999"}, wantAddr: "127.0.0.1:1"},
		{name: "unknown adapter", args: []string{"--channels", "sms=twilio"}, wantErrIn: "known adapters: mock, webhook"},
		{name: "malformed channels", env: map[string]string{"HERALD_PLUGINS_CHANNELS": "webhook"}, wantErrIn: "want name=adapter"},
		{name: "bad log level", args: []string{"--log-level", "loud"}, wantErrIn: "use debug, info, warn or error"},
		{name: "bad grace", args: []string{"--grace", "0s"}, wantErrIn: "positive duration"},
		{name: "stray argument", args: []string{"serve"}, wantErrIn: "flags only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseFlags(tt.args, func(k string) string { return tt.env[k] })
			if tt.wantErrIn != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErrIn) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErrIn)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseFlags: %v", err)
			}
			if cfg.listen != tt.wantAddr {
				t.Errorf("listen = %q, want %q", cfg.listen, tt.wantAddr)
			}
		})
	}
}
