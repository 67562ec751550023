package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const rabbitQueue = "herald-peers"

// rabbitEnv is a RabbitMQ node the harness started on 127.0.0.1, with its
// own epmd, configuration and data under the temporary folder, and a
// durable quorum queue (publisher confirms come after the Raft log's
// fsync).
type rabbitEnv struct {
	e         *env
	epmd, srv *server
	url       string
	pub       []*amqp.Connection // the publishers' connections
	sub       *amqp.Connection   // the end-to-end consumer's
	admin     *amqp.Channel      // purges and checks the queue
}

func startRabbit(ctx context.Context, e *env) (*rabbitEnv, error) {
	log, err := e.logFile("rabbitmq")
	if err != nil {
		return nil, err
	}
	base := filepath.Join(e.tmp, "rabbitmq")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	var ports [3]int
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	amqpPort, distPort, epmdPort := ports[0], ports[1], ports[2]
	files := map[string]string{
		// The node's configuration (new-style rabbitmq.conf).
		"rabbitmq.conf":   fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\ndisk_free_limit.absolute = 50MB\n", amqpPort),
		"enabled_plugins": "[].\n",
		// Replaces /etc/rabbitmq/rabbitmq-env.conf, which would otherwise
		// name the node.
		"rabbitmq-env.conf": "",
		".erlang.cookie":    "HERALDPEERSBENCHCOOKIE",
	}
	for name, body := range files {
		mode := os.FileMode(0o644)
		if name == ".erlang.cookie" {
			mode = 0o400
		}
		if err := os.WriteFile(filepath.Join(base, name), []byte(body), mode); err != nil {
			return nil, err
		}
	}
	env := []string{
		"HOME=" + base,
		"ERL_EPMD_PORT=" + strconv.Itoa(epmdPort),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"RABBITMQ_NODENAME=herald-peers@localhost",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT=" + strconv.Itoa(amqpPort),
		"RABBITMQ_DIST_PORT=" + strconv.Itoa(distPort),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
		"RABBITMQ_CONFIG_FILE=" + filepath.Join(base, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE=" + filepath.Join(base, "advanced.config"),
		"RABBITMQ_CONF_ENV_FILE=" + filepath.Join(base, "rabbitmq-env.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE=" + filepath.Join(base, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE=" + filepath.Join(base, "mnesia"),
		"RABBITMQ_LOG_BASE=" + filepath.Join(base, "log"),
		"RABBITMQ_PID_FILE=" + filepath.Join(base, "rabbitmq.pid"),
		"RABBITMQ_LOGS=-",
	}
	r := &rabbitEnv{e: e, url: fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", amqpPort)}
	// Our own epmd on its own port, so that the node registers with a
	// process the harness started and stops.
	epmd, err := exec.LookPath("epmd")
	if err != nil {
		epmd = "/usr/lib/erlang/bin/epmd"
	}
	if r.epmd, err = startServer("epmd", log, env, base, epmd, "-port", strconv.Itoa(epmdPort), "-address", "127.0.0.1"); err != nil {
		return r, err
	}
	if err := r.epmd.waitListening(ctx, fmt.Sprintf("127.0.0.1:%d", epmdPort), 30*time.Second); err != nil {
		return r, err
	}
	if r.srv, err = startServer("rabbitmq-server", log, env, base, rabbitScript); err != nil {
		return r, err
	}
	if err := r.srv.waitListening(ctx, fmt.Sprintf("127.0.0.1:%d", amqpPort), 3*time.Minute); err != nil {
		return r, fmt.Errorf("%w (log: %s)", err, log.Name())
	}
	for range e.cfg.brokerConns {
		c, err := amqp.Dial(r.url)
		if err != nil {
			return r, err
		}
		r.pub = append(r.pub, c)
	}
	if r.sub, err = amqp.Dial(r.url); err != nil {
		return r, err
	}
	if r.admin, err = r.sub.Channel(); err != nil {
		return r, err
	}
	if _, err := r.admin.QueueDeclare(rabbitQueue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		return r, fmt.Errorf("declare quorum queue: %w", err)
	}
	return r, nil
}

func (r *rabbitEnv) close() {
	for _, c := range append(r.pub, r.sub) {
		if c != nil {
			c.Close()
		}
	}
	if r.srv != nil {
		if err := r.srv.stop(60 * time.Second); err != nil {
			fmt.Fprintln(r.e.logs["rabbitmq"], err)
		}
	}
	if r.epmd != nil {
		r.epmd.stop(10 * time.Second)
	}
}

// pids are the node's processes (the start script, the Erlang VM and its
// helpers) and epmd.
func (r *rabbitEnv) pids() []int {
	return withDescendants([]int{r.srv.pid(), r.epmd.pid()})
}

func (r *rabbitEnv) purge() error {
	_, err := r.admin.QueuePurge(rabbitQueue, false)
	return err
}

// publish measures persistent publishes with confirms from n channels,
// each waiting for its confirm before the next publish. The queue is
// purged afterwards (not measured).
func (r *rabbitEnv) publish(ctx context.Context, n int, dur time.Duration) (sample, error) {
	chans := make([]*amqp.Channel, n)
	defer func() {
		for _, ch := range chans {
			if ch != nil {
				ch.Close()
			}
		}
	}()
	for i := range chans {
		ch, err := r.pub[i%len(r.pub)].Channel()
		if err != nil {
			return sample{}, err
		}
		chans[i] = ch
		if err := ch.Confirm(false); err != nil {
			return sample{}, err
		}
	}
	msg := amqp.Publishing{DeliveryMode: amqp.Persistent, Body: r.e.body}
	s, err := measureLoop(ctx, r.pids(), n, dur, func(ctx context.Context, w int) error {
		dc, err := chans[w].PublishWithDeferredConfirmWithContext(ctx, "", rabbitQueue, false, false, msg)
		if err != nil {
			return err
		}
		return confirmed(ctx, dc)
	})
	if err != nil {
		return sample{}, err
	}
	return s, r.purge()
}

func confirmed(ctx context.Context, dc *amqp.DeferredConfirmation) error {
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("RabbitMQ nacked a publish")
	}
	return nil
}

// endToEnd publishes for dur from one channel keeping cfg.window
// unconfirmed publishes in flight, while one consumer (prefetch
// cfg.prefetch) acknowledges each message by itself; it ends when the
// consumer has acknowledged every confirmed message.
func (r *rabbitEnv) endToEnd(ctx context.Context, dur time.Duration) (sample, error) {
	if err := r.purge(); err != nil {
		return sample{}, err
	}
	r.e.settle(ctx)
	pch, err := r.pub[0].Channel()
	if err != nil {
		return sample{}, err
	}
	defer pch.Close()
	if err := pch.Confirm(false); err != nil {
		return sample{}, err
	}
	cch, err := r.sub.Channel()
	if err != nil {
		return sample{}, err
	}
	defer cch.Close()
	if err := cch.Qos(r.e.cfg.prefetch, 0, false); err != nil {
		return sample{}, err
	}
	// Closing the channel ends the consumer (a context would race a
	// basic.cancel with the close and break the connection).
	deliveries, err := cch.Consume(rabbitQueue, "", false, false, false, false, nil)
	if err != nil {
		return sample{}, err
	}

	pids := r.pids()
	before := snapshot(pids)
	start := time.Now()
	var got, lastAck atomic.Int64
	ackErr := make(chan error, 1)
	go func() {
		for d := range deliveries {
			if err := d.Ack(false); err != nil {
				ackErr <- err
				return
			}
			got.Add(1)
			lastAck.Store(int64(time.Since(start)))
		}
	}()

	msg := amqp.Publishing{DeliveryMode: amqp.Persistent, Body: r.e.body}
	w := window[*amqp.DeferredConfirmation]{size: r.e.cfg.window, wait: func(dc *amqp.DeferredConfirmation) error {
		wctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		return confirmed(wctx, dc)
	}}
	published := 0
	for time.Since(start) < dur {
		dc, err := pch.PublishWithDeferredConfirmWithContext(ctx, "", rabbitQueue, false, false, msg)
		if err != nil {
			return sample{}, err
		}
		published++
		if err := w.add(dc); err != nil {
			return sample{}, err
		}
	}
	if err := w.drain(); err != nil {
		return sample{}, err
	}
	if err := waitCount(ctx, &got, int64(published), r.e.cfg.drainTimeout, ackErr); err != nil {
		return sample{}, fmt.Errorf("RabbitMQ consumer: %w", err)
	}
	after := snapshot(pids)
	s := sample{ops: published, elapsed: time.Duration(lastAck.Load()), rssKiB: peakRSS(pids)}
	s.selfCPU, s.srvCPU = since(before, after)

	cch.Close()
	// Acks are asynchronous: the queue must empty shortly after.
	deadline := time.Now().Add(10 * time.Second)
	for {
		q, err := r.admin.QueueDeclarePassive(rabbitQueue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
		if err != nil {
			return sample{}, err
		}
		if q.Messages == 0 {
			break
		}
		if time.Now().After(deadline) {
			return sample{}, fmt.Errorf("RabbitMQ queue still holds %d messages after the end-to-end run", q.Messages)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return sample{}, err
		}
	}
	return s, nil
}

// waitCount polls n until it reaches want, errc reports an error, or
// timeout passes.
func waitCount(ctx context.Context, n *atomic.Int64, want int64, timeout time.Duration, errc <-chan error) error {
	deadline := time.Now().Add(timeout)
	for n.Load() < want {
		select {
		case err := <-errc:
			return err
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d messages consumed within %s", n.Load(), want, timeout)
		}
		if err := sleep(ctx, time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}
