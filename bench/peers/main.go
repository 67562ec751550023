// Command herald-peers is issue 7's benchmark (make bench-peers): herald
// beside the durable brokers a backend would otherwise use, on the same
// machine in the same run, at the same durability (every acknowledged
// message fsynced).
//
// One run installs what it needs (RabbitMQ from Debian's packages when
// missing, nats-server through the Go module proxy at a pinned version),
// starts every subject on 127.0.0.1, and measures them in interleaved
// rounds: in each round every subject runs for -duration, in an order that
// rotates from round to round, between an fsync probe at the round's start
// and one at its end. A round whose two probes differ by more than 2× is
// discarded (this disk has slow phases). The table shows each subject's
// median over the kept rounds; each target is checked on the median of its
// per-round ratios.
//
// Processes: the harness itself holds the fsync probe and every client.
// herald-storebench (raw Pebble, tracker store) runs as a new process per
// measurement; the skeleton's proxy and server, RabbitMQ, nats-server and
// herald's four services are long-lived processes for the whole run.
//
// Exit status: 0 when every subject ran (whether or not the targets
// pass), 1 when a subject could not run, 2 for bad flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// natsVersion is the nats-server release the harness installs.
const natsVersion = "v2.15.2"

// groups of subjects, for -only.
var allGroups = []string{"pebble", "store", "skeleton", "rabbitmq", "nats", "herald"}

type config struct {
	bin, tools, dir string
	rounds          int
	dur, probe      time.Duration
	warmup          time.Duration
	drainTimeout    time.Duration
	window          int
	prefetch        int
	brokerConns     int
	heraldSenders   int
	sendDelivering  bool
	payload         int
	only            map[string]bool
	keep            bool
	installOnly     bool
}

func main() {
	if len(os.Args) > 1 && strings.HasPrefix(os.Args[1], "skeleton-") {
		if err := runSkeleton(os.Args[1], os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "herald-peers %s: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		return
	}
	cfg, err := parse(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "herald-peers: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "herald-peers: %v\n", err)
		stop()
		os.Exit(1)
	}
}

func parse(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("herald-peers", flag.ContinueOnError)
	fs.StringVar(&c.bin, "bin", "bin", "folder with herald's binaries and herald-storebench (make build)")
	fs.StringVar(&c.tools, "tools", "bin/tools", "folder nats-server is installed into")
	fs.StringVar(&c.dir, "dir", "", "parent of the temporary data folders: put it on the disk to measure (default: the system's temporary folder)")
	fs.IntVar(&c.rounds, "rounds", 5, "measured rounds; each runs every subject once")
	fs.DurationVar(&c.dur, "duration", 2500*time.Millisecond, "measuring time of each subject in each round")
	fs.DurationVar(&c.probe, "probe", 0, "length of each fsync probe at a round's start and end (default: half of -duration)")
	fs.DurationVar(&c.warmup, "warmup", 500*time.Millisecond, "an unrecorded round of this length per subject before the first; 0 skips it")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 2*time.Minute, "how long an end-to-end subject may take to empty its backlog")
	fs.IntVar(&c.window, "window", 256, "end to end: unconfirmed publishes a broker publisher keeps in flight")
	fs.IntVar(&c.prefetch, "prefetch", 256, "end to end: messages a broker consumer may hold unacknowledged")
	fs.IntVar(&c.brokerConns, "broker-conns", 4, "connections the 64 broker publishers share (RabbitMQ channels, NATS clients)")
	fs.IntVar(&c.heraldSenders, "herald-senders", 128, "end to end: concurrent herald senders (64-256)")
	fs.BoolVar(&c.sendDelivering, "send-with-delivery", false, "measure herald's Send with the queue running (deliveries compete for the CPU); by default the queue is stopped during Send, as the brokers' publish subjects have no consumer")
	fs.IntVar(&c.payload, "payload", 256, "message body bytes")
	only := fs.String("only", "", "comma-separated subject groups to run ("+strings.Join(allGroups, ",")+"); default all. Targets that need a missing group are skipped")
	fs.BoolVar(&c.keep, "keep", false, "keep the temporary folder (data and logs) for inspection")
	fs.BoolVar(&c.installOnly, "install-only", false, "install RabbitMQ and nats-server if needed, then exit")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	case c.rounds < 1 || c.rounds > 100:
		return c, fmt.Errorf("-rounds=%d: give 1 to 100", c.rounds)
	case c.dur < 100*time.Millisecond || c.dur > time.Minute:
		return c, fmt.Errorf("-duration=%s: give 100ms to 1m", c.dur)
	case c.warmup < 0 || c.warmup > time.Minute:
		return c, fmt.Errorf("-warmup=%s: give 0 to 1m", c.warmup)
	case c.drainTimeout < time.Second || c.drainTimeout > 30*time.Minute:
		return c, fmt.Errorf("-drain-timeout=%s: give 1s to 30m", c.drainTimeout)
	case c.window < 1 || c.prefetch < 1 || c.window > 65535 || c.prefetch > 65535:
		return c, fmt.Errorf("-window=%d -prefetch=%d: give 1 to 65535", c.window, c.prefetch)
	case c.brokerConns < 1 || c.brokerConns > 64:
		return c, fmt.Errorf("-broker-conns=%d: give 1 to 64", c.brokerConns)
	case c.heraldSenders < 1 || c.heraldSenders > 4096:
		return c, fmt.Errorf("-herald-senders=%d: give 1 to 4096 (the issue asks for 64-256)", c.heraldSenders)
	case c.payload < 1 || c.payload > 1<<20:
		return c, fmt.Errorf("-payload=%d: give 1 to 1048576", c.payload)
	}
	if c.probe == 0 {
		c.probe = c.dur / 2
	}
	if c.probe < 50*time.Millisecond || c.probe > time.Minute {
		return c, fmt.Errorf("-probe=%s: give 50ms to 1m", c.probe)
	}
	c.only = map[string]bool{}
	for g := range strings.SplitSeq(*only, ",") {
		g = strings.TrimSpace(g)
		if g == "" {
			continue
		}
		if !slices.Contains(allGroups, g) {
			return c, fmt.Errorf("-only: unknown group %q; groups are %s", g, strings.Join(allGroups, ", "))
		}
		c.only[g] = true
	}
	if len(c.only) == 0 {
		for _, g := range allGroups {
			c.only[g] = true
		}
	}
	var err error
	if c.bin, err = filepath.Abs(c.bin); err != nil {
		return c, err
	}
	if c.tools, err = filepath.Abs(c.tools); err != nil {
		return c, err
	}
	return c, nil
}

