// Command plugins runs herald's plugin host: the gRPC service the queue hands
// deliveries to, with one adapter per configured channel.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/heraldchat/herald/pkg/grpcclient"
	"github.com/heraldchat/herald/pkg/grpcserver"
	"github.com/heraldchat/herald/pkg/telemetry"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/plugins/internal/mock"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
	"github.com/heraldchat/herald/services/plugins/internal/slack"
	"github.com/heraldchat/herald/services/plugins/internal/telegram"
	"github.com/heraldchat/herald/services/plugins/internal/webhook"
)

func main() {
	telemetry.TuneStateless()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv); err != nil {
		fmt.Fprintf(os.Stderr, "plugins: %v\n", err)
		os.Exit(1)
	}
}

type config struct {
	listen     string
	metrics    string            // "" disables the metrics endpoint
	channels   map[string]string // channel name -> adapter name
	mockRecord string
	logLevel   slog.Level
	grace      time.Duration
	tracker    string

	telegramToken   string // secret: never log or print
	telegramBaseURL string
	slackToken      string // secret: never log or print
	slackBaseURL    string
	webhookSecret   []byte // secret: never log or print
	webhookSecrets  []webhook.EndpointSecret
	// unhealthyAfter consecutive failures mark a channel degraded.
	unhealthyAfter uint32
}

func parseFlags(args []string, getenv func(string) string) (config, error) {
	env := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("plugins", flag.ContinueOnError)
	listen := fs.String("listen", env("HERALD_PLUGINS_LISTEN", "127.0.0.1:7303"),
		"gRPC listen address (env HERALD_PLUGINS_LISTEN)")
	channels := fs.String("channels", env("HERALD_PLUGINS_CHANNELS", "webhook=webhook,mock=mock,telegram=telegram,slack=slack"),
		"channel table name=adapter,...; adapters: "+strings.Join(adapterNames(), ", ")+" (env HERALD_PLUGINS_CHANNELS)")
	metrics := fs.String("metrics-listen", env("HERALD_PLUGINS_METRICS_LISTEN", "127.0.0.1:9303"),
		"address to serve Prometheus metrics on at /metrics; empty disables (env HERALD_PLUGINS_METRICS_LISTEN)")
	mockRecord := fs.String("mock-record", env("HERALD_MOCK_RECORD", ""),
		"append each mock delivery as a JSON line to this file (env HERALD_MOCK_RECORD)")
	logLevel := fs.String("log-level", env("HERALD_LOG_LEVEL", "info"),
		"log level: debug, info, warn, error (env HERALD_LOG_LEVEL)")
	unhealthy := fs.Uint("failure-notification-threshold", 3, "consecutive failed deliveries that mark a channel degraded")
	tracker := fs.String("tracker", env("HERALD_TRACKER_ADDR", "127.0.0.1:7301"),
		"tracker address, for reporting answers a dead queue could not (env HERALD_TRACKER_ADDR)")
	grace := fs.String("grace", env("HERALD_PLUGINS_GRACE", "10s"),
		"how long a stop waits for open streams before cutting them (env HERALD_PLUGINS_GRACE)")
	// Secrets take no flag default from the environment, so -h never
	// prints them; the environment fills them in after parsing.
	telegramToken := fs.String("telegram-token", "",
		"telegram bot token; prefer the environment, flags show in ps (env HERALD_TELEGRAM_TOKEN)")
	telegramBaseURL := fs.String("telegram-base-url", env("HERALD_TELEGRAM_BASE_URL", telegram.DefaultBaseURL),
		"telegram Bot API address (env HERALD_TELEGRAM_BASE_URL)")
	slackToken := fs.String("slack-token", "",
		"slack bot token (xoxb-...); prefer the environment, flags show in ps (env HERALD_SLACK_TOKEN)")
	slackBaseURL := fs.String("slack-base-url", env("HERALD_SLACK_BASE_URL", slack.DefaultBaseURL),
		"slack Web API address (env HERALD_SLACK_BASE_URL)")
	webhookSecret := fs.String("webhook-secret", "",
		"default webhook signing secret, whsec_<base64 key> (env HERALD_WEBHOOK_SECRET)")
	webhookSecrets := fs.String("webhook-secrets", "",
		"per-endpoint signing secrets url-prefix=whsec_...,...; the longest prefix wins (env HERALD_WEBHOOK_SECRETS)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	orEnv := func(v *string, key string) {
		if *v == "" {
			*v = getenv(key)
		}
	}
	orEnv(telegramToken, "HERALD_TELEGRAM_TOKEN")
	orEnv(slackToken, "HERALD_SLACK_TOKEN")
	orEnv(webhookSecret, "HERALD_WEBHOOK_SECRET")
	orEnv(webhookSecrets, "HERALD_WEBHOOK_SECRETS")
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q: plugins takes flags only (see -h)", fs.Args())
	}

	cfg := config{
		unhealthyAfter: uint32(*unhealthy),
		listen:         *listen, metrics: *metrics, mockRecord: *mockRecord, tracker: *tracker,
		telegramToken: *telegramToken, telegramBaseURL: *telegramBaseURL,
		slackToken: *slackToken, slackBaseURL: *slackBaseURL,
	}
	if cfg.listen == "" {
		return config{}, errors.New("--listen is empty: give a host:port such as 127.0.0.1:7303")
	}
	var err error
	if err = cfg.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return config{}, fmt.Errorf("--log-level %q: use debug, info, warn or error", *logLevel)
	}
	if cfg.grace, err = time.ParseDuration(*grace); err != nil || cfg.grace <= 0 {
		return config{}, fmt.Errorf("--grace %q: give a positive duration such as 10s", *grace)
	}
	ch, err := pluginhost.ParseChannels(*channels)
	if err != nil {
		return config{}, fmt.Errorf("--channels: %w", err)
	}
	for name, adapter := range ch {
		if !slices.Contains(adapterNames(), adapter) {
			return config{}, fmt.Errorf("--channels: channel %q names adapter %q; known adapters: %s",
				name, adapter, strings.Join(adapterNames(), ", "))
		}
	}
	cfg.channels = ch
	if *webhookSecret != "" {
		if cfg.webhookSecret, err = webhook.ParseSecret(*webhookSecret); err != nil {
			return config{}, fmt.Errorf("--webhook-secret: %w", err)
		}
	}
	if cfg.webhookSecrets, err = webhook.ParseSecrets(*webhookSecrets); err != nil {
		return config{}, fmt.Errorf("--webhook-secrets: %w", err)
	}
	return cfg, nil
}

