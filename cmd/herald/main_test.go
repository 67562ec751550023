package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// fakeGateway answers GatewayService calls from fixed data and records the
// requests it gets.
type fakeGateway struct {
	gatewayv1.UnimplementedGatewayServiceServer

	sendErr error
	events  []*gatewayv1.Event
	// holdStream keeps WatchEvents open after the events, as a live
	// gateway does.
	holdStream bool

	// deadLetters is ListDeadLetters' answer, whatever the filters.
	deadLetters []*gatewayv1.Message
	// states are the messages Abort, Redrive and Purge act on, by id.
	states   map[string]gatewayv1.DeliveryState
	verify   *gatewayv1.VerifyStateResponse
	adminErr error

	mu       sync.Mutex
	sends    []*gatewayv1.SendRequest
	history  []*gatewayv1.HistoryRequest
	watching []*gatewayv1.WatchEventsRequest
	aborts   []*gatewayv1.AbortRequest
	dlqLists []*gatewayv1.ListDeadLettersRequest
	redriven []string
	purged   []string
	backups  []*gatewayv1.BackupRequest
}

var accepted = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

func (f *fakeGateway) Send(_ context.Context, req *gatewayv1.SendRequest) (*gatewayv1.SendResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sends = append(f.sends, req)
	if f.sendErr != nil {
		return nil, f.sendErr
	}
	return &gatewayv1.SendResponse{Id: "01JD7X0000000000000000000A", State: gatewayv1.DeliveryState_DELIVERY_STATE_PENDING, Sequence: 1}, nil
}

// SendStream answers each request in order: text "bad" is refused, the
// rest are accepted with id "id-<ref>".
func (f *fakeGateway) SendStream(stream grpc.BidiStreamingServer[gatewayv1.SendStreamRequest, gatewayv1.SendStreamResponse]) error {
	for {
		in, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		out := &gatewayv1.SendStreamResponse{Ref: in.GetRef()}
		if in.GetRequest().GetText() == "bad" {
			out.Code, out.Error = int32(codes.InvalidArgument), "text: bad"
		} else {
			f.mu.Lock()
			f.sends = append(f.sends, in.GetRequest())
			f.mu.Unlock()
			out.Response = &gatewayv1.SendResponse{Id: fmt.Sprint("id-", in.GetRef()), State: gatewayv1.DeliveryState_DELIVERY_STATE_PENDING, Sequence: 1}
		}
		if err := stream.Send(out); err != nil {
			return err
		}
	}
}

func (f *fakeGateway) GetMessage(_ context.Context, req *gatewayv1.GetMessageRequest) (*gatewayv1.GetMessageResponse, error) {
	if req.GetId() != "01JD7X0000000000000000000A" {
		return nil, status.Error(codes.NotFound, "message not found")
	}
	return &gatewayv1.GetMessageResponse{
		Message: &gatewayv1.Message{
			Id: req.GetId(), Tenant: "default", Channel: "webhook", Recipient: "http://127.0.0.1:9000/hook", Conversation: "c1",
			Sequence: 1, Text: "hello", State: gatewayv1.DeliveryState_DELIVERY_STATE_FAILED, Attempts: 3,
			LastErrorCode: "DLV_003", LastError: "HTTP 400", Reason: "permanent error", TraceId: "4bf92f3577b34da6a3ce929d0e0e4736",
			AcceptedAt: timestamppb.New(accepted),
		},
		Timeline: []*gatewayv1.Event{
			{Sequence: 1, Time: timestamppb.New(accepted), Type: "message.accepted", State: gatewayv1.DeliveryState_DELIVERY_STATE_PENDING},
			{Sequence: 9, Time: timestamppb.New(accepted.Add(time.Second)), Type: "delivery.failed", State: gatewayv1.DeliveryState_DELIVERY_STATE_FAILED,
				Attempt: 3, ErrorCode: "DLV_003", Detail: "HTTP 400 bad request"},
		},
	}, nil
}

func (f *fakeGateway) History(_ context.Context, req *gatewayv1.HistoryRequest) (*gatewayv1.HistoryResponse, error) {
	f.mu.Lock()
	f.history = append(f.history, req)
	f.mu.Unlock()
	return &gatewayv1.HistoryResponse{Messages: []*gatewayv1.Message{
		{Id: "01JD7X0000000000000000000B", Sequence: 2, State: gatewayv1.DeliveryState_DELIVERY_STATE_PENDING, Channel: "webhook", Conversation: "c1", Text: "second"},
		{Id: "01JD7X0000000000000000000A", Sequence: 1, State: gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, Channel: "webhook", Conversation: "c1", Text: "first", Attempts: 1},
	}}, nil
}

