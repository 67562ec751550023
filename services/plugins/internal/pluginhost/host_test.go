package pluginhost_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/heraldchat/herald/pkg/grpcclient"
	"github.com/heraldchat/herald/pkg/grpcserver"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/mock"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
)

// funcAdapter is an adapter whose behaviour each test writes.
type funcAdapter struct {
	name string
	fn   func(ctx context.Context, d *pluginhost.Delivery) pluginhost.Result
}

func (a funcAdapter) Name() string { return a.name }
func (a funcAdapter) Deliver(ctx context.Context, d *pluginhost.Delivery) pluginhost.Result {
	return a.fn(ctx, d)
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the JSON log records written so far.
func (b *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for l := range strings.SplitSeq(strings.TrimSpace(b.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// startHost serves a Host over real gRPC on 127.0.0.1:0 and returns a client.
func startHost(t *testing.T, channels map[string]pluginhost.Adapter, opts pluginhost.Options) (pluginsv1.PluginHostServiceClient, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, nil))
	if opts.Logger == nil {
		opts.Logger = logger
	}
	host, err := pluginhost.New(channels, opts)
	if err != nil {
		t.Fatalf("pluginhost.New: %v", err)
	}
	srv, err := grpcserver.New(grpcserver.Config{Name: "plugins", Addr: "127.0.0.1:0", Logger: logger, GracePeriod: time.Second})
	if err != nil {
		t.Fatalf("grpcserver.New: %v", err)
	}
	pluginsv1.RegisterPluginHostServiceServer(srv.GRPC(), host)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ctx); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	conn, err := grpcclient.Dial(srv.Addr())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		<-served
	})
	return pluginsv1.NewPluginHostServiceClient(conn), logs
}

func openStream(t *testing.T, c pluginsv1.PluginHostServiceClient) (grpc.BidiStreamingClient[pluginsv1.DeliverRequest, pluginsv1.DeliverResponse], context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	s, err := c.Deliver(ctx)
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	return s, cancel
}

func delivery(id uint64, channel, recipient string) *pluginsv1.DeliverRequest {
	return &pluginsv1.DeliverRequest{Kind: &pluginsv1.DeliverRequest_Delivery{Delivery: &pluginsv1.Delivery{
		RequestId: id, MessageId: fmt.Sprintf("m%d", id), Channel: channel, Recipient: recipient,
		Conversation: "c1", Sequence: id, Attempt: 1, Text: "hi",
	}}}
}

func cancelReq(id uint64) *pluginsv1.DeliverRequest {
	return &pluginsv1.DeliverRequest{Kind: &pluginsv1.DeliverRequest_Cancel{Cancel: &pluginsv1.Cancel{RequestId: id}}}
}

func send(t *testing.T, s grpc.BidiStreamingClient[pluginsv1.DeliverRequest, pluginsv1.DeliverResponse], req *pluginsv1.DeliverRequest) {
	t.Helper()
	if err := s.Send(req); err != nil {
		t.Fatalf("Send: %v", err)
	}
}

func recv(t *testing.T, s grpc.BidiStreamingClient[pluginsv1.DeliverRequest, pluginsv1.DeliverResponse]) *pluginsv1.DeliverResponse {
	t.Helper()
	resp, err := s.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return resp
}

func returns(r pluginhost.Result) funcAdapter {
	return funcAdapter{name: "fake", fn: func(context.Context, *pluginhost.Delivery) pluginhost.Result { return r }}
}

// ignoreDescription leaves descriptions (human text) out of comparisons.
var ignoreDescription = protocmp.IgnoreFields(&pluginsv1.DeliverResponse{}, "description")

