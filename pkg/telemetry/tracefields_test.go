package telemetry

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// The two fields carry a trace context through the global propagator both
// ways, tracestate included, and baggage does not get in the way.
func TestTraceFieldsCarryATraceContextBothWays(t *testing.T) {
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })

	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	const state = "vendor=abc"
	ctx := ExtractTrace(context.Background(), parent, state)
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || !sc.IsRemote() || sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || sc.TraceState().String() != state {
		t.Fatalf("extracted %+v, want the trace of %s with state %s", sc, parent, state)
	}
	if p, s := InjectTrace(ctx); p != parent || s != state {
		t.Fatalf("injected %q, %q; want %q, %q", p, s, parent, state)
	}
	if p, s := InjectTrace(context.Background()); p != "" || s != "" {
		t.Fatalf("injected %q, %q from a context without a trace; want both empty", p, s)
	}
	if sc := trace.SpanContextFromContext(ExtractTrace(context.Background(), "", "")); sc.IsValid() {
		t.Fatalf("extracted %+v from empty fields; want none", sc)
	}
}
