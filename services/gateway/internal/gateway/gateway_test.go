package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// fakeTracker is a minimal TrackerService: Accept stores what it is given
// (or answers with acceptErr), the read calls answer from fixed fields.
type fakeTracker struct {
	trackerv1.UnimplementedTrackerServiceServer

	acceptErr error
	// acceptHook, when set, runs inside Accept before it answers.
	acceptHook func(ctx context.Context)

	events  []*storev1.Event
	message *trackerv1.GetMessageResponse
	stats   *trackerv1.StatsResponse

	// adminErr, when set, is the answer to every operator call below.
	adminErr error
	// backupPath is Backup's answer; "" means no backup folder configured.
	backupPath string
	verify     *trackerv1.VerifyResponse

	mu       sync.Mutex
	accepted []*storev1.Message
	ttls     []int64 // AcceptRequest.ttl_nanos, by accepted message
	history  []*trackerv1.HistoryRequest
	// deliveries are the messages Abort, Redrive and Purge act on, by id.
	deliveries  map[string]*storev1.Delivery
	deadLetters []*trackerv1.Lease
	dlqRequests []*trackerv1.ListDeadLettersRequest
	backups     []*trackerv1.BackupRequest
}

func (f *fakeTracker) Accept(ctx context.Context, req *trackerv1.AcceptRequest) (*trackerv1.AcceptResponse, error) {
	if f.acceptHook != nil {
		f.acceptHook(ctx)
	}
	if f.acceptErr != nil {
		return nil, f.acceptErr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	m := req.GetMessage()
	f.accepted = append(f.accepted, m)
	f.ttls = append(f.ttls, req.GetTtlNanos())
	m.Sequence = uint64(len(f.accepted))
	m.AcceptedAtUnixNano = time.Now().UnixNano()
	return &trackerv1.AcceptResponse{Message: m, Delivery: &storev1.Delivery{State: storev1.State_STATE_PENDING}}, nil
}

func (f *fakeTracker) GetMessage(_ context.Context, req *trackerv1.GetMessageRequest) (*trackerv1.GetMessageResponse, error) {
	if f.message == nil || f.message.GetMessage().GetId() != req.GetId() {
		return nil, status.Errorf(codes.NotFound, "no message with id %q", req.GetId())
	}
	return f.message, nil
}

func (f *fakeTracker) History(_ context.Context, req *trackerv1.HistoryRequest) (*trackerv1.HistoryResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.history = append(f.history, req)
	return &trackerv1.HistoryResponse{}, nil
}

func (f *fakeTracker) WatchEvents(req *trackerv1.WatchEventsRequest, stream grpc.ServerStreamingServer[storev1.Event]) error {
	for _, e := range f.events {
		if e.GetSequence() <= req.GetAfterSequence() {
			continue
		}
		if err := stream.Send(e); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeTracker) Stats(context.Context, *trackerv1.StatsRequest) (*trackerv1.StatsResponse, error) {
	if f.stats == nil {
		return nil, status.Error(codes.Unimplemented, "no stats")
	}
	return f.stats, nil
}

func (f *fakeTracker) Abort(_ context.Context, req *trackerv1.AbortRequest) (*trackerv1.AbortResponse, error) {
	if f.adminErr != nil {
		return nil, f.adminErr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.deliveries[req.GetId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no message with id %q", req.GetId())
	}
	switch d.GetState() {
	case storev1.State_STATE_PENDING, storev1.State_STATE_UNKNOWN:
		d.State, d.Reason = storev1.State_STATE_ABORTED, req.GetReason()
		return &trackerv1.AbortResponse{Delivery: d}, nil
	}
	return &trackerv1.AbortResponse{Delivery: d, AlreadyFinal: true}, nil
}

func (f *fakeTracker) ListDeadLetters(_ context.Context, req *trackerv1.ListDeadLettersRequest) (*trackerv1.HistoryResponse, error) {
	if f.adminErr != nil {
		return nil, f.adminErr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dlqRequests = append(f.dlqRequests, req)
	return &trackerv1.HistoryResponse{Messages: f.deadLetters}, nil
}

// deadLetter answers Redrive and Purge: a FAILED message becomes next, any
// other is FAILED_PRECONDITION.
func (f *fakeTracker) deadLetter(id string, next storev1.State) (*trackerv1.RedriveResponse, error) {
	if f.adminErr != nil {
		return nil, f.adminErr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.deliveries[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no message with id %q", id)
	}
	if d.GetState() != storev1.State_STATE_FAILED {
		return nil, status.Errorf(codes.FailedPrecondition, "message is not a dead letter: %s is %s", id, d.GetState())
	}
	d.State = next
	return &trackerv1.RedriveResponse{Delivery: d}, nil
}

func (f *fakeTracker) Redrive(_ context.Context, req *trackerv1.RedriveRequest) (*trackerv1.RedriveResponse, error) {
	return f.deadLetter(req.GetId(), storev1.State_STATE_PENDING)
}

func (f *fakeTracker) Purge(_ context.Context, req *trackerv1.RedriveRequest) (*trackerv1.RedriveResponse, error) {
	return f.deadLetter(req.GetId(), storev1.State_STATE_FAILED)
}

func (f *fakeTracker) Backup(_ context.Context, req *trackerv1.BackupRequest) (*trackerv1.BackupResponse, error) {
	if f.adminErr != nil {
		return nil, f.adminErr
	}
	if f.backupPath == "" {
		return nil, status.Error(codes.FailedPrecondition, "no backup folder configured: start the tracker with --backup-dir")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.backups = append(f.backups, req)
	return &trackerv1.BackupResponse{Path: f.backupPath}, nil
}

func (f *fakeTracker) Verify(context.Context, *trackerv1.VerifyRequest) (*trackerv1.VerifyResponse, error) {
	if f.adminErr != nil {
		return nil, f.adminErr
	}
	return f.verify, nil
}

func (f *fakeTracker) acceptedMessages() []*storev1.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*storev1.Message(nil), f.accepted...)
}

// serve starts a gRPC server on 127.0.0.1:0 with register applied and
// returns a client connection to it. Both are closed when the test ends.
func serve(t *testing.T, register func(*grpc.Server), opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	return dial(t, serveAddr(t, register, opts...))
}

// serveAddr starts a gRPC server on 127.0.0.1:0 with register applied and
// returns its address. The server stops when the test ends.
func serveAddr(t *testing.T, register func(*grpc.Server), opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	register(srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String()
}

func dial(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// newGateway serves a gateway backed by tracker and returns the gateway
// Service and a client for it.
func newGateway(t *testing.T, tracker trackerv1.TrackerServiceServer, cfg Config) (*Service, gatewayv1.GatewayServiceClient) {
	t.Helper()
	if cfg.Tracker == nil {
		trackerConn := serve(t, func(s *grpc.Server) { trackerv1.RegisterTrackerServiceServer(s, tracker) })
		cfg.Tracker = trackerv1.NewTrackerServiceClient(trackerConn)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	gwConn := serve(t, func(s *grpc.Server) { gatewayv1.RegisterGatewayServiceServer(s, svc) })
	return svc, gatewayv1.NewGatewayServiceClient(gwConn)
}

func TestValidateSend(t *testing.T) {
	valid := func() *gatewayv1.SendRequest {
		return &gatewayv1.SendRequest{Channel: "webhook", Recipient: "http://127.0.0.1:9000/hook", Text: "hello"}
	}
	tests := []struct {
		name string
		edit func(r *gatewayv1.SendRequest)
		// wantField is the field named in the error; "" means valid.
		wantField string
	}{
		{name: "minimal request is valid", edit: func(*gatewayv1.SendRequest) {}},
		{name: "empty text is valid", edit: func(r *gatewayv1.SendRequest) { r.Text = "" }},
		{name: "every field at its limit is valid", edit: func(r *gatewayv1.SendRequest) {
			r.Tenant = strings.Repeat("T", 64)
			r.Channel = strings.Repeat("c", 64)
			r.Recipient = strings.Repeat("r", 2048)
			r.Conversation = strings.Repeat("v", 512)
			r.Text = strings.Repeat("x", 64<<10)
			r.IdempotencyKey = strings.Repeat("k", 256)
			r.Metadata = map[string]string{}
			for i := range 32 {
				r.Metadata[string(rune('a'+i%26))+strings.Repeat("_", i)] = "v"
			}
			r.TtlSeconds = 3600
		}},
		{name: "missing channel", edit: func(r *gatewayv1.SendRequest) { r.Channel = "" }, wantField: "channel"},
		{name: "channel with capitals", edit: func(r *gatewayv1.SendRequest) { r.Channel = "Webhook" }, wantField: "channel"},
		{name: "channel too long", edit: func(r *gatewayv1.SendRequest) { r.Channel = strings.Repeat("c", 65) }, wantField: "channel"},
		{name: "missing recipient", edit: func(r *gatewayv1.SendRequest) { r.Recipient = "" }, wantField: "recipient"},
		{name: "recipient too long", edit: func(r *gatewayv1.SendRequest) {
			r.Recipient = strings.Repeat("r", 2049)
			r.Conversation = "c1"
		}, wantField: "recipient"},
		{name: "text over 64 KiB", edit: func(r *gatewayv1.SendRequest) { r.Text = strings.Repeat("x", 64<<10+1) }, wantField: "text"},
		{name: "text not UTF-8", edit: func(r *gatewayv1.SendRequest) { r.Text = "bad \xff byte" }, wantField: "text"},
		{name: "tenant with a space", edit: func(r *gatewayv1.SendRequest) { r.Tenant = "acme corp" }, wantField: "tenant"},
		{name: "tenant too long", edit: func(r *gatewayv1.SendRequest) { r.Tenant = strings.Repeat("t", 65) }, wantField: "tenant"},
		{name: "conversation too long", edit: func(r *gatewayv1.SendRequest) { r.Conversation = strings.Repeat("v", 513) }, wantField: "conversation"},
		{name: "conversation with NUL", edit: func(r *gatewayv1.SendRequest) { r.Conversation = "a\x00b" }, wantField: "conversation"},
		{name: "conversation with newline", edit: func(r *gatewayv1.SendRequest) { r.Conversation = "a\nb" }, wantField: "conversation"},
		{name: "conversation defaulted from a long recipient", edit: func(r *gatewayv1.SendRequest) { r.Recipient = strings.Repeat("r", 600) }, wantField: "conversation"},
		{name: "idempotency key too long", edit: func(r *gatewayv1.SendRequest) { r.IdempotencyKey = strings.Repeat("k", 257) }, wantField: "idempotency_key"},
		{name: "idempotency key with NUL", edit: func(r *gatewayv1.SendRequest) { r.IdempotencyKey = "k\x00" }, wantField: "idempotency_key"},
		{name: "too many metadata entries", edit: func(r *gatewayv1.SendRequest) {
			r.Metadata = map[string]string{}
			for i := range 33 {
				r.Metadata[strings.Repeat("k", i+1)] = "v"
			}
		}, wantField: "metadata"},
		{name: "negative ttl", edit: func(r *gatewayv1.SendRequest) { r.TtlSeconds = -1 }, wantField: "ttl_seconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := valid()
			tt.edit(req)
			_, err := validateSend(req)
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("validateSend() = %v, want no error", err)
				}
				return
			}
			if got := status.Code(err); got != codes.InvalidArgument {
				t.Fatalf("validateSend() code = %v (%v), want InvalidArgument", got, err)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tt.wantField+":") {
				t.Errorf("validateSend() message %q does not name field %q", msg, tt.wantField)
			}
		})
	}
}

func TestValidateSendAppliesDefaults(t *testing.T) {
	got, err := validateSend(&gatewayv1.SendRequest{Channel: "mock", Recipient: "u1"})
	if err != nil {
		t.Fatal(err)
	}
	if got.tenant != "default" || got.conversation != "u1" {
		t.Errorf("validateSend() = tenant %q conversation %q, want \"default\" and the recipient \"u1\"", got.tenant, got.conversation)
	}
}

func TestSendStoresMessageWithTraceContext(t *testing.T) {
	otel.SetTextMapPropagator(propagation.TraceContext{})
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	tracker := &fakeTracker{}
	trackerConn := serve(t, func(s *grpc.Server) { trackerv1.RegisterTrackerServiceServer(s, tracker) })
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	svc, err := New(Config{
		Tracker: trackerv1.NewTrackerServiceClient(trackerConn),
		Now:     func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	gwAddr := serveAddr(t, func(s *grpc.Server) { gatewayv1.RegisterGatewayServiceServer(s, svc) },
		grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp))))
	client := gatewayv1.NewGatewayServiceClient(dial(t, gwAddr,
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(tp)))))

	ctx, span := tp.Tracer("test").Start(context.Background(), "send")
	defer span.End()
	resp, err := client.Send(ctx, &gatewayv1.SendRequest{
		Channel:        "webhook",
		Recipient:      "http://127.0.0.1:9000/hook",
		Text:           "hello",
		Metadata:       map[string]string{"k": "v"},
		IdempotencyKey: "key-1",
		TtlSeconds:     3600,
	})
	if err != nil {
		t.Fatalf("Send() = %v", err)
	}

	stored := tracker.acceptedMessages()
	if len(stored) != 1 {
		t.Fatalf("tracker accepted %d messages, want 1", len(stored))
	}
	want := &gatewayv1.SendResponse{Id: stored[0].GetId(), State: gatewayv1.DeliveryState_DELIVERY_STATE_PENDING, Sequence: 1}
	if diff := cmp.Diff(resp, want, protocmp.Transform()); diff != "" {
		t.Errorf("Send() response (-got +want):\n%s", diff)
	}
	if len(resp.GetId()) != 26 {
		t.Errorf("id %q is not a ULID", resp.GetId())
	}
	wantStored := &storev1.Message{
		Id:             resp.GetId(),
		Tenant:         "default",
		Channel:        "webhook",
		Recipient:      "http://127.0.0.1:9000/hook",
		Conversation:   "http://127.0.0.1:9000/hook",
		Text:           "hello",
		Metadata:       map[string]string{"k": "v"},
		IdempotencyKey: "key-1",
	}
	if diff := cmp.Diff(stored[0], wantStored, protocmp.Transform(),
		protocmp.IgnoreFields(&storev1.Message{}, "traceparent", "tracestate", "sequence", "accepted_at_unix_nano")); diff != "" {
		t.Errorf("stored message (-got +want):\n%s", diff)
	}
	// The tracker turns the time to live into an expiry on its own clock.
	tracker.mu.Lock()
	ttl := tracker.ttls[0]
	tracker.mu.Unlock()
	if ttl != time.Hour.Nanoseconds() {
		t.Errorf("Accept carried ttl_nanos %d, want one hour", ttl)
	}
	if got, want := traceIDFromParent(stored[0].GetTraceparent()), span.SpanContext().TraceID().String(); got != want {
		t.Errorf("stored traceparent %q has trace id %q, want the caller's %q", stored[0].GetTraceparent(), got, want)
	}
}

func TestSendTranslatesTrackerErrors(t *testing.T) {
	tests := []struct {
		name       string
		trackerErr error
		wantCode   codes.Code
		wantMsg    string
	}{
		{name: "unavailable asks for a retry with the same key", trackerErr: status.Error(codes.Unavailable, "tracker is shutting down"),
			wantCode: codes.Unavailable, wantMsg: msgSendUnavailable},
		{name: "deadline says the message may have been accepted", trackerErr: status.Error(codes.DeadlineExceeded, "slow fsync"),
			wantCode: codes.DeadlineExceeded, wantMsg: msgSendDeadline},
		{name: "resource exhausted passes through", trackerErr: status.Error(codes.ResourceExhausted, "pending limit reached: retry later"),
			wantCode: codes.ResourceExhausted, wantMsg: "pending limit reached: retry later"},
		{name: "already exists passes through", trackerErr: status.Error(codes.AlreadyExists, "id taken"),
			wantCode: codes.AlreadyExists, wantMsg: "id taken"},
		{name: "internal hides the detail", trackerErr: status.Error(codes.Internal, "pebble: disk full at /data/000123.sst"),
			wantCode: codes.Internal, wantMsg: msgSendInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, client := newGateway(t, &fakeTracker{acceptErr: tt.trackerErr}, Config{})
			_, err := client.Send(context.Background(), &gatewayv1.SendRequest{Channel: "mock", Recipient: "u1", Text: "hi"})
			st := status.Convert(err)
			if st.Code() != tt.wantCode || st.Message() != tt.wantMsg {
				t.Errorf("Send() = %v %q, want %v %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestSendWithTrackerDownIsUnavailable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close() // nothing listens there any more

	conn := dial(t, addr)
	_, client := newGateway(t, nil, Config{Tracker: trackerv1.NewTrackerServiceClient(conn)})
	_, err = client.Send(context.Background(), &gatewayv1.SendRequest{Channel: "mock", Recipient: "u1", Text: "hi"})
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != msgSendUnavailable {
		t.Errorf("Send() = %v %q, want Unavailable %q", st.Code(), st.Message(), msgSendUnavailable)
	}
}

func TestSendRejectsInvalidWithoutWriting(t *testing.T) {
	tracker := &fakeTracker{}
	_, client := newGateway(t, tracker, Config{})
	_, err := client.Send(context.Background(), &gatewayv1.SendRequest{Channel: "Bad Channel", Recipient: "u1"})
	if got := status.Code(err); got != codes.InvalidArgument {
		t.Fatalf("Send() code = %v (%v), want InvalidArgument", got, err)
	}
	if n := len(tracker.acceptedMessages()); n != 0 {
		t.Errorf("tracker accepted %d messages for an invalid request, want 0", n)
	}
}

func TestDrainRefusesNewCallsAndFinishesRunningOnes(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	// Only the first accept is held: it may arrive before the test waits
	// for it (a send on an unbuffered channel with a default case then
	// let it through, and the test waited in vain).
	var first atomic.Bool
	tracker := &fakeTracker{acceptHook: func(context.Context) {
		if first.CompareAndSwap(false, true) {
			close(entered)
			<-release
		}
	}}
	svc, client := newGateway(t, tracker, Config{})

	type result struct {
		resp *gatewayv1.SendResponse
		err  error
	}
	running := make(chan result, 1)
	go func() {
		resp, err := client.Send(context.Background(), &gatewayv1.SendRequest{Channel: "mock", Recipient: "u1", Text: "first"})
		running <- result{resp, err}
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the first Send never reached the tracker")
	}

	svc.Drain()

	_, err := client.Send(context.Background(), &gatewayv1.SendRequest{Channel: "mock", Recipient: "u1", Text: "second"})
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != msgDraining {
		t.Errorf("Send() while draining = %v %q, want Unavailable %q", st.Code(), st.Message(), msgDraining)
	}
	_, err = client.Status(context.Background(), &gatewayv1.StatusRequest{})
	if got := status.Code(err); got != codes.Unavailable {
		t.Errorf("Status() while draining = %v, want Unavailable", got)
	}

	close(release)
	r := <-running
	if r.err != nil {
		t.Fatalf("Send() that started before draining = %v, want OK", r.err)
	}
	if n := len(tracker.acceptedMessages()); n != 1 {
		t.Errorf("tracker accepted %d messages, want only the one sent before draining", n)
	}
}

func TestGetMessageConvertsStoredRecord(t *testing.T) {
	accepted := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	tracker := &fakeTracker{message: &trackerv1.GetMessageResponse{
		Message: &storev1.Message{
			Id: "01JAAAAAAAAAAAAAAAAAAAAAAA", Tenant: "default", Channel: "webhook", Recipient: "http://x", Conversation: "c1",
			Sequence: 3, Text: "hello", AcceptedAtUnixNano: accepted.UnixNano(),
			Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		},
		Delivery: &storev1.Delivery{
			State: storev1.State_STATE_PENDING, Attempts: 2, LastErrorCode: "DLV_002", LastError: "HTTP 503",
			DueUnixNano: accepted.Add(time.Minute).UnixNano(), UpdatedUnixNano: accepted.Add(time.Second).UnixNano(),
		},
		Timeline: []*storev1.Event{{Sequence: 7, TimeUnixNano: accepted.UnixNano(), Type: "message.accepted", MessageId: "01JAAAAAAAAAAAAAAAAAAAAAAA", State: storev1.State_STATE_PENDING}},
	}}
	_, client := newGateway(t, tracker, Config{})

	got, err := client.GetMessage(context.Background(), &gatewayv1.GetMessageRequest{Id: "01JAAAAAAAAAAAAAAAAAAAAAAA"})
	if err != nil {
		t.Fatal(err)
	}
	want := &gatewayv1.GetMessageResponse{
		Message: &gatewayv1.Message{
			Id: "01JAAAAAAAAAAAAAAAAAAAAAAA", Tenant: "default", Channel: "webhook", Recipient: "http://x", Conversation: "c1",
			Sequence: 3, Text: "hello", State: gatewayv1.DeliveryState_DELIVERY_STATE_PENDING, Attempts: 2,
			LastErrorCode: "DLV_002", LastError: "HTTP 503",
			AcceptedAt:    timestamppb.New(accepted),
			UpdatedAt:     timestamppb.New(accepted.Add(time.Second)),
			NextAttemptAt: timestamppb.New(accepted.Add(time.Minute)),
			TraceId:       "4bf92f3577b34da6a3ce929d0e0e4736",
		},
		Timeline: []*gatewayv1.Event{{Sequence: 7, Time: timestamppb.New(accepted), Type: "message.accepted",
			MessageId: "01JAAAAAAAAAAAAAAAAAAAAAAA", State: gatewayv1.DeliveryState_DELIVERY_STATE_PENDING}},
	}
	if diff := cmp.Diff(got, want, protocmp.Transform()); diff != "" {
		t.Errorf("GetMessage() (-got +want):\n%s", diff)
	}

	_, err = client.GetMessage(context.Background(), &gatewayv1.GetMessageRequest{Id: "missing"})
	if got := status.Code(err); got != codes.NotFound {
		t.Errorf("GetMessage(missing) = %v, want NotFound", got)
	}
	_, err = client.GetMessage(context.Background(), &gatewayv1.GetMessageRequest{})
	if got := status.Code(err); got != codes.InvalidArgument {
		t.Errorf("GetMessage(no id) = %v, want InvalidArgument", got)
	}
}

func TestHistoryNeedsConversationXorRecipient(t *testing.T) {
	tracker := &fakeTracker{}
	_, client := newGateway(t, tracker, Config{})
	for _, req := range []*gatewayv1.HistoryRequest{
		{},
		{Conversation: "c1", Recipient: "u1"},
	} {
		if _, err := client.History(context.Background(), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("History(%v) = %v, want InvalidArgument", req, err)
		}
	}
	if _, err := client.History(context.Background(), &gatewayv1.HistoryRequest{Conversation: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.History(context.Background(), &gatewayv1.HistoryRequest{Recipient: "u1", Channel: "mock", Limit: 5000}); err != nil {
		t.Fatal(err)
	}
	tracker.mu.Lock()
	defer tracker.mu.Unlock()
	if got := tracker.history[0]; got.GetLimit() != 20 || got.GetTenant() != "default" {
		t.Errorf("tracker History request = %v, want the default limit 20 and tenant \"default\"", got)
	}
	if got := tracker.history[1]; got.GetLimit() != 1000 {
		t.Errorf("tracker History limit = %d, want it capped at 1000", got.GetLimit())
	}
}

func TestWatchEventsProxiesTheTrackerStream(t *testing.T) {
	tracker := &fakeTracker{events: []*storev1.Event{
		{Sequence: 1, Type: "message.accepted", MessageId: "a", Channel: "mock", State: storev1.State_STATE_PENDING},
		{Sequence: 2, Type: "delivery.failed", MessageId: "a", Channel: "mock", State: storev1.State_STATE_FAILED, Attempt: 3, ErrorCode: "DLV_003"},
	}}
	_, client := newGateway(t, tracker, Config{})
	stream, err := client.WatchEvents(context.Background(), &gatewayv1.WatchEventsRequest{AfterSequence: 1})
	if err != nil {
		t.Fatal(err)
	}
	var got []*gatewayv1.Event
	for {
		e, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	want := []*gatewayv1.Event{{Sequence: 2, Type: "delivery.failed", MessageId: "a", Channel: "mock",
		State: gatewayv1.DeliveryState_DELIVERY_STATE_FAILED, Attempt: 3, ErrorCode: "DLV_003"}}
	if diff := cmp.Diff(got, want, protocmp.Transform()); diff != "" {
		t.Errorf("WatchEvents() (-got +want):\n%s", diff)
	}
}

func TestStatusReportsUnreachablePeers(t *testing.T) {
	hs := health.NewServer()
	queueConn := serve(t, func(s *grpc.Server) { healthpb.RegisterHealthServer(s, hs) })

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := lis.Addr().String()
	_ = lis.Close()

	tracker := &fakeTracker{stats: &trackerv1.StatsResponse{
		Counts:            map[string]int64{"STATE_PENDING": 3, "STATE_DELIVERED": 10},
		RecoveryIndexSize: 3,
	}}
	_, client := newGateway(t, tracker, Config{
		Address: "127.0.0.1:7300",
		Peers: []Peer{
			{Name: "queue", Address: "queue-addr", Health: healthpb.NewHealthClient(queueConn)},
			{Name: "plugins", Address: deadAddr, Health: healthpb.NewHealthClient(dial(t, deadAddr))},
		},
	})
	got, err := client.Status(context.Background(), &gatewayv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := &gatewayv1.StatusResponse{
		Services: []*gatewayv1.ServiceStatus{
			{Name: "gateway", Address: "127.0.0.1:7300", Health: "SERVING"},
			{Name: "queue", Address: "queue-addr", Health: "SERVING"},
			{Name: "plugins", Address: deadAddr, Health: "UNREACHABLE"},
		},
		Counts:            map[string]int64{"PENDING": 3, "DELIVERED": 10},
		RecoveryIndexSize: 3,
	}
	if diff := cmp.Diff(got, want, protocmp.Transform(), protocmp.IgnoreFields(&gatewayv1.ServiceStatus{}, "detail")); diff != "" {
		t.Errorf("Status() (-got +want):\n%s", diff)
	}
	if got.GetServices()[2].GetDetail() == "" {
		t.Error("Status() gives no detail for the unreachable service")
	}
}

func TestTraceIDFromParent(t *testing.T) {
	tests := []struct{ in, want string }{
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"", ""},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", ""},
		{"garbage", ""},
	}
	for _, tt := range tests {
		if got := traceIDFromParent(tt.in); got != tt.want {
			t.Errorf("traceIDFromParent(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
