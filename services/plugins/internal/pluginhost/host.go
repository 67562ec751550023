// Package pluginhost is the plugin host: it serves
// herald.plugins.v1.PluginHostService, maps channel names to adapters, runs
// each delivery as one adapter call under a deadline, and guarantees that
// nothing but a provider's confirmed acceptance is answered DELIVERED.
//
// It knows no provider; adapters live in their own packages and implement
// Adapter. It keeps no state a restart needs: channel health counters start
// from zero.
package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/heraldchat/herald/pkg/telemetry"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
)

const (
	// DefaultTimeout bounds a delivery that carries no deadline.
	DefaultTimeout = 10 * time.Second
	// DefaultAbandonAfter is how long the host still waits for an adapter
	// after the delivery's context ended before answering without it.
	DefaultAbandonAfter = 2 * time.Second
	// unhealthyAfter consecutive non-DELIVERED outcomes mark a channel
	// unhealthy in ListChannels.
	unhealthyAfter = 3

	tracerName = "github.com/heraldchat/herald/services/plugins/internal/pluginhost"
)

// Options tunes a Host. Zero values take the documented defaults.
type Options struct {
	// Logger receives one line per non-successful outcome; nil discards.
	Logger *slog.Logger
	// DefaultTimeout applies to deliveries with deadline_unix_nano 0.
	// Default 10s.
	DefaultTimeout time.Duration
	// AbandonAfter is how long after a delivery's deadline or cancellation
	// the host waits for an adapter that does not honour its context. After
	// it the host answers UNKNOWN (PLG_006) and leaves the adapter's
	// goroutine to finish on its own; its late result is discarded.
	// Default 2s.
	AbandonAfter time.Duration
	// Reporter receives the answers a queue did not acknowledge before its
	// stream ended; nil drops them (their leases then expire into the
	// tracker's recovery path).
	Reporter Reporter
	// Lifetime bounds every provider call: cancelling it cancels them all
	// (host shutdown). A broken stream does not cancel calls. Nil means
	// context.Background.
	Lifetime context.Context
	// UnhealthyAfter consecutive non-DELIVERED outcomes mark a channel
	// degraded in ListChannels; default 3.
	UnhealthyAfter uint32
	// Metrics receives provider-call latencies, error counts and channel
	// health; nil means metrics registered nowhere. A Metrics serves one
	// Host.
	Metrics *Metrics
}

// Host implements pluginsv1.PluginHostServiceServer. Its channel table is
// fixed at construction; it is safe for concurrent use.
type Host struct {
	pluginsv1.UnimplementedPluginHostServiceServer

	logger         *slog.Logger
	defaultTimeout time.Duration
	abandonAfter   time.Duration
	reporter       Reporter
	lifetime       context.Context
	channels       map[string]*channel
	names          []string // sorted channel names, for ListChannels
	metrics        *Metrics
	draining       chan struct{}
	drainOnce      sync.Once
	unhealthyAfter uint32
	reports        sync.WaitGroup
	calls          atomic.Int64 // provider calls under way
	workers        *workers     // run each call
}

// InFlight is the number of provider calls under way.
func (h *Host) InFlight() int64 { return h.calls.Load() }

// WaitReports waits until every report of unacknowledged answers has ended
// (each is bounded by the host's lifetime).
func (h *Host) WaitReports() { h.reports.Wait() }

// Drain makes every Deliver stream answer what it has in flight and end.
// Call it when shutdown starts.
func (h *Host) Drain() { h.drainOnce.Do(func() { close(h.draining) }) }

type channel struct {
	name    string
	adapter Adapter
	// failures counts consecutive non-DELIVERED outcomes.
	failures atomic.Uint32
}

