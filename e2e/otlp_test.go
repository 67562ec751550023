package e2e

import (
	"context"
	"encoding/hex"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	collectortracev1 "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonv1 "go.opentelemetry.io/proto/otlp/common/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"

	"github.com/heraldchat/herald/e2e/harness"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// The service.name each binary gives telemetry.Setup.
var otlpServiceNames = []string{"herald-gateway", "herald-tracker", "herald-queue", "herald-plugins"}

// otlpSpan is one span the receiver got, with who exported it.
type otlpSpan struct {
	Service  string
	Peer     string    // the exporter's connection: a new process dials anew
	Received time.Time // when the Export call arrived
	Span     *tracev1.Span
}

func (s otlpSpan) traceID() string { return hex.EncodeToString(s.Span.GetTraceId()) }
func (s otlpSpan) spanID() string  { return hex.EncodeToString(s.Span.GetSpanId()) }
func (s otlpSpan) parentID() string {
	return hex.EncodeToString(s.Span.GetParentSpanId())
}

func (s otlpSpan) intAttr(key string) (int64, bool) {
	for _, kv := range s.Span.GetAttributes() {
		if kv.GetKey() == key {
			return kv.GetValue().GetIntValue(), true
		}
	}
	return 0, false
}

// otlpReceiver is an OTLP/gRPC trace collector that keeps every span.
type otlpReceiver struct {
	collectortracev1.UnimplementedTraceServiceServer
	Addr string

	mu    sync.Mutex
	spans []otlpSpan
}

func startOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{Addr: l.Addr().String()}
	srv := grpc.NewServer()
	collectortracev1.RegisterTraceServiceServer(srv, r)
	go srv.Serve(l)
	// Registered before the cluster's cleanup, so it runs after the
	// services have stopped.
	t.Cleanup(srv.Stop)
	return r
}

func (r *otlpReceiver) Export(ctx context.Context, req *collectortracev1.ExportTraceServiceRequest) (*collectortracev1.ExportTraceServiceResponse, error) {
	now := time.Now()
	from := ""
	if p, ok := peer.FromContext(ctx); ok {
		from = p.Addr.String()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		svc := otlpStringAttr(rs.GetResource().GetAttributes(), "service.name")
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				r.spans = append(r.spans, otlpSpan{Service: svc, Peer: from, Received: now, Span: sp})
			}
		}
	}
	return &collectortracev1.ExportTraceServiceResponse{}, nil
}

func otlpStringAttr(attrs []*commonv1.KeyValue, key string) string {
	for _, kv := range attrs {
		if kv.GetKey() == key {
			return kv.GetValue().GetStringValue()
		}
	}
	return ""
}

// trace returns the spans received so far of one trace id (hex).
func (r *otlpReceiver) trace(traceID string) []otlpSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []otlpSpan
	for _, s := range r.spans {
		if s.traceID() == traceID {
			out = append(out, s)
		}
	}
	return out
}

// services returns every service.name seen so far, in any trace.
func (r *otlpReceiver) services() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	for _, s := range r.spans {
		seen[s.Service] = true
	}
	return otlpSortedKeys(seen)
}

func otlpSortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// otlpSpanNames lists the span names of spans, per service.
func otlpSpanNames(spans []otlpSpan) map[string][]string {
	out := map[string][]string{}
	for _, s := range spans {
		out[s.Service] = append(out[s.Service], s.Span.GetName())
	}
	for _, names := range out {
		sort.Strings(names)
	}
	return out
}

