// Package grpcclient dials herald's internal gRPC services with the
// transport settings they share: OpenTelemetry stats, keepalive pings and
// message size limits. It holds no retry or business policy.
package grpcclient

import (
	"fmt"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

const defaultMaxMsgBytes = 16 << 20

// Dial returns a client connection to target (host:port). The transport is
// insecure: herald's services talk over loopback or private networks. The
// connection carries the otelgrpc client stats handler, pings every 30s
// (also while idle, which pkg/grpcserver permits) and allows messages up to
// 16 MiB each way; opts are applied after these and may override them.
//
// Dial does not block or connect; the first RPC does. The caller owns the
// connection and must Close it.
func Dial(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	base := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                30 * time.Second,
			Timeout:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(defaultMaxMsgBytes),
			grpc.MaxCallSendMsgSize(defaultMaxMsgBytes),
		),
	}
	conn, err := grpc.NewClient(target, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", target, err)
	}
	return conn, nil
}