// New returns a Host serving channels, a map from channel name to the
// adapter that delivers on it. One adapter may serve several channels.
func New(channels map[string]Adapter, opts Options) (*Host, error) {
	if len(channels) == 0 {
		return nil, errors.New("pluginhost: no channels configured")
	}
	h := &Host{
		logger:         opts.Logger,
		defaultTimeout: opts.DefaultTimeout,
		abandonAfter:   opts.AbandonAfter,
		reporter:       opts.Reporter,
		lifetime:       opts.Lifetime,
		channels:       make(map[string]*channel, len(channels)),
		draining:       make(chan struct{}),
		unhealthyAfter: opts.UnhealthyAfter,
		metrics:        opts.Metrics,
	}
	if h.metrics == nil {
		h.metrics, _ = NewMetrics(nil) // registers nothing, cannot fail
	}
	if h.lifetime == nil {
		h.lifetime = context.Background()
	}
	h.workers = newWorkers(h.lifetime, workerIdle)
	if h.logger == nil {
		h.logger = slog.New(slog.DiscardHandler)
	}
	if h.defaultTimeout <= 0 {
		h.defaultTimeout = DefaultTimeout
	}
	if h.unhealthyAfter == 0 {
		h.unhealthyAfter = unhealthyAfter
	}
	if h.abandonAfter <= 0 {
		h.abandonAfter = DefaultAbandonAfter
	}
	for name, a := range channels {
		if name == "" || a == nil {
			return nil, fmt.Errorf("pluginhost: channel %q has no name or no adapter", name)
		}
		h.channels[name] = &channel{name: name, adapter: a}
		h.names = append(h.names, name)
	}
	sort.Strings(h.names)
	if !h.metrics.host.CompareAndSwap(nil, h) {
		return nil, errors.New("pluginhost: Options.Metrics already serves another Host")
	}
	return h, nil
}

// ParseChannels parses a channel table "name=adapter,name=adapter" into a map
// from channel name to adapter name. Spaces around entries are ignored.
func ParseChannels(spec string) (map[string]string, error) {
	out := make(map[string]string)
	for entry := range strings.SplitSeq(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, adapter, ok := strings.Cut(entry, "=")
		name, adapter = strings.TrimSpace(name), strings.TrimSpace(adapter)
		if !ok || name == "" || adapter == "" {
			return nil, fmt.Errorf("channel entry %q: want name=adapter, e.g. \"webhook=webhook\"", entry)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("channel %q is listed twice", name)
		}
		out[name] = adapter
	}
	if len(out) == 0 {
		return nil, errors.New("no channels: want a list like \"webhook=webhook,mock=mock\"")
	}
	return out, nil
}

// ListChannels reports every configured channel, sorted by name. A channel
// is healthy while fewer than 3 consecutive outcomes were not DELIVERED.
// Idempotent; always OK.
func (h *Host) ListChannels(context.Context, *pluginsv1.ListChannelsRequest) (*pluginsv1.ListChannelsResponse, error) {
	resp := &pluginsv1.ListChannelsResponse{}
	for _, name := range h.names {
		ch := h.channels[name]
		f := ch.failures.Load()
		resp.Channels = append(resp.Channels, &pluginsv1.Channel{
			Name:                name,
			Adapter:             ch.adapter.Name(),
			Healthy:             f < h.unhealthyAfter,
			ConsecutiveFailures: f,
		})
	}
	return resp, nil
}

