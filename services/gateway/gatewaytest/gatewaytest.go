// Package gatewaytest starts a real gateway in-process for tests that need
// one beside other services.
package gatewaytest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldchat/herald/pkg/grpcclient"
	"github.com/heraldchat/herald/pkg/grpcserver"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/gateway/internal/gateway"
)

// Start serves a gateway in front of the tracker until the test ends and
// returns its address.
func Start(t testing.TB, trackerAddr string) string {
	t.Helper()
	return StartWithMetrics(t, trackerAddr, nil)
}

// StartWithMetrics is Start with the gateway's metrics registered on reg
// (nil registers them nowhere).
func StartWithMetrics(t testing.TB, trackerAddr string, reg prometheus.Registerer) string {
	return StartWithPlugins(t, trackerAddr, "", reg)
}

// StartWithPlugins is Start with a plugin host (for ListChannels) when
// pluginsAddr is not empty, and metrics on reg when it is not nil.
func StartWithPlugins(t testing.TB, trackerAddr, pluginsAddr string, reg prometheus.Registerer) string {
	t.Helper()
	return start(t, trackerAddr, pluginsAddr, reg, time.Now)
}

// StartWithClock is Start with the gateway reading the time from now: a
// clock that disagrees with the other services'.
func StartWithClock(t testing.TB, trackerAddr string, now func() time.Time) string {
	t.Helper()
	return start(t, trackerAddr, "", nil, now)
}

func start(t testing.TB, trackerAddr, pluginsAddr string, reg prometheus.Registerer, now func() time.Time) string {
	t.Helper()
	metrics, err := gateway.NewMetrics(reg)
	if err != nil {
		t.Fatalf("gatewaytest: %v", err)
	}
	log := slog.New(slog.DiscardHandler)
	tc, err := grpcclient.Dial(trackerAddr)
	if err != nil {
		t.Fatalf("gatewaytest: %v", err)
	}
	srv, err := grpcserver.New(grpcserver.Config{Name: gatewayv1.GatewayService_ServiceDesc.ServiceName, Addr: "127.0.0.1:0", Logger: log, GracePeriod: time.Second})
	if err != nil {
		t.Fatalf("gatewaytest: %v", err)
	}
	cfg := gateway.Config{Tracker: trackerv1.NewTrackerServiceClient(tc), Address: srv.Addr(), Logger: log, Metrics: metrics, Now: now}
	if pluginsAddr != "" {
		pc, err := grpcclient.Dial(pluginsAddr)
		if err != nil {
			t.Fatalf("gatewaytest: %v", err)
		}
		t.Cleanup(func() { pc.Close() })
		cfg.Plugins = pluginsv1.NewPluginHostServiceClient(pc)
	}
	svc, err := gateway.New(cfg)
	if err != nil {
		t.Fatalf("gatewaytest: %v", err)
	}
	gatewayv1.RegisterGatewayServiceServer(srv.GRPC(), svc)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		svc.Close()
		tc.Close()
	})
	return srv.Addr()
}
