// Package queuetest starts a real queue in-process for tests that need one
// beside other services.
package queuetest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldchat/herald/pkg/grpcclient"
	"github.com/heraldchat/herald/pkg/grpcserver"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	queuev1 "github.com/heraldchat/herald/proto/herald/queue/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/queue/internal/queue"
)

// Start runs a queue against the tracker and plugin host until the test
// ends, with short retry delays, and returns its address.
func Start(t testing.TB, trackerAddr, pluginsAddr string) string {
	t.Helper()
	return StartWithMetrics(t, trackerAddr, pluginsAddr, nil)
}

// StartWithMetrics is Start with the queue's metrics registered on reg (nil
// registers them nowhere).
func StartWithMetrics(t testing.TB, trackerAddr, pluginsAddr string, reg prometheus.Registerer) string {
	t.Helper()
	return start(t, trackerAddr, pluginsAddr, reg, time.Now)
}

// StartWithClock is Start with the queue reading the time from now: a
// clock that disagrees with the other services', as after a wall-clock step
// between their starts.
func StartWithClock(t testing.TB, trackerAddr, pluginsAddr string, now func() time.Time) string {
	t.Helper()
	return start(t, trackerAddr, pluginsAddr, nil, now)
}

func start(t testing.TB, trackerAddr, pluginsAddr string, reg prometheus.Registerer, now func() time.Time) string {
	t.Helper()
	metrics, err := queue.NewMetrics(reg)
	if err != nil {
		t.Fatalf("queuetest: %v", err)
	}
	log := slog.New(slog.DiscardHandler)
	tc, err := grpcclient.Dial(trackerAddr)
	if err != nil {
		t.Fatalf("queuetest: %v", err)
	}
	pc, err := grpcclient.Dial(pluginsAddr)
	if err != nil {
		t.Fatalf("queuetest: %v", err)
	}
	cfg := queue.Config{
		Worker:         "queuetest",
		DeliverTimeout: 2 * time.Second,
		DrainTimeout:   2 * time.Second,
		DefaultRetry:   queue.RetryPolicy{Initial: 20 * time.Millisecond, Multiplier: 2, Max: 200 * time.Millisecond, MaxAttempts: 5},
		BreakerTimeout: time.Second,
		Metrics:        metrics,
	}
	q := queue.New(cfg, trackerv1.NewTrackerServiceClient(tc), pluginsv1.NewPluginHostServiceClient(pc), log, now)
	srv, err := grpcserver.New(grpcserver.Config{Name: queuev1.QueueService_ServiceDesc.ServiceName, Addr: "127.0.0.1:0", Logger: log, GracePeriod: time.Second})
	if err != nil {
		t.Fatalf("queuetest: %v", err)
	}
	queuev1.RegisterQueueServiceServer(srv.GRPC(), q)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { srv.Serve(ctx); done <- struct{}{} }()
	go func() { q.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() {
		cancel()
		<-done
		<-done
		tc.Close()
		pc.Close()
	})
	return srv.Addr()
}
