package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// A reply streamed in three chunks is aborted while its second chunk's
// provider call is under way: the first stays delivered, the call in flight
// is cancelled (queue → plugin host → adapter), the third is never sent,
// and the reply records that it was aborted after 1 of 3 chunks.
func TestReplyAbortCancelsInFlightAndFencesTheRest(t *testing.T) {
	gw, host := startInProcess(t)
	ctx := context.Background()
	open, err := gw.OpenReply(ctx, &gatewayv1.OpenReplyRequest{Channel: "mock", Recipient: "delay:400ms", Conversation: "chat-1"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i, text := range []string{"Generating", " report", "..."} {
		resp, err := gw.AppendChunk(ctx, &gatewayv1.AppendChunkRequest{ReplyId: open.GetReplyId(), Index: uint32(i), Text: text})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, resp.GetId())
	}
	// Retrying an append (same index) returns the same chunk.
	again, err := gw.AppendChunk(ctx, &gatewayv1.AppendChunkRequest{ReplyId: open.GetReplyId(), Index: 1, Text: " report"})
	if err != nil || !again.GetDuplicate() || again.GetId() != ids[1] {
		t.Fatalf("repeated append: %v %v", again, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(host.Deliveries()) < 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// Chunk 1 is now leased and held by the slow provider call.
	waitMessageState(t, gw, ids[1], gatewayv1.DeliveryState_DELIVERY_STATE_IN_FLIGHT)
	ab, err := gw.Abort(ctx, &gatewayv1.AbortRequest{Id: open.GetReplyId(), Reason: "user pressed stop"})
	if err != nil {
		t.Fatal(err)
	}
	if ab.GetReplyState() != gatewayv1.ReplyState_REPLY_STATE_ABORTED || ab.GetReplyDelivered() != 1 || ab.GetReplyChunks() != 3 {
		t.Fatalf("abort answered %v, want ABORTED after 1 of 3", ab)
	}
	if _, err := gw.AppendChunk(ctx, &gatewayv1.AppendChunkRequest{ReplyId: open.GetReplyId(), Index: 3, Text: "late"}); err == nil {
		t.Fatal("a chunk was appended to an aborted reply")
	}
	waitMessageState(t, gw, ids[1], gatewayv1.DeliveryState_DELIVERY_STATE_ABORTED)
	waitMessageState(t, gw, ids[2], gatewayv1.DeliveryState_DELIVERY_STATE_ABORTED)
	time.Sleep(800 * time.Millisecond) // longer than the provider call would have taken
	got := host.Deliveries()
	if len(got) != 1 || got[0].MessageID != ids[0] {
		t.Fatalf("provider received %v, want only chunk 0", got)
	}
	waitMessageState(t, gw, ids[0], gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED)
}

func waitMessageState(t *testing.T, gw gatewayv1.GatewayServiceClient, id string, want gatewayv1.DeliveryState) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		resp, err := gw.GetMessage(context.Background(), &gatewayv1.GetMessageRequest{Id: id})
		if err == nil && resp.GetMessage().GetState() == want {
			return
		}
		last = fmt.Sprint(resp.GetMessage().GetState(), err)
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("message %s: %s, want %s", id, last, want)
}
