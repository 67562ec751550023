// Command gateway runs herald's public API, GatewayService, in front of the
// tracker.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/heraldchat/herald/pkg/grpcclient"
	"github.com/heraldchat/herald/pkg/grpcserver"
	"github.com/heraldchat/herald/pkg/telemetry"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/gateway/internal/gateway"
)

func main() {
	telemetry.TuneStateless()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "gateway: %v\n", err)
		os.Exit(1)
	}
}

// config is the gateway's process configuration, from flags and environment.
type config struct {
	listen      string
	tracker     string
	queue       string
	plugins     string
	metrics     string // "" disables the metrics endpoint
	logLevel    slog.Level
	drainDelay  time.Duration
	gracePeriod time.Duration
}

// parseFlags reads args, falling back to the environment for every flag that
// is not given, and checks the result.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	env := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", env("HERALD_GATEWAY_LISTEN", "127.0.0.1:7300"), "address to serve GatewayService on (env HERALD_GATEWAY_LISTEN)")
	tracker := fs.String("tracker", env("HERALD_TRACKER_ADDR", "127.0.0.1:7301"), "tracker address (env HERALD_TRACKER_ADDR)")
	queue := fs.String("queue", env("HERALD_QUEUE_ADDR", "127.0.0.1:7302"), "queue address, for status (env HERALD_QUEUE_ADDR)")
	plugins := fs.String("plugins", env("HERALD_PLUGINS_ADDR", "127.0.0.1:7303"), "plugins address, for status (env HERALD_PLUGINS_ADDR)")
	metrics := fs.String("metrics-listen", env("HERALD_GATEWAY_METRICS_LISTEN", "127.0.0.1:9300"),
		"address to serve Prometheus metrics on at /metrics; empty disables (env HERALD_GATEWAY_METRICS_LISTEN)")
	logLevel := fs.String("log-level", env("HERALD_LOG_LEVEL", "info"), "debug, info, warn or error (env HERALD_LOG_LEVEL)")
	drainDelay := fs.String("drain-delay", env("HERALD_GATEWAY_DRAIN_DELAY", "0s"),
		"on shutdown, how long to report NOT_SERVING and refuse new calls before stopping (env HERALD_GATEWAY_DRAIN_DELAY)")
	gracePeriod := fs.String("grace-period", env("HERALD_GATEWAY_GRACE_PERIOD", "10s"),
		"on shutdown, how long running calls may take to finish (env HERALD_GATEWAY_GRACE_PERIOD)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q: the gateway takes only flags (see -h)", fs.Arg(0))
	}

	cfg := config{listen: *listen, tracker: *tracker, queue: *queue, plugins: *plugins, metrics: *metrics}
	for _, a := range []struct{ flag, value string }{
		{"listen", cfg.listen}, {"tracker", cfg.tracker}, {"queue", cfg.queue}, {"plugins", cfg.plugins},
	} {
		if err := checkHostPort(a.value); err != nil {
			return config{}, fmt.Errorf("--%s %q: %v; give host:port, such as 127.0.0.1:7300", a.flag, a.value, err)
		}
	}
	if cfg.metrics != "" {
		if err := checkHostPort(cfg.metrics); err != nil {
			return config{}, fmt.Errorf("--metrics-listen %q: %v; give host:port, such as 127.0.0.1:9300, or \"\" to serve no metrics", cfg.metrics, err)
		}
	}
	if err := cfg.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return config{}, fmt.Errorf("--log-level %q: use debug, info, warn or error", *logLevel)
	}
	var err error
	if cfg.drainDelay, err = time.ParseDuration(*drainDelay); err != nil || cfg.drainDelay < 0 {
		return config{}, fmt.Errorf("--drain-delay %q: give a duration of zero or more, such as 5s", *drainDelay)
	}
	if cfg.gracePeriod, err = time.ParseDuration(*gracePeriod); err != nil || cfg.gracePeriod <= 0 {
		return config{}, fmt.Errorf("--grace-period %q: give a positive duration, such as 10s", *gracePeriod)
	}
	return cfg, nil
}

