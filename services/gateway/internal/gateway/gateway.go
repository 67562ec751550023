// Package gateway implements herald's public API, GatewayService, on top of
// the tracker. It validates requests, assigns message ids, attaches the
// caller's trace context to each message and translates tracker errors into
// answers a backend can act on.
//
// The gateway holds no state of its own: every answer comes from the tracker,
// and Send answers OK only after the tracker's Accept did. The package does
// not listen, dial or own connections; the caller (services/gateway/main.go)
// does.
package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/heraldchat/herald/pkg/telemetry"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// Peer is a service whose health Status reports.
type Peer struct {
	// Name is how Status lists the service: tracker, queue, plugins.
	Name string
	// Address is shown to the operator; it is not dialled here.
	Address string
	// Health checks the service's overall health (service name "").
	Health healthpb.HealthClient
}

// Config holds a Service's dependencies. Tracker is required.
type Config struct {
	// Tracker is the tracker's API; the gateway's only source of truth.
	Tracker trackerv1.TrackerServiceClient
	// Plugins answers ListChannels; nil makes it UNAVAILABLE.
	Plugins pluginsv1.PluginHostServiceClient
	// Peers are checked by Status, in this order, after the gateway itself.
	Peers []Peer
	// Address is the gateway's own listening address, shown by Status.
	Address string
	// Logger receives internal error details. Nil discards them.
	Logger *slog.Logger
	// HealthTimeout bounds each peer's health check in Status; default 1s.
	HealthTimeout time.Duration
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// NewID returns a new message id; default a ULID from ulid.Make, which
	// is monotonic within a millisecond and safe for concurrent use.
	NewID func() string
	// Metrics receives Send's counts and latencies; nil means metrics that
	// are registered nowhere.
	Metrics *Metrics
}

// Service implements gatewayv1.GatewayServiceServer. Its methods are safe
// for concurrent use and take no lock on the Send path.
type Service struct {
	gatewayv1.UnimplementedGatewayServiceServer

	tracker       trackerv1.TrackerServiceClient
	plugins       pluginsv1.PluginHostServiceClient
	peers         []Peer
	address       string
	log           *slog.Logger
	healthTimeout time.Duration
	now           func() time.Time
	newID         func() string
	metrics       *Metrics
	accepter      *accepter

	drainOnce sync.Once
	drained   chan struct{} // closed by Drain
}

var _ gatewayv1.GatewayServiceServer = (*Service)(nil)

