// Package harness runs herald's real binaries for end-to-end tests and
// benchmarks: it builds them once, starts each service on a free loopback
// port, and kills, stops and restarts them by PID. It also hosts a webhook
// sink that counts what reached it.
package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Services in start order.
var Services = []string{"tracker", "plugins", "queue", "gateway"}

// Build compiles the four services and the CLI into dir.
func Build(dir string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	pkgs := map[string]string{
		"herald-tracker": "./services/tracker", "herald-plugins": "./services/plugins",
		"herald-queue": "./services/queue", "herald-gateway": "./services/gateway", "herald": "./cmd/herald",
	}
	for name, pkg := range pkgs {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
	}
	return nil
}

func repoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the repository")
	}
	return filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Cluster is one herald deployment on loopback.
type Cluster struct {
	Bin     string
	DataDir string
	Addr    map[string]string
	// MetricsAddr is each service's Prometheus endpoint (host:port).
	MetricsAddr map[string]string
	// Args adds flags per service.
	Args map[string][]string
	// Env adds environment variables to every service.
	Env []string
	Log io.Writer

	mu    sync.Mutex
	procs map[string]*exec.Cmd
	exits map[string]chan error
}

// New allocates ports for a cluster; nothing runs until Start.
func New(bin, dataDir string, log io.Writer) (*Cluster, error) {
	c := &Cluster{Bin: bin, DataDir: dataDir, Addr: map[string]string{}, Args: map[string][]string{},
		Log: log, procs: map[string]*exec.Cmd{}, exits: map[string]chan error{}, MetricsAddr: map[string]string{}}
	// Hold every port until all are chosen: a port closed at once can be
	// handed out again by the next ask, and two services would share it.
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	next := func() (string, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		held = append(held, l)
		return l.Addr().String(), nil
	}
	for _, s := range Services {
		a, err := next()
		if err != nil {
			return nil, err
		}
		c.Addr[s] = a
		m, err := next()
		if err != nil {
			return nil, err
		}
		c.MetricsAddr[s] = m
	}
	return c, nil
}

// FreeAddr returns a loopback address with a port free at the time of asking.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// StartAll starts every service in order and waits until each listens.
func (c *Cluster) StartAll() error {
	for _, s := range Services {
		if err := c.Start(s); err != nil {
			return err
		}
	}
	return nil
}

