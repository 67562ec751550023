package gateway

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// gatedTracker is a fakeTracker (unary Accept: each Send is a call of its
// own) whose Accepts wait until release is closed. A message is durable
// once its Accept returns.
type gatedTracker struct {
	*fakeTracker
	release chan struct{}

	mu      sync.Mutex
	entered int // Accept calls received
}

func newGatedTracker() *gatedTracker {
	g := &gatedTracker{release: make(chan struct{})}
	g.fakeTracker = &fakeTracker{acceptHook: func(ctx context.Context) {
		g.mu.Lock()
		g.entered++
		g.mu.Unlock()
		select {
		case <-g.release:
		case <-ctx.Done():
		}
	}}
	return g
}

func (g *gatedTracker) received() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.entered
}

func (g *gatedTracker) durable() map[string]bool {
	out := map[string]bool{}
	for _, m := range g.acceptedMessages() {
		out[m.GetId()] = true
	}
	return out
}

// waitReceived waits until the tracker has received n Accepts.
func (g *gatedTracker) waitReceived(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := g.received()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the tracker received %d Accepts, want %d", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// openSendStream opens a SendStream that ends with the test.
func openSendStream(t *testing.T, client gatewayv1.GatewayServiceClient) gatewayv1.GatewayService_SendStreamClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	stream, err := client.SendStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

// answersUntilEOF reads answers until the stream ends, which must be OK.
func answersUntilEOF(t *testing.T, stream gatewayv1.GatewayService_SendStreamClient) []*gatewayv1.SendStreamResponse {
	t.Helper()
	var out []*gatewayv1.SendStreamResponse
	for {
		a, err := stream.Recv()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("stream ended with %v after %d answers, want OK", err, len(out))
		}
		out = append(out, a)
	}
}

// streamRequest is a request of a conversation of its own.
func streamRequest(ref uint64, text string) *gatewayv1.SendStreamRequest {
	return &gatewayv1.SendStreamRequest{Ref: ref, Request: &gatewayv1.SendRequest{
		Channel: "mock", Recipient: "u1", Conversation: fmt.Sprint("c", ref), Text: text}}
}

// Every request gets exactly one answer, carrying its ref; an OK answer
// comes only after the tracker made that message durable; a bad request
// gets its error without ending the stream or writing anything; the stream
// ends OK once the caller has closed its side and everything is answered.
func TestSendStreamAnswersEachRequestOnceAfterTheTracker(t *testing.T) {
	tracker := newGatedTracker()
	_, client := newGateway(t, tracker, Config{})
	stream := openSendStream(t, client)
	const n = 50
	const bad = 7 // ref of an invalid request
	for ref := uint64(1); ref <= n; ref++ {
		req := streamRequest(ref, fmt.Sprint("m", ref))
		if ref == bad {
			req.Request.Channel = "Bad Channel"
		}
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	// The invalid request is answered while the tracker holds the rest.
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.GetRef() != bad || codes.Code(first.GetCode()) != codes.InvalidArgument || first.GetResponse() != nil {
		t.Fatalf("first answer = %v, want ref %d INVALID_ARGUMENT", first, bad)
	}
	tracker.waitReceived(t, n-1)
	close(tracker.release)

	seen := map[uint64]bool{bad: true}
	for {
		a, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("stream ended with %v after %d answers, want OK after %d", err, len(seen), n)
		}
		if seen[a.GetRef()] {
			t.Fatalf("ref %d answered twice", a.GetRef())
		}
		seen[a.GetRef()] = true
		id := a.GetResponse().GetId()
		if a.GetCode() != 0 || id == "" {
			t.Fatalf("answer %v, want accepted", a)
		}
		if !tracker.durable()[id] {
			t.Fatalf("ref %d answered OK with id %s before the tracker made it durable", a.GetRef(), id)
		}
	}
	if len(seen) != n {
		t.Fatalf("%d of %d requests answered before the stream ended OK", len(seen), n)
	}
	if received := tracker.received(); received != n-1 {
		t.Errorf("tracker received %d items, want %d (the invalid one never written)", received, n-1)
	}
}

