package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// The skeleton is the floor for herald's Send: client → one gRPC proxy hop →
// a gRPC server that makes one pebble.Sync commit per request. Proxy and
// server are separate processes (this binary re-executed with
// "skeleton-proxy" / "skeleton-server"), like herald's gateway and
// tracker; the client is in the harness. They speak herald's own
// GatewayService.Send messages, so the wire work matches herald's, with no
// validation, ids, indexes, interceptors or telemetry.

// runSkeleton is the entry point of the re-executed binary.
func runSkeleton(role string, args []string) error {
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "gRPC address")
	dir := fs.String("dir", "", "Pebble directory (server)")
	upstream := fs.String("upstream", "", "server address (proxy)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	switch role {
	case "skeleton-server":
		if *dir == "" {
			return errors.New("-dir is required")
		}
		db, err := pebble.Open(*dir, &pebble.Options{})
		if err != nil {
			return fmt.Errorf("open pebble %s: %w", *dir, err)
		}
		defer db.Close()
		gatewayv1.RegisterGatewayServiceServer(srv, &skeletonServer{db: db})
	case "skeleton-proxy":
		if *upstream == "" {
			return errors.New("-upstream is required")
		}
		conn, err := grpc.NewClient(*upstream, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		gatewayv1.RegisterGatewayServiceServer(srv, &skeletonProxy{next: gatewayv1.NewGatewayServiceClient(conn)})
	default:
		return fmt.Errorf("unknown role %q", role)
	}
	go func() {
		<-ctx.Done()
		// GracefulStop waits for open calls; bound it.
		t := time.AfterFunc(5*time.Second, srv.Stop)
		srv.GracefulStop()
		t.Stop()
	}()
	return srv.Serve(lis)
}

type skeletonServer struct {
	gatewayv1.UnimplementedGatewayServiceServer
	db  *pebble.DB
	seq atomic.Uint64
}

// Send commits the text under a new key with pebble.Sync and answers once
// it is durable.
func (s *skeletonServer) Send(_ context.Context, req *gatewayv1.SendRequest) (*gatewayv1.SendResponse, error) {
	n := s.seq.Add(1)
	key := binary.BigEndian.AppendUint64([]byte{'m'}, n)
	if err := s.db.Set(key, []byte(req.GetText()), pebble.Sync); err != nil {
		return nil, err
	}
	return &gatewayv1.SendResponse{Id: fmt.Sprint(n), State: gatewayv1.DeliveryState_DELIVERY_STATE_PENDING, Sequence: n}, nil
}

type skeletonProxy struct {
	gatewayv1.UnimplementedGatewayServiceServer
	next gatewayv1.GatewayServiceClient
}

func (p *skeletonProxy) Send(ctx context.Context, req *gatewayv1.SendRequest) (*gatewayv1.SendResponse, error) {
	return p.next.Send(ctx, req)
}

// skeletonEnv is the running proxy and server.
type skeletonEnv struct {
	server, proxy *server
	conn          *grpc.ClientConn
	client        gatewayv1.GatewayServiceClient
}

func startSkeleton(ctx context.Context, e *env) (*skeletonEnv, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	srvAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	proxyAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := &skeletonEnv{}
	log, err := e.logFile("skeleton")
	if err != nil {
		return nil, err
	}
	s.server, err = startServer("skeleton server", log, nil, "", self, "skeleton-server", "-listen", srvAddr, "-dir", filepath.Join(e.tmp, "skeleton"))
	if err != nil {
		return nil, err
	}
	if err := s.server.waitListening(ctx, srvAddr, 30*time.Second); err != nil {
		s.close()
		return nil, err
	}
	s.proxy, err = startServer("skeleton proxy", log, nil, "", self, "skeleton-proxy", "-listen", proxyAddr, "-upstream", srvAddr)
	if err != nil {
		s.close()
		return nil, err
	}
	if err := s.proxy.waitListening(ctx, proxyAddr, 30*time.Second); err != nil {
		s.close()
		return nil, err
	}
	s.conn, err = grpc.NewClient(proxyAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.close()
		return nil, err
	}
	s.client = gatewayv1.NewGatewayServiceClient(s.conn)
	return s, nil
}

func (s *skeletonEnv) close() {
	if s.conn != nil {
		s.conn.Close()
	}
	for _, p := range []*server{s.proxy, s.server} {
		if p != nil {
			p.stop(10 * time.Second)
		}
	}
}

func (s *skeletonEnv) pids() []int { return []int{s.proxy.pid(), s.server.pid()} }

// send measures Send through the proxy from callers concurrent callers.
func (s *skeletonEnv) send(ctx context.Context, callers int, dur time.Duration, text string) (sample, error) {
	var n atomic.Uint64
	return measureLoop(ctx, s.pids(), callers, dur, func(ctx context.Context, _ int) error {
		_, err := s.client.Send(ctx, &gatewayv1.SendRequest{Channel: "mock", Recipient: "ok",
			Conversation: fmt.Sprint("s", n.Add(1)), Text: text})
		return err
	})
}
