// Package grpcserver builds the gRPC server every herald service runs: one
// listener, OpenTelemetry stats, quiet error logging, panic recovery, worker
// goroutines that keep their grown stacks between calls, the standard health
// and reflection services, and a bounded graceful stop.
//
// It holds no business rules; services register their own handlers on
// GRPC() before calling Serve.
package grpcserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

const (
	defaultGracePeriod  = 10 * time.Second
	defaultMaxRecvBytes = 4 << 20
	// Enough for the 64 to 128 concurrent callers herald is measured
	// with; idle workers cost a parked goroutine each.
	defaultStreamWorkers = 128
)

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	// Name is the service name, used in logs and as a health service name.
	Name string
	// Addr is the listen address, e.g. "127.0.0.1:0".
	Addr string
	// Logger receives call errors and recovered panics; nil discards them.
	Logger *slog.Logger
	// GracePeriod bounds the graceful stop: after it, open streams are cut.
	// Default 10s.
	GracePeriod time.Duration
	// MaxRecvBytes is the largest message the server accepts. Default 4 MiB.
	MaxRecvBytes int
	// StreamWorkers is how many goroutines serve calls one after another
	// (grpc.NumStreamWorkers); a call that finds them all busy, as a long
	// stream keeps its worker, gets a goroutine of its own. Default 128;
	// negative: none, every call gets a new goroutine.
	//
	// A new goroutine starts with a small stack that each call grows again,
	// copying it: at Send@64 that was 7.5 % of the gateway's CPU and 4.7 %
	// of the tracker's (Lease and Complete). A worker keeps its grown stack.
	// grpc-go marks the option experimental; without it, calls are served
	// as with a negative value, only slower.
	StreamWorkers int
}

// Server is a gRPC server bound to a listener. Create it with New, register
// services on GRPC(), then call Serve once.
type Server struct {
	cfg    Config
	log    *slog.Logger
	lis    net.Listener
	grpc   *grpc.Server
	health *health.Server

	mu      sync.Mutex
	stopped bool // once true, health stays NOT_SERVING

	// Calls open now: unary calls are work a stop must not cut; streams
	// may be watchers that only end when cut.
	unary, streams atomic.Int64
}

// ErrCutShort is returned by Serve when unary calls were still open when the
// grace period ran out and had to be cut: the process should exit non-zero.
var ErrCutShort = errors.New("graceful stop cut work short")

// New listens on cfg.Addr at once, so Addr is known before Serve, and builds
// the gRPC server. opts are appended after herald's own options. The
// listener is owned by the Server: Serve closes it; if Serve is never
// called, the caller must call GRPC().Stop() to release it.
func New(cfg Config, opts ...grpc.ServerOption) (*Server, error) {
	if cfg.Name == "" {
		return nil, errors.New("grpcserver: Config.Name is empty; set it to the service name")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.GracePeriod <= 0 {
		cfg.GracePeriod = defaultGracePeriod
	}
	if cfg.MaxRecvBytes <= 0 {
		cfg.MaxRecvBytes = defaultMaxRecvBytes
	}
	if cfg.StreamWorkers == 0 {
		cfg.StreamWorkers = defaultStreamWorkers
	}
	lis, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}

	logger := cfg.Logger.With(slog.String("grpc_server", cfg.Name))
	recOpts := []recovery.Option{recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		logger.ErrorContext(ctx, "panic in gRPC handler",
			slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
		return status.Error(codes.Internal, "internal error")
	})}
	s := &Server{cfg: cfg, lis: lis, log: logger}
	base := []grpc.ServerOption{
		grpc.StatsHandler(otelgrpc.NewServerHandler()),
		// Logging wraps recovery so that a recovered panic is logged as the
		// Internal error it became.
		grpc.ChainUnaryInterceptor(
			s.unaryCall,
			recovery.UnaryServerInterceptor(recOpts...),
		),
		grpc.ChainStreamInterceptor(
			s.streamCall,
			recovery.StreamServerInterceptor(recOpts...),
		),
		grpc.MaxRecvMsgSize(cfg.MaxRecvBytes),
		// Clients ping every 30s (pkg/grpcclient), also on idle
		// connections; allow that with margin so long streams are not
		// closed with ENHANCE_YOUR_CALM.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    30 * time.Second,
			Timeout: 10 * time.Second,
		}),
	}
	if cfg.StreamWorkers > 0 {
		base = append(base, grpc.NumStreamWorkers(uint32(cfg.StreamWorkers)))
	}
	gs := grpc.NewServer(append(base, opts...)...)
	s.grpc = gs

	hs := health.NewServer()
	// Not serving until Serve starts.
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	hs.SetServingStatus(cfg.Name, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	s.health = hs
	return s, nil
}

// GRPC returns the underlying server; register services on it before Serve.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Addr returns the address the server listens on, with the actual port.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// SetServing sets the health status of "" and Config.Name. After Serve has
// begun stopping, the status stays NOT_SERVING whatever is asked.
func (s *Server) SetServing(serving bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setServingLocked(serving)
}

func (s *Server) setServingLocked(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving && !s.stopped {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(s.cfg.Name, st)
}

// Serve marks the server SERVING and serves until ctx is done. It then sets
// NOT_SERVING, stops gracefully, and cuts whatever is still open after
// GracePeriod (GracefulStop alone waits forever on open streams). It
// returns nil after a clean stop caused by ctx, an error wrapping
// ErrCutShort when unary calls had to be cancelled, or the error that ended
// serving.
func (s *Server) Serve(ctx context.Context) error {
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.grpc.Serve(s.lis) }()
	s.SetServing(true)

	select {
	case err := <-serveErr:
		s.markStopped()
		s.grpc.Stop()
		if err == nil {
			return errors.New("grpcserver: serve ended without a stop")
		}
		return fmt.Errorf("serve %s on %s: %w", s.cfg.Name, s.Addr(), err)
	case <-ctx.Done():
	}

	s.markStopped()
	start := time.Now()
	unary, streams := s.unary.Load(), s.streams.Load()
	graceful := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(graceful)
	}()
	timer := time.NewTimer(s.cfg.GracePeriod)
	defer timer.Stop()
	var cut error
	select {
	case <-graceful:
		s.cfg.Logger.Info("drained: every open call finished", slog.String("grpc_server", s.cfg.Name),
			slog.Int64("calls_open_at_stop", unary), slog.Int64("streams_open_at_stop", streams),
			slog.Duration("took", time.Since(start).Round(time.Millisecond)))
	case <-timer.C:
		cutUnary, cutStreams := s.unary.Load(), s.streams.Load()
		s.cfg.Logger.Warn("graceful stop exceeded the grace period; cancelling the calls still open",
			slog.String("grpc_server", s.cfg.Name), slog.Duration("grace_period", s.cfg.GracePeriod),
			slog.Int64("calls_cancelled", cutUnary), slog.Int64("streams_closed", cutStreams))
		s.grpc.Stop()
		<-graceful
		if cutUnary > 0 {
			cut = fmt.Errorf("%w: %s cancelled %d calls still open after the %s grace period", ErrCutShort, s.cfg.Name, cutUnary, s.cfg.GracePeriod)
		}
	}
	// Serve returns nil once stopped; anything else is worth reporting.
	if err := <-serveErr; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve %s on %s: %w", s.cfg.Name, s.Addr(), err)
	}
	return cut
}

// markStopped sets health NOT_SERVING for good, so that load balancers and
// clients move away before the graceful stop starts.
func (s *Server) markStopped() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	s.setServingLocked(false)
}