// Messages of one conversation reach the tracker in the order they were
// written, though the stream carries others meanwhile and the tracker
// answers concurrent Accepts in any order.
func TestSendStreamKeepsEachConversationInOrder(t *testing.T) {
	tracker := &fakeTracker{acceptHook: func(context.Context) {
		time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
	}}
	_, client := newGateway(t, tracker, Config{})
	stream := openSendStream(t, client)
	const convs, per = 4, 25
	ref := uint64(0)
	for i := range per {
		for c := range convs {
			ref++
			req := streamRequest(ref, fmt.Sprint(i))
			req.Request.Conversation = fmt.Sprint("conv-", c)
			if err := stream.Send(req); err != nil {
				t.Fatal(err)
			}
		}
		// Ones of their own conversation in between, which need not wait.
		if err := stream.Send(streamRequest(1000+uint64(i), "solo")); err != nil {
			t.Fatal(err)
		}
	}
	_ = stream.CloseSend()
	answers := answersUntilEOF(t, stream)
	for _, a := range answers {
		if a.GetCode() != 0 {
			t.Fatalf("answer %v, want accepted", a)
		}
	}
	if len(answers) != convs*per+per {
		t.Fatalf("%d answers, want %d", len(answers), convs*per+per)
	}
	next := map[string]int{}
	for _, m := range tracker.acceptedMessages() {
		if m.GetText() == "solo" {
			continue
		}
		if got, want := m.GetText(), fmt.Sprint(next[m.GetConversation()]); got != want {
			t.Fatalf("%s: the tracker got message %s where %s was next", m.GetConversation(), got, want)
		}
		next[m.GetConversation()]++
	}
}

// A tracker error answers the request it concerns with Send's error; the
// stream goes on.
func TestSendStreamTrackerErrorsAnswerTheRequest(t *testing.T) {
	_, client := newGateway(t, &fakeTracker{acceptErr: status.Error(codes.ResourceExhausted, "pending limit reached: retry later")}, Config{})
	stream := openSendStream(t, client)
	for ref := uint64(1); ref <= 3; ref++ {
		if err := stream.Send(streamRequest(ref, "x")); err != nil {
			t.Fatal(err)
		}
	}
	_ = stream.CloseSend()
	answers := answersUntilEOF(t, stream)
	for _, a := range answers {
		if codes.Code(a.GetCode()) != codes.ResourceExhausted || a.GetError() != "pending limit reached: retry later" || a.GetResponse() != nil {
			t.Errorf("answer %v, want RESOURCE_EXHAUSTED with the tracker's message", a)
		}
	}
	if len(answers) != 3 {
		t.Errorf("%d answers, want 3", len(answers))
	}
}

// The gateway reads at most sendStreamWindow requests ahead of their
// answers: a writer that gets further ahead waits (gRPC flow control)
// instead of growing the gateway's memory.
func TestSendStreamReadsAtMostAWindowAhead(t *testing.T) {
	tracker := newGatedTracker()
	_, client := newGateway(t, tracker, Config{})
	stream := openSendStream(t, client)
	const extra = 100
	for ref := uint64(1); ref <= sendStreamWindow+extra; ref++ {
		if err := stream.Send(streamRequest(ref, "x")); err != nil {
			t.Fatal(err)
		}
	}
	_ = stream.CloseSend()
	tracker.waitReceived(t, sendStreamWindow)
	time.Sleep(200 * time.Millisecond) // room for a reader that does not stop
	if received := tracker.received(); received != sendStreamWindow {
		t.Fatalf("with every answer held, the tracker received %d items, want the window's %d", received, sendStreamWindow)
	}
	close(tracker.release)
	if answered := len(answersUntilEOF(t, stream)); answered != sendStreamWindow+extra {
		t.Errorf("%d answers, want %d", answered, sendStreamWindow+extra)
	}
}

