package telemetry

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestServeMetricsServesTheRegistryUntilShutdown(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "herald_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)

	srv, err := ServeMetrics("127.0.0.1:0", reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + srv.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	for _, want := range []string{"herald_test_total 3", "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := http.Get("http://" + srv.Addr() + "/metrics"); err == nil {
		t.Error("the endpoint still answers after Shutdown")
	}
}

func TestServeMetricsEmptyAddressDisables(t *testing.T) {
	srv, err := ServeMetrics("", NewRegistry(), nil)
	if err != nil || srv != nil {
		t.Fatalf("ServeMetrics(\"\") = %v, %v; want nil, nil", srv, err)
	}
	if srv.Addr() != "" || srv.Shutdown(context.Background()) != nil {
		t.Error("a disabled endpoint has an address or fails to shut down")
	}
}

func TestServeMetricsTakenPortFails(t *testing.T) {
	first, err := ServeMetrics("127.0.0.1:0", NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Shutdown(context.Background())
	if _, err := ServeMetrics(first.Addr(), NewRegistry(), nil); err == nil {
		t.Fatal("a second endpoint on a taken port started")
	}
}
