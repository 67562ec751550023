package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	"github.com/heraldchat/herald/services/gateway/gatewaytest"
	"github.com/heraldchat/herald/services/plugins/pluginstest"
	"github.com/heraldchat/herald/services/queue/queuetest"
	"github.com/heraldchat/herald/services/tracker/trackertest"
)

// After 5 messages delivered and 2 failed permanently, every service's
// registry counts exactly that traffic.
func TestMetricsCountKnownTraffic(t *testing.T) {
	regs := map[string]*prometheus.Registry{}
	for _, s := range []string{"gateway", "tracker", "queue", "plugins"} {
		regs[s] = prometheus.NewRegistry()
	}
	tracker := trackertest.StartWithMetrics(t, regs["tracker"], "mock")
	host := pluginstest.StartWithMetrics(t, tracker, regs["plugins"])
	queuetest.StartWithMetrics(t, tracker, host.Addr, regs["queue"])
	conn, err := grpc.NewClient(gatewaytest.StartWithMetrics(t, tracker, regs["gateway"]), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	gw := gatewayv1.NewGatewayServiceClient(conn)

	ctx := context.Background()
	var ids []string
	for i, to := range []string{"ok", "fail:permanent", "ok", "ok", "fail:permanent", "ok", "ok"} {
		resp, err := gw.Send(ctx, &gatewayv1.SendRequest{Channel: "mock", Recipient: to, Conversation: fmt.Sprint("m", i), Text: "hi"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, resp.GetId())
	}
	// An invalid Send is timed under its code and accepts nothing.
	if _, err := gw.Send(ctx, &gatewayv1.SendRequest{Channel: "mock", Text: "no recipient"}); err == nil {
		t.Fatal("Send without a recipient succeeded")
	}
	for _, id := range ids {
		waitTerminal(t, gw, id)
	}

	want := map[string]map[string]float64{
		"gateway": {
			`herald_messages_accepted_total{channel="mock"}`:             7,
			`herald_send_duration_seconds_count{code="OK"}`:              7,
			`herald_send_duration_seconds_count{code="InvalidArgument"}`: 1,
		},
		"queue": {
			`herald_deliveries_total{channel="mock",result="delivered"}`: 5,
			`herald_deliveries_total{channel="mock",result="failed"}`:    2,
			`herald_dead_letters_total{channel="mock",code="PLG_001"}`:   2,
			`herald_in_flight{channel="mock"}`:                           0,
		},
		"plugins": {
			`herald_provider_call_duration_seconds_count{channel="mock",outcome="delivered"}`: 5,
			`herald_provider_call_duration_seconds_count{channel="mock",outcome="permanent"}`: 2,
			`herald_delivery_errors_total{channel="mock",error_code="PLG_001"}`:               2,
			// Never 3 failures in a row.
			`herald_channel_healthy{channel="mock"}`:    1,
			`herald_channel_healthy{channel="webhook"}`: 1,
		},
		"tracker": {
			`herald_messages{state="pending"}`:   0,
			`herald_messages{state="in_flight"}`: 0,
			`herald_messages{state="unknown"}`:   0,
			`herald_messages{state="delivered"}`: 5,
			`herald_messages{state="failed"}`:    2,
			`herald_messages{state="aborted"}`:   0,
			`herald_messages{state="expired"}`:   0,
			`herald_recovery_index_size`:         0,
			`herald_oldest_pending_age_seconds`:  0,
		},
	}
	for svc, w := range want {
		// The queue frees a slot just after it hands the outcome on, so
		// poll until the gauges settle.
		var got map[string]float64
		deadline := time.Now().Add(5 * time.Second)
		for {
			got = gather(t, regs[svc])
			if cmp.Diff(pick(got, w), w) == "" || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if diff := cmp.Diff(pick(got, w), w); diff != "" {
			t.Errorf("%s metrics (-got +want):\n%s\nall:\n%s", svc, diff, dump(got))
		}
		if svc == "queue" {
			if n := got[`herald_retries_total{channel="mock"}`]; n != 0 {
				t.Errorf("herald_retries_total{channel=mock} = %v, want 0", n)
			}
		}
	}

	// Each Accept is its own commit; leases and outcomes are batched, so
	// at least one more of each.
	tr := gather(t, regs["tracker"])
	commits := tr["herald_commits_total"]
	if commits < 7+2 {
		t.Errorf("herald_commits_total = %v, want at least 9", commits)
	}
	if got := tr["herald_store_commit_duration_seconds_count"]; got != commits {
		t.Errorf("herald_store_commit_duration_seconds_count = %v, want herald_commits_total = %v", got, commits)
	}
	if f := tr["herald_wal_fsyncs_total"]; f < 1 || f > commits+1 {
		t.Errorf("herald_wal_fsyncs_total = %v, want between 1 and commits+1 (%v)", f, commits+1)
	}
	// The store's memory: the messages were written into a memtable (at
	// least their bytes), and the block cache stays within its 64 MiB.
	if m := tr[`herald_store_memory_bytes{use="memtables"}`]; m < 1024 {
		t.Errorf("herald_store_memory_bytes{use=memtables} = %v, want the memtable's size", m)
	}
	if c, ok := tr[`herald_store_memory_bytes{use="block_cache"}`]; !ok || c < 0 || c > 64<<20 {
		t.Errorf("herald_store_memory_bytes{use=block_cache} = %v (present %v), want 0 to 64 MiB", c, ok)
	}
	if n, ok := tr["herald_store_open_tables"]; !ok || n < 0 {
		t.Errorf("herald_store_open_tables = %v (present %v)", n, ok)
	}
}

// waitTerminal polls the message until it is DELIVERED or FAILED.
func waitTerminal(t *testing.T, gw gatewayv1.GatewayServiceClient, id string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := gw.GetMessage(context.Background(), &gatewayv1.GetMessageRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		switch s := resp.GetMessage().GetState(); s {
		case gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, gatewayv1.DeliveryState_DELIVERY_STATE_FAILED:
			return
		default:
			if time.Now().After(deadline) {
				t.Fatalf("message %s is still %s", id, s)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gather reads reg into name{label="value",...} → value; a histogram gives
// its sample count as name_count.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			suffix := ""
			if len(labels) > 0 {
				suffix = "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[mf.GetName()+suffix] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[mf.GetName()+suffix] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				out[mf.GetName()+"_count"+suffix] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// pick returns got's values for want's keys; a missing key reads -1.
func pick(got, want map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k := range want {
		v, ok := got[k]
		if !ok {
			v = -1
		}
		out[k] = v
	}
	return out
}

func dump(m map[string]float64) string {
	var lines []string
	for k, v := range m {
		lines = append(lines, fmt.Sprintf("  %s %v", k, v))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
