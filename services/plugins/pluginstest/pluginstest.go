// Package pluginstest starts a real plugin host in-process with the webhook
// and mock adapters, for tests that need one beside other services.
package pluginstest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldchat/herald/pkg/grpcclient"
	"github.com/heraldchat/herald/pkg/grpcserver"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/plugins/internal/mock"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
	"github.com/heraldchat/herald/services/plugins/internal/webhook"
)

// Delivery is what the mock adapter recorded of one delivery.
type Delivery struct {
	MessageID    string
	Conversation string
	Sequence     uint64
	Attempt      uint32
}

// Host is a running plugin host.
type Host struct {
	Addr string
	mock *mock.Adapter
}

// Deliveries returns what the mock channel delivered, in order.
func (h *Host) Deliveries() []Delivery {
	var out []Delivery
	for _, r := range h.mock.Deliveries() {
		out = append(out, Delivery{MessageID: r.MessageID, Conversation: r.Conversation, Sequence: r.Sequence, Attempt: r.Attempt})
	}
	return out
}

// Start serves a plugin host (channels "mock" and "webhook") until the test
// ends; unacknowledged answers are reported to the tracker at trackerAddr.
func Start(t testing.TB, trackerAddr string) *Host {
	t.Helper()
	return StartWithMetrics(t, trackerAddr, nil)
}

// StartWithMetrics is Start with the plugin host's metrics registered on reg
// (nil registers them nowhere).
func StartWithMetrics(t testing.TB, trackerAddr string, reg prometheus.Registerer) *Host {
	t.Helper()
	metrics, err := pluginhost.NewMetrics(reg)
	if err != nil {
		t.Fatalf("pluginstest: %v", err)
	}
	log := slog.New(slog.DiscardHandler)
	conn, err := grpcclient.Dial(trackerAddr)
	if err != nil {
		t.Fatalf("pluginstest: %v", err)
	}
	wh := webhook.New(webhook.Options{})
	m := mock.New(mock.Options{})
	lifetime, endLifetime := context.WithCancel(context.Background())
	host, err := pluginhost.New(map[string]pluginhost.Adapter{"mock": m, "webhook": wh}, pluginhost.Options{
		Logger:   log,
		Reporter: pluginhost.TrackerReporter{Client: trackerv1.NewTrackerServiceClient(conn), Timeout: 5 * time.Second},
		Lifetime: lifetime,
		Metrics:  metrics,
	})
	if err != nil {
		t.Fatalf("pluginstest: %v", err)
	}
	srv, err := grpcserver.New(grpcserver.Config{Name: "plugins", Addr: "127.0.0.1:0", Logger: log, GracePeriod: time.Second})
	if err != nil {
		t.Fatalf("pluginstest: %v", err)
	}
	pluginsv1.RegisterPluginHostServiceServer(srv.GRPC(), host)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() {
		host.Drain()
		cancel()
		<-done
		endLifetime()
		host.WaitReports()
		wh.Close()
		conn.Close()
	})
	return &Host{Addr: srv.Addr(), mock: m}
}