func (f *fakeGateway) Status(context.Context, *gatewayv1.StatusRequest) (*gatewayv1.StatusResponse, error) {
	return &gatewayv1.StatusResponse{
		Services: []*gatewayv1.ServiceStatus{
			{Name: "gateway", Address: "127.0.0.1:7300", Health: "SERVING"},
			{Name: "tracker", Address: "127.0.0.1:7301", Health: "SERVING"},
			{Name: "queue", Address: "127.0.0.1:7302", Health: "UNREACHABLE", Detail: "connection refused"},
		},
		Counts:            map[string]int64{"PENDING": 4, "DELIVERED": 17},
		RecoveryIndexSize: 4,
	}, nil
}

func (f *fakeGateway) WatchEvents(req *gatewayv1.WatchEventsRequest, stream grpc.ServerStreamingServer[gatewayv1.Event]) error {
	f.mu.Lock()
	f.watching = append(f.watching, req)
	f.mu.Unlock()
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	for _, e := range f.events {
		if e.GetSequence() <= req.GetAfterSequence() || (req.GetType() != "" && e.GetType() != req.GetType()) {
			continue
		}
		if err := stream.Send(e); err != nil {
			return err
		}
	}
	if f.holdStream {
		<-stream.Context().Done()
	}
	return nil
}

func (f *fakeGateway) Abort(_ context.Context, req *gatewayv1.AbortRequest) (*gatewayv1.AbortResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.aborts = append(f.aborts, req)
	st, ok := f.states[req.GetId()]
	if !ok {
		return nil, status.Error(codes.NotFound, "message not found")
	}
	if st != gatewayv1.DeliveryState_DELIVERY_STATE_PENDING {
		return &gatewayv1.AbortResponse{State: st, AlreadyFinal: true}, nil
	}
	f.states[req.GetId()] = gatewayv1.DeliveryState_DELIVERY_STATE_ABORTED
	return &gatewayv1.AbortResponse{State: gatewayv1.DeliveryState_DELIVERY_STATE_ABORTED}, nil
}

func (f *fakeGateway) ListDeadLetters(_ context.Context, req *gatewayv1.ListDeadLettersRequest) (*gatewayv1.ListDeadLettersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dlqLists = append(f.dlqLists, req)
	return &gatewayv1.ListDeadLettersResponse{Messages: f.deadLetters}, nil
}

// deadLetter answers Redrive and Purge like the tracker does: only a FAILED
// message is a dead letter.
func (f *fakeGateway) deadLetter(id string, log *[]string) (gatewayv1.DeliveryState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.adminErr != nil {
		return 0, f.adminErr
	}
	st, ok := f.states[id]
	if !ok {
		return 0, status.Errorf(codes.NotFound, "no message with id %q", id)
	}
	if st != gatewayv1.DeliveryState_DELIVERY_STATE_FAILED {
		return 0, status.Errorf(codes.FailedPrecondition, "message is not a dead letter: %s is %s", id, st)
	}
	*log = append(*log, id)
	return st, nil
}

func (f *fakeGateway) Redrive(_ context.Context, req *gatewayv1.RedriveRequest) (*gatewayv1.RedriveResponse, error) {
	if _, err := f.deadLetter(req.GetId(), &f.redriven); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states[req.GetId()] = gatewayv1.DeliveryState_DELIVERY_STATE_PENDING
	return &gatewayv1.RedriveResponse{State: gatewayv1.DeliveryState_DELIVERY_STATE_PENDING}, nil
}

func (f *fakeGateway) Purge(_ context.Context, req *gatewayv1.PurgeRequest) (*gatewayv1.PurgeResponse, error) {
	st, err := f.deadLetter(req.GetId(), &f.purged)
	if err != nil {
		return nil, err
	}
	return &gatewayv1.PurgeResponse{State: st}, nil
}

func (f *fakeGateway) Backup(_ context.Context, req *gatewayv1.BackupRequest) (*gatewayv1.BackupResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.adminErr != nil {
		return nil, f.adminErr
	}
	f.backups = append(f.backups, req)
	return &gatewayv1.BackupResponse{Path: "/var/lib/herald/backups/20261121T100000Z"}, nil
}

func (f *fakeGateway) VerifyState(context.Context, *gatewayv1.VerifyStateRequest) (*gatewayv1.VerifyStateResponse, error) {
	return f.verify, nil
}

// startFake serves f on 127.0.0.1:0 and returns its address.
func startFake(t *testing.T, f *fakeGateway) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	gatewayv1.RegisterGatewayServiceServer(srv, f)
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

