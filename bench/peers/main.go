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
	"strconv"
	"strings"
	"syscall"
	"time"
)

// natsVersion is the nats-server release the harness installs.
const natsVersion = "v2.15.2"

// groups of subjects, for -only.
// acceptKeys is how many keys the tracker store's Accept of a message
// without an idempotency key writes (message, delivery, recovery-index
// entry, conversation sequence, history entry, recipient entry, event,
// counter): the raw Pebble row with that many keys per commit shows what
// Pebble itself does with an Accept's keys, beside the store.
const acceptKeys = 8

var allGroups = []string{"pebble", "store", "skeleton", "rabbitmq", "nats", "herald"}

type config struct {
	bin, tools, dir string
	baseline        string
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
	fs.StringVar(&c.baseline, "baseline", "", "folder with another build of herald's binaries (e.g. a copy of bin from an earlier commit): measured as a second herald in the same rounds, with herald ÷ baseline ratios")
	fs.StringVar(&c.tools, "tools", "bin/tools", "folder nats-server is installed into")
	fs.StringVar(&c.dir, "dir", "", "parent of the temporary data folders: put it on the disk to measure (default: the system's temporary folder)")
	fs.IntVar(&c.rounds, "rounds", 5, "measured rounds; each runs every subject once")
	fs.DurationVar(&c.dur, "duration", 2500*time.Millisecond, "measuring time of each subject in each round")
	fs.DurationVar(&c.probe, "probe", 0, "length of each fsync probe at a round's start and end (default: half of -duration)")
	fs.DurationVar(&c.warmup, "warmup", 500*time.Millisecond, "an unrecorded round of this length per subject before the first; 0 skips it")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 2*time.Minute, "how long an end-to-end subject may take to empty its backlog")
	fs.IntVar(&c.window, "window", 256, "end to end: unconfirmed publishes a broker publisher (and herald's SendStream) keeps in flight")
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
	if c.baseline != "" {
		if c.baseline, err = filepath.Abs(c.baseline); err != nil {
			return c, err
		}
		c.only["baseline"] = c.only["herald"]
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
	log  io.Writer // progress
	// servers lists the long-lived server processes of every subject
	// started (for settle).
	servers []func() []int
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
	// Installs come first; a failed one fails its group's subjects only.
	installErr := map[string]error{}
	if cfg.only["rabbitmq"] {
		installErr["rabbitmq"] = ensureRabbitMQ(ctx, stderr)
	}
	natsBin := ""
	if cfg.only["nats"] {
		natsBin, installErr["nats"] = ensureNATS(ctx, stderr, cfg.tools, natsVersion)
	}
	if cfg.installOnly {
		return errors.Join(installErr["rabbitmq"], installErr["nats"])
	}
	for _, b := range []string{"herald-gateway", "herald-tracker", "herald-queue", "herald-plugins", "herald-storebench"} {
		if _, err := os.Stat(filepath.Join(cfg.bin, b)); err != nil {
			return fmt.Errorf("%s: %w (make bench-peers builds it)", b, err)
		}
	}
	if cfg.baseline != "" {
		for _, b := range []string{"herald-gateway", "herald-tracker", "herald-queue", "herald-plugins"} {
			if _, err := os.Stat(filepath.Join(cfg.baseline, b)); err != nil {
				return fmt.Errorf("-baseline: %w (copy a build's bin folder there)", err)
			}
		}
	}

	tmp, err := tempDir(cfg.dir, "herald-peers-")
	if err != nil {
		return err
	}
	e := &env{cfg: cfg, tmp: tmp, text: strings.Repeat("x", cfg.payload), body: []byte(strings.Repeat("x", cfg.payload)), logs: map[string]*os.File{}, log: stderr}
	// Registered first, so it runs after every process below has stopped.
	defer func() {
		for _, f := range e.logs {
			f.Close()
		}
		if cfg.keep {
			fmt.Fprintf(stderr, "data and logs kept in %s\n", tmp)
			return
		}
		if err == nil {
			os.RemoveAll(tmp)
			return
		}
		// Keep the logs to explain the failure, not the data.
		entries, _ := os.ReadDir(tmp)
		for _, en := range entries {
			if en.Name() != "logs" {
				os.RemoveAll(filepath.Join(tmp, en.Name()))
			}
		}
		fmt.Fprintf(stderr, "logs kept in %s\n", filepath.Join(tmp, "logs"))
	}()

	subjects, closeAll := startSubjects(ctx, e, natsBin, installErr, stderr)
	defer closeAll()
	res := runRounds(ctx, e, subjects, stderr)
	report(stdout, e, subjects, res)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(res.failed) > 0 {
		var names []string
		if res.failed["fsync"] != nil {
			names = append(names, "fsync probe")
		}
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
// table order. A group that cannot start (or install) still lists its
// subjects, each failing with the group's error. closeAll stops what was
// started, by PID.
func startSubjects(ctx context.Context, e *env, natsBin string, installErr map[string]error, log io.Writer) ([]subject, func()) {
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	cfg := e.cfg
	var subs []subject
	type measure = func(ctx context.Context, d time.Duration) (sample, error)
	// group adds a group's subjects; start returns their measurements in
	// order, and what stops the group's processes.
	group := func(name string, keys, names []string, start func() ([]measure, func(), error)) {
		if !cfg.only[name] {
			return
		}
		runs, closer, err := []measure(nil), func() {}, installErr[name]
		if err == nil {
			runs, closer, err = start()
		}
		closers = append(closers, closer)
		for i, k := range keys {
			run := func(context.Context, time.Duration) (sample, error) { return sample{}, fmt.Errorf("%s: %w", name, err) }
			if err == nil {
				run = runs[i]
			}
			subs = append(subs, subject{key: k, group: name, name: names[i], run: run})
		}
	}
	group("pebble", []string{"pebble1", "pebble64", "pebble64k8"},
		[]string{"raw Pebble Sync @1", "raw Pebble Sync @64", fmt.Sprintf("raw Pebble Sync @64, %d keys per commit", acceptKeys)},
		func() ([]measure, func(), error) {
			return []measure{
				func(ctx context.Context, d time.Duration) (sample, error) { return storeBench(ctx, e, "pebble", 1, d) },
				func(ctx context.Context, d time.Duration) (sample, error) { return storeBench(ctx, e, "pebble", 64, d) },
				func(ctx context.Context, d time.Duration) (sample, error) {
					return storeBench(ctx, e, "pebble", 64, d, "-keys", strconv.Itoa(acceptKeys))
				},
			}, func() {}, nil
		})
	group("store", []string{"store1", "store64"}, []string{"tracker store Accept @1", "tracker store Accept @64"},
		func() ([]measure, func(), error) {
			return []measure{
				func(ctx context.Context, d time.Duration) (sample, error) { return storeBench(ctx, e, "store", 1, d) },
				func(ctx context.Context, d time.Duration) (sample, error) { return storeBench(ctx, e, "store", 64, d) },
			}, func() {}, nil
		})
	group("skeleton", []string{"skel1", "skel64"}, []string{"skeleton gRPC→proxy→Pebble @1", "skeleton gRPC→proxy→Pebble @64"},
		func() ([]measure, func(), error) {
			fmt.Fprintln(log, "starting the skeleton (proxy and Pebble server processes)")
			sk, err := startSkeleton(ctx, e)
			if err != nil {
				return nil, func() {}, err
			}
			e.servers = append(e.servers, sk.pids)
			return []measure{
				func(ctx context.Context, d time.Duration) (sample, error) { return sk.send(ctx, 1, d, e.text) },
				func(ctx context.Context, d time.Duration) (sample, error) { return sk.send(ctx, 64, d, e.text) },
			}, sk.close, nil
		})
	group("rabbitmq", []string{"rabbit1", "rabbit64", "rabbitE2E"},
		[]string{"RabbitMQ quorum publish-confirm @1", "RabbitMQ quorum publish-confirm @64", "RabbitMQ quorum end to end"},
		func() ([]measure, func(), error) {
			fmt.Fprintln(log, "starting RabbitMQ")
			rb, err := startRabbit(ctx, e)
			closer := func() {}
			if rb != nil {
				closer = rb.close
			}
			if err != nil {
				return nil, closer, err
			}
			e.servers = append(e.servers, rb.pids)
			return []measure{
				func(ctx context.Context, d time.Duration) (sample, error) { return rb.publish(ctx, 1, d) },
				func(ctx context.Context, d time.Duration) (sample, error) { return rb.publish(ctx, 64, d) },
				rb.endToEnd,
			}, closer, nil
		})
	group("nats", []string{"nats1", "nats64", "natsE2E"},
		[]string{"NATS JetStream sync publish @1", "NATS JetStream sync publish @64", "NATS JetStream end to end"},
		func() ([]measure, func(), error) {
			fmt.Fprintln(log, "starting nats-server")
			ns, err := startNATS(ctx, e, natsBin)
			closer := func() {}
			if ns != nil {
				closer = ns.close
			}
			if err != nil {
				return nil, closer, err
			}
			e.servers = append(e.servers, ns.pids)
			return []measure{
				func(ctx context.Context, d time.Duration) (sample, error) { return ns.publish(ctx, 1, d) },
				func(ctx context.Context, d time.Duration) (sample, error) { return ns.publish(ctx, 64, d) },
				ns.endToEnd,
			}, closer, nil
		})
	// The baseline build may predate SendStream: it runs the unary rows only.
	heraldGroup := func(name, bin, label, prefix string, streamed bool) {
		keys := []string{prefix + "send1", prefix + "send64", prefix + "heraldE2E"}
		names := []string{label + " Send @1", label + " Send @64", fmt.Sprintf("%s end to end (%d senders)", label, cfg.heraldSenders)}
		if streamed {
			keys = append(keys, prefix+"heraldE2Es")
			names = append(names, fmt.Sprintf("%s end to end (SendStream, %d in flight)", label, cfg.window))
		}
		group(name, keys, names,
			func() ([]measure, func(), error) {
				fmt.Fprintf(log, "starting %s (tracker, plugins, queue, gateway)\n", label)
				h, err := startHerald(ctx, e, bin, name)
				closer := func() {}
				if h != nil {
					closer = h.close
				}
				if err != nil {
					return nil, closer, err
				}
				e.servers = append(e.servers, h.pids)
				return []measure{
					func(ctx context.Context, d time.Duration) (sample, error) { return h.send(ctx, 1, d) },
					func(ctx context.Context, d time.Duration) (sample, error) { return h.send(ctx, 64, d) },
					h.endToEnd,
					h.endToEndStream,
				}, closer, nil
			})
	}
	heraldGroup("herald", cfg.bin, "herald", "", true)
	if cfg.baseline != "" {
		heraldGroup("baseline", cfg.baseline, "baseline herald", "base-", false)
	}
	return subs, closeAll
}
