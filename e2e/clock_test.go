package e2e

import (
	"context"
	"fmt"
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

// Each service schedules with a clock that the system clock cannot move
// while it runs (pkg/clock), but one anchored at its own start: a wall-clock
// step of an hour between two services' starts (an NTP correction, a
// restart of one container) leaves their clocks an hour apart. Nothing that
// crosses a hop may depend on them agreeing: a retry is not held for an
// hour, a provider call is not cut at once, a time to live does not expire
// on arrival, and no conversation is reordered. The gateway's and the
// queue's clocks run an hour ahead of, or behind, the tracker's and the
// plugin host's.
func TestClockStepBetweenServicesReordersAndLosesNothing(t *testing.T) {
	for _, step := range []time.Duration{time.Hour, -time.Hour} {
		t.Run(fmt.Sprintf("step%+v", step), func(t *testing.T) {
			stepped := func() time.Time { return time.Now().Add(step) }
			tracker := trackertest.Start(t, "webhook", "mock")
			host := pluginstest.Start(t, tracker)
			queuetest.StartWithClock(t, tracker, host.Addr, stepped)
			conn, err := grpc.NewClient(gatewaytest.StartWithClock(t, tracker, stepped), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			gw := gatewayv1.NewGatewayServiceClient(conn)

			const convs, perConv = 3, 6
			var ids []string
			for i := range perConv {
				for c := range convs {
					to := "ok"
					if i%3 == 1 {
						to = "flaky:1" // its first attempt fails: a retry crosses the hop
					}
					resp, err := gw.Send(context.Background(), &gatewayv1.SendRequest{Channel: "mock", Recipient: to,
						Conversation: fmt.Sprint("conv-", c), Text: fmt.Sprint(i), TtlSeconds: 600})
					if err != nil {
						t.Fatal(err)
					}
					ids = append(ids, resp.GetId())
				}
			}
			for _, id := range ids {
				waitMessageStateWithin(t, gw, id, gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, 15*time.Second)
			}
			last := map[string]uint64{}
			delivered := map[string]int{}
			for _, d := range host.Deliveries() {
				delivered[d.MessageID]++
				if d.Sequence <= last[d.Conversation] {
					t.Errorf("%s: sequence %d delivered after %d", d.Conversation, d.Sequence, last[d.Conversation])
				}
				last[d.Conversation] = d.Sequence
			}
			for _, id := range ids {
				if delivered[id] != 1 {
					t.Errorf("message %s delivered %d times, want 1", id, delivered[id])
				}
			}
		})
	}
}

func waitMessageStateWithin(t *testing.T, gw gatewayv1.GatewayServiceClient, id string, want gatewayv1.DeliveryState, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var last gatewayv1.DeliveryState
	for time.Now().Before(deadline) {
		resp, err := gw.GetMessage(context.Background(), &gatewayv1.GetMessageRequest{Id: id})
		if err == nil {
			last = resp.GetMessage().GetState()
			if last == want {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("message %s is %s after %s, want %s", id, last, within, want)
}