func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("not a host:port address")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return errors.New("the port is not a number from 0 to 65535")
	}
	return nil
}

// run serves the gateway until ctx is done, then drains: health goes
// NOT_SERVING and new calls are refused, for cfg.drainDelay, after which
// running calls get up to cfg.gracePeriod to finish.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	logger := telemetry.NewLogger(stderr, "gateway", cfg.logLevel)

	shutdownTelemetry, err := telemetry.Setup(ctx, "herald-gateway")
	if err != nil {
		return fmt.Errorf("set up telemetry: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdownTelemetry(sctx); err != nil {
			logger.Warn("telemetry shutdown", "error", err)
		}
	}()

	trackerConn, err := grpcclient.Dial(cfg.tracker)
	if err != nil {
		return fmt.Errorf("connect to the tracker: %w", err)
	}
	defer trackerConn.Close()
	queueConn, err := grpcclient.Dial(cfg.queue)
	if err != nil {
		return fmt.Errorf("connect to the queue: %w", err)
	}
	defer queueConn.Close()
	pluginsConn, err := grpcclient.Dial(cfg.plugins)
	if err != nil {
		return fmt.Errorf("connect to the plugins: %w", err)
	}
	defer pluginsConn.Close()

	reg := telemetry.NewRegistry()
	metrics, err := gateway.NewMetrics(reg)
	if err != nil {
		return err
	}
	metricsSrv, err := telemetry.ServeMetrics(cfg.metrics, reg, logger)
	if err != nil {
		return fmt.Errorf("--metrics-listen: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := metricsSrv.Shutdown(sctx); err != nil {
			logger.Warn("metrics endpoint shutdown", "error", err)
		}
	}()

	srv, err := grpcserver.New(grpcserver.Config{
		Name:        "gateway",
		Addr:        cfg.listen,
		Logger:      logger,
		GracePeriod: cfg.gracePeriod,
	})
	if err != nil {
		return err
	}
	svc, err := gateway.New(gateway.Config{
		Tracker: trackerv1.NewTrackerServiceClient(trackerConn),
		Peers: []gateway.Peer{
			{Name: "tracker", Address: cfg.tracker, Health: healthpb.NewHealthClient(trackerConn)},
			{Name: "queue", Address: cfg.queue, Health: healthpb.NewHealthClient(queueConn)},
			{Name: "plugins", Address: cfg.plugins, Health: healthpb.NewHealthClient(pluginsConn)},
		},
		Plugins: pluginsv1.NewPluginHostServiceClient(pluginsConn),
		Address: srv.Addr(),
		Logger:  logger,
		Metrics: metrics,
	})
	if err != nil {
		srv.GRPC().Stop()
		return err
	}
	gatewayv1.RegisterGatewayServiceServer(srv.GRPC(), svc)

	// serveCtx ends after the drain delay that follows ctx, so that clients
	// and load balancers see NOT_SERVING before the listener closes.
	serveCtx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		select {
		case <-ctx.Done():
		case <-serveCtx.Done():
			return
		}
		logger.Info("draining", "drain_delay", cfg.drainDelay.String(), "grace_period", cfg.gracePeriod.String())
		svc.Drain()
		srv.SetServing(false)
		timer := time.NewTimer(cfg.drainDelay)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-serveCtx.Done():
		}
		stopServing()
	}()

	fmt.Fprintf(stdout, "gateway listening on %s\n", srv.Addr())
	if metricsSrv != nil {
		fmt.Fprintf(stdout, "gateway metrics on http://%s/metrics\n", metricsSrv.Addr())
	}
	logger.Info("gateway listening", "addr", srv.Addr(), "metrics", metricsSrv.Addr(), "tracker", cfg.tracker, "queue", cfg.queue, "plugins", cfg.plugins)
	err = srv.Serve(serveCtx)
	stopServing()
	<-drained
	svc.Close()
	if err != nil {
		return err
	}
	logger.Info("gateway stopped")
	return nil
}
