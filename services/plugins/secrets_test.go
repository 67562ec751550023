package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/heraldchat/herald/pkg/grpcclient"
	"github.com/heraldchat/herald/pkg/grpcserver"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	"github.com/heraldchat/herald/services/plugins/internal/pluginhost"
	"github.com/heraldchat/herald/services/plugins/internal/providerfake"
)

const (
	telegramToken = "7000001:TELEGRAM-SECRET-token"
	slackToken    = "xoxb-SLACK-SECRET-token"
	webhookSecret = "whsec_V0VCSE9PSy1TRUNSRVQta2V5LWJ5dGVz" // "WEBHOOK-SECRET-key-bytes"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCredentialsAppearInNoOutput runs the host as run wires it, with every
// provider answer and failure kind, and searches everything it produced
// (logs, answers, spans, errors) for the tokens and the webhook secret.
func TestCredentialsAppearInNoOutput(t *testing.T) {
	secrets := []string{telegramToken, "TELEGRAM-SECRET", slackToken, "SLACK-SECRET", webhookSecret, "V0VCSE9PSy1TRUNSRVQ", "WEBHOOK-SECRET"}

	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	// The host traces with the global provider; the adapters are given tp.
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	defer otel.SetTracerProvider(prev)

	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	tg := providerfake.NewTelegram(telegramToken,
		providerfake.TelegramOK(1),
		providerfake.Response{Status: 403, Body: `{"ok":false,"error_code":403,"description":"Forbidden: bot was kicked from the group chat"}`},
		providerfake.Response{Status: 429, Body: `{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 2","parameters":{"retry_after":2}}`},
	)
	defer tg.Close()
	sl := providerfake.NewSlack(slackToken, providerfake.SlackOK("C1", "1.1"), providerfake.SlackError("channel_not_found"))
	defer sl.Close()
	wh := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadRequest) }))
	defer wh.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + lis.Addr().String()
	lis.Close()
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}))
	defer hang.Close()

	// Three adapter sets: the fakes, a refused port, a server that never
	// answers. Channels pick from each.
	channels := map[string]pluginhost.Adapter{}
	for suffix, base := range map[string]string{"": "", "-refused": refused, "-hang": hang.URL} {
		args := []string{"--telegram-token", telegramToken, "--webhook-secret", webhookSecret}
		if base == "" {
			args = append(args, "--telegram-base-url", tg.URL, "--slack-base-url", sl.URL)
		} else {
			args = append(args, "--telegram-base-url", base, "--slack-base-url", base)
		}
		cfg, err := parseFlags(args, func(k string) string {
			return map[string]string{"HERALD_SLACK_TOKEN": slackToken}[k]
		})
		if err != nil {
			t.Fatalf("parseFlags: %v", err)
		}
		adapters, closeAll, err := buildAdapters(cfg, logger, tp)
		defer closeAll()
		if err != nil {
			t.Fatalf("buildAdapters: %v", err)
		}
		channels["telegram"+suffix] = adapters["telegram"]
		channels["slack"+suffix] = adapters["slack"]
		channels["webhook"+suffix] = adapters["webhook"]
	}

	host, err := pluginhost.New(channels, pluginhost.Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := grpcserver.New(grpcserver.Config{Name: "plugins", Addr: "127.0.0.1:0", Logger: logger, GracePeriod: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	pluginsv1.RegisterPluginHostServiceServer(srv.GRPC(), host)
	sctx, stopServer := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(sctx) }()
	defer func() { stopServer(); <-served }()
	conn, err := grpcclient.Dial(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	stream, err := pluginsv1.NewPluginHostServiceClient(conn).Deliver(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type call struct{ channel, recipient string }
	calls := []call{
		{"telegram", "42"}, {"telegram", "42"}, {"telegram", "42"},
		{"slack", "C1"}, {"slack", "C1"},
		{"webhook", wh.URL + "/hook"},
		{"telegram-refused", "42"}, {"slack-refused", "C1"},
		{"telegram-hang", "42"}, {"slack-hang", "C1"},
	}
	for i, c := range calls {
		err := stream.Send(&pluginsv1.DeliverRequest{Kind: &pluginsv1.DeliverRequest_Delivery{Delivery: &pluginsv1.Delivery{
			RequestId: uint64(i + 1), MessageId: fmt.Sprintf("m%d", i+1), Channel: c.channel, Recipient: c.recipient,
			Text: "hi", Attempt: 1, TimeoutNanos: (300 * time.Millisecond).Nanoseconds(),
		}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	var outputs []string
	codes := map[string]bool{}
	for range calls {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		outputs = append(outputs, prototext.Format(resp))
		codes[resp.GetErrorCode()] = true
	}
	_ = stream.CloseSend()
	// Every kind of answer must have happened, or the search proves little.
	for _, c := range []string{"", "PLG_001", "PLG_005", "PLG_006"} {
		if !codes[c] {
			t.Errorf("no answer with error code %q; answers:\n%s", c, strings.Join(outputs, "\n"))
		}
	}
	if len(tg.Requests()) != 3 || len(sl.Requests()) != 2 {
		t.Errorf("fakes saw %d telegram and %d slack requests, want 3 and 2", len(tg.Requests()), len(sl.Requests()))
	}

	if err := tp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := rec.Ended()
	if len(spans) == 0 {
		t.Fatal("no spans recorded")
	}
	for _, s := range spans {
		var b strings.Builder
		fmt.Fprintf(&b, "span %q status %v", s.Name(), s.Status())
		for _, a := range s.Attributes() {
			fmt.Fprintf(&b, " %s=%s", a.Key, a.Value.Emit())
		}
		for _, e := range s.Events() {
			fmt.Fprintf(&b, " event %q", e.Name)
			for _, a := range e.Attributes {
				fmt.Fprintf(&b, " %s=%s", a.Key, a.Value.Emit())
			}
		}
		outputs = append(outputs, b.String())
	}
	outputs = append(outputs, logs.String())

	all := strings.Join(outputs, "\n")
	if !strings.Contains(all, "url.full=") {
		t.Errorf("no client span recorded url.full; the search would not cover it:\n%s", all)
	}
	for _, s := range secrets {
		if strings.Contains(all, s) {
			t.Errorf("output contains %q:\n%s", s, all)
		}
	}
}