// Start starts one service and waits until it accepts connections.
func (c *Cluster) Start(name string) error {
	// A free port for metrics (MetricsAddr): the fixed defaults would
	// collide between clusters. Args may override it.
	args := []string{"--listen", c.Addr[name], "--metrics-listen", c.MetricsAddr[name]}
	switch name {
	case "tracker":
		args = append(args, "--data-dir", c.DataDir)
	case "queue":
		args = append(args, "--tracker", c.Addr["tracker"], "--plugins", c.Addr["plugins"])
	case "gateway":
		args = append(args, "--tracker", c.Addr["tracker"], "--queue", c.Addr["queue"], "--plugins", c.Addr["plugins"])
	case "plugins":
		args = append(args, "--tracker", c.Addr["tracker"])
	}
	args = append(args, c.Args[name]...)
	cmd := exec.Command(filepath.Join(c.Bin, "herald-"+name), args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdout = prefixed(c.Log, name)
	cmd.Stderr = prefixed(c.Log, name)
	// If the test process dies (a timeout, a kill), its services die too
	// instead of living on as orphans.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	exit := make(chan error, 1)
	go func() { exit <- cmd.Wait() }()
	c.mu.Lock()
	c.procs[name] = cmd
	c.exits[name] = exit
	c.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		conn, err := net.DialTimeout("tcp", c.Addr[name], 100*time.Millisecond)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case err := <-exit:
			exit <- err
			return fmt.Errorf("%s exited during start: %v", name, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not listen on %s within 30s", name, c.Addr[name])
}

// Kill sends SIGKILL to a service and waits for it to die.
func (c *Cluster) Kill(name string) error {
	_, err := c.signal(name, syscall.SIGKILL, 10*time.Second)
	return err
}

// Stop sends SIGTERM and waits up to timeout; it returns the process's exit
// error (nil for exit status 0).
func (c *Cluster) Stop(name string, timeout time.Duration) error {
	exitErr, err := c.signal(name, syscall.SIGTERM, timeout)
	if err != nil {
		return err
	}
	return exitErr
}

func (c *Cluster) signal(name string, sig syscall.Signal, timeout time.Duration) (error, error) {
	c.mu.Lock()
	cmd, exit := c.procs[name], c.exits[name]
	delete(c.procs, name)
	delete(c.exits, name)
	c.mu.Unlock()
	if cmd == nil {
		return nil, fmt.Errorf("%s is not running", name)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		return nil, fmt.Errorf("signal %s: %w", name, err)
	}
	select {
	case err := <-exit:
		return err, nil
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-exit
		return nil, fmt.Errorf("%s did not exit within %s of %s; killed", name, timeout, sig)
	}
}

// Close kills whatever still runs.
func (c *Cluster) Close() {
	c.mu.Lock()
	names := make([]string, 0, len(c.procs))
	for n := range c.procs {
		names = append(names, n)
	}
	c.mu.Unlock()
	for _, n := range names {
		c.Kill(n)
	}
}

// PID returns the process id of the named service, or 0 when it does not
// run. Benchmarks read its CPU time and peak RSS from /proc.
func (c *Cluster) PID(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cmd := c.procs[name]; cmd != nil {
		return cmd.Process.Pid
	}
	return 0
}

// Running reports whether the named service runs.
func (c *Cluster) Running(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[name] != nil
}

type prefixWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

var logMu sync.Mutex

func prefixed(w io.Writer, name string) io.Writer {
	if w == nil {
		return io.Discard
	}
	return &prefixWriter{mu: &logMu, w: w, prefix: name + ": "}
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i])
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

// Sink is a webhook receiver that counts deliveries per webhook-id, with
// the time each reached it (its first byte's arrival, as HoldSink's).
type Sink struct {
	URL string

	mu     sync.Mutex
	counts map[string]int
	times  map[string][]time.Time
	srv    *http.Server
	// Status, when set, answers a request with that status code.
	Status func(id string) int
}

// NewSink starts a sink on a free loopback port.
func NewSink() (*Sink, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Sink{URL: "http://" + l.Addr().String() + "/hook", counts: map[string]int{}, times: map[string][]time.Time{}}
	s.srv = newFirstByteServer(http.HandlerFunc(s.serve))
	go s.srv.Serve(firstByteListener{l})
	return s, nil
}

func (s *Sink) serve(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	at := arrival(r)
	id := r.Header.Get("webhook-id")
	if s.Status != nil {
		if code := s.Status(id); code != 0 && code/100 != 2 {
			w.WriteHeader(code)
			return
		}
	}
	s.mu.Lock()
	s.counts[id]++
	s.times[id] = append(s.times[id], at)
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// Counts returns a copy of deliveries per message id.
func (s *Sink) Counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.counts))
	for k, v := range s.counts {
		out[k] = v
	}
	return out
}

// Times returns when each delivery of id arrived, earliest first.
func (s *Sink) Times(id string) []time.Time {
	s.mu.Lock()
	out := append([]time.Time(nil), s.times[id]...)
	s.mu.Unlock()
	slices.SortFunc(out, time.Time.Compare)
	return out
}

// Total is the number of deliveries received.
func (s *Sink) Total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, v := range s.counts {
		n += v
	}
	return n
}

// Close stops the sink.
func (s *Sink) Close() { s.srv.Shutdown(context.Background()) }

// Arrival is one request a HoldSink received.
type Arrival struct {
	// ID is the webhook-id header: the message id.
	ID string
	// Path is the request URI (path and query), which tells recipients apart.
	Path string
	// Text is the "text" field of the JSON body, if any.
	Text string
	// FirstByte is when the first byte of the request reached the sink's
	// socket (the kernel's receive timestamp); Entered is when the handler
	// started.
	FirstByte, Entered time.Time
	// Held is true when a Hold kept the request open.
	Held bool
	// Answered is true once the sink wrote 200; false while held, or when
	// the client went away before the answer.
	Answered bool
}

// Hold keeps one matching request open until Release, its maximum hold
// time, or the client going away, whichever comes first.
type Hold struct {
	match   func(path, text string) bool
	max     time.Duration
	taken   bool
	arrived chan struct{}
	release chan struct{}
	once    sync.Once
}

// Arrived is closed when the held request has arrived.
func (h *Hold) Arrived() <-chan struct{} { return h.arrived }