// herald runs the CLI with args against the gateway at addr and returns its
// exit code, stdout and stderr.
func herald(t *testing.T, ctx context.Context, addr string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	env := map[string]string{"HERALD_GATEWAY": addr}
	code := run(ctx, args, func(k string) string { return env[k] }, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestCommands(t *testing.T) {
	f := &fakeGateway{events: []*gatewayv1.Event{
		{Sequence: 1, Type: "message.accepted", MessageId: "A", Channel: "webhook", State: gatewayv1.DeliveryState_DELIVERY_STATE_PENDING},
		{Sequence: 2, Type: "delivery.failed", MessageId: "A", Channel: "webhook", State: gatewayv1.DeliveryState_DELIVERY_STATE_FAILED, Attempt: 3, ErrorCode: "DLV_003", Detail: "HTTP 400"},
	}}
	addr := startFake(t, f)

	tests := []struct {
		name string
		args []string
		// want are substrings the output must contain, in order.
		want []string
	}{
		{name: "send prints id, state and sequence",
			args: []string{"send", "--channel", "webhook", "--to", "http://127.0.0.1:9000/hook", "--conversation", "c1", "--text", "hello", "--key", "k1", "--meta", "lang=en", "--ttl", "1h"},
			want: []string{"id=01JD7X0000000000000000000A state=PENDING sequence=1\n"}},
		{name: "get prints fields and the timeline",
			args: []string{"get", "01JD7X0000000000000000000A"},
			want: []string{"state:", "FAILED", "attempts:", "3", "last error:", "DLV_003 HTTP 400", "trace id:", "4bf92f3577b34da6a3ce929d0e0e4736",
				"timeline:", "2026-11-21T10:00:00.000Z", "message.accepted", "delivery.failed", "attempt=3", "error=DLV_003", "HTTP 400 bad request"}},
		{name: "history prints a table newest first",
			args: []string{"history", "--conversation", "c1", "--limit", "5"},
			want: []string{"ID", "SEQ", "STATE", "01JD7X0000000000000000000B", "PENDING", "second", "01JD7X0000000000000000000A", "DELIVERED", "first"}},
		{name: "status prints health then counts",
			args: []string{"status"},
			want: []string{"gateway", "SERVING", "queue", "UNREACHABLE", "connection refused", "PENDING", "4", "DELIVERED", "17", "recovery index:", "4"}},
		{name: "events prints what exists and exits",
			args: []string{"events", "--since-seq", "1"},
			want: []string{"2 ", "delivery.failed", "message=A", "state=FAILED", "attempt=3", "error=DLV_003", "HTTP 400"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := herald(t, context.Background(), addr, tt.args...)
			if code != 0 {
				t.Fatalf("herald %v exited %d; stderr: %s", tt.args, code, stderr)
			}
			rest := stdout
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("herald %v output lacks %q (in order); output:\n%s", tt.args, w, stdout)
				}
				rest = rest[i+len(w):]
			}
		})
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if got := f.sends[0]; got.GetTtlSeconds() != 3600 || got.GetMetadata()["lang"] != "en" || got.GetIdempotencyKey() != "k1" || got.GetConversation() != "c1" {
		t.Errorf("send request = %v, want ttl 3600, metadata lang=en, key k1, conversation c1", got)
	}
	if got := f.history[0]; got.GetLimit() != 5 || got.GetConversation() != "c1" {
		t.Errorf("history request = %v, want conversation c1 and limit 5", got)
	}
}

func TestSendJSONOutput(t *testing.T) {
	addr := startFake(t, &fakeGateway{})
	code, stdout, stderr := herald(t, context.Background(), addr, "--output", "json", "send", "--channel", "mock", "--to", "u1", "--text", "hi")
	if code != 0 {
		t.Fatalf("exit %d; stderr: %s", code, stderr)
	}
	var got struct {
		ID       string `json:"id"`
		State    string `json:"state"`
		Sequence string `json:"sequence"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout)
	}
	if got.ID != "01JD7X0000000000000000000A" || got.State != "DELIVERY_STATE_PENDING" || got.Sequence != "1" {
		t.Errorf("JSON output = %+v", got)
	}
}

// send --file sends every line over one stream, fills what a line leaves
// out from the flags, reports each line's answer and exits 1 when any line
// was not accepted.
func TestSendFileStreamsEveryLine(t *testing.T) {
	f := &fakeGateway{}
	addr := startFake(t, f)
	path := filepath.Join(t.TempDir(), "messages.jsonl")
	lines := `{"channel":"webhook","recipient":"http://127.0.0.1:9/h","text":"full","idempotency_key":"k1"}
{"text":"from flags","metadata":{"k":"v"}}
{"text": oops}

{"text":"bad"}
`
	if err := os.WriteFile(path, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := herald(t, context.Background(), addr, "send", "--channel", "mock", "--to", "u1", "--meta", "lang=en", "--file", path)
	if code != 1 || !strings.Contains(stderr, "2 of the messages were not accepted") {
		t.Errorf("exit %d, stderr %q; want 1 and a count of the lines not accepted", code, stderr)
	}
	for _, want := range []string{
		"line=1 id=id-1 state=PENDING sequence=1\n",
		"line=2 id=id-2 state=PENDING sequence=1\n",
		"line=3 error=InvalidArgument: not a SendRequest in JSON",
		"line=5 error=InvalidArgument: text: bad\n",
		"messages 4: accepted 2, failed 2, unanswered 0\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.sends) != 2 {
		t.Fatalf("gateway accepted %d requests, want 2", len(f.sends))
	}
	want := &gatewayv1.SendRequest{Channel: "mock", Recipient: "u1", Text: "from flags", Metadata: map[string]string{"k": "v", "lang": "en"}}
	if diff := cmp.Diff(f.sends[1], want, protocmp.Transform()); diff != "" {
		t.Errorf("line 2 as sent (-got +want):\n%s", diff)
	}
	if got := f.sends[0]; got.GetChannel() != "webhook" || got.GetIdempotencyKey() != "k1" || got.GetMetadata()["lang"] != "en" {
		t.Errorf("line 1 as sent = %v, want its own channel and key, and the flag's metadata", got)
	}
}

func TestEventsFollowStreamsUntilInterrupted(t *testing.T) {
	addr := startFake(t, &fakeGateway{holdStream: true, events: []*gatewayv1.Event{{Sequence: 5, Type: "delivery.succeeded", MessageId: "A"}}})
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		code           int
		stdout, stderr string
	}
	done := make(chan result, 1)
	go func() {
		code, stdout, stderr := herald(t, ctx, addr, "events", "--follow")
		done <- result{code, stdout, stderr}
	}()
	// With --follow, the caught-up timeout must not end the stream.
	select {
	case r := <-done:
		t.Fatalf("events --follow ended on its own: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	case <-time.After(3 * caughtUpAfter):
	}
	cancel()
	select {
	case r := <-done:
		if r.code != 0 || !strings.Contains(r.stdout, "delivery.succeeded") {
			t.Errorf("events --follow after interrupt: exit %d, stdout %q, stderr %q; want exit 0 and the event", r.code, r.stdout, r.stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("events --follow did not stop after interrupt")
	}
}

func TestErrors(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := lis.Addr().String()
	_ = lis.Close()
	draining := startFake(t, &fakeGateway{sendErr: status.Error(codes.Unavailable, "gateway is draining; retry on another instance or after restart")})
	invalid := startFake(t, &fakeGateway{sendErr: status.Error(codes.InvalidArgument, "invalid request: channel: required")})
	ok := startFake(t, &fakeGateway{})

	tests := []struct {
		name string
		addr string
		args []string
		want string
	}{
		{name: "gateway unreachable", addr: deadAddr, args: []string{"status"},
			want: "herald: cannot reach the gateway at " + deadAddr + ": is herald running? (make run)\n"},
		{name: "gateway draining", addr: draining, args: []string{"send", "--channel", "mock", "--to", "u1"},
			want: "herald: cannot send the message: gateway is draining; retry on another instance or after restart\n"},
		{name: "invalid argument passes the gateway's explanation", addr: invalid, args: []string{"send", "--channel", "mock", "--to", "u1"},
			want: "herald: cannot send the message: invalid request: channel: required\n"},
		{name: "missing channel", addr: ok, args: []string{"send", "--to", "u1"},
			want: "herald: --channel is required"},
		{name: "bad meta", addr: ok, args: []string{"send", "--channel", "mock", "--to", "u1", "--meta", "novalue"},
			want: "herald: --meta \"novalue\": write each entry as key=value\n"},
		{name: "unknown message", addr: ok, args: []string{"get", "nope"},
			want: "herald: no message with id nope"},
		{name: "get without id", addr: ok, args: []string{"get"},
			want: "herald: give exactly one message id"},
		{name: "history needs a subject", addr: ok, args: []string{"history"},
			want: "herald: give --conversation or --recipient"},
		{name: "bad output format", addr: ok, args: []string{"--output", "yaml", "status"},
			want: "herald: --output \"yaml\": use text or json\n"},
		{name: "unknown flag", addr: ok, args: []string{"status", "--verbose"},
			want: "herald: unknown flag: --verbose (see 'herald status --help')\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := herald(t, context.Background(), tt.addr, tt.args...)
			if code != 1 {
				t.Errorf("exit code = %d, want 1", code)
			}
			if !strings.HasPrefix(stderr, tt.want) {
				t.Errorf("stderr = %q, want it to start with %q", stderr, tt.want)
			}
		})
	}
}