// New returns a Service for cfg.
func New(cfg Config) (*Service, error) {
	if cfg.Tracker == nil {
		return nil, errors.New("gateway: Config.Tracker is required")
	}
	s := &Service{
		tracker:       cfg.Tracker,
		plugins:       cfg.Plugins,
		peers:         cfg.Peers,
		address:       cfg.Address,
		log:           cfg.Logger,
		healthTimeout: cfg.HealthTimeout,
		now:           cfg.Now,
		newID:         cfg.NewID,
		metrics:       cfg.Metrics,
		drained:       make(chan struct{}),
	}
	if s.metrics == nil {
		s.metrics, _ = NewMetrics(nil) // registers nothing, cannot fail
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.healthTimeout <= 0 {
		s.healthTimeout = time.Second
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.newID == nil {
		s.newID = func() string { return ulid.Make().String() }
	}
	s.accepter = newAccepter(s.tracker, s.log)
	return s, nil
}

// Drain makes the Service refuse every new call with UNAVAILABLE. Calls
// already running finish normally. It cannot be undone: a draining gateway is
// on its way out.
func (s *Service) Drain() { s.drainOnce.Do(func() { close(s.drained) }) }

// Close ends the gateway's stream to the tracker. Call it after the gRPC
// server has stopped: Sends still running would fail.
func (s *Service) Close() { s.accepter.close() }

// Draining reports whether Drain was called.
func (s *Service) Draining() bool {
	select {
	case <-s.drained:
		return true
	default:
		return false
	}
}

// admit refuses a new call once the gateway is draining.
func (s *Service) admit() error {
	if s.Draining() {
		return status.Error(codes.Unavailable, msgDraining)
	}
	return nil
}

// Send validates req, gives the message an id and the caller's trace
// context, and returns once the tracker has made it durable.
func (s *Service) Send(ctx context.Context, req *gatewayv1.SendRequest) (resp *gatewayv1.SendResponse, err error) {
	start := time.Now()
	defer func() { s.metrics.observeSend(start, req.GetChannel(), resp, err) }()
	if err := s.admit(); err != nil {
		return nil, err
	}
	areq, err := s.acceptRequest(ctx, req)
	if err != nil {
		return nil, err
	}
	acc, err := s.accepter.Accept(ctx, areq)
	return s.sendResponse(ctx, acc, err)
}

// acceptRequest validates req and turns it into the tracker's request: a new
// message id, and the trace context of ctx.
func (s *Service) acceptRequest(ctx context.Context, req *gatewayv1.SendRequest) (*trackerv1.AcceptRequest, error) {
	v, err := validateSend(req)
	if err != nil {
		return nil, err
	}
	// The trace context travels inside the stored message so that the
	// queue's asynchronous hop and every later attempt join this trace.
	traceparent, tracestate := telemetry.InjectTrace(ctx)

	msg := &storev1.Message{
		Id:             s.newID(),
		Tenant:         v.tenant,
		Channel:        req.GetChannel(),
		Recipient:      req.GetRecipient(),
		Conversation:   v.conversation,
		Text:           req.GetText(),
		Metadata:       req.GetMetadata(),
		IdempotencyKey: req.GetIdempotencyKey(),
		Traceparent:    traceparent,
		Tracestate:     tracestate,
	}
	// The tracker turns the time to live into an expiry on its own clock,
	// the one that decides expiry.
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	return &trackerv1.AcceptRequest{Message: msg, TtlNanos: ttl.Nanoseconds()}, nil
}

// sendResponse is Send's answer to the tracker's answer (acc, err).
func (s *Service) sendResponse(ctx context.Context, acc *trackerv1.AcceptResponse, err error) (*gatewayv1.SendResponse, error) {
	if err != nil {
		return nil, trackerError(ctx, s.log, opSend, err)
	}
	if acc.GetMessage().GetId() == "" {
		// Never answer OK without the tracker's confirmation of what it stored.
		return nil, trackerError(ctx, s.log, opSend, status.Error(codes.Internal, "tracker accepted without returning the message"))
	}
	return &gatewayv1.SendResponse{
		Id:        acc.GetMessage().GetId(),
		State:     gatewayv1.DeliveryState(acc.GetDelivery().GetState()),
		Sequence:  acc.GetMessage().GetSequence(),
		Duplicate: acc.GetDuplicate(),
	}, nil
}

// GetMessage returns a message's state and timeline.
func (s *Service) GetMessage(ctx context.Context, req *gatewayv1.GetMessageRequest) (*gatewayv1.GetMessageResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	if req.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "id: required: pass the id that Send returned")
	}
	resp, err := s.tracker.GetMessage(ctx, &trackerv1.GetMessageRequest{Id: req.GetId()})
	if err != nil {
		return nil, trackerError(ctx, s.log, "GetMessage", err)
	}
	out := &gatewayv1.GetMessageResponse{
		Message:  toMessage(resp.GetMessage(), resp.GetDelivery()),
		Timeline: make([]*gatewayv1.Event, 0, len(resp.GetTimeline())),
	}
	for _, e := range resp.GetTimeline() {
		out.Timeline = append(out.Timeline, toEvent(e))
	}
	return out, nil
}

// History lists a conversation's or a recipient's messages, newest first.
func (s *Service) History(ctx context.Context, req *gatewayv1.HistoryRequest) (*gatewayv1.HistoryResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	tenant, limit, err := validateHistory(req)
	if err != nil {
		return nil, err
	}
	resp, err := s.tracker.History(ctx, &trackerv1.HistoryRequest{
		Tenant:       tenant,
		Conversation: req.GetConversation(),
		Channel:      req.GetChannel(),
		Recipient:    req.GetRecipient(),
		Limit:        limit,
	})
	if err != nil {
		return nil, trackerError(ctx, s.log, "History", err)
	}
	out := &gatewayv1.HistoryResponse{Messages: make([]*gatewayv1.Message, 0, len(resp.GetMessages()))}
	for _, m := range resp.GetMessages() {
		out.Messages = append(out.Messages, toMessage(m.GetMessage(), m.GetDelivery()))
	}
	return out, nil
}

