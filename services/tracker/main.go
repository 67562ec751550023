// Command herald-tracker owns herald's Pebble store: every message's
// delivery state, the recovery index and the event log.
//
//	herald-tracker [flags]                    serve
//	herald-tracker verify --data-dir DIR      check a stopped tracker's store
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
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/heraldchat/herald/pkg/clock"
	"github.com/heraldchat/herald/pkg/grpcserver"
	"github.com/heraldchat/herald/pkg/telemetry"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/tracker/internal/store"
	"github.com/heraldchat/herald/services/tracker/internal/tracker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "tracker: %v\n", err)
		os.Exit(1)
	}
}

type config struct {
	listen        string
	dataDir       string
	maxPending    int
	unknownPolicy string
	scrub         bool
	scrubPause    time.Duration
	syncShare     time.Duration
	logLevel      string
	grace         time.Duration
	sweep         time.Duration
	backupDir     string
	metrics       string // "" disables the metrics endpoint
	drainTimeout  time.Duration
	// reconcileGrace and reconcileAttempts shape the reconcile policy.
	reconcileGrace    time.Duration
	reconcileAttempts int
}

func parse(name string, args []string, getenv func(string) string) (config, *flag.FlagSet, error) {
	env := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	var c config
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&c.listen, "listen", env("HERALD_TRACKER_LISTEN", "127.0.0.1:7301"), "gRPC listen address (env HERALD_TRACKER_LISTEN)")
	fs.StringVar(&c.dataDir, "data-dir", env("HERALD_DATA_DIR", "data/tracker"), "Pebble data directory; only one tracker may use it (env HERALD_DATA_DIR)")
	fs.IntVar(&c.maxPending, "max-pending", 1_000_000, "most non-terminal messages; Send fails with RESOURCE_EXHAUSTED beyond it")
	fs.StringVar(&c.unknownPolicy, "unknown-policy", env("HERALD_UNKNOWN_POLICY", "webhook=redeliver,mock=redeliver,slack=reconcile,*=fail"),
		"what to do per channel when a delivery's outcome is unknown: channel=redeliver|fail|reconcile, comma-separated; * is the default (env HERALD_UNKNOWN_POLICY)")
	var grace string
	fs.StringVar(&grace, "reconcile-grace", env("HERALD_RECONCILE_GRACE", "30s"),
		"reconcile policy: how long after an outcome became unknown the provider is first asked; keep it above the queue's --deliver-timeout so the call in question has ended; also the first backoff between tries (env HERALD_RECONCILE_GRACE)")
	fs.IntVar(&c.reconcileAttempts, "reconcile-attempts", 5,
		"reconcile policy: times the provider is asked about one unknown outcome before the message is dead-lettered (outcome_unknown)")
	fs.StringVar(&c.metrics, "metrics-listen", env("HERALD_TRACKER_METRICS_LISTEN", "127.0.0.1:9301"),
		"address to serve Prometheus metrics on at /metrics; empty disables (env HERALD_TRACKER_METRICS_LISTEN)")
	fs.StringVar(&c.logLevel, "log-level", env("HERALD_LOG_LEVEL", "info"), "debug, info, warn or error (env HERALD_LOG_LEVEL)")
	fs.StringVar(&c.backupDir, "backup-dir", env("HERALD_BACKUP_DIR", ""), "folder for online backups (herald backup); default <data-dir>/../backups (env HERALD_BACKUP_DIR)")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 20*time.Second, "on SIGTERM, how long outcomes of deliveries under way may still be recorded (the tracker stops last)")
	fs.DurationVar(&c.grace, "grace", 10*time.Second, "how long to let open calls finish on shutdown")
	fs.BoolVar(&c.scrub, "scrub", true, "after start, read every table of the store in the background and check its block checksums; damage stops the tracker")
	fs.DurationVar(&c.scrubPause, "scrub-pause", 10*time.Millisecond, "pause between tables while scrubbing, so that the scrub yields to serving")
	fs.DurationVar(&c.syncShare, "sync-share-delay", store.DefaultSyncShareDelay,
		"how long a lease batch or a batch of delivery outcomes waits for another commit's fsync (a Send's) before it syncs alone; nothing is answered before it is durable. 0 or less: every batch syncs alone")
	fs.DurationVar(&c.sweep, "lease-sweep", 250*time.Millisecond, "how often expired leases are looked for")
	if err := fs.Parse(args); err != nil {
		return c, fs, err
	}
	if c.dataDir == "" {
		return c, fs, errors.New("--data-dir is empty: give the folder that holds (or will hold) the store")
	}
	if c.backupDir == "" {
		c.backupDir = filepath.Join(filepath.Dir(filepath.Clean(c.dataDir)), "backups")
	}
	if c.maxPending <= 0 {
		return c, fs, fmt.Errorf("--max-pending=%d: give a positive number", c.maxPending)
	}
	var err error
	if c.reconcileGrace, err = time.ParseDuration(grace); err != nil || c.reconcileGrace <= 0 {
		return c, fs, fmt.Errorf("--reconcile-grace=%q: give a positive duration such as 30s", grace)
	}
	if c.reconcileAttempts <= 0 {
		return c, fs, fmt.Errorf("--reconcile-attempts=%d: give a positive number", c.reconcileAttempts)
	}
	return c, fs, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) > 0 && args[0] == "verify" {
		return verify(args[1:], getenv, stdout)
	}
	c, _, err := parse("herald-tracker", args, getenv)
	if err != nil {
		return err
	}
	level, err := parseLevel(c.logLevel)
	if err != nil {
		return err
	}
	policy, err := parsePolicy(c.unknownPolicy)
	if err != nil {
		return err
	}
	log := telemetry.NewLogger(os.Stderr, "tracker", level)
	shutdownTracing, err := telemetry.Setup(ctx, "herald-tracker")
	if err != nil {
		return fmt.Errorf("set up tracing: %w", err)
	}
	defer shutdownTracing(context.Background())

	if err := os.MkdirAll(c.dataDir, 0o750); err != nil {
		return fmt.Errorf("create data directory %s: %w", c.dataDir, err)
	}
	// Due times and lease expiries must not move when the system clock is
	// stepped: a forward step would expire every lease at once.
	now := clock.Monotonic()
	reg := telemetry.NewRegistry()
	metrics, err := tracker.NewMetrics(reg, now)
	if err != nil {
		return err
	}
	st, err := store.Open(c.dataDir, store.Options{
		MaxPending: c.maxPending, UnknownPolicy: policy, Logger: log, Now: now, OnCommit: metrics.ObserveCommit,
		ReconcileGrace: c.reconcileGrace, ReconcileAttempts: c.reconcileAttempts,
		SyncShareDelay: syncShareOption(c.syncShare),
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("close store", "err", err)
		}
	}()
	// A check whose cost follows the pending work, not the history; the
	// scrub below reads every table once the tracker serves.
	checkStart := time.Now()
	report := st.Check()
	if len(report.Problems) > 0 {
		for _, p := range report.Problems {
			log.Error("store inconsistency", "error_code", "TRK_005", "problem", p)
		}
		if damaged := st.DamagedFiles(); len(damaged) > 0 {
			return damagedError(c, damaged)
		}
		return fmt.Errorf("the store in %s failed its consistency check (%d problems, see the log); nothing was changed: run 'herald-tracker verify --data-dir %s' and restore from a backup if needed",
			c.dataDir, len(report.Problems), c.dataDir)
	}
	log.Info("store opened", "data_dir", c.dataDir, "messages", report.Messages, "recovery_index", report.RecoveryEntries, "recovery_dead", st.RecoveryDead(), "check", time.Since(checkStart).Round(time.Microsecond))

	// Started after the store opened, so it stops before the store closes.
	metrics.Watch(st)
	metricsSrv, err := telemetry.ServeMetrics(c.metrics, reg, log)
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

	srv, err := grpcserver.New(grpcserver.Config{Name: trackerv1.TrackerService_ServiceDesc.ServiceName, Addr: c.listen, Logger: log, GracePeriod: c.grace})
	if err != nil {
		return err
	}
	svc := tracker.New(st, log, now, c.backupDir)
	trackerv1.RegisterTrackerServiceServer(srv.GRPC(), svc)

	// On SIGTERM: NOT_SERVING at once, refuse new messages and leases, keep
	// recording outcomes until they stop arriving, then stop serving.
	serveCtx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	go func() {
		<-ctx.Done()
		srv.SetServing(false)
		svc.Stop()
		svc.Drain(time.Second, c.drainTimeout)
		svc.Close()
		stopServing()
	}()
	// Damage found by any read, or by the scrub, stops the tracker: it
	// exits non-zero naming the files, and deletes nothing.
	damaged := make(chan error, 1)
	go func() {
		select {
		case <-st.Damaged():
		case <-serveCtx.Done():
			return
		}
		files := st.DamagedFiles()
		log.Error("store damaged: stopping", "error_code", "TRK_002", "files", strings.Join(files, ", "))
		damaged <- damagedError(c, files)
		srv.SetServing(false)
		svc.Close()
		stopServing()
	}()
	// Background upkeep after the start: it ends before the store closes.
	scrubCtx, stopScrub := context.WithCancel(ctx)
	upkeepDone := make(chan struct{})
	go func() {
		defer close(upkeepDone)
		tidyRecoveryIndex(scrubCtx, st, log)
		if c.scrub {
			scrubStore(scrubCtx, st, c.scrubPause, log)
		}
	}()
	defer func() { stopScrub(); <-upkeepDone }()
	sweepCtx, stopSweep := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		svc.ExpireLeases(sweepCtx, c.sweep)
	}()
	defer func() { stopSweep(); <-done }()

	fmt.Fprintf(stdout, "tracker listening on %s (data %s)\n", srv.Addr(), c.dataDir)
	if metricsSrv != nil {
		fmt.Fprintf(stdout, "tracker metrics on http://%s/metrics\n", metricsSrv.Addr())
	}
	log.Info("serving", "addr", srv.Addr(), "metrics", metricsSrv.Addr())
	if err := srv.Serve(serveCtx); err != nil {
		return err
	}
	select {
	case err := <-damaged:
		return err
	default:
	}
	log.Info("stopped cleanly; store flushed and closed")
	return nil
}

