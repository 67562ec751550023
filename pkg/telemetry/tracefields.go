package telemetry

import (
	"context"

	"go.opentelemetry.io/otel"
)

// TraceFields is a trace context as herald's messages, replies and
// deliveries carry it: the W3C traceparent and tracestate, each in a field
// of its own. It is a propagation.TextMapCarrier over those two fields, so
// a propagator reads and writes them without a map per message; other
// keys (baggage) are dropped, as the records have no field for them.
type TraceFields struct{ Parent, State string }

// Get implements propagation.TextMapCarrier.
func (f *TraceFields) Get(key string) string {
	switch key {
	case "traceparent":
		return f.Parent
	case "tracestate":
		return f.State
	}
	return ""
}

// Set implements propagation.TextMapCarrier.
func (f *TraceFields) Set(key, value string) {
	switch key {
	case "traceparent":
		f.Parent = value
	case "tracestate":
		f.State = value
	}
}

// Keys implements propagation.TextMapCarrier.
func (f *TraceFields) Keys() []string { return []string{"traceparent", "tracestate"} }

// ExtractTrace returns ctx carrying the trace context that traceparent and
// tracestate name, read by the global propagator.
func ExtractTrace(ctx context.Context, traceparent, tracestate string) context.Context {
	return otel.GetTextMapPropagator().Extract(ctx, &TraceFields{Parent: traceparent, State: tracestate})
}

// InjectTrace returns ctx's trace context as the two fields, written by the
// global propagator; both are empty when ctx has none.
func InjectTrace(ctx context.Context) (traceparent, tracestate string) {
	var f TraceFields
	otel.GetTextMapPropagator().Inject(ctx, &f)
	return f.Parent, f.State
}
