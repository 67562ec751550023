package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/heraldchat/herald/e2e/harness"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// heraldEnv is herald's four real binaries (bin/, from make build) started
// through e2e/harness, and one gRPC client connection to the gateway.
type heraldEnv struct {
	e    *env
	c    *harness.Cluster
	conn *grpc.ClientConn
	gw   gatewayv1.GatewayServiceClient
	// commits and fsyncs are the tracker's counter names; empty when it
	// has none.
	commits, fsyncs string
	log             *os.File
	seq             atomic.Uint64
}

// The tracker's group-commit counters: the names another branch adds, then
// the names this branch has.
var commitMetricNames = [][2]string{
	{"herald_tracker_commits_total", "herald_tracker_wal_fsyncs_total"},
	{"herald_commits_total", "herald_wal_fsyncs_total"},
}

// startHerald starts the four services from bin, logging to the log file
// name (also the data folder's name).
func startHerald(ctx context.Context, e *env, bin, name string) (*heraldEnv, error) {
	log, err := e.logFile(name)
	if err != nil {
		return nil, err
	}
	c, err := harness.New(bin, filepath.Join(e.tmp, name, "tracker"), log)
	if err != nil {
		return nil, err
	}
	h := &heraldEnv{e: e, c: c, log: log}
	// Warnings and errors only, to the log file; no trace export.
	c.Env = []string{"HERALD_LOG_LEVEL=warn", "OTEL_EXPORTER_OTLP_ENDPOINT=", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="}
	c.Args["tracker"] = []string{"--metrics-listen", c.MetricsAddr["tracker"]}
	if err := c.StartAll(); err != nil {
		return h, err
	}
	h.conn, err = grpc.NewClient(c.Addr["gateway"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return h, err
	}
	h.gw = gatewayv1.NewGatewayServiceClient(h.conn)
	m, err := h.scrape(ctx)
	if err != nil {
		return h, err
	}
	for _, n := range commitMetricNames {
		_, okc := m[n[0]]
		_, okf := m[n[1]]
		if okc && okf {
			h.commits, h.fsyncs = n[0], n[1]
			e.commitMetrics = n[0] + " / " + n[1]
			break
		}
	}
	// One message through the whole pipeline before measuring anything.
	if _, err := h.gw.Send(ctx, h.request()); err != nil {
		return h, fmt.Errorf("first Send: %w", err)
	}
	if err := h.waitDrained(ctx); err != nil {
		return h, err
	}
	return h, nil
}

func (h *heraldEnv) close() {
	if h.conn != nil {
		h.conn.Close()
	}
	// Stop in reverse start order: the tracker last, as in production.
	for i := len(harness.Services) - 1; i >= 0; i-- {
		if s := harness.Services[i]; h.c.Running(s) {
			if err := h.c.Stop(s, 30*time.Second); err != nil {
				fmt.Fprintf(h.log, "stop %s: %v\n", s, err)
			}
		}
	}
}

func (h *heraldEnv) request() *gatewayv1.SendRequest {
	// A conversation per message, so that delivery order constrains
	// nothing (the brokers' queues carry no order key either).
	return &gatewayv1.SendRequest{Channel: "mock", Recipient: "ok",
		Conversation: "b" + strconv.FormatUint(h.seq.Add(1), 10), Text: h.e.text}
}

func (h *heraldEnv) pids() []int {
	var out []int
	for _, s := range harness.Services {
		if p := h.c.PID(s); p != 0 {
			out = append(out, p)
		}
	}
	return out
}

// byService names the CPU times of procCPU (by PID) by herald service.
func (h *heraldEnv) byService(procCPU map[int]time.Duration) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, s := range harness.Services {
		if cpu, ok := procCPU[h.c.PID(s)]; ok {
			out[s] = cpu
		}
	}
	return out
}

// setQueue starts or stops the queue (by its PID, SIGTERM).
func (h *heraldEnv) setQueue(run bool) error {
	switch {
	case run && !h.c.Running("queue"):
		return h.c.Start("queue")
	case !run && h.c.Running("queue"):
		return h.c.Stop("queue", 30*time.Second)
	}
	return nil
}

// send measures Send from callers concurrent callers on one connection, and
// the tracker's commits per WAL fsync meanwhile.
func (h *heraldEnv) send(ctx context.Context, callers int, dur time.Duration) (sample, error) {
	if err := h.setQueue(h.e.cfg.sendDelivering); err != nil {
		return sample{}, err
	}
	h.e.settle(ctx)
	m0, err := h.scrape(ctx)
	if err != nil {
		return sample{}, err
	}
	s, err := measureLoop(ctx, h.pids(), callers, dur, func(ctx context.Context, _ int) error {
		_, err := h.gw.Send(ctx, h.request())
		return err
	})
	if err != nil {
		return sample{}, err
	}
	s.byService = h.byService(s.procCPU)
	m1, err := h.scrape(ctx)
	if err != nil {
		return sample{}, err
	}
	if h.commits != "" {
		// Acknowledged Sends per WAL fsync: the tracker commits a batch of
		// Sends at once (AcceptStream), and Pebble's group commit shares
		// each fsync among concurrent commits; both count.
		if f := m1[h.fsyncs] - m0[h.fsyncs]; f > 0 {
			s.commitsPerFsync = float64(s.ops) / f
		}
	}
	if h.e.cfg.sendDelivering {
		// Leave no backlog to the next subject.
		if err := h.waitDrained(ctx); err != nil {
			return sample{}, err
		}
	}
	return s, nil
}

// endToEnd runs the queue, empties the backlog (not measured), then sends
// from cfg.heraldSenders callers for dur and measures until the tracker
// counts every one of them DELIVERED (durable: the tracker commits the
// outcome with pebble.Sync before counting it).
func (h *heraldEnv) endToEnd(ctx context.Context, dur time.Duration) (sample, error) {
	return h.deliverAll(ctx, func() (int, error) {
		lat, _, err := closedLoop(ctx, h.e.cfg.heraldSenders, dur, func(ctx context.Context, _ int) error {
			_, err := h.gw.Send(ctx, h.request())
			return err
		})
		return len(lat), err
	})
}

// endToEndStream is endToEnd with one SendStream that keeps cfg.window
// messages unanswered, as the brokers' publishers keep their window of
// unconfirmed publishes.
func (h *heraldEnv) endToEndStream(ctx context.Context, dur time.Duration) (sample, error) {
	return h.deliverAll(ctx, func() (int, error) { return h.stream(ctx, dur) })
}

// stream sends on one SendStream for dur with at most cfg.window messages
// unanswered, and returns how many were accepted once all are answered.
func (h *heraldEnv) stream(ctx context.Context, dur time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, dur+h.e.cfg.drainTimeout)
	defer cancel()
	st, err := h.gw.SendStream(ctx)
	if err != nil {
		return 0, err
	}
	inFlight := make(chan struct{}, h.e.cfg.window)
	accepted := 0
	answered := make(chan error, 1)
	go func() {
		for {
			a, err := st.Recv()
			if err == io.EOF {
				answered <- nil
				return
			}
			if err != nil {
				answered <- fmt.Errorf("SendStream: %w", err)
				return
			}
			if a.GetResponse() == nil {
				answered <- fmt.Errorf("SendStream: ref %d refused: code %d: %s", a.GetRef(), a.GetCode(), a.GetError())
				return
			}
			accepted++
			<-inFlight
		}
	}()
	end := time.Now().Add(dur)
	for ref := uint64(1); time.Now().Before(end); ref++ {
		select {
		case inFlight <- struct{}{}:
		case err := <-answered:
			if err == nil {
				err = errors.New("SendStream ended before the sender closed it")
			}
			return 0, err
		}
		if err := st.Send(&gatewayv1.SendStreamRequest{Ref: ref, Request: h.request()}); err != nil {
			break // the stream's error comes from Recv
		}
	}
	if err := st.CloseSend(); err != nil {
		return 0, err
	}
	if err := <-answered; err != nil {
		return 0, err
	}
	return accepted, nil
}

