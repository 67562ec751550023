package tracker

import (
	"context"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/heraldchat/herald/pkg/telemetry"
	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	"github.com/heraldchat/herald/services/tracker/internal/store"
)

// tracerName names the tracker's own spans. The tracer is taken from the
// global provider when the Service is made, after telemetry set it up.
const tracerName = "github.com/heraldchat/herald/services/tracker"

// traceTransitions adds a tracker.transition span for every applied outcome
// that names its attempt's span: the state change the attempt led to,
// timed by the batch commit that made it durable, as a child of the
// attempt. Complete is batched across messages, so its gRPC span belongs to
// no single trace; these spans put the final transition into each
// message's own trace.
func (s *Service) traceTransitions(outs []store.Outcome, applied []store.Applied, start, end time.Time) {
	for i, a := range applied {
		o := outs[i]
		if !a.Applied || o.TraceID == "" {
			continue
		}
		tid, err1 := trace.TraceIDFromHex(o.TraceID)
		sid, err2 := trace.SpanIDFromHex(o.SpanID)
		if err1 != nil || err2 != nil {
			continue
		}
		// The queue names only sampled attempts.
		parent := trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true,
		}))
		_, span := s.tracer.Start(parent, "tracker.transition", trace.WithTimestamp(start), trace.WithAttributes(
			attribute.String("herald.message_id", o.MessageID),
			attribute.String("herald.result", resultName(o.Result)),
			attribute.String("herald.error_code", o.ErrorCode),
			attribute.Int("herald.batch_size", len(outs)),
		))
		span.End(trace.WithTimestamp(end))
	}
}

// startChunkSpan opens a reply.chunk span in the reply's trace (the one
// stored at OpenReply), linked to the AppendChunk call that carried it, and
// makes it the chunk message's trace context: one trace per reply, a span
// per chunk, and every delivery attempt of the chunk under it, whether or
// not the backend propagated its context between calls. A reply that cannot
// be read gets no span; AppendChunk reports why.
func (s *Service) startChunkSpan(replyID string, index uint32, m *storev1.Message) trace.Span {
	r, err := s.store.Reply(replyID)
	if err != nil || r.GetTraceparent() == "" {
		return nil
	}
	parent := remoteParent(r.GetTraceparent(), r.GetTracestate())
	call := trace.SpanContextFromContext(remoteParent(m.GetTraceparent(), m.GetTracestate()))
	opts := []trace.SpanStartOption{trace.WithAttributes(
		attribute.String("herald.reply_id", replyID),
		attribute.Int64("herald.chunk_index", int64(index)),
		attribute.String("herald.message_id", m.GetId()),
	)}
	if call.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: call}))
	}
	ctx, span := s.tracer.Start(parent, "reply.chunk", opts...)
	if tp, ts := telemetry.InjectTrace(ctx); tp != "" {
		m.Traceparent, m.Tracestate = tp, ts
	}
	return span
}

func endChunkSpan(span trace.Span, err error) {
	if span == nil {
		return
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

func resultName(r store.Result) string {
	switch r {
	case store.ResultDelivered:
		return "delivered"
	case store.ResultRetry:
		return "retry"
	case store.ResultFailed:
		return "failed"
	case store.ResultUnknown:
		return "unknown"
	}
	return "unspecified"
}

// traceAccept records a tracker.Accept span in the message's trace: the
// stream's own span belongs to no message.
func (s *Service) traceAccept(m *storev1.Message, err error, start, end time.Time, batch int) {
	if !sampled(m.GetTraceparent()) {
		return // not recorded: spare the propagator's parse
	}
	parent := remoteParent(m.GetTraceparent(), m.GetTracestate())
	if !trace.SpanContextFromContext(parent).IsSampled() {
		return
	}
	_, span := s.tracer.Start(parent, "tracker.Accept", trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start), trace.WithAttributes(
		attribute.String("herald.message_id", m.GetId()),
		attribute.String("herald.channel", m.GetChannel()),
		attribute.String("herald.conversation", m.GetConversation()),
		attribute.Int("herald.batch_size", batch),
	))
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End(trace.WithTimestamp(end))
}

// remoteParent is the span context a stored W3C trace context names.
func remoteParent(traceparent, tracestate string) context.Context {
	return telemetry.ExtractTrace(context.Background(), traceparent, tracestate)
}

// sampled reports whether a W3C traceparent ("00-<trace>-<span>-<flags>")
// may have its sampled flag set: false only when it certainly has not (no
// traceparent, or flags whose low bit is clear). Callers still parse it.
func sampled(traceparent string) bool {
	n := len(traceparent)
	switch {
	case n == 0:
		return false
	case n < 3 || traceparent[n-3] != '-':
		return true // an unusual form: let the propagator decide
	}
	// |0x20 lower-cases a hex letter and leaves a digit as it is.
	v := strings.IndexByte("0123456789abcdef", traceparent[n-1]|0x20)
	return v < 0 || v&1 == 1
}