// tidyMinDead is how many dead recovery-index entries (finished messages
// whose entries and single deletes await a compaction) a start may step
// over before the tracker compacts the index's range (when they also
// outnumber the live entries).
const tidyMinDead = 10_000

// tidyRecoveryIndex compacts the recovery index's range when the scan at
// open stepped over too many dead entries.
func tidyRecoveryIndex(ctx context.Context, st *store.Store, log *slog.Logger) {
	start := time.Now()
	dead := st.RecoveryDead()
	tidied, err := st.TidyRecoveryIndex(ctx, tidyMinDead)
	switch {
	case err != nil && ctx.Err() == nil:
		log.Warn("could not compact the recovery index; the next start scans its dead entries again", "dead_entries", dead, "err", err)
	case tidied:
		log.Info("recovery index compacted: the next start scans only pending entries", "dead_entries", dead, "took", time.Since(start).Round(time.Millisecond))
	}
}

// scrubStore checks every table's block checksums, pausing between tables.
func scrubStore(ctx context.Context, st *store.Store, pause time.Duration, log *slog.Logger) {
	start := time.Now()
	n, err := st.Scrub(ctx, pause)
	switch {
	case err == nil:
		// The scrub read the whole store once; give the memory it passed
		// through back now rather than when the scavenger gets to it, so
		// the tracker's footprint follows its pending work, not the size
		// of its history.
		debug.FreeOSMemory()
		log.Info("store scrubbed: every table's block checksums verified", "tables", n, "took", time.Since(start).Round(time.Millisecond))
	case ctx.Err() == nil:
		log.Error("store scrub failed", "error_code", "TRK_002", "tables_verified", n, "err", err)
	}
}

