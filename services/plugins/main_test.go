package main

import (
	"log/slog"
	"strings"
	"testing"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
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
		{name: "unknown adapter", args: []string{"--channels", "sms=twilio"}, wantErrIn: "known adapters: mock, slack, telegram, webhook"},
		{name: "malformed channels", env: map[string]string{"HERALD_PLUGINS_CHANNELS": "webhook"}, wantErrIn: "want name=adapter"},
		{name: "bad log level", args: []string{"--log-level", "loud"}, wantErrIn: "use debug, info, warn or error"},
		{name: "bad grace", args: []string{"--grace", "0s"}, wantErrIn: "positive duration"},
		{name: "stray argument", args: []string{"serve"}, wantErrIn: "flags only"},
		{name: "webhook secret without whsec_", env: map[string]string{"HERALD_WEBHOOK_SECRET": "c2VjcmV0"}, wantErrIn: `--webhook-secret: webhook secret does not start with "whsec_"`},
		{name: "malformed webhook secrets", args: []string{"--webhook-secrets", "https://a.example/"}, wantErrIn: "--webhook-secrets: entry 1: want url-prefix=whsec_"},
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

func TestParseFlagsTakesSecretsFromEnvironment(t *testing.T) {
	env := map[string]string{
		"HERALD_TELEGRAM_TOKEN":  "1:tg",
		"HERALD_SLACK_TOKEN":     "xoxb-sl",
		"HERALD_WEBHOOK_SECRET":  "whsec_c2VjcmV0",
		"HERALD_WEBHOOK_SECRETS": "https://a.example/=whsec_YS1rZXk=",
	}
	cfg, err := parseFlags([]string{"--slack-token", "xoxb-flag"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	if cfg.telegramToken != "1:tg" || cfg.slackToken != "xoxb-flag" || string(cfg.webhookSecret) != "secret" ||
		len(cfg.webhookSecrets) != 1 || string(cfg.webhookSecrets[0].Key) != "a-key" {
		t.Errorf("secrets not taken from env (flag first): telegram %t slack %t webhook %t endpoints %d",
			cfg.telegramToken == "1:tg", cfg.slackToken == "xoxb-flag", string(cfg.webhookSecret) == "secret", len(cfg.webhookSecrets))
	}
	for _, name := range []string{"webhook", "mock", "telegram", "slack"} {
		if cfg.channels[name] != name {
			t.Errorf("default channels %v lack %s=%s", cfg.channels, name, name)
		}
	}
}

func TestBuildAdaptersWithoutTokensStillBuilds(t *testing.T) {
	cfg, err := parseFlags(nil, func(string) string { return "" })
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	logs := &syncBuffer{}
	adapters, closeAll, err := buildAdapters(cfg, slog.New(slog.NewJSONHandler(logs, nil)), nil)
	defer closeAll()
	if err != nil {
		t.Fatalf("buildAdapters: %v", err)
	}
	for _, kind := range []string{"telegram", "slack"} {
		res := adapters[kind].Deliver(t.Context(), &pluginhost.Delivery{MessageID: "m1", Recipient: "x", Text: "hi"})
		if res.Outcome != pluginsv1.Outcome_OUTCOME_PERMANENT || res.ErrorCode != pluginhost.CodeNotConfigured {
			t.Errorf("%s without token: %v %s, want PERMANENT %s", kind, res.Outcome, res.ErrorCode, pluginhost.CodeNotConfigured)
		}
	}
	for _, want := range []string{"webhooks are unsigned", `"adapter":"telegram"`, `"adapter":"slack"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("startup logs lack %q:\n%s", want, logs.String())
		}
	}
}