// WatchEvents proxies the tracker's event stream until the caller leaves or
// the tracker stream ends.
func (s *Service) WatchEvents(req *gatewayv1.WatchEventsRequest, stream grpc.ServerStreamingServer[gatewayv1.Event]) error {
	if err := s.admit(); err != nil {
		return err
	}
	ctx := stream.Context()
	if ch := req.GetChannel(); ch != "" && !validName(ch, maxChannelLen, isChannelByte) {
		var v violations
		v.add("channel", "%q is not a channel name: use 1 to %d characters of a-z, 0-9, '_' and '-'", truncate(ch), maxChannelLen)
		return v.err()
	}
	src, err := s.tracker.WatchEvents(ctx, &trackerv1.WatchEventsRequest{
		AfterSequence: req.GetAfterSequence(),
		Type:          req.GetType(),
		Channel:       req.GetChannel(),
	})
	if err != nil {
		return trackerError(ctx, s.log, "WatchEvents", err)
	}
	// Headers tell the caller the stream is open, so a client that reads
	// "what exists so far" can start its idle timer from here.
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	for {
		e, err := src.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			return trackerError(ctx, s.log, "WatchEvents", err)
		}
		if err := stream.Send(toEvent(e)); err != nil {
			return err
		}
	}
}

// Status reports the health of the gateway and its peers and the tracker's
// counts. A peer that does not answer is reported, not returned as an error.
func (s *Service) Status(ctx context.Context, _ *gatewayv1.StatusRequest) (*gatewayv1.StatusResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	services := make([]*gatewayv1.ServiceStatus, 1+len(s.peers))
	services[0] = &gatewayv1.ServiceStatus{Name: "gateway", Address: s.address, Health: "SERVING"}

	var (
		wg       sync.WaitGroup
		stats    *trackerv1.StatsResponse
		statsErr error
	)
	for i, p := range s.peers {
		wg.Go(func() { services[i+1] = s.checkPeer(ctx, p) })
	}
	wg.Go(func() {
		sctx, cancel := context.WithTimeout(ctx, s.healthTimeout)
		defer cancel()
		stats, statsErr = s.tracker.Stats(sctx, &trackerv1.StatsRequest{})
	})
	wg.Wait()

	out := &gatewayv1.StatusResponse{Services: services, Counts: map[string]int64{}}
	if statsErr != nil {
		s.log.WarnContext(ctx, "tracker stats unavailable", "error", statsErr)
		for _, svc := range services {
			if svc.GetName() == "tracker" && svc.GetDetail() == "" {
				svc.Detail = "stats unavailable: " + status.Convert(statsErr).Message()
			}
		}
		return out, nil
	}
	for k, n := range stats.GetCounts() {
		out.Counts[stateName(k)] = n
	}
	out.RecoveryIndexSize = stats.GetRecoveryIndexSize()
	return out, nil
}

// checkPeer asks one peer for its health within the health timeout.
func (s *Service) checkPeer(ctx context.Context, p Peer) *gatewayv1.ServiceStatus {
	out := &gatewayv1.ServiceStatus{Name: p.Name, Address: p.Address}
	if p.Health == nil {
		out.Health, out.Detail = "UNREACHABLE", "no address configured"
		return out
	}
	ctx, cancel := context.WithTimeout(ctx, s.healthTimeout)
	defer cancel()
	resp, err := p.Health.Check(ctx, &healthpb.HealthCheckRequest{Service: ""})
	if err != nil {
		out.Health, out.Detail = "UNREACHABLE", status.Convert(err).Message()
		return out
	}
	out.Health = resp.GetStatus().String()
	return out
}