// deliverAll runs the queue, empties the backlog (not measured), runs load
// (which returns how many messages it had accepted) and measures until the
// tracker counts every one of them DELIVERED.
func (h *heraldEnv) deliverAll(ctx context.Context, load func() (int, error)) (sample, error) {
	if err := h.setQueue(true); err != nil {
		return sample{}, err
	}
	if err := h.waitDrained(ctx); err != nil {
		return sample{}, err
	}
	h.e.settle(ctx)
	st, err := h.gw.Status(ctx, &gatewayv1.StatusRequest{})
	if err != nil {
		return sample{}, err
	}
	base := st.GetCounts()["DELIVERED"]
	pids := h.pids()
	before := snapshot(pids)
	start := time.Now()
	sent, err := load()
	if err != nil {
		return sample{}, err
	}
	want := base + int64(sent)
	deadline := time.Now().Add(h.e.cfg.drainTimeout)
	for {
		st, err := h.gw.Status(ctx, &gatewayv1.StatusRequest{})
		if err != nil {
			return sample{}, err
		}
		if st.GetCounts()["DELIVERED"] >= want {
			break
		}
		if time.Now().After(deadline) {
			return sample{}, fmt.Errorf("%d of %d messages DELIVERED after %s (counts %v); see %s",
				st.GetCounts()["DELIVERED"]-base, sent, h.e.cfg.drainTimeout, st.GetCounts(), h.log.Name())
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return sample{}, err
		}
	}
	elapsed := time.Since(start)
	after := snapshot(pids)
	s := sample{ops: sent, elapsed: elapsed, rssKiB: peakRSS(pids)}
	s.selfCPU, s.srvCPU = since(before, after)
	s.byService = h.byService(perProcess(before, after))
	return s, nil
}

// waitDrained waits until no message is left in the recovery index (every
// message terminal), bounded by -drain-timeout.
func (h *heraldEnv) waitDrained(ctx context.Context) error {
	deadline := time.Now().Add(h.e.cfg.drainTimeout)
	for {
		st, err := h.gw.Status(ctx, &gatewayv1.StatusRequest{})
		if err != nil {
			return err
		}
		if st.GetRecoveryIndexSize() == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("herald's backlog did not drain within %s (counts %v); see %s", h.e.cfg.drainTimeout, st.GetCounts(), h.log.Name())
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// scrape reads the tracker's Prometheus metrics: each unlabelled series by
// name (labelled ones by name and labels).
func (h *heraldEnv) scrape(ctx context.Context) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+h.c.MetricsAddr["tracker"]+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape the tracker's metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape the tracker's metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
