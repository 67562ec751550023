package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	"github.com/heraldchat/herald/services/gateway/gatewaytest"
	"github.com/heraldchat/herald/services/plugins/pluginstest"
	"github.com/heraldchat/herald/services/queue/queuetest"
	"github.com/heraldchat/herald/services/tracker/trackertest"
)

// One message, sent once, failed once (HTTP 500, retryable) and then
// delivered: every hop's span is in the message's trace, with the right
// parents: gateway Send → tracker Accept; gateway Send → each queue attempt
// → plugins.Deliver → the provider's HTTP call; each attempt → the tracker's
// state transition it led to (retry, then the final one, delivered).
func TestOneTracePerMessage(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})

	tracker := trackertest.Start(t, "webhook")
	host := pluginstest.Start(t, tracker)
	queuetest.Start(t, tracker, host.Addr)
	conn, err := grpc.NewClient(gatewaytest.Start(t, tracker), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(tp))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	gw := gatewayv1.NewGatewayServiceClient(conn)

	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()

	ctx, root := tp.Tracer("test").Start(context.Background(), "backend")
	resp, err := gw.Send(ctx, &gatewayv1.SendRequest{Channel: "webhook", Recipient: srv.URL, Text: "traced"})
	root.End()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		m, err := gw.GetMessage(context.Background(), &gatewayv1.GetMessageRequest{Id: resp.GetId()})
		if err == nil && m.GetMessage().GetState() == gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED {
			if m.GetMessage().GetTraceId() != root.SpanContext().TraceID().String() {
				t.Errorf("stored trace id %s, want the caller's %s", m.GetMessage().GetTraceId(), root.SpanContext().TraceID())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not delivered: %v %v", m.GetMessage().GetState(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := tp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}

	traceID := root.SpanContext().TraceID()
	byName := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		if s.SpanContext().TraceID() == traceID {
			byName[s.Name()] = append(byName[s.Name()], s)
		}
	}
	one := func(name string) sdktrace.ReadOnlySpan {
		t.Helper()
		if len(byName[name]) == 0 {
			names := []string{}
			for n := range byName {
				names = append(names, n)
			}
			t.Fatalf("no %q span in the message's trace; it has: %s", name, strings.Join(names, ", "))
		}
		return byName[name][0]
	}
	var send sdktrace.ReadOnlySpan
	for _, s := range byName["herald.gateway.v1.GatewayService/Send"] {
		if s.SpanKind().String() == "server" {
			send = s
		}
	}
	if send == nil {
		t.Fatal("no gateway Send server span in the message's trace")
	}
	if acc := one("tracker.Accept"); acc.Parent().SpanID() != send.SpanContext().SpanID() {
		t.Errorf("tracker.Accept's parent is %s, want the gateway Send span", acc.Parent().SpanID())
	}
	attempts := byName["queue.attempt"]
	if len(attempts) != 2 {
		t.Fatalf("%d queue.attempt spans in the trace, want 2 (failed, then delivered)", len(attempts))
	}
	for _, a := range attempts {
		if a.Parent().SpanID() != send.SpanContext().SpanID() {
			t.Errorf("queue.attempt's parent is %s, want the gateway Send span %s", a.Parent().SpanID(), send.SpanContext().SpanID())
		}
	}
	delivers := byName["plugins.Deliver"]
	if len(delivers) != 2 {
		t.Fatalf("%d plugins.Deliver spans, want 2", len(delivers))
	}
	attemptIDs := map[string]bool{}
	for _, a := range attempts {
		attemptIDs[a.SpanContext().SpanID().String()] = true
	}
	deliverIDs := map[string]bool{}
	for _, d := range delivers {
		deliverIDs[d.SpanContext().SpanID().String()] = true
		if !attemptIDs[d.Parent().SpanID().String()] {
			t.Errorf("plugins.Deliver's parent %s is not a queue.attempt span", d.Parent().SpanID())
		}
	}
	httpSpans := 0
	for name, spans := range byName {
		for _, s := range spans {
			if s.SpanKind().String() == "client" && strings.Contains(name, "POST") {
				httpSpans++
				if !deliverIDs[s.Parent().SpanID().String()] {
					t.Errorf("provider call span %q has parent %s, not a plugins.Deliver span", name, s.Parent().SpanID())
				}
			}
		}
	}
	if httpSpans != 2 {
		t.Errorf("%d provider HTTP call spans in the trace, want 2", httpSpans)
	}
	// Each attempt's outcome became a durable state change in the tracker:
	// a retry, then the final transition to delivered, each a child of its
	// attempt.
	results := map[string]int{}
	for _, tr := range byName["tracker.transition"] {
		if !attemptIDs[tr.Parent().SpanID().String()] {
			t.Errorf("tracker.transition's parent %s is not a queue.attempt span", tr.Parent().SpanID())
		}
		for _, kv := range tr.Attributes() {
			if kv.Key == "herald.result" {
				results[kv.Value.AsString()]++
			}
		}
	}
	if results["retry"] != 1 || results["delivered"] != 1 || len(byName["tracker.transition"]) != 2 {
		t.Errorf("tracker.transition spans by result: %v, want one retry and one delivered", results)
	}
}