// Deliver serves one pipelined delivery stream. Each Delivery (and each
// Reconcile request, which asks the adapter whether its provider has the
// message and sends nothing) runs in its own goroutine under its deadline
// and is answered exactly once, in completion order. A Cancel cancels the
// named request's context; it is still answered. An Ack releases answers
// the queue has made durable.
//
// When the stream ends, cleanly or not, calls in flight are not cancelled:
// they finish (within their deadlines), and every answer the queue did not
// acknowledge, sent or not, goes to the Reporter, which records it in the
// tracker under the attempt's lease token. So a queue that dies between a
// provider's answer and its report causes no second provider call.
//
// Returns InvalidArgument for an empty request or a request_id that is
// already in flight on this stream.
func (h *Host) Deliver(stream grpc.BidiStreamingServer[pluginsv1.DeliverRequest, pluginsv1.DeliverResponse]) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex // guards inflight and unacked
		inflight = make(map[uint64]context.CancelFunc)
		unacked  = make(map[uint64]Orphan)
		sendMu   sync.Mutex // serialises stream.Send and guards sendErr
		sendErr  error
	)
	// On every return, wait for the calls still in flight, then hand what
	// the queue never acknowledged to the reporter.
	defer func() {
		wg.Wait()
		mu.Lock()
		orphans := make([]Orphan, 0, len(unacked))
		for _, o := range unacked {
			orphans = append(orphans, o)
		}
		mu.Unlock()
		// Apart from the handler: the stream ends now, so the queue learns at
		// once that its calls ended, even when the tracker is slow to answer.
		h.reports.Add(1)
		go func() {
			defer h.reports.Done()
			h.report(orphans)
		}()
	}()

	// start runs one delivery or reconcile request in its own goroutine.
	start := func(d *pluginsv1.Delivery, reconcile bool) error {
		if d == nil {
			return status.Error(codes.InvalidArgument, "delivery is empty")
		}
		id := d.GetRequestId()
		timeout := h.defaultTimeout
		if n := d.GetTimeoutNanos(); n > 0 {
			timeout = time.Duration(n)
		}
		// The call's context carries the stream's trace values but not
		// its cancellation: a dead queue must not cut a provider call
		// whose answer the host can still report.
		dctx, cancel := context.WithTimeout(detach(h.lifetime, stream.Context()), timeout)
		mu.Lock()
		if _, dup := inflight[id]; dup {
			mu.Unlock()
			cancel()
			return status.Errorf(codes.InvalidArgument, "request_id %d is already in flight on this stream", id)
		}
		inflight[id] = cancel
		mu.Unlock()

		wg.Add(1)
		h.calls.Add(1)
		h.workers.run(func() {
			defer wg.Done()
			var resp *pluginsv1.DeliverResponse
			if reconcile {
				resp = h.reconcile(dctx, d)
			} else {
				resp = h.deliver(dctx, d)
			}
			h.calls.Add(-1)
			cancel()
			mu.Lock()
			delete(inflight, id)
			unacked[id] = Orphan{Delivery: d, Answer: resp, Reconcile: reconcile}
			mu.Unlock()

			sendMu.Lock()
			defer sendMu.Unlock()
			if sendErr != nil {
				return
			}
			if err := stream.Send(resp); err != nil {
				sendErr = err
			}
		})
		return nil
	}

	// Recv runs apart so that the loop can also see the host draining.
	type received struct {
		req *pluginsv1.DeliverRequest
		err error
	}
	reqs := make(chan received)
	go func() {
		for {
			req, err := stream.Recv()
			select {
			case reqs <- received{req, err}:
			case <-stream.Context().Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()

	for {
		var r received
		select {
		case r = <-reqs:
		case <-stream.Context().Done():
			// The receiver may have seen this first and left without
			// passing the error on.
			return stream.Context().Err()
		case <-h.draining:
			// Shutting down: answer what is in flight, then end the stream so
			// the graceful stop need not wait for the queue to hang up.
			wg.Wait()
			return status.Error(codes.Unavailable, "plugin host is shutting down; every delivery in flight was answered")
		}
		req, err := r.req, r.err
		if errors.Is(err, io.EOF) {
			wg.Wait()
			sendMu.Lock()
			defer sendMu.Unlock()
			return sendErr
		}
		if err != nil {
			return err
		}
		switch k := req.GetKind().(type) {
		case *pluginsv1.DeliverRequest_Cancel:
			mu.Lock()
			if cancel, ok := inflight[k.Cancel.GetRequestId()]; ok {
				cancel()
			}
			mu.Unlock()
		case *pluginsv1.DeliverRequest_Ack:
			mu.Lock()
			for _, id := range k.Ack.GetRequestIds() {
				delete(unacked, id)
			}
			mu.Unlock()
		case *pluginsv1.DeliverRequest_Delivery:
			if err := start(k.Delivery, false); err != nil {
				return err
			}
		case *pluginsv1.DeliverRequest_Reconcile:
			if err := start(k.Reconcile, true); err != nil {
				return err
			}
		default:
			return status.Error(codes.InvalidArgument, "request has no delivery, reconcile, cancel or ack")
		}
	}
}

// detach returns a context with values from values and cancellation from
// lifetime only.
func detach(lifetime, values context.Context) context.Context {
	return valuesOnly{Context: lifetime, values: values}
}

type valuesOnly struct {
	context.Context
	values context.Context
}

func (v valuesOnly) Value(key any) any {
	if x := v.values.Value(key); x != nil {
		return x
	}
	return v.Context.Value(key)
}

func (h *Host) report(orphans []Orphan) {
	if len(orphans) == 0 {
		return
	}
	if h.reporter == nil {
		h.logger.Warn("answers not acknowledged by the queue are dropped: no tracker to report them to; their leases will expire",
			slog.Int("count", len(orphans)), slog.String("error_code", CodeOrphanDropped))
		return
	}
	h.logger.Info("reporting answers the queue did not acknowledge", slog.Int("count", len(orphans)))
	if err := h.reporter.Report(h.lifetime, orphans); err != nil {
		h.logger.Error("could not report unacknowledged answers; their leases will expire into recovery",
			slog.Int("count", len(orphans)), slog.String("error_code", CodeOrphanDropped), slog.Any("err", err))
	}
}

// deliver runs one delivery and returns its answer. It never returns
// DELIVERED without a provider message id.
func (h *Host) deliver(ctx context.Context, pd *pluginsv1.Delivery) *pluginsv1.DeliverResponse {
	ctx, span := startSpan(ctx, pd, "plugins.Deliver")
	defer span.End()

	d := toDelivery(pd)

	var res Result
	adapterName := ""
	ch, ok := h.channels[d.Channel]
	if !ok {
		res = Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_PERMANENT,
			ErrorCode:   CodeUnknownChannel,
			Description: fmt.Sprintf("channel %q is not configured on this plugin host", d.Channel),
		}
	} else {
		adapterName = ch.adapter.Name()
		start := time.Now()
		res = guard(call(h, ctx, d, ch.adapter.Name(), func(ctx context.Context) Result { return ch.adapter.Deliver(ctx, d) },
			Result{
				Outcome:     pluginsv1.Outcome_OUTCOME_UNKNOWN,
				ErrorCode:   CodeAdapterPanic,
				Description: "adapter panicked; the provider call may have happened",
			},
			Result{
				Outcome:     pluginsv1.Outcome_OUTCOME_UNKNOWN,
				ErrorCode:   CodeNoAnswer,
				Description: fmt.Sprintf("adapter did not return within %s after its deadline or cancellation", h.abandonAfter),
			}))
		h.metrics.callDuration.WithLabelValues(d.Channel, outcomeLabel(res.Outcome)).Observe(time.Since(start).Seconds())
		if res.Outcome == pluginsv1.Outcome_OUTCOME_DELIVERED {
			ch.failures.Store(0)
		} else {
			ch.failures.Add(1)
		}
	}

	span.SetAttributes(
		attribute.String("herald.outcome", res.Outcome.String()),
		attribute.String("herald.adapter", adapterName),
	)
	if res.Outcome != pluginsv1.Outcome_OUTCOME_DELIVERED {
		span.SetAttributes(attribute.String("herald.error_code", res.ErrorCode))
		span.SetStatus(otelcodes.Error, res.ErrorCode)
		h.logFailure(ctx, d, adapterName, res)
		h.metrics.errors.WithLabelValues(d.Channel, res.ErrorCode).Inc()
	}

	return &pluginsv1.DeliverResponse{
		RequestId:         pd.GetRequestId(),
		Outcome:           res.Outcome,
		ProviderMessageId: res.ProviderMessageID,
		RetryAfterMs:      res.RetryAfter.Milliseconds(),
		ErrorCode:         res.ErrorCode,
		ProviderCode:      res.ProviderCode,
		Description:       res.Description,
		Adapter:           adapterName,
	}
}

func toDelivery(pd *pluginsv1.Delivery) *Delivery {
	d := &Delivery{
		MessageID:    pd.GetMessageId(),
		Channel:      pd.GetChannel(),
		Recipient:    pd.GetRecipient(),
		Conversation: pd.GetConversation(),
		Text:         pd.GetText(),
		Sequence:     pd.GetSequence(),
		Attempt:      pd.GetAttempt(),
		Metadata:     pd.GetMetadata(),
	}
	if n := pd.GetAttemptStartedUnixNano(); n != 0 {
		d.AttemptStarted = time.Unix(0, n)
	}
	return d
}

// call runs an adapter method, answering panicked when it panics (for a
// delivery the provider call may have happened before it) and abandoned
// when it ignores its context for longer than abandonAfter.
func call[R any](h *Host, ctx context.Context, d *Delivery, adapter string, run func(context.Context) R, panicked, abandoned R) R {
	done := make(chan R, 1) // buffered: an abandoned adapter must not block
	go func() {
		defer func() {
			if p := recover(); p != nil {
				h.logger.ErrorContext(ctx, "adapter panicked",
					slog.String("message_id", d.MessageID),
					slog.String("channel", d.Channel),
					slog.String("adapter", adapter),
					slog.Any("panic", p),
					slog.String("stack", string(debug.Stack())))
				done <- panicked
			}
		}()
		done <- run(ctx)
	}()

	select {
	case res := <-done:
		return res
	case <-ctx.Done():
	}
	t := time.NewTimer(h.abandonAfter)
	defer t.Stop()
	select {
	case res := <-done:
		return res
	case <-t.C:
		return abandoned
	}
}

// guard is the silent-failure guard: success without a provider message id,
// and an outcome the protocol does not define, become UNKNOWN.
func guard(res Result) Result {
	switch res.Outcome {
	case pluginsv1.Outcome_OUTCOME_DELIVERED:
		if res.ProviderMessageID == "" {
			return Result{
				Outcome:     pluginsv1.Outcome_OUTCOME_UNKNOWN,
				ErrorCode:   CodeFalseSuccess,
				Description: "adapter reported delivery without a provider message id",
			}
		}
		return res
	case pluginsv1.Outcome_OUTCOME_RETRYABLE, pluginsv1.Outcome_OUTCOME_PERMANENT, pluginsv1.Outcome_OUTCOME_UNKNOWN:
		return res
	default:
		return Result{
			Outcome:     pluginsv1.Outcome_OUTCOME_UNKNOWN,
			ErrorCode:   CodeFalseSuccess,
			Description: fmt.Sprintf("adapter returned no valid outcome (%d)", int32(res.Outcome)),
		}
	}
}

// logFailure logs a non-DELIVERED outcome: ERROR when it is permanent or an
// adapter broke its contract, WARN otherwise. It never logs the recipient.
func (h *Host) logFailure(ctx context.Context, d *Delivery, adapter string, res Result) {
	level := slog.LevelWarn
	if res.Outcome == pluginsv1.Outcome_OUTCOME_PERMANENT ||
		res.ErrorCode == CodeFalseSuccess || res.ErrorCode == CodeAdapterPanic {
		level = slog.LevelError
	}
	h.logger.LogAttrs(ctx, level, "delivery not delivered",
		slog.String("message_id", d.MessageID),
		slog.String("channel", d.Channel),
		slog.String("adapter", adapter),
		slog.Uint64("attempt", uint64(d.Attempt)),
		slog.String("outcome", res.Outcome.String()),
		slog.String("error_code", res.ErrorCode),
		slog.String("provider_code", res.ProviderCode),
		slog.String("description", res.Description),
	)
}

// startSpan starts the delivery's span as a child of the message's trace
// (traceparent/tracestate), so every attempt joins the message's trace.
func startSpan(ctx context.Context, d *pluginsv1.Delivery, name string) (context.Context, trace.Span) {
	var opts []trace.SpanStartOption
	if d.GetTraceparent() != "" {
		ctx = propagation.TraceContext{}.Extract(ctx, &telemetry.TraceFields{Parent: d.GetTraceparent(), State: d.GetTracestate()})
	}
	if !trace.SpanContextFromContext(ctx).IsRemote() {
		// No message trace: do not hang the attempt under the stream's
		// long-lived span.
		opts = append(opts, trace.WithNewRoot())
	}
	ctx, span := otel.Tracer(tracerName).Start(ctx, name, opts...)
	// Only a recorded span keeps attributes; most attempts are not sampled.
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("herald.message_id", d.GetMessageId()),
			attribute.String("herald.channel", d.GetChannel()),
			attribute.Int64("herald.attempt", int64(d.GetAttempt())),
		)
	}
	return ctx, span
}