func TestDeliverNeverReportsFalseSuccess(t *testing.T) {
	tests := []struct {
		name      string
		adapter   pluginhost.Adapter
		channel   string
		want      *pluginsv1.DeliverResponse
		wantLevel string // level of the outcome log line; "" for none
	}{
		{
			name:    "confirmed delivery passes through",
			adapter: returns(pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "p-1"}),
			channel: "fake",
			want:    &pluginsv1.DeliverResponse{RequestId: 1, Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageId: "p-1", Adapter: "fake"},
		},
		{
			name: "panic is unknown, never delivered",
			adapter: funcAdapter{name: "fake", fn: func(context.Context, *pluginhost.Delivery) pluginhost.Result {
				panic("provider client blew up")
			}},
			channel:   "fake",
			want:      &pluginsv1.DeliverResponse{RequestId: 1, Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "PLG_003", Adapter: "fake"},
			wantLevel: "ERROR",
		},
		{
			name:      "delivered without provider id is unknown",
			adapter:   returns(pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED}),
			channel:   "fake",
			want:      &pluginsv1.DeliverResponse{RequestId: 1, Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "DLV_003", Adapter: "fake"},
			wantLevel: "ERROR",
		},
		{
			name:      "unspecified outcome is unknown",
			adapter:   returns(pluginhost.Result{ProviderMessageID: "p-1"}),
			channel:   "fake",
			want:      &pluginsv1.DeliverResponse{RequestId: 1, Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "DLV_003", Adapter: "fake"},
			wantLevel: "ERROR",
		},
		{
			name:      "out-of-range outcome is unknown",
			adapter:   returns(pluginhost.Result{Outcome: pluginsv1.Outcome(42), ProviderMessageID: "p-1"}),
			channel:   "fake",
			want:      &pluginsv1.DeliverResponse{RequestId: 1, Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "DLV_003", Adapter: "fake"},
			wantLevel: "ERROR",
		},
		{
			name:      "unknown channel is permanent",
			adapter:   returns(pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "p-1"}),
			channel:   "telegram",
			want:      &pluginsv1.DeliverResponse{RequestId: 1, Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_002"},
			wantLevel: "ERROR",
		},
		{
			name: "retryable passes through with retry-after",
			adapter: returns(pluginhost.Result{
				Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "429", RetryAfter: 1500 * time.Millisecond,
			}),
			channel:   "fake",
			want:      &pluginsv1.DeliverResponse{RequestId: 1, Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_001", ProviderCode: "429", RetryAfterMs: 1500, Adapter: "fake"},
			wantLevel: "WARN",
		},
		{
			name:      "permanent is logged at error",
			adapter:   returns(pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_004"}),
			channel:   "fake",
			want:      &pluginsv1.DeliverResponse{RequestId: 1, Outcome: pluginsv1.Outcome_OUTCOME_PERMANENT, ErrorCode: "PLG_004", Adapter: "fake"},
			wantLevel: "ERROR",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, logs := startHost(t, map[string]pluginhost.Adapter{"fake": tt.adapter}, pluginhost.Options{})
			s, _ := openStream(t, c)
			send(t, s, delivery(1, tt.channel, "https://example.invalid/hook/SECRET-TOKEN"))
			got := recv(t, s)
			if diff := cmp.Diff(tt.want, got, protocmp.Transform(), ignoreDescription); diff != "" {
				t.Errorf("response mismatch (-want +got):\n%s", diff)
			}

			var outcomeLog map[string]any
			for _, l := range logs.lines(t) {
				if l["msg"] == "delivery not delivered" {
					outcomeLog = l
				}
				if strings.Contains(fmt.Sprint(l), "SECRET-TOKEN") {
					t.Errorf("log line leaks the recipient: %v", l)
				}
			}
			if tt.wantLevel == "" {
				if outcomeLog != nil {
					t.Errorf("unexpected outcome log: %v", outcomeLog)
				}
				return
			}
			if outcomeLog == nil {
				t.Fatalf("no outcome log line, want one at %s", tt.wantLevel)
			}
			if outcomeLog["level"] != tt.wantLevel || outcomeLog["message_id"] != "m1" ||
				outcomeLog["error_code"] != tt.want.GetErrorCode() || outcomeLog["channel"] != tt.channel {
				t.Errorf("outcome log = %v, want level %s with message_id, channel and error_code", outcomeLog, tt.wantLevel)
			}
		})
	}
}

