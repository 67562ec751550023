package grpcserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/heraldchat/herald/pkg/grpcclient"
	"github.com/heraldchat/herald/pkg/grpcserver"
)

// testDesc is a tiny hand-written service: Panic panics, Block holds a
// stream open until the server cuts it.
var testDesc = grpc.ServiceDesc{
	ServiceName: "herald.test.Test",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Panic",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(emptypb.Empty)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(context.Context, any) (any, error) { panic("boom") }
			return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/herald.test.Test/Panic"}, h)
		},
	}, {
		MethodName: "Hold",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(emptypb.Empty)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, _ any) (any, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/herald.test.Test/Hold"}, h)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Block",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(_ any, stream grpc.ServerStream) error {
			if err := stream.SendHeader(metadata.MD{}); err != nil {
				return err
			}
			<-stream.Context().Done()
			return stream.Context().Err()
		},
	}},
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type running struct {
	srv    *grpcserver.Server
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	logs   *syncBuffer

	served   chan struct{} // closed when Serve returns
	serveErr error         // Serve's result, set before served is closed
}

func start(t *testing.T, grace time.Duration) *running {
	t.Helper()
	logs := &syncBuffer{}
	srv, err := grpcserver.New(grpcserver.Config{
		Name:        "test",
		Addr:        "127.0.0.1:0",
		Logger:      slog.New(slog.NewJSONHandler(logs, nil)),
		GracePeriod: grace,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv.GRPC().RegisterService(&testDesc, struct{}{})
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: srv, cancel: cancel, logs: logs, served: make(chan struct{})}
	go func() {
		r.serveErr = srv.Serve(ctx)
		close(r.served)
	}()
	conn, err := grpcclient.Dial(srv.Addr())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		conn.Close()
		select {
		case <-r.served:
		case <-time.After(grace + 5*time.Second):
			t.Error("Serve did not return")
		}
	})
	r.conn = conn
	return r
}

// waitStatus reads a health watch until it reports want.
func waitStatus(t *testing.T, w grpc.ServerStreamingClient[healthpb.HealthCheckResponse], want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	for {
		resp, err := w.Recv()
		if err != nil {
			t.Fatalf("watch ended before %v: %v", want, err)
		}
		if resp.GetStatus() == want {
			return
		}
	}
}

func TestHealthServingThenNotServingOnCancel(t *testing.T) {
	for _, service := range []string{"", "test"} {
		t.Run("service="+service, func(t *testing.T) {
			r := start(t, 500*time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			w, err := healthpb.NewHealthClient(r.conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: service})
			if err != nil {
				t.Fatalf("Watch: %v", err)
			}
			waitStatus(t, w, healthpb.HealthCheckResponse_SERVING)

			r.cancel()
			waitStatus(t, w, healthpb.HealthCheckResponse_NOT_SERVING)
			select {
			case <-r.served:
				if r.serveErr != nil {
					t.Errorf("Serve = %v, want nil after a stop by ctx", r.serveErr)
				}
			case <-ctx.Done():
				t.Fatal("Serve did not return")
			}
		})
	}
}

