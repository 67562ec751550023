package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

const (
	traceMsgID = "01JD7X0000000000000000000T"
	traceID    = "4bf92f3577b34da6a3ce929d0e0e4736"
)

// traceGateway answers GetMessage with a message that failed once and was
// then delivered, each change stamped with its trace and span ids.
type traceGateway struct {
	gatewayv1.UnimplementedGatewayServiceServer
}

func (traceGateway) GetMessage(_ context.Context, req *gatewayv1.GetMessageRequest) (*gatewayv1.GetMessageResponse, error) {
	ev := func(sec int64, typ string, st gatewayv1.DeliveryState, attempt uint32, code, span string) *gatewayv1.Event {
		return &gatewayv1.Event{Time: timestamppb.New(accepted.Add(time.Duration(sec) * time.Second)), Type: typ, MessageId: req.GetId(),
			State: st, Attempt: attempt, ErrorCode: code, TraceId: traceID, SpanId: span}
	}
	return &gatewayv1.GetMessageResponse{
		Message: &gatewayv1.Message{Id: req.GetId(), Channel: "webhook", Conversation: "c1", State: gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED,
			Attempts: 2, TraceId: traceID},
		Timeline: []*gatewayv1.Event{
			ev(0, "message.accepted", gatewayv1.DeliveryState_DELIVERY_STATE_PENDING, 0, "", "00f067aa0ba902b7"),
			ev(0, "delivery.leased", gatewayv1.DeliveryState_DELIVERY_STATE_IN_FLIGHT, 1, "", "00f067aa0ba902b7"),
			ev(1, "delivery.retry", gatewayv1.DeliveryState_DELIVERY_STATE_PENDING, 1, "PLG_005", "a1a1a1a1a1a1a1a1"),
			ev(2, "delivery.delivered", gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, 2, "", "b2b2b2b2b2b2b2b2"),
		},
	}, nil
}

// jaegerAnswer is what Jaeger's query service (v1 HTTP API) answers for the
// trace: the backend's root span, the gateway's server span, the tracker's
// Accept, two queue attempts and, under each, the plugin host's delivery and
// the provider's HTTP call. Spans are out of order, as Jaeger sends them.
const jaegerAnswer = `{
  "data": [{
    "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
    "spans": [
      {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "c3c3c3c3c3c3c3c3", "flags": 1, "operationName": "plugins.Deliver",
       "references": [{"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "b2b2b2b2b2b2b2b2"}],
       "startTime": 1795255202100000, "duration": 12000, "tags": [{"key": "herald.outcome", "type": "string", "value": "OUTCOME_DELIVERED"}],
       "logs": [], "processID": "p4", "warnings": null},
      {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "00f067aa0ba902b7", "flags": 1, "operationName": "herald.gateway.v1.GatewayService/Send",
       "references": [{"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "1111111111111111"}],
       "startTime": 1795255200000100, "duration": 2500, "tags": [{"key": "rpc.system", "type": "string", "value": "grpc"}],
       "logs": [], "processID": "p1", "warnings": null},
      {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "1111111111111111", "flags": 1, "operationName": "backend",
       "references": [], "startTime": 1795255200000000, "duration": 3000, "tags": [], "logs": [], "processID": "p0", "warnings": null},
      {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "2222222222222222", "flags": 1, "operationName": "herald.tracker.v1.TrackerService/Accept",
       "references": [{"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "00f067aa0ba902b7"}],
       "startTime": 1795255200000400, "duration": 1900, "tags": [], "logs": [], "processID": "p2", "warnings": null},
      {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "b2b2b2b2b2b2b2b2", "flags": 1, "operationName": "queue.attempt",
       "references": [{"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "00f067aa0ba902b7"}],
       "startTime": 1795255202050000, "duration": 70000, "tags": [{"key": "herald.attempt", "type": "int64", "value": 2}],
       "logs": [], "processID": "p3", "warnings": null},
      {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "a1a1a1a1a1a1a1a1", "flags": 1, "operationName": "queue.attempt",
       "references": [{"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "00f067aa0ba902b7"}],
       "startTime": 1795255200010000, "duration": 40000, "tags": [{"key": "herald.attempt", "type": "int64", "value": 1}],
       "logs": [], "processID": "p3", "warnings": null},
      {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "d4d4d4d4d4d4d4d4", "flags": 1, "operationName": "plugins.Deliver",
       "references": [{"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "a1a1a1a1a1a1a1a1"}],
       "startTime": 1795255200011000, "duration": 30000, "tags": [{"key": "herald.error_code", "type": "string", "value": "PLG_005"}],
       "logs": [], "processID": "p4", "warnings": null},
      {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "e5e5e5e5e5e5e5e5", "flags": 1, "operationName": "HTTP POST",
       "references": [{"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "d4d4d4d4d4d4d4d4"}],
       "startTime": 1795255200012000, "duration": 28000, "tags": [{"key": "http.response.status_code", "type": "int64", "value": 500}],
       "logs": [], "processID": "p4", "warnings": null},
      {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "f6f6f6f6f6f6f6f6", "flags": 1, "operationName": "HTTP POST",
       "references": [{"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "c3c3c3c3c3c3c3c3"}],
       "startTime": 1795255202101000, "duration": 10000, "tags": [{"key": "http.response.status_code", "type": "int64", "value": 200}],
       "logs": [], "processID": "p4", "warnings": null}
    ],
    "processes": {
      "p0": {"serviceName": "backend", "tags": []},
      "p1": {"serviceName": "herald-gateway", "tags": [{"key": "host.name", "type": "string", "value": "h1"}]},
      "p2": {"serviceName": "herald-tracker", "tags": []},
      "p3": {"serviceName": "herald-queue", "tags": []},
      "p4": {"serviceName": "herald-plugins", "tags": []}
    },
    "warnings": null
  }],
  "total": 0, "limit": 0, "offset": 0, "errors": null
}`

