package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/heraldchat/herald/e2e/harness"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// The tests in this file drive the real binaries through the ways a
// delivery fails: a provider's permanent refusal, its rate limit, a
// webhook receiver's transient error, and the dead-letter list worked
// through the real CLI. The provider fakes are written here from the
// documented answers (the plugins' providerfake is internal to the plugin
// host and cannot be imported from e2e).

const (
	// testBotToken is the bot token the plugin host is given; it must
	// never appear in a log line, an answer or an event.
	testBotToken = "7654321098:AAE-e2eSecretBotToken_DoNotLeak42"
	// kickedDescription is telegram's description for a bot removed from
	// a group.
	kickedDescription = "Forbidden: bot was kicked from the group chat"
	telegramChat      = "-1001234567890"
)

// failureCluster is a running herald with its captured logs.
type failureCluster struct {
	c   *harness.Cluster
	gw  gatewayv1.GatewayServiceClient
	log *logBuffer
}

// startFailureCluster starts the four real services with the queue's short
// retry flags (as startCluster does) plus plugins args, and captures every
// service's output, at debug level so a leaked credential anywhere shows.
// The captured output is printed when the test fails.
func startFailureCluster(t *testing.T, pluginArgs ...string) *failureCluster {
	t.Helper()
	bin := binaries(t)
	logs := &logBuffer{}
	c, err := harness.New(bin, filepath.Join(t.TempDir(), "tracker"), logs)
	if err != nil {
		t.Fatal(err)
	}
	c.Args["queue"] = []string{"--deliver-timeout", "2s", "--lease", "6s", "--retry-initial", "100ms", "--retry-max-delay", "1s", "--drain-timeout", "5s"}
	c.Args["plugins"] = pluginArgs
	c.Env = []string{"HERALD_LOG_LEVEL=debug"}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			t.Logf("service logs:\n%s", logs.String())
		}
	})
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.Addr["gateway"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &failureCluster{c: c, gw: gatewayv1.NewGatewayServiceClient(conn), log: logs}
}

// logBuffer collects the services' output; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// logLine is one JSON log record, with the service prefix the harness adds.
type logLine struct {
	service string
	fields  map[string]any
	raw     string
}

// lines parses the captured output; lines that are not JSON records (a
// "listening on" banner) are kept with nil fields.
func (b *logBuffer) lines() []logLine {
	var out []logLine
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		svc, rest, _ := strings.Cut(sc.Text(), ": ")
		l := logLine{service: svc, raw: sc.Text()}
		var f map[string]any
		if json.Unmarshal([]byte(rest), &f) == nil {
			l.fields = f
		}
		out = append(out, l)
	}
	return out
}

// send sends one message and returns its id.
func (f *failureCluster) send(t *testing.T, req *gatewayv1.SendRequest) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := f.gw.Send(ctx, req)
	if err != nil {
		t.Fatalf("send %v: %v", req, err)
	}
	return resp.GetId()
}