func TestPanicIsLoggedWithMessageID(t *testing.T) {
	a := funcAdapter{name: "fake", fn: func(context.Context, *pluginhost.Delivery) pluginhost.Result { panic("boom") }}
	c, logs := startHost(t, map[string]pluginhost.Adapter{"fake": a}, pluginhost.Options{})
	s, _ := openStream(t, c)
	send(t, s, delivery(7, "fake", "r"))
	recv(t, s)
	for _, l := range logs.lines(t) {
		if l["msg"] == "adapter panicked" && l["level"] == "ERROR" && l["message_id"] == "m7" {
			return
		}
	}
	t.Errorf("no ERROR log for the panic with message_id m7; logs: %v", logs.lines(t))
}

func TestCancelAndDeadlineStopTheCall(t *testing.T) {
	tests := []struct {
		name string
		// adapterResult is what the adapter returns once its context ends.
		adapterResult func(ctx context.Context) pluginhost.Result
		// ignoreCtx makes the adapter block past its context.
		ignoreCtx   bool
		viaDeadline bool // end the call by its deadline instead of a Cancel
		wantOutcome pluginsv1.Outcome
		wantCode    string
		wantCtxErr  error
	}{
		{
			name: "cancel stops a blocked adapter",
			adapterResult: func(ctx context.Context) pluginhost.Result {
				return pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "PLG_006"}
			},
			wantOutcome: pluginsv1.Outcome_OUTCOME_UNKNOWN,
			wantCode:    "PLG_006",
			wantCtxErr:  context.Canceled,
		},
		{
			name: "deadline stops a blocked adapter",
			adapterResult: func(ctx context.Context) pluginhost.Result {
				return pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_RETRYABLE, ErrorCode: "PLG_005"}
			},
			viaDeadline: true,
			wantOutcome: pluginsv1.Outcome_OUTCOME_RETRYABLE,
			wantCode:    "PLG_005",
			wantCtxErr:  context.DeadlineExceeded,
		},
		{
			name: "confirmation that races the cancel stays delivered",
			adapterResult: func(ctx context.Context) pluginhost.Result {
				return pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "p-9"}
			},
			wantOutcome: pluginsv1.Outcome_OUTCOME_DELIVERED,
			wantCtxErr:  context.Canceled,
		},
		{
			name:        "adapter ignoring its context is abandoned as unknown",
			ignoreCtx:   true,
			wantOutcome: pluginsv1.Outcome_OUTCOME_UNKNOWN,
			wantCode:    "PLG_006",
			wantCtxErr:  context.Canceled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			started := make(chan struct{})
			ctxErr := make(chan error, 1)
			release := make(chan struct{})
			t.Cleanup(func() { close(release) })
			a := funcAdapter{name: "fake", fn: func(ctx context.Context, d *pluginhost.Delivery) pluginhost.Result {
				close(started)
				if tt.ignoreCtx {
					<-release
					return pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "late"}
				}
				<-ctx.Done()
				ctxErr <- ctx.Err()
				return tt.adapterResult(ctx)
			}}
			c, _ := startHost(t, map[string]pluginhost.Adapter{"fake": a}, pluginhost.Options{AbandonAfter: 100 * time.Millisecond})
			s, _ := openStream(t, c)

			req := delivery(3, "fake", "r")
			if tt.viaDeadline {
				req.GetDelivery().TimeoutNanos = (200 * time.Millisecond).Nanoseconds()
			}
			send(t, s, req)
			<-started
			if !tt.viaDeadline {
				send(t, s, cancelReq(3))
			}
			got := recv(t, s)
			if got.GetRequestId() != 3 || got.GetOutcome() != tt.wantOutcome || got.GetErrorCode() != tt.wantCode {
				t.Errorf("answer = %v, want request 3 %v %q", got, tt.wantOutcome, tt.wantCode)
			}
			if !tt.ignoreCtx {
				if err := <-ctxErr; !errors.Is(err, tt.wantCtxErr) {
					t.Errorf("adapter context ended with %v, want %v", err, tt.wantCtxErr)
				}
			}
		})
	}
}

