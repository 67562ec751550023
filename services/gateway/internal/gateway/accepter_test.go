package gateway

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// streamTracker answers AcceptStream: it accepts every item, except that
// after breakAfter requests it breaks the stream without answering.
type streamTracker struct {
	fakeTracker
	mu         sync.Mutex
	requests   int
	breakAfter int
	items      []int              // items per request
	stored     []*storev1.Message // messages answered as accepted
}

func (f *streamTracker) AcceptStream(stream trackerv1.TrackerService_AcceptStreamServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		f.mu.Lock()
		f.requests++
		f.items = append(f.items, len(req.GetItems()))
		broken := f.breakAfter > 0 && f.requests > f.breakAfter
		f.mu.Unlock()
		if broken {
			return status.Error(codes.Internal, "disk on fire")
		}
		resp := &trackerv1.AcceptStreamResponse{}
		for _, it := range req.GetItems() {
			m := it.GetRequest().GetMessage()
			m.Sequence = 1
			f.mu.Lock()
			f.stored = append(f.stored, m)
			f.mu.Unlock()
			resp.Results = append(resp.Results, &trackerv1.AcceptResult{RequestId: it.GetRequestId(),
				Response: &trackerv1.AcceptResponse{Message: m, Delivery: &storev1.Delivery{State: storev1.State_STATE_PENDING}}})
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// Sends travel over the accept stream and get their own answers.
func TestSendGoesOverTheAcceptStream(t *testing.T) {
	tracker := &streamTracker{}
	_, client := newGateway(t, tracker, Config{})
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Send(context.Background(), &gatewayv1.SendRequest{Channel: "mock", Recipient: "ok", Text: "hi"})
			if err != nil || resp.GetId() == "" || resp.GetSequence() != 1 {
				t.Errorf("Send = %v, %v", resp, err)
			}
		}()
	}
	wg.Wait()
	tracker.mu.Lock()
	defer tracker.mu.Unlock()
	total := 0
	for _, n := range tracker.items {
		total += n
	}
	if total != 20 || len(tracker.accepted) != 0 {
		t.Fatalf("stream carried %d items in %d requests, unary Accept %d; want all 20 on the stream", total, tracker.requests, len(tracker.accepted))
	}
}

// A stream that breaks before answering fails the Send with UNAVAILABLE
// saying the message may have been accepted; the next Send opens a new
// stream.
func TestBrokenAcceptStreamFailsTheSendAndRecovers(t *testing.T) {
	tracker := &streamTracker{breakAfter: 1}
	_, client := newGateway(t, tracker, Config{})
	ctx := context.Background()
	if _, err := client.Send(ctx, &gatewayv1.SendRequest{Channel: "mock", Recipient: "ok", Text: "first"}); err != nil {
		t.Fatal(err)
	}
	_, err := client.Send(ctx, &gatewayv1.SendRequest{Channel: "mock", Recipient: "ok", Text: "second"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "may or may not have been accepted") {
		t.Fatalf("Send on a broken stream = %v, want UNAVAILABLE saying it may have been accepted", err)
	}
	tracker.mu.Lock()
	tracker.breakAfter = 0
	tracker.mu.Unlock()
	var last error
	for range 50 {
		if _, last = client.Send(ctx, &gatewayv1.SendRequest{Channel: "mock", Recipient: "ok", Text: "third"}); last == nil {
			return
		}
		time.Sleep(20 * time.Millisecond) // the accepter waits a moment before it reopens the stream
	}
	t.Fatalf("Send after the stream broke never succeeded: %v", last)
}