// damagedError tells the operator which files are damaged and what to do.
func damagedError(c config, files []string) error {
	return fmt.Errorf("the store in %s is damaged: %s failed checksum verification; the tracker refuses to serve it and deleted nothing: stop it and restore the data directory from a backup (herald backup writes them into %s; see README, Backups)",
		c.dataDir, strings.Join(files, ", "), c.backupDir)
}

// verify checks a stopped tracker's store and prints the report.
func verify(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("herald-tracker verify", flag.ContinueOnError)
	dir := fs.String("data-dir", getenv("HERALD_DATA_DIR"), "data directory of a stopped tracker")
	full := fs.Bool("full", true, "also check the event log and decode every record")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("verify needs --data-dir")
	}
	if _, err := os.Stat(*dir); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	st, err := store.Open(*dir, store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	r := st.Verify(*full)
	printReport(stdout, r)
	if damaged := st.DamagedFiles(); len(damaged) > 0 {
		return fmt.Errorf("%d problems found; damaged files: %s: restore the data directory from a backup", len(r.Problems), strings.Join(damaged, ", "))
	}
	if len(r.Problems) > 0 {
		return fmt.Errorf("%d problems found", len(r.Problems))
	}
	return nil
}

func printReport(w io.Writer, r store.Report) {
	fmt.Fprintf(w, "messages: %d\nrecovery index entries: %d\n", r.Messages, r.RecoveryEntries)
	for st, n := range r.Counts {
		fmt.Fprintf(w, "  %-16s %d\n", st, n)
	}
	if r.Events > 0 {
		fmt.Fprintf(w, "events: %d\n", r.Events)
	}
	if r.EventHoles > 0 {
		fmt.Fprintf(w, "event sequence numbers left unused by a crash: %d (expected; not a problem)\n", r.EventHoles)
	}
	fmt.Fprintf(w, "state hash: %s\n", r.StateHash)
	if len(r.Problems) == 0 {
		fmt.Fprintln(w, "OK: no problems found")
		return
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "PROBLEM: %s\n", p)
	}
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level=%q: use debug, info, warn or error", s)
	}
	return l, nil
}

// parsePolicy reads "webhook=redeliver,mock=redeliver,slack=reconcile,*=fail".
func parsePolicy(s string) (func(string) store.UnknownPolicy, error) {
	m := map[string]store.UnknownPolicy{}
	def := store.PolicyFail
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, val, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("--unknown-policy: %q is not channel=policy", part)
		}
		var p store.UnknownPolicy
		switch val {
		case "redeliver":
			p = store.PolicyRedeliver
		case "fail":
			p = store.PolicyFail
		case "reconcile":
			p = store.PolicyReconcile
		default:
			return nil, fmt.Errorf("--unknown-policy: %q for %s: use redeliver, fail or reconcile", val, name)
		}
		if name == "*" {
			def = p
		} else {
			m[name] = p
		}
	}
	return func(ch string) store.UnknownPolicy {
		if p, ok := m[ch]; ok {
			return p
		}
		return def
	}, nil
}

// syncShareOption turns --sync-share-delay into store.Options.SyncShareDelay,
// where zero means the default and a negative delay turns sharing off.
func syncShareOption(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
