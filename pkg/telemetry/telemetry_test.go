package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"go.opentelemetry.io/otel"

	"github.com/heraldchat/herald/pkg/telemetry"
)

func TestLoggerCarriesTraceIDsFromSetupProvider(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	shutdown, err := telemetry.Setup(context.Background(), "test-svc")
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() {
		if err := shutdown(context.Background()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})

	var buf bytes.Buffer
	logger := telemetry.NewLogger(&buf, "test-svc", slog.LevelInfo)
	ctx, span := otel.Tracer("test").Start(context.Background(), "op")
	defer span.End()

	tests := []struct {
		name      string
		ctx       context.Context
		wantTrace string
		wantSpan  string
	}{
		{"with span", ctx, span.SpanContext().TraceID().String(), span.SpanContext().SpanID().String()},
		{"without span", context.Background(), "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf.Reset()
			logger.InfoContext(tt.ctx, "hello", slog.String("k", "v"))
			var got map[string]any
			if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
				t.Fatalf("log line %q is not JSON: %v", buf.String(), err)
			}
			if got["service"] != "test-svc" || got["k"] != "v" {
				t.Errorf("log line %v lacks service or attributes", got)
			}
			gotTrace, _ := got["trace_id"].(string)
			gotSpan, _ := got["span_id"].(string)
			if gotTrace != tt.wantTrace || gotSpan != tt.wantSpan {
				t.Errorf("trace_id, span_id = %q, %q; want %q, %q", gotTrace, gotSpan, tt.wantTrace, tt.wantSpan)
			}
		})
	}
	if !span.SpanContext().IsValid() {
		t.Error("span from Setup's provider has no valid ids")
	}
}

func TestLoggerDropsBelowLevel(t *testing.T) {
	var buf bytes.Buffer
	logger := telemetry.NewLogger(&buf, "svc", slog.LevelWarn)
	logger.Info("quiet")
	if buf.Len() != 0 {
		t.Errorf("INFO written at level WARN: %s", buf.String())
	}
}