// Release lets the held request be answered (200). Safe to call repeatedly.
func (h *Hold) Release() { h.once.Do(func() { close(h.release) }) }

// HoldSink is a webhook receiver for abort tests: it records each request
// with the time its first byte arrived, and can hold chosen requests open
// (answering 200 once released).
type HoldSink struct {
	// URL is the base URL (no path): add a per-recipient path.
	URL string

	mu       sync.Mutex
	arrivals []Arrival
	holds    []*Hold
	srv      *http.Server
}

type firstByteKey struct{}

// firstByteConn records when the first byte of each request arrived: a
// read after the previous request was answered starts the next one (HTTP/1.1
// clients send the next request only after reading the answer). The time is
// the kernel's receive timestamp where the socket gives one (see
// arrivalReader), else the time of the read.
type firstByteConn struct {
	net.Conn
	r     arrivalReader
	mu    sync.Mutex
	idle  bool
	first time.Time
}

func (c *firstByteConn) Read(b []byte) (int, error) {
	n, at, err := c.r.read(c.Conn, b)
	if n > 0 {
		c.mu.Lock()
		if c.idle {
			c.first, c.idle = at, false
		}
		c.mu.Unlock()
	}
	return n, err
}

// take returns the current request's first-byte time and marks the
// connection idle: the next read with data starts the next request.
func (c *firstByteConn) take() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idle = true
	return c.first
}

// newFirstByteServer is an HTTP server for a firstByteListener: each
// request's context holds its connection, for arrival.
func newFirstByteServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, firstByteKey{}, c)
		},
	}
}

// arrival returns when r's first byte arrived, or now when its connection
// did not record it; call it once per request, after reading the body.
func arrival(r *http.Request) time.Time {
	if c, ok := r.Context().Value(firstByteKey{}).(*firstByteConn); ok {
		if f := c.take(); !f.IsZero() {
			return f
		}
	}
	return time.Now()
}

type firstByteListener struct{ net.Listener }

func (l firstByteListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &firstByteConn{Conn: c, r: newArrivalReader(c), idle: true}, nil
}

// NewHoldSink starts a HoldSink on a free loopback port.
func NewHoldSink() (*HoldSink, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &HoldSink{URL: "http://" + l.Addr().String()}
	s.srv = newFirstByteServer(http.HandlerFunc(s.serve))
	go s.srv.Serve(firstByteListener{l})
	return s, nil
}

// HoldNext holds the next request whose path and body text match, for at
// most max.
func (s *HoldSink) HoldNext(match func(path, text string) bool, max time.Duration) *Hold {
	h := &Hold{match: match, max: max, arrived: make(chan struct{}), release: make(chan struct{})}
	s.mu.Lock()
	s.holds = append(s.holds, h)
	s.mu.Unlock()
	return h
}

func (s *HoldSink) serve(w http.ResponseWriter, r *http.Request) {
	entered := time.Now()
	body, _ := io.ReadAll(r.Body)
	var p struct {
		Text string `json:"text"`
	}
	json.Unmarshal(body, &p)
	first := arrival(r)
	a := Arrival{ID: r.Header.Get("webhook-id"), Path: r.URL.RequestURI(), Text: p.Text, FirstByte: first, Entered: entered}
	s.mu.Lock()
	var hold *Hold
	for _, h := range s.holds {
		if !h.taken && h.match(a.Path, a.Text) {
			h.taken, hold = true, h
			break
		}
	}
	a.Held = hold != nil
	i := len(s.arrivals)
	s.arrivals = append(s.arrivals, a)
	s.mu.Unlock()
	if hold != nil {
		close(hold.arrived)
		t := time.NewTimer(hold.max)
		defer t.Stop()
		select {
		case <-hold.release:
		case <-t.C:
		case <-r.Context().Done():
			return // the client went away: no answer
		}
	}
	w.WriteHeader(http.StatusOK)
	s.mu.Lock()
	s.arrivals[i].Answered = true
	s.mu.Unlock()
}

// Arrivals returns a copy of every request received, in arrival order.
func (s *HoldSink) Arrivals() []Arrival {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Arrival(nil), s.arrivals...)
}

// Close stops the sink, releasing held requests.
func (s *HoldSink) Close() {
	s.mu.Lock()
	for _, h := range s.holds {
		h.Release()
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.srv.Shutdown(ctx)
}