// env is what the subjects share: the configuration, the temporary folder
// and the log files of the processes the harness starts.
type env struct {
	cfg  config
	tmp  string
	text string // the payload as a string: cfg.payload bytes
	body []byte
	logs map[string]*os.File
	// commitMetrics names the tracker's commit and WAL-fsync counters the
	// group-commit target reads; empty when the tracker exposes neither.
	commitMetrics string
}

// logFile returns the log of name in the temporary folder, created on
// first use.
func (e *env) logFile(name string) (*os.File, error) {
	if f := e.logs[name]; f != nil {
		return f, nil
	}
	if err := os.MkdirAll(filepath.Join(e.tmp, "logs"), 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(e.tmp, "logs", name+".log"))
	if err != nil {
		return nil, err
	}
	e.logs[name] = f
	return f, nil
}

func run(ctx context.Context, cfg config, stdout, stderr io.Writer) (err error) {
	if cfg.only["rabbitmq"] {
		if err := ensureRabbitMQ(ctx, stderr); err != nil {
			return err
		}
	}
	natsBin := ""
	if cfg.only["nats"] {
		if natsBin, err = ensureNATS(ctx, stderr, cfg.tools, natsVersion); err != nil {
			return err
		}
	}
	if cfg.installOnly {
		return nil
	}
	for _, b := range []string{"herald-gateway", "herald-tracker", "herald-queue", "herald-plugins", "herald-storebench"} {
		if _, err := os.Stat(filepath.Join(cfg.bin, b)); err != nil {
			return fmt.Errorf("%s: %w (make bench-peers builds it)", b, err)
		}
	}

	tmp, err := tempDir(cfg.dir, "herald-peers-")
	if err != nil {
		return err
	}
	e := &env{cfg: cfg, tmp: tmp, text: strings.Repeat("x", cfg.payload), body: []byte(strings.Repeat("x", cfg.payload)), logs: map[string]*os.File{}}
	// Registered first, so it runs after every process below has stopped.
	defer func() {
		for _, f := range e.logs {
			f.Close()
		}
		if cfg.keep || err != nil {
			fmt.Fprintf(stderr, "data and logs kept in %s\n", tmp)
			return
		}
		os.RemoveAll(tmp)
	}()

	subjects, closeAll, err := startSubjects(ctx, e, natsBin, stderr)
	defer closeAll()
	if err != nil {
		return err
	}
	res := runRounds(ctx, e, subjects, stderr)
	report(stdout, e, subjects, res)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(res.failed) > 0 {
		var names []string
		for _, s := range subjects {
			if res.failed[s.key] != nil {
				names = append(names, s.name)
			}
		}
		return fmt.Errorf("subjects that could not run: %s", strings.Join(names, "; "))
	}
	return nil
}