// adapterNames lists the adapter kinds --channels may name; run builds one
// instance of each.
func adapterNames() []string { return []string{"mock", "slack", "telegram", "webhook"} }

// buildAdapters builds one instance of each adapter kind, shared by the
// channels that use it. closeAll releases them; call it even on error.
// An adapter whose credential is missing is still built: it answers
// PERMANENT, PLG_008, so a misconfigured channel fails loudly per delivery
// instead of the whole host refusing to start.
func buildAdapters(cfg config, logger *slog.Logger, tp trace.TracerProvider) (adapters map[string]pluginhost.Adapter, closeAll func(), err error) {
	var closers []func()
	closeAll = func() {
		for _, c := range slices.Backward(closers) {
			c()
		}
	}

	webhookAdapter := webhook.New(webhook.Options{
		Secret: cfg.webhookSecret, Secrets: cfg.webhookSecrets, TracerProvider: tp,
	})
	closers = append(closers, webhookAdapter.Close)
	switch {
	case len(cfg.webhookSecret) == 0 && len(cfg.webhookSecrets) == 0:
		logger.Warn("webhooks are unsigned: set --webhook-secret or HERALD_WEBHOOK_SECRET to sign them")
	case len(cfg.webhookSecret) == 0:
		logger.Warn("webhooks to URLs outside the --webhook-secrets prefixes are unsigned: set --webhook-secret to sign them")
	}

	telegramAdapter, err := telegram.New(telegram.Options{
		Token: cfg.telegramToken, BaseURL: cfg.telegramBaseURL, TracerProvider: tp,
	})
	if err != nil {
		return nil, closeAll, fmt.Errorf("--telegram-base-url or --telegram-token: %w", err)
	}
	closers = append(closers, telegramAdapter.Close)

	slackAdapter, err := slack.New(slack.Options{
		Token: cfg.slackToken, BaseURL: cfg.slackBaseURL, TracerProvider: tp,
	})
	if err != nil {
		return nil, closeAll, fmt.Errorf("--slack-base-url: %w", err)
	}
	closers = append(closers, slackAdapter.Close)

	// The binary never lists the mock's deliveries (tests in process do):
	// keep a few, not one per message for the life of the process.
	mockOpts := mock.Options{Keep: 1000}
	var mockRecord *os.File
	if cfg.mockRecord != "" {
		f, err := os.OpenFile(cfg.mockRecord, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, closeAll, fmt.Errorf("--mock-record: open %s: %w", cfg.mockRecord, err)
		}
		closers = append(closers, func() { _ = f.Close() })
		mockOpts.Record = f
		mockRecord = f
	}
	mockAdapter := mock.New(mockOpts)
	if mockRecord != nil {
		// What the mock provider accepted before a restart: its reconcile
		// answers must cover it.
		if err := mockAdapter.Replay(mockRecord); err != nil {
			return nil, closeAll, fmt.Errorf("--mock-record %s: %w", cfg.mockRecord, err)
		}
	}

	// Say which channels cannot deliver, once, at startup.
	for name, kind := range cfg.channels {
		if (kind == "telegram" && cfg.telegramToken == "") || (kind == "slack" && cfg.slackToken == "") {
			logger.Warn("channel has no credential and will answer every delivery PERMANENT",
				slog.String("channel", name), slog.String("adapter", kind),
				slog.String("error_code", pluginhost.CodeNotConfigured))
		}
	}

	return map[string]pluginhost.Adapter{
		"webhook":  webhookAdapter,
		"telegram": telegramAdapter,
		"slack":    slackAdapter,
		"mock":     mockAdapter,
	}, closeAll, nil
}