// recordingReporter collects orphaned answers.
type recordingReporter struct{ got chan []pluginhost.Orphan }

func (r recordingReporter) Report(_ context.Context, o []pluginhost.Orphan) error {
	r.got <- o
	return nil
}

// A queue that dies mid-call must not cut the provider call: the call
// finishes and its answer, which the queue never acknowledged, goes to the
// reporter. An acknowledged answer is not reported again.
func TestStreamBreakReportsUnackedAnswers(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	a := funcAdapter{name: "fake", fn: func(ctx context.Context, d *pluginhost.Delivery) pluginhost.Result {
		started <- struct{}{}
		if d.Recipient == "slow" {
			select {
			case <-release:
			case <-ctx.Done():
				return pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN, ErrorCode: "PLG_006"}
			}
		}
		return pluginhost.Result{Outcome: pluginsv1.Outcome_OUTCOME_DELIVERED, ProviderMessageID: "p-" + d.MessageID}
	}}
	rep := recordingReporter{got: make(chan []pluginhost.Orphan, 1)}
	c, _ := startHost(t, map[string]pluginhost.Adapter{"fake": a}, pluginhost.Options{Reporter: rep})
	s, cancel := openStream(t, c)

	fast := delivery(1, "fake", "fast")
	fast.GetDelivery().LeaseToken = 7
	send(t, s, fast)
	if got := recv(t, s); got.GetOutcome() != pluginsv1.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("fast answer: %v", got)
	}
	send(t, s, &pluginsv1.DeliverRequest{Kind: &pluginsv1.DeliverRequest_Ack{Ack: &pluginsv1.Ack{RequestIds: []uint64{1}}}})
	slow := delivery(2, "fake", "slow")
	slow.GetDelivery().LeaseToken = 9
	send(t, s, slow)
	<-started
	<-started
	cancel() // the queue dies with the slow call in flight
	time.Sleep(50 * time.Millisecond)
	close(release)

	select {
	case orphans := <-rep.got:
		if len(orphans) != 1 {
			t.Fatalf("reported %d answers, want only the unacknowledged one", len(orphans))
		}
		o := orphans[0]
		if o.Delivery.GetRequestId() != 2 || o.Delivery.GetLeaseToken() != 9 || o.Answer.GetOutcome() != pluginsv1.Outcome_OUTCOME_DELIVERED {
			t.Fatalf("reported %v / %v, want request 2, lease 9, DELIVERED (the call was not cut)", o.Delivery, o.Answer)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the unacknowledged answer was not reported")
	}
}

func TestManyConcurrentDeliveriesAnsweredOnceEach(t *testing.T) {
	m := mock.New(mock.Options{})
	c, _ := startHost(t, map[string]pluginhost.Adapter{"mock": m}, pluginhost.Options{})
	s, _ := openStream(t, c)

	const n = 300
	scripts := []struct {
		recipient string
		want      pluginsv1.Outcome
	}{
		{"ok", pluginsv1.Outcome_OUTCOME_DELIVERED},
		{"delay:30ms", pluginsv1.Outcome_OUTCOME_DELIVERED},
		{"delay:5ms", pluginsv1.Outcome_OUTCOME_DELIVERED},
		{"fail:retryable", pluginsv1.Outcome_OUTCOME_RETRYABLE},
		{"fail:permanent", pluginsv1.Outcome_OUTCOME_PERMANENT},
		{"panic", pluginsv1.Outcome_OUTCOME_UNKNOWN},
	}
	want := make(map[uint64]pluginsv1.Outcome, n)
	sendErr := make(chan error, 1)
	go func() {
		for i := range uint64(n) {
			sc := scripts[i%uint64(len(scripts))]
			want[i+1] = sc.want
			if err := s.Send(delivery(i+1, "mock", sc.recipient)); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- s.CloseSend()
	}()

	got := make(map[uint64]pluginsv1.Outcome, n)
	for {
		resp, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Recv after %d answers: %v", len(got), err)
		}
		if _, dup := got[resp.GetRequestId()]; dup {
			t.Errorf("request %d answered twice", resp.GetRequestId())
		}
		got[resp.GetRequestId()] = resp.GetOutcome()
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("send: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes by request id (-want +got):\n%s", diff)
	}
	wantDelivered := 0
	for _, o := range want {
		if o == pluginsv1.Outcome_OUTCOME_DELIVERED {
			wantDelivered++
		}
	}
	if got := len(m.Deliveries()); got != wantDelivered {
		t.Errorf("mock recorded %d deliveries, want %d", got, wantDelivered)
	}
}