// waitState polls GetMessage until the message is in state want, and fails
// the test if it is not within timeout.
func (f *failureCluster) waitState(t *testing.T, id string, want gatewayv1.DeliveryState, timeout time.Duration) *gatewayv1.GetMessageResponse {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := f.gw.GetMessage(ctx, &gatewayv1.GetMessageRequest{Id: id})
		cancel()
		if err == nil && resp.GetMessage().GetState() == want {
			return resp
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s: state %v (err %v) after %s, want %v; message: %v",
				id, resp.GetMessage().GetState(), err, timeout, want, resp.GetMessage())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// events reads the event log from sequence 0 through the gateway and stops
// when caught up: once no event has arrived for idle after the stream
// opened, or at the latest after limit.
func (f *failureCluster) events(t *testing.T) []*gatewayv1.Event {
	t.Helper()
	const idle, limit = 500 * time.Millisecond, 15 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	stream, err := f.gw.WatchEvents(ctx, &gatewayv1.WatchEventsRequest{AfterSequence: 0})
	if err != nil {
		t.Fatalf("watch events: %v", err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatalf("watch events: %v", err)
	}
	type recv struct {
		e   *gatewayv1.Event
		err error
	}
	results := make(chan recv)
	go func() {
		for {
			e, err := stream.Recv()
			select {
			case results <- recv{e, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var out []*gatewayv1.Event
	timer := time.NewTimer(idle)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			return out
		case <-ctx.Done():
			t.Fatalf("watch events: still streaming after %s (%d events)", limit, len(out))
		case r := <-results:
			if errors.Is(r.err, io.EOF) {
				return out
			}
			if r.err != nil {
				t.Fatalf("watch events after %d events: %v", len(out), r.err)
			}
			out = append(out, r.e)
			timer.Reset(idle)
		}
	}
}

// eventTypes returns the types of id's events, in order.
func eventTypes(evs []*gatewayv1.Event, id string) []string {
	var out []string
	for _, e := range evs {
		if e.GetMessageId() == id {
			out = append(out, e.GetType())
		}
	}
	return out
}

func containsType(evs []*gatewayv1.Event, id, typ string) bool {
	for _, e := range evs {
		if e.GetMessageId() == id && e.GetType() == typ {
			return true
		}
	}
	return false
}

// telegramFake is a Bot API that serves sendMessage for one token. Each
// request is answered by answer(n), n counting accepted requests from 1;
// answer may be swapped while it runs. Every request is recorded with its
// arrival time.
type telegramFake struct {
	*httptest.Server
	token string

	mu       sync.Mutex
	answer   func(n int) (status int, body string)
	requests []fakeRequest
}

type fakeRequest struct {
	at     time.Time
	path   string
	status int
	body   map[string]any
}

func newTelegramFake(t *testing.T, token string, answer func(n int) (int, string)) *telegramFake {
	f := &telegramFake{token: token, answer: answer}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *telegramFake) serve(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	b, _ := io.ReadAll(r.Body)
	var body map[string]any
	_ = json.Unmarshal(b, &body)
	rest, ok := strings.CutPrefix(r.URL.Path, "/bot")
	tok, method, _ := strings.Cut(rest, "/")
	f.mu.Lock()
	var status int
	var answer string
	switch {
	case !ok || tok != f.token:
		status, answer = telegramError(http.StatusUnauthorized, "Unauthorized")
	case method != "sendMessage" || r.Method != http.MethodPost:
		status, answer = telegramError(http.StatusNotFound, "Not Found")
	default:
		n := 1
		for _, q := range f.requests {
			if q.status != http.StatusUnauthorized && q.status != http.StatusNotFound {
				n++
			}
		}
		status, answer = f.answer(n)
	}
	f.requests = append(f.requests, fakeRequest{at: at, path: r.URL.Path, status: status, body: body})
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, answer)
}

func (f *telegramFake) setAnswer(answer func(n int) (int, string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer = answer
}

func (f *telegramFake) received() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.requests...)
}

// telegramOK is sendMessage's documented success answer.
func telegramOK(messageID int) (int, string) {
	return http.StatusOK, fmt.Sprintf(`{"ok":true,"result":{"message_id":%d,"from":{"id":7654321098,"is_bot":true,"first_name":"herald"},"chat":{"id":%s,"title":"e2e","type":"supergroup"},"date":%d,"text":"hello"}}`,
		messageID, telegramChat, time.Now().Unix())
}

// telegramError is a Bot API error answer; the HTTP status equals
// error_code, as the real API sends it.
func telegramError(code int, description string) (int, string) {
	b, _ := json.Marshal(map[string]any{"ok": false, "error_code": code, "description": description})
	return code, string(b)
}

// telegramKicked answers every request as telegram does once the bot was
// removed from the group.
func telegramKicked(int) (int, string) { return telegramError(http.StatusForbidden, kickedDescription) }

// startKickedTelegram starts a cluster whose telegram provider refuses
// every message with 403 "bot was kicked", sends one message and waits
// until it is a dead letter.
func startKickedTelegram(t *testing.T) (*failureCluster, *telegramFake, string, *gatewayv1.GetMessageResponse) {
	t.Helper()
	fake := newTelegramFake(t, testBotToken, telegramKicked)
	f := startFailureCluster(t, "--telegram-base-url", fake.URL, "--telegram-token", testBotToken)
	id := f.send(t, &gatewayv1.SendRequest{Channel: "telegram", Recipient: telegramChat, Conversation: "kicked", Text: "hello group"})
	got := f.waitState(t, id, gatewayv1.DeliveryState_DELIVERY_STATE_FAILED, 20*time.Second)
	return f, fake, id, got
}

// A provider's permanent refusal dead-letters the message after one
// attempt, with the provider's words in its last error, a failure event, a
// dead-letter event and an ERROR log line with a code; the bot token shows
// nowhere.
func TestTelegramKickedIsDeadLetteredAfterOneAttempt(t *testing.T) {
	f, fake, id, got := startKickedTelegram(t)
	m := got.GetMessage()
	if m.GetAttempts() != 1 {
		t.Errorf("attempts = %d, want 1", m.GetAttempts())
	}
	if !strings.Contains(m.GetLastError(), kickedDescription) {
		t.Errorf("last error = %q, want it to contain %q", m.GetLastError(), kickedDescription)
	}
	if m.GetLastErrorCode() == "" {
		t.Errorf("last error code is empty, want a stable code (last error %q)", m.GetLastError())
	}
	// FAILED is terminal: no second call may follow. Give a stray retry
	// the time the queue's retry policy would need to show up.
	time.Sleep(1500 * time.Millisecond)
	if reqs := fake.received(); len(reqs) != 1 {
		t.Errorf("telegram received %d requests, want exactly 1: %+v", len(reqs), reqs)
	} else if chat := reqs[0].body["chat_id"]; chat != telegramChat {
		t.Errorf("telegram request chat_id = %v, want %s", chat, telegramChat)
	}

	evs := f.events(t)
	for _, typ := range []string{"delivery.failed", "message.dead_lettered"} {
		if !containsType(evs, id, typ) {
			t.Errorf("no %s event for %s; its events: %v", typ, id, eventTypes(evs, id))
		}
	}

	// The ERROR line may trail the state change by a moment.
	var errLine *logLine
	deadline := time.Now().Add(5 * time.Second)
	for errLine == nil && time.Now().Before(deadline) {
		for _, l := range f.log.lines() {
			if l.fields["level"] == "ERROR" && l.fields["message_id"] == id {
				if code, _ := l.fields["error_code"].(string); code != "" {
					errLine = &l
					break
				}
			}
		}
		if errLine == nil {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if errLine == nil {
		t.Errorf("no ERROR log line with message_id %s and an error_code", id)
	} else {
		t.Logf("ERROR line: %s", errLine.raw)
	}

	// The token is in the request path the fake saw, and nowhere else.
	if reqs := fake.received(); len(reqs) > 0 && !strings.Contains(reqs[0].path, testBotToken) {
		t.Errorf("the fake saw path %q without the token; the leak check below would prove nothing", reqs[0].path)
	}
	if strings.Contains(f.log.String(), testBotToken) {
		for _, l := range f.log.lines() {
			if strings.Contains(l.raw, testBotToken) {
				t.Errorf("bot token in a log line: %s", l.raw)
			}
		}
	}
	if b, _ := protojson.Marshal(got); strings.Contains(string(b), testBotToken) {
		t.Errorf("bot token in the GetMessage answer: %s", b)
	}
	for _, e := range evs {
		if b, _ := protojson.Marshal(e); strings.Contains(string(b), testBotToken) {
			t.Errorf("bot token in an event: %s", b)
		}
	}
}

// Telegram's 429 with parameters.retry_after is honoured: each retry waits
// at least retry_after (longer than the queue's own --retry-max-delay of
// 1s), and the message is delivered once.
func TestTelegramRateLimitHonoursRetryAfter(t *testing.T) {
	fake := newTelegramFake(t, testBotToken, func(n int) (int, string) {
		if n <= 2 {
			b, _ := json.Marshal(map[string]any{"ok": false, "error_code": 429,
				"description": "Too Many Requests: retry after 2", "parameters": map[string]any{"retry_after": 2}})
			return http.StatusTooManyRequests, string(b)
		}
		return telegramOK(42)
	})
	f := startFailureCluster(t, "--telegram-base-url", fake.URL, "--telegram-token", testBotToken)
	id := f.send(t, &gatewayv1.SendRequest{Channel: "telegram", Recipient: telegramChat, Conversation: "ratelimited", Text: "hello"})
	got := f.waitState(t, id, gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, 30*time.Second)
	m := got.GetMessage()
	if m.GetAttempts() != 3 {
		t.Errorf("attempts = %d, want 3", m.GetAttempts())
	}
	if m.GetProviderMessageId() != "42" {
		t.Errorf("provider message id = %q, want 42", m.GetProviderMessageId())
	}
	time.Sleep(500 * time.Millisecond) // let a stray duplicate show up
	reqs := fake.received()
	var statuses []int
	for _, r := range reqs {
		statuses = append(statuses, r.status)
	}
	if want := []int{429, 429, 200}; fmt.Sprint(statuses) != fmt.Sprint(want) {
		t.Fatalf("telegram answered %v, want %v (delivered exactly once, after two rate limits)", statuses, want)
	}
	for i := 1; i < len(reqs); i++ {
		gap := reqs[i].at.Sub(reqs[i-1].at)
		t.Logf("gap before request %d: %s", i+1, gap)
		if gap < 1900*time.Millisecond {
			t.Errorf("request %d came %s after the previous one, want at least retry_after=2s", i+1, gap)
		}
	}
}

// webhookReceiver is a webhook endpoint that answers by a script per
// message id and records every call it received.
type webhookReceiver struct {
	*httptest.Server
	// status answers c, the n-th call (from 1) for its webhook-id.
	status func(c webhookCall, n int) int

	mu    sync.Mutex
	calls []webhookCall
}

type webhookCall struct {
	at        time.Time
	id        string
	timestamp string
	signature string
	body      []byte
	status    int
}

func newWebhookReceiver(t *testing.T, status func(c webhookCall, n int) int) *webhookReceiver {
	w := &webhookReceiver{status: status}
	w.Server = httptest.NewServer(http.HandlerFunc(w.serve))
	t.Cleanup(w.Close)
	return w
}

func (wr *webhookReceiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	c := webhookCall{at: time.Now(), id: r.Header.Get("webhook-id"), timestamp: r.Header.Get("webhook-timestamp"),
		signature: r.Header.Get("webhook-signature"), body: body}
	wr.mu.Lock()
	n := 1
	for _, p := range wr.calls {
		if p.id == c.id {
			n++
		}
	}
	c.status = wr.status(c, n)
	wr.calls = append(wr.calls, c)
	wr.mu.Unlock()
	w.WriteHeader(c.status)
}

func (wr *webhookReceiver) received() []webhookCall {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	return append([]webhookCall(nil), wr.calls...)
}

// A receiver's 500 is retried and its 200 then delivers: two calls, one
// failed and one accepted.
func TestWebhookServerErrorIsRetried(t *testing.T) {
	recv := newWebhookReceiver(t, func(_ webhookCall, n int) int {
		if n == 1 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	f := startFailureCluster(t)
	id := f.send(t, &gatewayv1.SendRequest{Channel: "webhook", Recipient: recv.URL + "/hook", Conversation: "c500", Text: "hello"})
	got := f.waitState(t, id, gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, 20*time.Second)
	if a := got.GetMessage().GetAttempts(); a != 2 {
		t.Errorf("attempts = %d, want 2", a)
	}
	time.Sleep(500 * time.Millisecond) // let a stray duplicate show up
	var statuses []int
	for _, c := range recv.received() {
		if c.id != id {
			t.Errorf("a call with webhook-id %q, want %s", c.id, id)
		}
		statuses = append(statuses, c.status)
	}
	if want := []int{500, 200}; fmt.Sprint(statuses) != fmt.Sprint(want) {
		t.Errorf("receiver answered %v, want %v", statuses, want)
	}
	if !containsType(got.GetTimeline(), id, "delivery.retry") {
		t.Errorf("timeline has no delivery.retry: %v", eventTypes(got.GetTimeline(), id))
	}
}

// verifyStandardWebhook checks a call the way a Standard Webhooks receiver
// does, written here independently of the plugin host's signer: the
// secret is "whsec_" + base64(key); the signature header holds
// space-separated "v1,<base64 HMAC-SHA256(key, id.timestamp.body)>"; the
// timestamp is within 5 minutes of now.
func verifyStandardWebhook(secret string, c webhookCall, now time.Time) error {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return fmt.Errorf("decode secret: %w", err)
	}
	if c.id == "" || c.timestamp == "" || c.signature == "" {
		return fmt.Errorf("missing header: id=%q timestamp=%q signature=%q", c.id, c.timestamp, c.signature)
	}
	ts, err := strconv.ParseInt(c.timestamp, 10, 64)
	if err != nil {
		return fmt.Errorf("webhook-timestamp %q is not unix seconds", c.timestamp)
	}
	if d := now.Sub(time.Unix(ts, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return fmt.Errorf("webhook-timestamp %q is %s away from now", c.timestamp, d)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(c.id + "." + c.timestamp + "." + string(c.body)))
	want := mac.Sum(nil)
	for _, sig := range strings.Fields(c.signature) {
		version, value, ok := strings.Cut(sig, ",")
		if !ok || version != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(value)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return fmt.Errorf("no v1 signature in %q matches", c.signature)
}

// Every webhook call, first attempts and retries alike, carries a Standard
// Webhooks signature that an independent verifier accepts, and its
// webhook-id is the message id.
func TestWebhookSignatureVerifies(t *testing.T) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	// Messages with metadata retry=1 fail their first call, so retries
	// are signed too.
	recv := newWebhookReceiver(t, func(c webhookCall, n int) int {
		var body struct {
			Metadata map[string]string `json:"metadata"`
		}
		_ = json.Unmarshal(c.body, &body)
		if n == 1 && body.Metadata["retry"] == "1" {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	f := startFailureCluster(t, "--webhook-secret", secret)
	const count = 6
	ids := map[string]bool{}
	for i := range count {
		req := &gatewayv1.SendRequest{Channel: "webhook", Recipient: recv.URL + "/hook", Conversation: fmt.Sprint("signed-", i),
			Text: fmt.Sprintf("signed message %d with \"quotes\", ünïcödé and a\nnewline", i), Metadata: map[string]string{"n": fmt.Sprint(i)}}
		if i%3 == 0 {
			req.Metadata["retry"] = "1"
		}
		ids[f.send(t, req)] = true
	}
	for id := range ids {
		f.waitState(t, id, gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, 20*time.Second)
	}
	calls := recv.received()
	if want := count + (count+2)/3; len(calls) != want {
		t.Errorf("receiver got %d calls, want %d", len(calls), want)
	}
	for _, c := range calls {
		if !ids[c.id] {
			t.Errorf("webhook-id %q is not the id of a message sent", c.id)
		}
		if err := verifyStandardWebhook(secret, c, time.Now()); err != nil {
			t.Errorf("call for %s (answered %d) does not verify: %v", c.id, c.status, err)
		}
		var body struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(c.body, &body); err != nil || body.ID != c.id {
			t.Errorf("body id %q (err %v), want the webhook-id %s", body.ID, err, c.id)
		}
	}
	// A wrong key must not verify: the check above proves something.
	if len(calls) > 0 {
		other := "whsec_" + base64.StdEncoding.EncodeToString([]byte("not the key at all"))
		if verifyStandardWebhook(other, calls[0], time.Now()) == nil {
			t.Errorf("a call verified with the wrong key")
		}
	}
}

// herald runs the real CLI against the cluster's gateway.
func (f *failureCluster) herald(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args = append([]string{"--gateway", f.c.Addr["gateway"]}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(f.c.Bin, "herald"), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("herald %s:\n%s", strings.Join(args, " "), out.String())
	return out.String(), err
}

// A dead letter is listed by `herald dlq list` and, once the provider
// accepts again, `herald dlq redrive` delivers it while keeping its earlier
// timeline.
func TestDeadLetterRedriveThroughCLI(t *testing.T) {
	f, fake, id, failed := startKickedTelegram(t)
	if !containsType(failed.GetTimeline(), id, "delivery.failed") {
		t.Fatalf("dead letter's timeline has no delivery.failed: %v", eventTypes(failed.GetTimeline(), id))
	}

	out, err := f.herald(t, "dlq", "list")
	if err != nil {
		t.Fatalf("herald dlq list: %v\n%s", err, out)
	}
	if !strings.Contains(out, id) {
		t.Errorf("herald dlq list does not list %s:\n%s", id, out)
	}
	out, err = f.herald(t, "--output", "json", "dlq", "list")
	if err != nil {
		t.Fatalf("herald dlq list --output json: %v\n%s", err, out)
	}
	var listed gatewayv1.ListDeadLettersResponse
	if err := protojson.Unmarshal([]byte(out), &listed); err != nil {
		t.Errorf("herald dlq list --output json is not a ListDeadLettersResponse: %v\n%s", err, out)
	} else if len(listed.GetMessages()) != 1 || listed.GetMessages()[0].GetId() != id {
		t.Errorf("herald dlq list --output json lists %v, want only %s", listed.GetMessages(), id)
	}

	// The bot was added back to the group.
	fake.setAnswer(func(n int) (int, string) { return telegramOK(100 + n) })
	out, err = f.herald(t, "dlq", "redrive", id)
	if err != nil {
		t.Fatalf("herald dlq redrive %s: %v\n%s", id, err, out)
	}
	if !strings.Contains(out, "redriven id="+id) {
		t.Errorf("herald dlq redrive output does not report %s redriven:\n%s", id, out)
	}

	got := f.waitState(t, id, gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, 20*time.Second)
	types := eventTypes(got.GetTimeline(), id)
	idx := func(typ string) int {
		for i, ty := range types {
			if ty == typ {
				return i
			}
		}
		return -1
	}
	failedAt, redrivenAt, succeededAt := idx("delivery.failed"), idx("message.redriven"), idx("delivery.succeeded")
	if failedAt < 0 || redrivenAt < 0 || succeededAt < 0 || !(failedAt < redrivenAt && redrivenAt < succeededAt) {
		t.Errorf("timeline %v, want delivery.failed, then message.redriven, then delivery.succeeded", types)
	}
	// The first failure is the same event as before the redrive.
	var before, after *gatewayv1.Event
	for _, e := range failed.GetTimeline() {
		if e.GetType() == "delivery.failed" {
			before = e
		}
	}
	for _, e := range got.GetTimeline() {
		if e.GetType() == "delivery.failed" && after == nil {
			after = e
		}
	}
	if before == nil || after == nil || before.GetSequence() != after.GetSequence() {
		t.Errorf("delivery.failed after redrive = %v, want the earlier %v", after, before)
	}
	if reqs := fake.received(); len(reqs) != 2 {
		t.Errorf("telegram received %d requests, want 2 (the refused one and the redriven one)", len(reqs))
	}

	out, err = f.herald(t, "dlq", "list")
	if err != nil {
		t.Fatalf("herald dlq list: %v\n%s", err, out)
	}
	if strings.Contains(out, id) {
		t.Errorf("herald dlq list still lists %s after it was delivered:\n%s", id, out)
	}
}