func run(ctx context.Context, args []string, getenv func(string) string) error {
	cfg, err := parseFlags(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}

	logger := telemetry.NewLogger(os.Stderr, "plugins", cfg.logLevel)
	shutdownTelemetry, err := telemetry.Setup(ctx, "herald-plugins")
	if err != nil {
		return fmt.Errorf("set up telemetry: %w", err)
	}
	defer func() {
		// ctx is done by now; give the flush its own bound.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdownTelemetry(sctx); err != nil {
			logger.Warn("flush telemetry", slog.Any("error", err))
		}
	}()

	// nil: the adapters trace with the provider telemetry.Setup installed.
	adapters, closeAdapters, err := buildAdapters(cfg, logger, nil)
	defer closeAdapters()
	if err != nil {
		return err
	}
	channels := make(map[string]pluginhost.Adapter, len(cfg.channels))
	for name, kind := range cfg.channels {
		channels[name] = adapters[kind]
	}
	tconn, err := grpcclient.Dial(cfg.tracker)
	if err != nil {
		return fmt.Errorf("--tracker %s: %w", cfg.tracker, err)
	}
	defer tconn.Close()
	// Provider calls outlive a broken stream, not the process: lifetime
	// ends after the server has stopped and every handler has reported.
	lifetime, endLifetime := context.WithCancel(context.Background())
	defer endLifetime()
	reg := telemetry.NewRegistry()
	metrics, err := pluginhost.NewMetrics(reg)
	if err != nil {
		return err
	}
	host, err := pluginhost.New(channels, pluginhost.Options{
		Metrics:        metrics,
		Logger:         logger,
		Reporter:       pluginhost.TrackerReporter{Client: trackerv1.NewTrackerServiceClient(tconn), Timeout: time.Minute},
		UnhealthyAfter: cfg.unhealthyAfter,
		Lifetime:       lifetime,
	})
	if err != nil {
		return fmt.Errorf("build plugin host: %w", err)
	}

	metricsSrv, err := telemetry.ServeMetrics(cfg.metrics, reg, logger)
	if err != nil {
		return fmt.Errorf("--metrics-listen: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := metricsSrv.Shutdown(sctx); err != nil {
			logger.Warn("metrics endpoint shutdown", slog.Any("error", err))
		}
	}()

	srv, err := grpcserver.New(grpcserver.Config{
		Name:        "plugins",
		Addr:        cfg.listen,
		Logger:      logger,
		GracePeriod: cfg.grace,
	})
	if err != nil {
		return err
	}
	pluginsv1.RegisterPluginHostServiceServer(srv.GRPC(), host)

	logger.Info("plugins listening", slog.String("addr", srv.Addr()), slog.Any("channels", cfg.channels))
	fmt.Fprintf(os.Stdout, "plugins listening on %s\n", srv.Addr())
	if metricsSrv != nil {
		fmt.Fprintf(os.Stdout, "plugins metrics on http://%s/metrics\n", metricsSrv.Addr())
	}
	var cut atomic.Int64 // provider calls cancelled by the grace period
	go func() {
		<-ctx.Done()
		host.Drain()
		// Calls still running a grace period after the signal are cut, and
		// so is the reporting of unacknowledged answers: those leases expire
		// into the unknown-outcome policy.
		time.AfterFunc(cfg.grace, func() {
			if n := host.InFlight(); n > 0 {
				cut.Store(n)
				logger.Warn("grace period over: cancelling provider calls still under way; their outcomes are unknown and follow the channel's policy",
					slog.Int64("calls_cancelled", n), slog.Duration("grace_period", cfg.grace))
			}
			endLifetime()
		})
	}()
	defer host.WaitReports() // bounded: endLifetime fires a grace period after the signal
	if err := srv.Serve(ctx); err != nil {
		return err
	}
	if n := cut.Load(); n > 0 {
		return fmt.Errorf("stopped after cancelling %d provider calls at the end of the %s grace period", n, cfg.grace)
	}
	logger.Info("plugins stopped: every provider call under way was answered")
	return nil
}