func TestListChannelsTracksConsecutiveFailures(t *testing.T) {
	m := mock.New(mock.Options{})
	c, _ := startHost(t, map[string]pluginhost.Adapter{"mock": m, "hook": m}, pluginhost.Options{})
	s, _ := openStream(t, c)
	ctx := t.Context()

	steps := []struct {
		recipient     string
		wantFailures  uint32
		wantHealthy   bool
		wantOtherFine bool
	}{
		{"fail:retryable", 1, true, true},
		{"fail:unknown", 2, true, true},
		{"fail:permanent", 3, false, true},
		{"ok", 0, true, true},
	}
	for i, st := range steps {
		send(t, s, delivery(uint64(i+1), "mock", st.recipient))
		recv(t, s)
		resp, err := c.ListChannels(ctx, &pluginsv1.ListChannelsRequest{})
		if err != nil {
			t.Fatalf("ListChannels: %v", err)
		}
		want := &pluginsv1.ListChannelsResponse{Channels: []*pluginsv1.Channel{
			{Name: "hook", Adapter: "mock", Healthy: true},
			{Name: "mock", Adapter: "mock", Healthy: st.wantHealthy, ConsecutiveFailures: st.wantFailures},
		}}
		if diff := cmp.Diff(want, resp, protocmp.Transform()); diff != "" {
			t.Errorf("after %s (-want +got):\n%s", st.recipient, diff)
		}
	}
}

func TestAckKeepsStreamOpen(t *testing.T) {
	m := mock.New(mock.Options{})
	c, _ := startHost(t, map[string]pluginhost.Adapter{"mock": m}, pluginhost.Options{})
	s, _ := openStream(t, c)
	send(t, s, delivery(1, "mock", "ok"))
	recv(t, s)
	send(t, s, &pluginsv1.DeliverRequest{Kind: &pluginsv1.DeliverRequest_Ack{Ack: &pluginsv1.Ack{RequestIds: []uint64{1}}}})
	send(t, s, delivery(2, "mock", "ok"))
	if got := recv(t, s); got.GetRequestId() != 2 || got.GetOutcome() != pluginsv1.Outcome_OUTCOME_DELIVERED {
		t.Errorf("answer after ack = %v, want request 2 DELIVERED", got)
	}
}

func TestDuplicateInflightRequestIDEndsStream(t *testing.T) {
	m := mock.New(mock.Options{})
	c, _ := startHost(t, map[string]pluginhost.Adapter{"mock": m}, pluginhost.Options{})
	s, _ := openStream(t, c)
	send(t, s, delivery(1, "mock", "delay:5s"))
	send(t, s, delivery(1, "mock", "ok"))
	for {
		_, err := s.Recv()
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) {
			t.Fatal("stream ended OK, want InvalidArgument")
		}
		if !strings.Contains(err.Error(), "already in flight") {
			t.Errorf("err = %v, want InvalidArgument about the duplicate id", err)
		}
		return
	}
}

func TestParseChannels(t *testing.T) {
	tests := []struct {
		spec    string
		want    map[string]string
		wantErr bool
	}{
		{spec: "webhook=webhook,mock=mock", want: map[string]string{"webhook": "webhook", "mock": "mock"}},
		{spec: " a = mock , b=webhook,", want: map[string]string{"a": "mock", "b": "webhook"}},
		{spec: "", wantErr: true},
		{spec: "webhook", wantErr: true},
		{spec: "=mock", wantErr: true},
		{spec: "a=mock,a=webhook", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := pluginhost.ParseChannels(tt.spec)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); !tt.wantErr && diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
