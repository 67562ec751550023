// Package trackertest starts a real tracker in-process, on 127.0.0.1:0 over
// Pebble's in-memory filesystem, for tests that need one beside other
// services. Like net/http/httptest, it is for tests only.
package trackertest

import (
	"cmp"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldchat/herald/pkg/grpcserver"
	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/tracker/internal/store"
	"github.com/heraldchat/herald/services/tracker/internal/tracker"
)

// Start serves a tracker until the test ends and returns its address.
// redeliver lists channels whose unknown outcomes are re-sent; others fail.
func Start(t testing.TB, redeliver ...string) string {
	t.Helper()
	return StartWithMetrics(t, nil, redeliver...)
}

// StartWithMetrics is Start with the tracker's metrics registered on reg
// (nil registers them nowhere).
func StartWithMetrics(t testing.TB, reg prometheus.Registerer, redeliver ...string) string {
	t.Helper()
	policies := map[string]string{}
	for _, ch := range redeliver {
		policies[ch] = "redeliver"
	}
	return StartWith(t, Options{Metrics: reg, Policies: policies})
}

// Options shape the tracker StartWith starts.
type Options struct {
	// Metrics registers the tracker's metrics; nil registers them nowhere.
	Metrics prometheus.Registerer
	// Policies maps channels to their unknown-outcome policy: "redeliver",
	// "fail" or "reconcile". Channels not listed fail.
	Policies map[string]string
	// ReconcileGrace is how long an unknown outcome waits before it is
	// reconciled; zero means 100ms.
	ReconcileGrace time.Duration
}

// StartWith serves a tracker shaped by o until the test ends and returns
// its address.
func StartWith(t testing.TB, o Options) string {
	t.Helper()
	metrics, err := tracker.NewMetrics(o.Metrics, time.Now)
	if err != nil {
		t.Fatalf("trackertest: %v", err)
	}
	policy := func(ch string) store.UnknownPolicy {
		switch o.Policies[ch] {
		case "redeliver":
			return store.PolicyRedeliver
		case "reconcile":
			return store.PolicyReconcile
		}
		return store.PolicyFail
	}
	st, err := store.Open("tracker", store.Options{FS: vfs.NewMem(), UnknownPolicy: policy, CacheSize: 8 << 20, OnCommit: metrics.ObserveCommit,
		ReconcileGrace: cmp.Or(o.ReconcileGrace, 100*time.Millisecond)})
	if err != nil {
		t.Fatalf("trackertest: open store: %v", err)
	}
	metrics.Watch(st)
	log := slog.New(slog.DiscardHandler)
	srv, err := grpcserver.New(grpcserver.Config{Name: trackerv1.TrackerService_ServiceDesc.ServiceName, Addr: "127.0.0.1:0", Logger: log, GracePeriod: time.Second})
	if err != nil {
		t.Fatalf("trackertest: %v", err)
	}
	svc := tracker.New(st, log, time.Now, t.TempDir())
	trackerv1.RegisterTrackerServiceServer(srv.GRPC(), svc)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	go svc.ExpireLeases(ctx, 100*time.Millisecond)
	t.Cleanup(func() {
		svc.Close()
		cancel()
		<-done
		st.Close()
	})
	return srv.Addr()
}

// AcceptOne accepts a message for the mock channel into a conversation of
// its own through tc, and returns its id.
func AcceptOne(ctx context.Context, t testing.TB, tc trackerv1.TrackerServiceClient) string {
	t.Helper()
	id := ulid.Make().String()
	if _, err := tc.Accept(ctx, &trackerv1.AcceptRequest{Message: &storev1.Message{
		Id: id, Tenant: "t1", Channel: "mock", Recipient: "ok", Conversation: "c-" + id, Text: "hi",
	}}); err != nil {
		t.Fatalf("trackertest: accept: %v", err)
	}
	return id
}