// startSubjects starts every long-lived process and returns the subjects in
// table order. closeAll stops what was started, by PID, even after an
// error.
func startSubjects(ctx context.Context, e *env, natsBin string, log io.Writer) ([]subject, func(), error) {
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	var subs []subject
	add := func(s ...subject) { subs = append(subs, s...) }
	cfg := e.cfg
	if cfg.only["pebble"] {
		for _, n := range []int{1, 64} {
			add(subject{key: fmt.Sprintf("pebble%d", n), group: "pebble", name: fmt.Sprintf("raw Pebble Sync @%d", n),
				run: func(ctx context.Context, d time.Duration) (sample, error) { return storeBench(ctx, e, "pebble", n, d) }})
		}
	}
	if cfg.only["store"] {
		for _, n := range []int{1, 64} {
			add(subject{key: fmt.Sprintf("store%d", n), group: "store", name: fmt.Sprintf("tracker store Accept @%d", n),
				run: func(ctx context.Context, d time.Duration) (sample, error) { return storeBench(ctx, e, "store", n, d) }})
		}
	}
	if cfg.only["skeleton"] {
		fmt.Fprintln(log, "starting the skeleton (proxy and Pebble server processes)")
		sk, err := startSkeleton(ctx, e)
		if err != nil {
			return nil, closeAll, fmt.Errorf("skeleton: %w", err)
		}
		closers = append(closers, sk.close)
		for _, n := range []int{1, 64} {
			add(subject{key: fmt.Sprintf("skel%d", n), group: "skeleton", name: fmt.Sprintf("skeleton gRPC→proxy→Pebble @%d", n),
				run: func(ctx context.Context, d time.Duration) (sample, error) { return sk.send(ctx, n, d, e.text) }})
		}
	}
	if cfg.only["rabbitmq"] {
		fmt.Fprintln(log, "starting RabbitMQ")
		rb, err := startRabbit(ctx, e)
		if rb != nil {
			closers = append(closers, rb.close)
		}
		if err != nil {
			return nil, closeAll, fmt.Errorf("rabbitmq: %w", err)
		}
		for _, n := range []int{1, 64} {
			add(subject{key: fmt.Sprintf("rabbit%d", n), group: "rabbitmq", name: fmt.Sprintf("RabbitMQ quorum publish-confirm @%d", n),
				run: func(ctx context.Context, d time.Duration) (sample, error) { return rb.publish(ctx, n, d) }})
		}
		add(subject{key: "rabbitE2E", group: "rabbitmq", name: "RabbitMQ quorum end to end",
			run: func(ctx context.Context, d time.Duration) (sample, error) { return rb.endToEnd(ctx, d) }})
	}
	if cfg.only["nats"] {
		fmt.Fprintln(log, "starting nats-server")
		ns, err := startNATS(ctx, e, natsBin)
		if ns != nil {
			closers = append(closers, ns.close)
		}
		if err != nil {
			return nil, closeAll, fmt.Errorf("nats: %w", err)
		}
		for _, n := range []int{1, 64} {
			add(subject{key: fmt.Sprintf("nats%d", n), group: "nats", name: fmt.Sprintf("NATS JetStream sync publish @%d", n),
				run: func(ctx context.Context, d time.Duration) (sample, error) { return ns.publish(ctx, n, d) }})
		}
		add(subject{key: "natsE2E", group: "nats", name: "NATS JetStream end to end",
			run: func(ctx context.Context, d time.Duration) (sample, error) { return ns.endToEnd(ctx, d) }})
	}
	if cfg.only["herald"] {
		fmt.Fprintln(log, "starting herald (tracker, plugins, queue, gateway)")
		h, err := startHerald(ctx, e)
		if h != nil {
			closers = append(closers, h.close)
		}
		if err != nil {
			return nil, closeAll, fmt.Errorf("herald: %w", err)
		}
		for _, n := range []int{1, 64} {
			add(subject{key: fmt.Sprintf("send%d", n), group: "herald", name: fmt.Sprintf("herald Send @%d", n),
				run: func(ctx context.Context, d time.Duration) (sample, error) { return h.send(ctx, n, d) }})
		}
		add(subject{key: "heraldE2E", group: "herald", name: fmt.Sprintf("herald end to end (%d senders)", cfg.heraldSenders),
			run: func(ctx context.Context, d time.Duration) (sample, error) { return h.endToEnd(ctx, d) }})
	}
	if len(subs) == 0 {
		return nil, closeAll, errors.New("no subject selected")
	}
	return subs, closeAll, nil
}