func startTraceGateway(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	gatewayv1.RegisterGatewayServiceServer(srv, traceGateway{})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}

// startJaeger serves the query API's GET /api/traces/{id}, knowing only
// traceID; it records the paths asked for.
func startJaeger(t *testing.T, paths *[]string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*paths = append(*paths, r.URL.Path)
		if r.Method != http.MethodGet || r.URL.Path != "/api/traces/"+traceID {
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"data":null,"total":0,"limit":0,"offset":0,"errors":[{"code":404,"msg":"trace not found"}]}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(jaegerAnswer))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestTracePrintsTimelineAndSpanTree(t *testing.T) {
	gw := startTraceGateway(t)
	var paths []string
	jaeger := startJaeger(t, &paths)

	code, stdout, stderr := herald(t, context.Background(), gw, "trace", traceMsgID, "--jaeger-url", jaeger+"/")
	if code != 0 {
		t.Fatalf("herald trace exited %d; stderr: %s", code, stderr)
	}
	if len(paths) != 1 || paths[0] != "/api/traces/"+traceID {
		t.Errorf("Jaeger was asked for %v, want [/api/traces/%s]", paths, traceID)
	}
	// The timeline: every change with its time, type, state, attempt,
	// error code, trace id and span id.
	for _, want := range []string{
		"2026-11-21T10:00:01.000Z  delivery.retry      PENDING    1        PLG_005  " + traceID + "  a1a1a1a1a1a1a1a1",
		"2026-11-21T10:00:02.000Z  delivery.delivered  DELIVERED  2        -        " + traceID + "  b2b2b2b2b2b2b2b2",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("timeline lacks the line %q; output:\n%s", want, stdout)
		}
	}
	// The span tree: each span under its parent, siblings by start time.
	i := strings.Index(stdout, "spans (9,")
	if i < 0 {
		t.Fatalf("no span section; output:\n%s", stdout)
	}
	var tree []string
	for _, line := range strings.Split(strings.TrimRight(stdout[i:], "\n"), "\n")[2:] {
		// Keep the indentation and the name; drop the timing columns.
		name, _, _ := strings.Cut(line, "  +")
		tree = append(tree, strings.TrimRight(name, " "))
	}
	want := []string{
		"  backend backend",
		"    herald-gateway herald.gateway.v1.GatewayService/Send",
		"      herald-tracker herald.tracker.v1.TrackerService/Accept",
		"      herald-queue queue.attempt",
		"        herald-plugins plugins.Deliver",
		"          herald-plugins HTTP POST",
		"      herald-queue queue.attempt",
		"        herald-plugins plugins.Deliver",
		"          herald-plugins HTTP POST",
	}
	if strings.Join(tree, "\n") != strings.Join(want, "\n") {
		t.Errorf("span tree:\n%s\nwant:\n%s", strings.Join(tree, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(stdout, "+10ms") || !strings.Contains(stdout, "40ms") {
		t.Errorf("the first attempt's start offset (+10ms) or duration (40ms) is missing; output:\n%s", stdout)
	}
}

func TestTraceJSONNestsSpansUnderParents(t *testing.T) {
	gw := startTraceGateway(t)
	var paths []string
	env := map[string]string{"HERALD_GATEWAY": gw, "HERALD_JAEGER_URL": startJaeger(t, &paths)}
	var stdout, stderr strings.Builder
	if code := run(context.Background(), []string{"--output", "json", "trace", traceMsgID}, func(k string) string { return env[k] }, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var out struct {
		TraceID  string            `json:"trace_id"`
		Timeline []json.RawMessage `json:"timeline"`
		Spans    []spanOutput      `json:"spans"`
	}
	if err := json.Unmarshal([]byte(stdout.String()), &out); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout.String())
	}
	if out.TraceID != traceID || len(out.Timeline) != 4 || len(out.Spans) != 9 {
		t.Fatalf("trace_id %q, %d events, %d spans; want %s, 4, 9", out.TraceID, len(out.Timeline), len(out.Spans), traceID)
	}
	last := out.Spans[8]
	if last.SpanID != "f6f6f6f6f6f6f6f6" || last.ParentSpanID != "c3c3c3c3c3c3c3c3" || last.Depth != 4 || last.Service != "herald-plugins" {
		t.Errorf("last span = %+v, want f6f6… under c3c3… at depth 4 in herald-plugins", last)
	}
}

func TestTraceWithoutJaegerPrintsTimelineOnly(t *testing.T) {
	gw := startTraceGateway(t)
	code, stdout, stderr := herald(t, context.Background(), gw, "trace", traceMsgID)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "delivery.delivered") || strings.Contains(stdout, "spans") {
		t.Errorf("want the timeline and no span section; output:\n%s", stdout)
	}
}

func TestTraceNotInJaegerFails(t *testing.T) {
	var paths []string
	jaeger := startJaeger(t, &paths)
	spans, err := fetchJaegerTrace(context.Background(), http.DefaultClient, jaeger, "0af7651916cd43dd8448eb211c80319c")
	if err == nil || !strings.Contains(err.Error(), "is not in Jaeger") {
		t.Fatalf("fetch of an unknown trace = %d spans, %v; want an error saying it is not in Jaeger", len(spans), err)
	}
}
