package grpcserver

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// unaryCall counts the open call and logs it when it finishes.
func (s *Server) unaryCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	s.unary.Add(1)
	defer s.unary.Add(-1)
	start := time.Now()
	resp, err := handler(ctx, req)
	s.logCall(ctx, info.FullMethod, "unary", start, err)
	return resp, err
}

// streamCall counts the open stream and logs it when it ends. It does not
// wrap the stream: its messages pass without a per-message hook.
func (s *Server) streamCall(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	s.streams.Add(1)
	defer s.streams.Add(-1)
	start := time.Now()
	err := handler(srv, ss)
	kind := "bidi_stream"
	switch {
	case info.IsClientStream && !info.IsServerStream:
		kind = "client_stream"
	case !info.IsClientStream && info.IsServerStream:
		kind = "server_stream"
	}
	s.logCall(ss.Context(), info.FullMethod, kind, start, err)
	return err
}

// logCall logs a finished call at its code's level (codeToLevel), with
// the fields of go-grpc-middleware's logging interceptor, which this
// replaces: that one built its fields for every call before knowing
// whether the line would be written, a sixth of the gateway's CPU at 64
// concurrent Sends. Here a call the logger would drop costs one check.
func (s *Server) logCall(ctx context.Context, fullMethod, kind string, start time.Time, err error) {
	code := status.Code(err)
	lvl := codeToLevel(code)
	if !s.log.Enabled(ctx, lvl) {
		return
	}
	service, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	attrs := make([]slog.Attr, 0, 8)
	attrs = append(attrs,
		slog.String("grpc.component", "server"),
		slog.String("grpc.service", service),
		slog.String("grpc.method", method),
		slog.String("grpc.method_type", kind),
		slog.String("grpc.code", code.String()),
		slog.Float64("grpc.time_ms", float64(time.Since(start).Microseconds())/1000),
	)
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, slog.String("peer.address", p.Addr.String()))
	}
	if err != nil {
		attrs = append(attrs, slog.String("grpc.error", err.Error()))
	}
	s.log.LogAttrs(ctx, lvl, "finished call", attrs...)
}

// codeToLevel keeps the log quiet at INFO: successful, cancelled and
// not-found calls are DEBUG, server faults ERROR, the other errors WARN.
func codeToLevel(c codes.Code) slog.Level {
	switch c {
	case codes.OK, codes.Canceled, codes.NotFound:
		return slog.LevelDebug
	case codes.Internal, codes.Unknown, codes.DataLoss, codes.Unimplemented:
		return slog.LevelError
	default:
		return slog.LevelWarn
	}
}
