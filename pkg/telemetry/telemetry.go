// Package telemetry sets up herald's tracing, structured logging and metrics
// endpoint: the global W3C trace-context propagator, a tracer provider that
// exports OTLP when the standard OTEL_* variables ask for it, a JSON slog
// logger that stamps each record with the trace and span ids of its context,
// and an HTTP server for a Prometheus registry.
//
// It defines no business metrics: each service registers its own on the
// registry it is given. It never fails a service because no trace backend is
// configured: without an endpoint, spans still get ids (so logs can be joined
// to traces) but are not exported.
package telemetry

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Setup installs the global W3C trace-context (and baggage) propagator and a
// global tracer provider for serviceName.
//
// When OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is
// set, spans are exported over OTLP/gRPC through a batch span processor; the
// exporter reads the other standard OTEL_EXPORTER_OTLP_* variables itself.
// The resource's service.name is serviceName unless OTEL_SERVICE_NAME (or
// service.name in OTEL_RESOURCE_ATTRIBUTES) overrides it. Without an
// endpoint the provider has no exporter and samples nothing (unless
// OTEL_TRACES_SAMPLER says otherwise): spans still carry trace and span
// ids, which are stored with messages, logged and propagated, but nothing
// is recorded that no one would read.
//
// The returned shutdown flushes buffered spans and stops the exporter; call
// it once, with a context that bounds how long the flush may take.
func Setup(ctx context.Context, serviceName string) (shutdown func(context.Context) error, err error) {
	// Later detectors win, so the environment overrides the default name.
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", serviceName)),
		resource.WithFromEnv(),
	)
	if err != nil && res == nil {
		return nil, fmt.Errorf("build telemetry resource: %w", err)
	}
	// A partial resource (for example a malformed OTEL_RESOURCE_ATTRIBUTES)
	// is still usable; resource.New returns it alongside the error.

	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" {
		exp, err := otlptracegrpc.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("create OTLP trace exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	} else if os.Getenv("OTEL_TRACES_SAMPLER") == "" {
		opts = append(opts, sdktrace.WithSampler(sdktrace.NeverSample()))
	}
	tp := sdktrace.NewTracerProvider(opts...)

	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(
		propagation.TraceContext{}, propagation.Baggage{},
	))
	otel.SetTracerProvider(tp)

	return func(ctx context.Context) error {
		// Shutdown flushes the batch processor before stopping the exporter.
		return tp.Shutdown(ctx)
	}, nil
}

// NewLogger returns a JSON slog logger that writes to w, drops records below
// level, carries the attribute service=name, and adds trace_id and span_id
// to every record whose context holds a valid span context.
func NewLogger(w io.Writer, name string, level slog.Level) *slog.Logger {
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})
	return slog.New(traceHandler{Handler: h}).With(slog.String("service", name))
}

// traceHandler adds the span context of a record's context to the record.
type traceHandler struct {
	slog.Handler
}

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(
			slog.String("trace_id", sc.TraceID().String()),
			slog.String("span_id", sc.SpanID().String()),
		)
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{Handler: h.Handler.WithAttrs(attrs)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{Handler: h.Handler.WithGroup(name)}
}
