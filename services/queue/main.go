// Command herald-queue schedules herald's deliveries: it leases due messages
// from the tracker, dispatches them to the plugin host and reports outcomes.
// It keeps no state of its own; a restarted queue resumes from the tracker.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/heraldchat/herald/pkg/clock"
	"github.com/heraldchat/herald/pkg/grpcclient"
	"github.com/heraldchat/herald/pkg/grpcserver"
	"github.com/heraldchat/herald/pkg/telemetry"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	queuev1 "github.com/heraldchat/herald/proto/herald/queue/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/queue/internal/queue"
)

func main() {
	telemetry.TuneStateless()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "queue: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	env := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	var (
		cfg      queue.Config
		listen   string
		tracker  string
		plugins  string
		logLevel string
		metrics  string
	)
	fs := flag.NewFlagSet("herald-queue", flag.ContinueOnError)
	fs.StringVar(&listen, "listen", env("HERALD_QUEUE_LISTEN", "127.0.0.1:7302"), "gRPC listen address (env HERALD_QUEUE_LISTEN)")
	fs.StringVar(&tracker, "tracker", env("HERALD_TRACKER_ADDR", "127.0.0.1:7301"), "tracker address (env HERALD_TRACKER_ADDR)")
	fs.StringVar(&plugins, "plugins", env("HERALD_PLUGINS_ADDR", "127.0.0.1:7303"), "plugin host address (env HERALD_PLUGINS_ADDR)")
	fs.StringVar(&metrics, "metrics-listen", env("HERALD_QUEUE_METRICS_LISTEN", "127.0.0.1:9302"),
		"address to serve Prometheus metrics on at /metrics; empty disables (env HERALD_QUEUE_METRICS_LISTEN)")
	fs.StringVar(&logLevel, "log-level", env("HERALD_LOG_LEVEL", "info"), "debug, info, warn or error (env HERALD_LOG_LEVEL)")
	fs.StringVar(&cfg.Worker, "worker", env("HERALD_QUEUE_WORKER", "queue-"+hostname()), "this queue's name in events (env HERALD_QUEUE_WORKER)")
	fs.IntVar(&cfg.LeaseBatch, "lease-batch", 256, "most messages leased per call")
	fs.IntVar(&cfg.MaxInFlight, "max-in-flight", 1024, "most deliveries in flight")
	fs.IntVar(&cfg.DefaultChannelLimit, "channel-limit", 256, "most deliveries in flight per channel")
	fs.DurationVar(&cfg.DeliverTimeout, "deliver-timeout", 10*time.Second, "bound on one provider call")
	fs.DurationVar(&cfg.LeaseDuration, "lease", 0, "lease duration; default 3×deliver-timeout+5s")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 25*time.Second,
		"on SIGTERM, how long deliveries in flight may finish; keep it below the container's stop grace period (docker: 30s by default)")
	fs.DurationVar(&cfg.DefaultRetry.Initial, "retry-initial", time.Second, "first retry delay")
	fs.Float64Var(&cfg.DefaultRetry.Multiplier, "retry-multiplier", 2, "retry delay growth per attempt")
	fs.DurationVar(&cfg.DefaultRetry.Max, "retry-max-delay", 5*time.Minute, "largest retry delay")
	var maxAttempts uint
	fs.UintVar(&maxAttempts, "retry-max-attempts", 10, "attempts before a message is dead-lettered")
	fs.DurationVar(&cfg.DefaultRetry.MaxAge, "retry-max-age", 24*time.Hour, "age after which a failing message is dead-lettered")
	fs.IntVar(&cfg.FailureThreshold, "failure-notification-threshold", 3, "consecutive failures on a channel that emit a channel.unhealthy event")
	var channelRetry []string
	fs.Func("channel-retry", "per-channel retry policy, repeatable: CHANNEL:initial=2s,multiplier=2,max=1m,attempts=5,max-age=1h (unset keys take the --retry-* defaults)",
		func(v string) error { channelRetry = append(channelRetry, v); return nil })
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.DefaultRetry.MaxAttempts = uint32(maxAttempts)
	cfg.Retry = map[string]queue.RetryPolicy{}
	for _, v := range channelRetry {
		ch, p, err := queue.ParseRetryPolicy(v, cfg.DefaultRetry)
		if err != nil {
			return fmt.Errorf("--channel-retry %q: %w", v, err)
		}
		cfg.Retry[ch] = p
	}
	if cfg.LeaseDuration != 0 && cfg.LeaseDuration <= cfg.DeliverTimeout {
		return fmt.Errorf("--lease=%s must exceed --deliver-timeout=%s, or a slow delivery's lease expires while it runs", cfg.LeaseDuration, cfg.DeliverTimeout)
	}
	if cfg.DefaultRetry.Multiplier < 1 {
		return errors.New("--retry-multiplier must be at least 1")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("--log-level=%q: use debug, info, warn or error", logLevel)
	}
	log := telemetry.NewLogger(os.Stderr, "queue", level)
	shutdownTracing, err := telemetry.Setup(ctx, "herald-queue")
	if err != nil {
		return fmt.Errorf("set up tracing: %w", err)
	}
	defer shutdownTracing(context.Background())

	tconn, err := grpcclient.Dial(tracker)
	if err != nil {
		return fmt.Errorf("tracker %s: %w", tracker, err)
	}
	defer tconn.Close()
	pconn, err := grpcclient.Dial(plugins)
	if err != nil {
		return fmt.Errorf("plugin host %s: %w", plugins, err)
	}
	defer pconn.Close()

	reg := telemetry.NewRegistry()
	if cfg.Metrics, err = queue.NewMetrics(reg); err != nil {
		return err
	}
	metricsSrv, err := telemetry.ServeMetrics(metrics, reg, log)
	if err != nil {
		return fmt.Errorf("--metrics-listen: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := metricsSrv.Shutdown(sctx); err != nil {
			log.Warn("metrics endpoint shutdown", "err", err)
		}
	}()

	q := queue.New(cfg, trackerv1.NewTrackerServiceClient(tconn), pluginsv1.NewPluginHostServiceClient(pconn), log, clock.Monotonic())
	srv, err := grpcserver.New(grpcserver.Config{Name: queuev1.QueueService_ServiceDesc.ServiceName, Addr: listen, Logger: log})
	if err != nil {
		return err
	}
	queuev1.RegisterQueueServiceServer(srv.GRPC(), q)
	fmt.Fprintf(stdout, "queue listening on %s (tracker %s, plugins %s)\n", srv.Addr(), tracker, plugins)
	if metricsSrv != nil {
		fmt.Fprintf(stdout, "queue metrics on http://%s/metrics\n", metricsSrv.Addr())
	}

	serveErr := make(chan error, 1)
	srvCtx, stopSrv := context.WithCancel(context.Background())
	defer stopSrv()
	go func() { serveErr <- srv.Serve(srvCtx) }()

	runErr := q.Run(ctx) // returns after draining
	stopSrv()
	if err := <-serveErr; err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "local"
	}
	return h
}