// A reply streamed in three chunks by a backend that does not carry its
// trace context from OpenReply to the AppendChunk calls is still one trace:
// a reply.chunk span per chunk under the reply's OpenReply, linked to the
// append call it came in by, and every delivery attempt of a chunk under its
// chunk's span.
func TestOneTracePerReply(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})

	tracker := trackertest.Start(t, "webhook")
	host := pluginstest.Start(t, tracker)
	queuetest.Start(t, tracker, host.Addr)
	conn, err := grpc.NewClient(gatewaytest.Start(t, tracker), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(tp))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	gw := gatewayv1.NewGatewayServiceClient(conn)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
	defer srv.Close()

	ctx, root := tp.Tracer("test").Start(context.Background(), "backend")
	open, err := gw.OpenReply(ctx, &gatewayv1.OpenReplyRequest{Channel: "webhook", Recipient: srv.URL, Conversation: "traced-reply"})
	root.End()
	if err != nil {
		t.Fatal(err)
	}
	traceID := root.SpanContext().TraceID()
	var chunks []string
	for i, text := range []string{"one", "two", "three"} {
		// No trace context: each append is a trace of its own at the gateway.
		resp, err := gw.AppendChunk(context.Background(), &gatewayv1.AppendChunkRequest{ReplyId: open.GetReplyId(), Index: uint32(i), Text: text})
		if err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, resp.GetId())
	}
	if _, err := gw.CloseReply(context.Background(), &gatewayv1.CloseReplyRequest{ReplyId: open.GetReplyId()}); err != nil {
		t.Fatal(err)
	}
	for _, id := range chunks {
		waitMessageState(t, gw, id, gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED)
		m, err := gw.GetMessage(context.Background(), &gatewayv1.GetMessageRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		if m.GetMessage().GetTraceId() != traceID.String() {
			t.Errorf("chunk %s is in trace %s, want the reply's %s", id, m.GetMessage().GetTraceId(), traceID)
		}
	}
	if err := tp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}

	openSpans, chunkSpans := map[string]bool{}, map[string]bool{}
	var attempts []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.SpanContext().TraceID() != traceID {
			continue
		}
		switch {
		case s.Name() == "herald.gateway.v1.GatewayService/OpenReply" && s.SpanKind().String() == "server":
			openSpans[s.SpanContext().SpanID().String()] = true
		case s.Name() == "queue.attempt":
			attempts = append(attempts, s)
		}
	}
	for _, s := range rec.Ended() {
		if s.SpanContext().TraceID() != traceID || s.Name() != "reply.chunk" {
			continue
		}
		chunkSpans[s.SpanContext().SpanID().String()] = true
		if !openSpans[s.Parent().SpanID().String()] {
			t.Errorf("reply.chunk's parent %s is not the gateway's OpenReply span", s.Parent().SpanID())
		}
		if links := s.Links(); len(links) != 1 || links[0].SpanContext.TraceID() == traceID {
			t.Errorf("reply.chunk has links %v, want one to its AppendChunk call's own trace", links)
		}
	}
	if len(chunkSpans) != 3 {
		t.Fatalf("%d reply.chunk spans in the reply's trace, want 3", len(chunkSpans))
	}
	if len(attempts) != 3 {
		t.Fatalf("%d queue.attempt spans in the reply's trace, want 3 (one per chunk)", len(attempts))
	}
	for _, a := range attempts {
		if !chunkSpans[a.Parent().SpanID().String()] {
			t.Errorf("queue.attempt's parent %s is not a reply.chunk span", a.Parent().SpanID())
		}
	}
}
