package e2e

import (
	"context"
	"fmt"
	"io"
	"sync"
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

// startInProcess runs the four real services in this process on 127.0.0.1:0.
func startInProcess(t *testing.T) (gatewayv1.GatewayServiceClient, *pluginstest.Host) {
	t.Helper()
	tracker := trackertest.Start(t, "webhook", "mock")
	host := pluginstest.Start(t, tracker)
	queuetest.Start(t, tracker, host.Addr)
	gw := gatewaytest.Start(t, tracker)
	conn, err := grpc.NewClient(gw, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return gatewayv1.NewGatewayServiceClient(conn), host
}

// Messages sent through the gateway reach the adapter exactly once and, per
// conversation, in the order the tracker accepted them, even when some need
// a retry.
func TestPipelineExactlyOnceInConversationOrder(t *testing.T) {
	gw, host := startInProcess(t)
	ctx := context.Background()
	const convs, perConv = 6, 25
	var mu sync.Mutex
	ids := map[string]bool{}
	var wg sync.WaitGroup
	for c := range convs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perConv {
				to := "ok"
				if i%5 == 2 {
					to = "flaky:1" // fails its first attempt, retried
				}
				resp, err := gw.Send(ctx, &gatewayv1.SendRequest{Channel: "mock", Recipient: to, Conversation: fmt.Sprint("conv-", c), Text: fmt.Sprint(i)})
				if err != nil {
					t.Error(err)
					return
				}
				if resp.GetSequence() != uint64(i+1) {
					t.Errorf("conv-%d message %d got sequence %d", c, i, resp.GetSequence())
				}
				mu.Lock()
				ids[resp.GetId()] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()

	waitDeliveredOnceInOrder(t, host, ids)
	for id := range ids {
		resp, err := gw.GetMessage(ctx, &gatewayv1.GetMessageRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		if s := resp.GetMessage().GetState(); s != gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED {
			// The outcome is recorded just after the adapter returns.
			deadline := time.Now().Add(5 * time.Second)
			for s != gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
				resp, _ = gw.GetMessage(ctx, &gatewayv1.GetMessageRequest{Id: id})
				s = resp.GetMessage().GetState()
			}
			if s != gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED {
				t.Errorf("message %s is %s, want DELIVERED", id, s)
			}
		}
	}
}

// Messages written on one SendStream, many in flight, are each answered
// once, reach the adapter exactly once, and keep their conversation's
// order; a repeated idempotency key on the same stream answers the first
// message's id and delivers nothing more.
func TestSendStreamExactlyOnceInConversationOrder(t *testing.T) {
	gw, host := startInProcess(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stream, err := gw.SendStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const convs, perConv = 6, 25
	type sent struct {
		conv string
		i    int
	}
	byRef := map[uint64]sent{}
	ref := uint64(0)
	for i := range perConv {
		for c := range convs {
			to := "ok"
			if i%5 == 2 {
				to = "flaky:1" // fails its first attempt, retried
			}
			ref++
			byRef[ref] = sent{fmt.Sprint("conv-", c), i}
			req := &gatewayv1.SendRequest{Channel: "mock", Recipient: to, Conversation: fmt.Sprint("conv-", c),
				Text: fmt.Sprint(i), IdempotencyKey: fmt.Sprintf("k-%d-%d", c, i)}
			if err := stream.Send(&gatewayv1.SendStreamRequest{Ref: ref, Request: req}); err != nil {
				t.Fatal(err)
			}
			if i == 10 {
				// The same message again, right behind the first.
				ref++
				byRef[ref] = sent{fmt.Sprint("conv-", c), -1}
				if err := stream.Send(&gatewayv1.SendStreamRequest{Ref: ref, Request: req}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	answered := map[uint64]*gatewayv1.SendResponse{}
	for {
		a, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("stream ended with %v after %d answers", err, len(answered))
		}
		if a.GetCode() != 0 {
			t.Fatalf("ref %d: code %d %s", a.GetRef(), a.GetCode(), a.GetError())
		}
		if answered[a.GetRef()] != nil {
			t.Fatalf("ref %d answered twice", a.GetRef())
		}
		answered[a.GetRef()] = a.GetResponse()
	}
	if len(answered) != len(byRef) {
		t.Fatalf("%d answers for %d requests", len(answered), len(byRef))
	}
	for r, s := range byRef {
		resp := answered[r]
		if s.i < 0 {
			first := answered[r-1]
			if !resp.GetDuplicate() || resp.GetId() != first.GetId() {
				t.Errorf("repeated key: id %s duplicate=%v, want %s duplicate=true", resp.GetId(), resp.GetDuplicate(), first.GetId())
			}
			continue
		}
		if resp.GetDuplicate() || resp.GetSequence() != uint64(s.i+1) {
			t.Errorf("%s message %d: sequence %d duplicate=%v, want sequence %d", s.conv, s.i, resp.GetSequence(), resp.GetDuplicate(), s.i+1)
		}
		ids[resp.GetId()] = true
	}

	waitDeliveredOnceInOrder(t, host, ids)
}

// waitDeliveredOnceInOrder waits until the adapter has had as many
// deliveries as ids, then checks that each of ids was delivered exactly
// once, nothing else was, and every conversation in sequence order.
func waitDeliveredOnceInOrder(t *testing.T, host *pluginstest.Host, ids map[string]bool) {
	t.Helper()
	want := len(ids)
	deadline := time.Now().Add(30 * time.Second)
	for len(host.Deliveries()) < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let any stray duplicate show up
	got := host.Deliveries()
	seen := map[string]int{}
	last := map[string]uint64{}
	for _, d := range got {
		seen[d.MessageID]++
		if d.Sequence <= last[d.Conversation] {
			t.Errorf("%s: sequence %d delivered after %d", d.Conversation, d.Sequence, last[d.Conversation])
		}
		last[d.Conversation] = d.Sequence
	}
	for id := range ids {
		if seen[id] != 1 {
			t.Errorf("message %s delivered %d times, want 1", id, seen[id])
		}
	}
	if len(got) != want {
		t.Fatalf("delivered %d, want %d", len(got), want)
	}
}

// A Send retried with the same idempotency key returns the original message
// and creates no second delivery.
func TestPipelineIdempotentSend(t *testing.T) {
	gw, host := startInProcess(t)
	ctx := context.Background()
	req := &gatewayv1.SendRequest{Channel: "mock", Recipient: "ok", Text: "once", IdempotencyKey: "key-1"}
	first, err := gw.Send(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		again, err := gw.Send(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if again.GetId() != first.GetId() || !again.GetDuplicate() {
			t.Fatalf("repeat Send: id %s duplicate=%v, want id %s duplicate=true", again.GetId(), again.GetDuplicate(), first.GetId())
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(host.Deliveries()) < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(host.Deliveries()); n != 1 {
		t.Fatalf("delivered %d times, want 1", n)
	}
}

// Consecutive failures mark a channel degraded where an operator looks
// (ListChannels, herald plugins, herald status); one success heals it.
func TestChannelDegradesAndHeals(t *testing.T) {
	tracker := trackertest.Start(t, "mock")
	host := pluginstest.Start(t, tracker)
	queuetest.Start(t, tracker, host.Addr)
	conn, err := grpc.NewClient(gatewaytest.StartWithPlugins(t, tracker, host.Addr, nil), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	gw := gatewayv1.NewGatewayServiceClient(conn)
	ctx := context.Background()
	health := func() (bool, uint32) {
		resp, err := gw.ListChannels(ctx, &gatewayv1.ListChannelsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range resp.GetChannels() {
			if c.GetName() == "mock" {
				return c.GetHealthy(), c.GetConsecutiveFailures()
			}
		}
		t.Fatal("no mock channel listed")
		return false, 0
	}
	for i := range 3 {
		if _, err := gw.Send(ctx, &gatewayv1.SendRequest{Channel: "mock", Recipient: "fail:permanent", Conversation: fmt.Sprint("d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for ok, _ := health(); ok && time.Now().Before(deadline); ok, _ = health() {
		time.Sleep(10 * time.Millisecond)
	}
	if ok, n := health(); ok || n < 3 {
		t.Fatalf("after 3 failures: healthy=%v failures=%d, want degraded", ok, n)
	}
	if _, err := gw.Send(ctx, &gatewayv1.SendRequest{Channel: "mock", Recipient: "ok"}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for ok, _ := health(); !ok && time.Now().Before(deadline); ok, _ = health() {
		time.Sleep(10 * time.Millisecond)
	}
	if ok, _ := health(); !ok {
		t.Fatal("one success did not mark the channel healthy again")
	}
}