// A draining gateway answers every request it read, then ends the stream
// with UNAVAILABLE; a request without an answer was never written, so the
// caller can send it elsewhere without a duplicate.
func TestSendStreamDrainAnswersWhatItReadThenEnds(t *testing.T) {
	tracker := newGatedTracker()
	svc, client := newGateway(t, tracker, Config{})
	stream := openSendStream(t, client)
	for ref := uint64(1); ref <= 5; ref++ {
		if err := stream.Send(streamRequest(ref, "before")); err != nil {
			t.Fatal(err)
		}
	}
	tracker.waitReceived(t, 5)
	svc.Drain()
	// Written while the drain begins: each is either read and answered, or
	// never read.
	for ref := uint64(6); ref <= 10; ref++ {
		if err := stream.Send(streamRequest(ref, "during")); err != nil {
			break
		}
	}
	close(tracker.release)
	answered := map[string]bool{}
	var end error
	for {
		a, err := stream.Recv()
		if err != nil {
			end = err
			break
		}
		if a.GetCode() != 0 {
			t.Fatalf("answer %v, want accepted", a)
		}
		answered[a.GetResponse().GetId()] = true
	}
	if st := status.Convert(end); st.Code() != codes.Unavailable || st.Message() != msgStreamDraining {
		t.Fatalf("stream ended with %v, want UNAVAILABLE %q", end, msgStreamDraining)
	}
	durable := tracker.durable()
	if len(answered) < 5 || len(durable) != len(answered) {
		t.Fatalf("answered %d, tracker made %d durable: want every durable message answered, the first 5 at least", len(answered), len(durable))
	}
	for id := range durable {
		if !answered[id] {
			t.Errorf("message %s was made durable but never answered", id)
		}
	}
	next, err := client.SendStream(context.Background())
	if err == nil {
		_, err = next.Recv() // a refusal comes with the first Recv
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("a new SendStream while draining = %v, want UNAVAILABLE", err)
	}
}

// Each streamed message gets a trace of its own (or continues the trace
// context it carries), stored with the message for the later hops.
func TestSendStreamTracesEachMessage(t *testing.T) {
	otel.SetTextMapPropagator(propagation.TraceContext{})
	prev := otel.GetTracerProvider()
	tp := sdktrace.NewTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() {
		otel.SetTracerProvider(prev)
		_ = tp.Shutdown(context.Background())
	})

	tracker := &streamTracker{}
	_, client := newGateway(t, tracker, Config{})
	stream := openSendStream(t, client)
	_, caller := tp.Tracer("test").Start(context.Background(), "caller")
	carried := caller.SpanContext().TraceID()
	tp0 := fmt.Sprintf("00-%s-%s-01", carried, caller.SpanContext().SpanID())
	reqs := []*gatewayv1.SendStreamRequest{streamRequest(1, "a"), streamRequest(2, "b"), streamRequest(3, "c")}
	reqs[0].Traceparent = tp0
	for _, r := range reqs {
		if err := stream.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	_ = stream.CloseSend()
	answersUntilEOF(t, stream)
	tracker.mu.Lock()
	defer tracker.mu.Unlock()
	traces := map[string]string{} // text -> trace id
	for _, m := range tracker.stored {
		traces[m.GetText()] = traceIDFromParent(m.GetTraceparent())
	}
	if traces["a"] != carried.String() {
		t.Errorf("message with a trace context stored trace %q, want the carried %s", traces["a"], carried)
	}
	if b, c := traces["b"], traces["c"]; b == "" || c == "" || b == c || b == carried.String() || b == (trace.TraceID{}).String() {
		t.Errorf("messages without a trace context stored traces %q and %q, want two new ones", b, c)
	}
}
