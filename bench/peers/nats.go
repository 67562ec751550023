package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	natsStream  = "HERALD_PEERS"
	natsSubject = "herald.peers"
)

// natsEnv is a nats-server the harness started on 127.0.0.1 with
// JetStream syncing every write (sync_interval: always, the only setting
// that keeps acknowledged messages through a power loss) and one R1 file
// stream with work-queue retention (an acknowledged message is removed, as
// from a queue).
type natsEnv struct {
	e      *env
	srv    *server
	pub    []jetstream.JetStream // one per publisher connection
	conns  []*nats.Conn
	sub    jetstream.JetStream // the end-to-end consumer's connection
	stream jetstream.Stream
}

func startNATS(ctx context.Context, e *env, bin string) (*natsEnv, error) {
	log, err := e.logFile("nats")
	if err != nil {
		return nil, err
	}
	base := filepath.Join(e.tmp, "nats")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("listen: %q\njetstream {\n  store_dir: %q\n  sync_interval: always\n}\n", addr, filepath.Join(base, "jetstream"))
	confPath := filepath.Join(base, "nats.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	n := &natsEnv{e: e}
	if n.srv, err = startServer("nats-server", log, nil, base, bin, "-c", confPath); err != nil {
		return n, err
	}
	if err := n.srv.waitListening(ctx, addr, time.Minute); err != nil {
		return n, err
	}
	url := "nats://" + addr
	connect := func() (jetstream.JetStream, error) {
		nc, err := nats.Connect(url, nats.Name("herald-peers"))
		if err != nil {
			return nil, err
		}
		n.conns = append(n.conns, nc)
		return jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*e.cfg.window))
	}
	for range e.cfg.brokerConns {
		js, err := connect()
		if err != nil {
			return n, err
		}
		n.pub = append(n.pub, js)
	}
	if n.sub, err = connect(); err != nil {
		return n, err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n.stream, err = n.sub.CreateOrUpdateStream(sctx, jetstream.StreamConfig{
		Name: natsStream, Subjects: []string{natsSubject}, Storage: jetstream.FileStorage, Replicas: 1,
		Retention: jetstream.WorkQueuePolicy,
	})
	if err != nil {
		return n, fmt.Errorf("create stream: %w", err)
	}
	return n, nil
}

func (n *natsEnv) close() {
	for _, c := range n.conns {
		c.Close()
	}
	if n.srv != nil {
		if err := n.srv.stop(30 * time.Second); err != nil {
			fmt.Fprintln(n.e.logs["nats"], err)
		}
	}
}

func (n *natsEnv) pids() []int { return []int{n.srv.pid()} }

func (n *natsEnv) purge(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return n.stream.Purge(ctx)
}

// publish measures synchronous publishes (each waits for the stream's ack,
// given after the fsync) from n callers. The stream is purged afterwards
// (not measured).
func (n *natsEnv) publish(ctx context.Context, callers int, dur time.Duration) (sample, error) {
	s, err := measureLoop(ctx, n.pids(), callers, dur, func(ctx context.Context, w int) error {
		_, err := n.pub[w%len(n.pub)].Publish(ctx, natsSubject, n.e.body)
		return err
	})
	if err != nil {
		return sample{}, err
	}
	return s, n.purge(ctx)
}

// endToEnd publishes asynchronously for dur keeping cfg.window unacked
// publishes in flight, while a pull consumer (explicit acks, at most
// cfg.prefetch unacknowledged) acknowledges each message; it ends when the
// consumer has acknowledged every published message.
func (n *natsEnv) endToEnd(ctx context.Context, dur time.Duration) (sample, error) {
	if err := n.purge(ctx); err != nil {
		return sample{}, err
	}
	n.e.settle(ctx)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cons, err := n.stream.CreateOrUpdateConsumer(cctx, jetstream.ConsumerConfig{
		Durable: "e2e", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: n.e.cfg.prefetch,
	})
	if err != nil {
		return sample{}, err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		n.stream.DeleteConsumer(dctx, "e2e")
	}()

	pids := n.pids()
	before := snapshot(pids)
	start := time.Now()
	var got, lastAck atomic.Int64
	ackErr := make(chan error, 1)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if err := m.Ack(); err != nil {
			select {
			case ackErr <- err:
			default:
			}
			return
		}
		got.Add(1)
		lastAck.Store(int64(time.Since(start)))
	}, jetstream.PullMaxMessages(n.e.cfg.prefetch))
	if err != nil {
		return sample{}, err
	}
	defer cc.Stop()

	js := n.pub[0]
	w := window[jetstream.PubAckFuture]{size: n.e.cfg.window, wait: func(f jetstream.PubAckFuture) error {
		t := time.NewTimer(opTimeout)
		defer t.Stop()
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			return err
		case <-t.C:
			return errors.New("no publish ack within 30s")
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	published := 0
	for time.Since(start) < dur {
		f, err := js.PublishAsync(natsSubject, n.e.body)
		if err != nil {
			return sample{}, err
		}
		published++
		if err := w.add(f); err != nil {
			return sample{}, err
		}
	}
	if err := w.drain(); err != nil {
		return sample{}, err
	}
	if err := waitCount(ctx, &got, int64(published), n.e.cfg.drainTimeout, ackErr); err != nil {
		return sample{}, fmt.Errorf("NATS consumer: %w", err)
	}
	after := snapshot(pids)
	s := sample{ops: published, elapsed: time.Duration(lastAck.Load()), rssKiB: peakRSS(pids)}
	s.selfCPU, s.srvCPU = since(before, after)
	cc.Stop()

	// Acks are asynchronous: the work queue must empty shortly after.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
		info, err := n.stream.Info(ictx)
		cancel()
		if err != nil {
			return sample{}, err
		}
		if info.State.Msgs == 0 {
			break
		}
		if time.Now().After(deadline) {
			return sample{}, fmt.Errorf("NATS stream still holds %d messages after the end-to-end run", info.State.Msgs)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return sample{}, err
		}
	}
	return s, nil
}