func TestServeReturnsWithinGracePeriodWithOpenStream(t *testing.T) {
	const grace = 300 * time.Millisecond
	r := start(t, grace)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := r.conn.NewStream(ctx, &testDesc.Streams[0], "/herald.test.Test/Block")
	if err != nil {
		t.Fatalf("NewStream: %v", err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatalf("stream not open: %v", err)
	}

	stopAt := time.Now()
	r.cancel()
	select {
	case <-r.served:
		if r.serveErr != nil {
			t.Errorf("Serve = %v, want nil", r.serveErr)
		}
	case <-time.After(grace + 3*time.Second):
		t.Fatal("Serve did not return within the grace period")
	}
	if took := time.Since(stopAt); took > grace+time.Second {
		t.Errorf("Serve took %s to return, grace period %s", took, grace)
	}
	if err := stream.RecvMsg(new(emptypb.Empty)); err == nil {
		t.Error("open stream survived the stop")
	}
}

// A unary call still open when the grace period ends is cancelled, logged
// with the count, and Serve reports ErrCutShort so the process exits
// non-zero; an open stream alone (TestServeReturnsWithinGracePeriodWithOpenStream)
// is not work cut short.
func TestServeReportsCutShortWhenUnaryCallsAreCancelled(t *testing.T) {
	const grace = 300 * time.Millisecond
	r := start(t, grace)
	called := make(chan error, 1)
	go func() {
		called <- r.conn.Invoke(context.Background(), "/herald.test.Test/Hold", &emptypb.Empty{}, new(emptypb.Empty))
	}()
	// The connection is up once a health check answers; the held call was
	// sent before it on the same connection.
	if err := r.conn.Invoke(context.Background(), "/grpc.health.v1.Health/Check", &healthpb.HealthCheckRequest{}, new(healthpb.HealthCheckResponse)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	r.cancel()
	select {
	case <-r.served:
	case <-time.After(grace + 3*time.Second):
		t.Fatal("Serve did not return within the grace period")
	}
	if !errors.Is(r.serveErr, grpcserver.ErrCutShort) || !strings.Contains(r.serveErr.Error(), "cancelled 1 calls") {
		t.Fatalf("Serve = %v, want ErrCutShort naming 1 cancelled call", r.serveErr)
	}
	if err := <-called; status.Code(err) == codes.OK {
		t.Fatal("the held call succeeded")
	}
	if !strings.Contains(r.logs.String(), `"calls_cancelled":1`) {
		t.Errorf("log does not say how many calls were cancelled:\n%s", r.logs.String())
	}
}

func TestPanicBecomesInternalAndIsLogged(t *testing.T) {
	r := start(t, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := r.conn.Invoke(ctx, "/herald.test.Test/Panic", &emptypb.Empty{}, &emptypb.Empty{})
	if got := status.Code(err); got != codes.Internal {
		t.Fatalf("code = %v (%v), want Internal", got, err)
	}
	logs := r.logs.String()
	if !strings.Contains(logs, `"level":"ERROR","msg":"panic in gRPC handler"`) || !strings.Contains(logs, "boom") {
		t.Errorf("panic not logged at ERROR; logs:\n%s", logs)
	}
}

func TestFinishedCallsAreLoggedByCode(t *testing.T) {
	r := start(t, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A health check that succeeds is DEBUG: not written at INFO.
	if _, err := healthpb.NewHealthClient(r.conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("Check: %v", err)
	}
	// The recovered panic is a call that ended Internal: ERROR, with the
	// fields operators filter on.
	r.conn.Invoke(ctx, "/herald.test.Test/Panic", &emptypb.Empty{}, &emptypb.Empty{})
	var finished []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(r.logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == "finished call" {
			finished = append(finished, m)
		}
	}
	if len(finished) != 1 {
		t.Fatalf("%d finished-call lines, want 1 (the failed call only); logs:\n%s", len(finished), r.logs.String())
	}
	got := finished[0]
	for k, want := range map[string]any{"level": "ERROR", "grpc.service": "herald.test.Test", "grpc.method": "Panic", "grpc.method_type": "unary", "grpc.code": "Internal", "grpc.error": "rpc error: code = Internal desc = internal error"} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	if _, ok := got["grpc.time_ms"].(float64); !ok {
		t.Errorf("grpc.time_ms missing: %v", got)
	}
}

func TestNewFailsOnBusyAddress(t *testing.T) {
	r := start(t, time.Second)
	_, err := grpcserver.New(grpcserver.Config{Name: "second", Addr: r.srv.Addr()})
	if err == nil {
		t.Fatal("New on a busy address succeeded")
	}
	if !strings.Contains(err.Error(), r.srv.Addr()) {
		t.Errorf("error %q does not name the address", err)
	}
	if errors.Unwrap(err) == nil {
		t.Errorf("error %q does not wrap the cause", err)
	}
}
