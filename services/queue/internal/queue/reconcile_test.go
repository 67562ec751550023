package queue_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	"github.com/heraldchat/herald/services/gateway/gatewaytest"
	"github.com/heraldchat/herald/services/plugins/pluginstest"
	"github.com/heraldchat/herald/services/queue/queuetest"
	"github.com/heraldchat/herald/services/tracker/trackertest"
)

// waitFinal polls a message until it is terminal and returns it with its
// timeline's event types.
func waitFinal(t *testing.T, gw gatewayv1.GatewayServiceClient, id string) (*gatewayv1.Message, []string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := gw.GetMessage(context.Background(), &gatewayv1.GetMessageRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		m := resp.GetMessage()
		switch m.GetState() {
		case gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, gatewayv1.DeliveryState_DELIVERY_STATE_FAILED, gatewayv1.DeliveryState_DELIVERY_STATE_ABORTED:
			var types []string
			for _, ev := range resp.GetTimeline() {
				types = append(types, ev.GetType())
			}
			return m, types
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s still %s after 15s", id, m.GetState())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// With the reconcile policy, an unknown outcome is resolved by asking the
// provider (the mock channel answers from its record), through the real
// tracker, queue and plugin host: a message the provider accepted although
// its answer was lost ends DELIVERED without a second send; one it never
// accepted is sent again, within the attempt budget (5 in queuetest), and
// then dead-lettered.
func TestUnknownOutcomeIsReconciled(t *testing.T) {
	tests := []struct {
		recipient    string
		wantState    gatewayv1.DeliveryState
		wantAccepted int    // records the mock provider holds for it
		wantEvent    string // in the timeline
		wantLeases   int    // delivery.leased events: provider calls, plus one not sent when the budget is spent
	}{
		{"lost", gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, 1, "delivery.reconciled", 1},
		{"fail:unknown", gatewayv1.DeliveryState_DELIVERY_STATE_FAILED, 0, "delivery.reconcile_not_found", 6},
	}
	for _, tt := range tests {
		t.Run(tt.recipient, func(t *testing.T) {
			tracker := trackertest.StartWith(t, trackertest.Options{Policies: map[string]string{"mock": "reconcile"}, ReconcileGrace: 50 * time.Millisecond})
			host := pluginstest.Start(t, tracker)
			queuetest.Start(t, tracker, host.Addr)
			conn, err := grpc.NewClient(gatewaytest.Start(t, tracker), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			gw := gatewayv1.NewGatewayServiceClient(conn)

			resp, err := gw.Send(context.Background(), &gatewayv1.SendRequest{Channel: "mock", Recipient: tt.recipient, Text: "x"})
			if err != nil {
				t.Fatal(err)
			}
			sent := time.Now()
			m, types := waitFinal(t, gw, resp.GetId())
			t.Logf("final after %s", time.Since(sent))
			accepted := 0
			for _, d := range host.Deliveries() {
				if d.MessageID == resp.GetId() {
					accepted++
				}
			}
			leases := 0
			for _, typ := range types {
				if typ == "delivery.leased" {
					leases++
				}
			}
			t.Logf("state=%s attempts=%d reason=%q last_error=%s %q; timeline %v", m.GetState(), m.GetAttempts(), m.GetReason(), m.GetLastErrorCode(), m.GetLastError(), types)
			if m.GetState() != tt.wantState || accepted != tt.wantAccepted || leases != tt.wantLeases || !slices.Contains(types, tt.wantEvent) {
				t.Fatalf("state %s, accepted %d times, %d delivery leases, timeline has %s=%v; want %s, %d, %d, true",
					m.GetState(), accepted, leases, tt.wantEvent, slices.Contains(types, tt.wantEvent), tt.wantState, tt.wantAccepted, tt.wantLeases)
			}
			if tt.wantState == gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED && m.GetProviderMessageId() != "mock-"+resp.GetId() {
				t.Fatalf("provider id %q, want the mock's", m.GetProviderMessageId())
			}
		})
	}
}