// startTracedCluster starts the real binaries exporting to rec, with the
// queue flags startCluster uses, and returns a gateway client.
func startTracedCluster(t *testing.T, rec *otlpReceiver) (*harness.Cluster, gatewayv1.GatewayServiceClient) {
	t.Helper()
	bin := binaries(t)
	c, err := harness.New(bin, filepath.Join(t.TempDir(), "tracker"), testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	c.Args["queue"] = []string{"--deliver-timeout", "2s", "--lease", "6s", "--retry-initial", "100ms", "--retry-max-delay", "1s", "--drain-timeout", "5s"}
	c.Env = []string{
		"HERALD_LOG_LEVEL=warn",
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + rec.Addr,
		"OTEL_EXPORTER_OTLP_INSECURE=true",
		"OTEL_BSP_SCHEDULE_DELAY=100",
		// Not inherited from the developer's shell: the names under test
		// are the binaries' own.
		"OTEL_SERVICE_NAME=",
		"OTEL_RESOURCE_ATTRIBUTES=",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=",
		"OTEL_TRACES_SAMPLER=",
	}
	t.Cleanup(c.Close)
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.Addr["gateway"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return c, gatewayv1.NewGatewayServiceClient(conn)
}

// otlpWaitDelivered polls GetMessage until id is DELIVERED and returns the
// message's trace id.
func otlpWaitDelivered(t *testing.T, gw gatewayv1.GatewayServiceClient, id string, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		m, err := gw.GetMessage(ctx, &gatewayv1.GetMessageRequest{Id: id})
		cancel()
		if err == nil && m.GetMessage().GetState() == gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED {
			if m.GetMessage().GetTraceId() == "" {
				t.Fatalf("message %s is DELIVERED but has no trace id", id)
			}
			return m.GetMessage().GetTraceId()
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s not DELIVERED within %s: %v %v", id, within, m.GetMessage().GetState(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func otlpSend(t *testing.T, gw gatewayv1.GatewayServiceClient, url, text string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := gw.Send(ctx, &gatewayv1.SendRequest{Channel: "webhook", Recipient: url, Conversation: "otlp", Text: text})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	return resp.GetId()
}

// One webhook message through the real binaries, exporting over OTLP/gRPC:
// the collector receives spans of the message's one trace from each of the
// four services, identified by their resource's service.name.
func TestSpansFromAllFourServicesReachOTLP(t *testing.T) {
	rec := startOTLPReceiver(t)
	_, gw := startTracedCluster(t, rec)
	sink, err := harness.NewSink()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)

	start := time.Now()
	id := otlpSend(t, gw, sink.URL, "traced over OTLP")
	traceID := otlpWaitDelivered(t, gw, id, 15*time.Second)
	delivered := time.Since(start)

	deadline := time.Now().Add(15 * time.Second)
	var spans []otlpSpan
	var missing []string
	for {
		spans = rec.trace(traceID)
		got := map[string]bool{}
		for _, s := range spans {
			got[s.Service] = true
		}
		missing = missing[:0]
		for _, name := range otlpServiceNames {
			if !got[name] {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	byService := otlpSpanNames(spans)
	for _, svc := range otlpSortedKeys(func() map[string]bool {
		m := map[string]bool{}
		for s := range byService {
			m[s] = true
		}
		return m
	}()) {
		t.Logf("trace %s: %s: %s", traceID, svc, strings.Join(byService[svc], ", "))
	}
	t.Logf("delivered after %s; all spans of the trace after %s", delivered.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if len(missing) > 0 {
		t.Fatalf("no span of trace %s from %v within 15s; services that exported anything: %v", traceID, missing, rec.services())
	}
	for _, name := range []string{"queue.attempt", "plugins.Deliver"} {
		found := false
		for _, s := range spans {
			found = found || s.Span.GetName() == name
		}
		if !found {
			t.Errorf("no %q span in trace %s", name, traceID)
		}
	}
}

// A webhook call is held open; the queue is SIGKILLed during it and
// restarted. The message is redelivered and DELIVERED, and every attempt —
// the one cut by the kill and the one the restarted queue made — is in the
// message's one trace at the collector.
func TestAttemptAfterQueueKillJoinsTheSameTrace(t *testing.T) {
	rec := startOTLPReceiver(t)
	c, gw := startTracedCluster(t, rec)
	sink, err := harness.NewHoldSink()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	hold := sink.HoldNext(func(path, text string) bool { return true }, 3*time.Second)

	start := time.Now()
	id := otlpSend(t, gw, sink.URL+"/hook", "held, then the queue dies")
	select {
	case <-hold.Arrived():
	case <-time.After(15 * time.Second):
		t.Fatal("the first webhook request did not arrive within 15s")
	}
	if err := c.Kill("queue"); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := c.Start("queue"); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	traceID := otlpWaitDelivered(t, gw, id, 30*time.Second)
	delivered := time.Now()

	// Expect a plugins.Deliver span per attempt (the first one is exported
	// by the plugin host, which survived) and a queue.attempt span from the
	// restarted queue: it started after the kill, so no other process made it.
	type summary struct {
		deliver      []otlpSpan
		afterRestart []otlpSpan
	}
	look := func() summary {
		var s summary
		for _, sp := range rec.trace(traceID) {
			switch {
			case sp.Span.GetName() == "plugins.Deliver":
				s.deliver = append(s.deliver, sp)
			case sp.Span.GetName() == "queue.attempt" && sp.Service == "herald-queue" &&
				time.Unix(0, int64(sp.Span.GetStartTimeUnixNano())).After(killed):
				s.afterRestart = append(s.afterRestart, sp)
			}
		}
		return s
	}
	deadline := time.Now().Add(15 * time.Second)
	var s summary
	for {
		s = look()
		attempts := map[int64]bool{}
		for _, d := range s.deliver {
			if a, ok := d.intAttr("herald.attempt"); ok {
				attempts[a] = true
			}
		}
		if (len(attempts) >= 2 && len(s.afterRestart) >= 1) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	spans := rec.trace(traceID)
	byService := otlpSpanNames(spans)
	for _, svc := range otlpSortedKeys(func() map[string]bool {
		m := map[string]bool{}
		for s := range byService {
			m[s] = true
		}
		return m
	}()) {
		t.Logf("trace %s: %s: %s", traceID, svc, strings.Join(byService[svc], ", "))
	}
	attemptSpans := map[string]bool{}
	for _, sp := range spans {
		if sp.Span.GetName() == "queue.attempt" {
			a, _ := sp.intAttr("herald.attempt")
			attemptSpans[sp.spanID()] = true
			t.Logf("queue.attempt span %s attempt=%d start=%s exported from %s",
				sp.spanID(), a, time.Unix(0, int64(sp.Span.GetStartTimeUnixNano())).Sub(start).Round(time.Millisecond), sp.Peer)
		}
	}
	deliverIDs := map[string]bool{}
	deliverAttempts := map[int64]bool{}
	for _, d := range s.deliver {
		a, ok := d.intAttr("herald.attempt")
		if ok {
			deliverAttempts[a] = true
		}
		deliverIDs[d.spanID()] = true
		t.Logf("plugins.Deliver span %s attempt=%d (present=%v) parent=%s (a received queue.attempt: %v) start=%s",
			d.spanID(), a, ok, d.parentID(), attemptSpans[d.parentID()],
			time.Unix(0, int64(d.Span.GetStartTimeUnixNano())).Sub(start).Round(time.Millisecond))
	}
	t.Logf("times since Send: first request held, queue killed at %s, restarted at %s, DELIVERED at %s",
		killed.Sub(start).Round(time.Millisecond), restarted.Sub(start).Round(time.Millisecond), delivered.Sub(start).Round(time.Millisecond))
	t.Logf("sink arrivals: %d", len(sink.Arrivals()))

	if len(s.deliver) < 2 || len(deliverIDs) < 2 || len(deliverAttempts) < 2 {
		t.Fatalf("trace %s has %d plugins.Deliver spans (%d distinct span ids, attempts %v); want ≥ 2 distinct attempts",
			traceID, len(s.deliver), len(deliverIDs), otlpSortedInts(deliverAttempts))
	}
	if len(s.afterRestart) == 0 {
		t.Fatalf("trace %s has no queue.attempt span started after the queue was killed (by the restarted queue)", traceID)
	}
	// The restarted queue's attempt is the parent of a plugins.Deliver span
	// of a later attempt than the first.
	linked := false
	for _, qa := range s.afterRestart {
		qn, _ := qa.intAttr("herald.attempt")
		for _, d := range s.deliver {
			dn, _ := d.intAttr("herald.attempt")
			if d.parentID() == qa.spanID() && dn == qn && dn >= 2 {
				linked = true
			}
		}
	}
	if !linked {
		t.Errorf("no plugins.Deliver span of attempt ≥ 2 is a child of the restarted queue's queue.attempt span")
	}
}

func otlpSortedInts(m map[int64]bool) []int64 {
	out := make([]int64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
