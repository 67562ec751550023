// Package tracker serves the tracker's gRPC API over the store: it maps
// requests to store calls, long-polls leases, streams the event log and
// expires leases in the background. It holds no delivery state of its own.
package tracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/tracker/internal/store"
)

// Limits on one call.
const (
	maxLeaseBatch    = 1024
	maxLeaseWait     = 30 * time.Second
	maxCompleteBatch = 4096
	maxHistory       = 1000
	eventPage        = 256
)

// Service implements trackerv1.TrackerServiceServer.
type Service struct {
	trackerv1.UnimplementedTrackerServiceServer

	store     *store.Store
	log       *slog.Logger
	tracer    trace.Tracer
	now       func() time.Time
	backupDir string
	// stopping is closed when shutdown starts: long polls and event
	// streams end at once instead of holding the graceful stop.
	stopping chan struct{}
	stopOnce sync.Once
	// closed is closed by Close, after the drain: outcome streams end.
	closed    chan struct{}
	closeOnce sync.Once
	// lastReport is when the last outcome arrived (unix nanoseconds); the
	// drain waits until outcomes stop arriving.
	lastReport atomic.Int64
}

// Drain runs after Stop: new messages and leases are refused, but outcomes
// of deliveries already under way are still recorded, until none has
// arrived for quiet, or max has passed. The tracker stops last, so that a
// queue and a plugin host stopping at the same time can report what they
// did and nothing is re-sent after the restart.
func (s *Service) Drain(quiet, max time.Duration) {
	start := time.Now()
	s.lastReport.Store(start.UnixNano())
	for time.Since(start) < max {
		if time.Since(time.Unix(0, s.lastReport.Load())) >= quiet {
			return
		}
		time.Sleep(quiet / 10)
	}
	s.log.Warn("drain timeout: outcomes were still arriving; their leases expire into recovery", "error_code", "TRK_007")
}

// refuse answers UNAVAILABLE once shutdown has started.
func (s *Service) refuse() error {
	if isClosed(s.stopping) {
		return status.Error(codes.Unavailable, "tracker is shutting down; nothing was written: retry after it restarts")
	}
	return nil
}

// Stop ends open long polls and event streams; call it when shutdown
// starts, before the gRPC server's graceful stop.
func (s *Service) Stop() { s.stopOnce.Do(func() { close(s.stopping) }) }

// Close ends the outcome streams (CompleteStream), which stay open through
// the drain; call it after Stop and Drain, before the gRPC server's
// graceful stop, which would otherwise wait on them.
func (s *Service) Close() {
	s.Stop()
	s.closeOnce.Do(func() { close(s.closed) })
}

// New returns a Service over st. backupDir is where Backup writes
// checkpoints ("" disables Backup). The caller owns st and closes it after
// the gRPC server has stopped.
func New(st *store.Store, log *slog.Logger, now func() time.Time, backupDir string) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{store: st, log: log, now: now, backupDir: backupDir, stopping: make(chan struct{}), closed: make(chan struct{}), tracer: otel.Tracer(tracerName)}
}

// Accept implements trackerv1.TrackerServiceServer.
func (s *Service) Accept(ctx context.Context, req *trackerv1.AcceptRequest) (*trackerv1.AcceptResponse, error) {
	// One path for both: a unary Accept is a stream request of one item.
	r := s.acceptBatch([]*trackerv1.AcceptItem{{Request: req}}).GetResults()[0]
	if r.GetResponse() == nil {
		return nil, status.Error(codes.Code(r.GetCode()), r.GetError())
	}
	return r.GetResponse(), nil
}

// Lease implements trackerv1.TrackerServiceServer. It answers as soon as
// something is leased, or empty when wait_ms passes with nothing due.
func (s *Service) Lease(ctx context.Context, req *trackerv1.LeaseRequest) (*trackerv1.LeaseResponse, error) {
	if isClosed(s.stopping) {
		return &trackerv1.LeaseResponse{}, nil // no new work while draining
	}
	batch := int(req.GetMax())
	if batch <= 0 || batch > maxLeaseBatch {
		batch = maxLeaseBatch
	}
	leaseFor := time.Duration(req.GetLeaseDurationMs()) * time.Millisecond
	if leaseFor <= 0 {
		return nil, status.Error(codes.InvalidArgument, "lease_duration_ms must be positive")
	}
	wait := min(time.Duration(req.GetWaitMs())*time.Millisecond, maxLeaseWait)
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	for {
		next, ok, changed := s.store.DueSignal(req.GetReconcile())
		leased, err := s.store.Lease(req.GetWorker(), batch, leaseFor, req.GetChannelSlots(), req.GetReconcile())
		if err != nil {
			return nil, s.toStatus("lease", err)
		}
		if len(leased) > 0 {
			out := &trackerv1.LeaseResponse{Leases: make([]*trackerv1.Lease, len(leased))}
			for i, l := range leased {
				out.Leases[i] = &trackerv1.Lease{Message: l.Message, Delivery: l.Delivery}
			}
			return out, nil
		}
		// Work that is due yet not leased is held back by the caller's
		// channel slots, which do not change during this call: answer now,
		// so that the caller asks again when its slots free, instead of
		// waiting out wait_ms with free slots.
		if ok && !next.After(s.now()) {
			return &trackerv1.LeaseResponse{}, nil
		}
		// Nothing leasable now: wait for new due work, the earliest future
		// due time, the caller's deadline, or wait_ms.
		var dueTimer <-chan time.Time
		var t *time.Timer
		if ok {
			t = time.NewTimer(max(next.Sub(s.now()), time.Millisecond))
			dueTimer = t.C
		}
		select {
		case <-ctx.Done():
			return &trackerv1.LeaseResponse{}, nil
		case <-s.stopping:
			return &trackerv1.LeaseResponse{}, nil
		case <-timeout.C:
			return &trackerv1.LeaseResponse{}, nil
		case <-changed:
		case <-dueTimer:
		}
		if t != nil {
			t.Stop()
		}
	}
}

// Complete implements trackerv1.TrackerServiceServer.
func (s *Service) Complete(ctx context.Context, req *trackerv1.CompleteRequest) (*trackerv1.CompleteResponse, error) {
	s.lastReport.Store(time.Now().UnixNano())
	if len(req.GetOutcomes()) > maxCompleteBatch {
		return nil, status.Errorf(codes.InvalidArgument, "%d outcomes in one call; send at most %d", len(req.GetOutcomes()), maxCompleteBatch)
	}
	outs := make([]store.Outcome, len(req.GetOutcomes()))
	now := s.now()
	for i, o := range req.GetOutcomes() {
		r, err := result(o.GetResult())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "outcome %d (%s): %v", i, o.GetMessageId(), err)
		}
		outs[i] = store.Outcome{
			MessageID:         o.GetMessageId(),
			LeaseToken:        o.GetLeaseToken(),
			Result:            r,
			ProviderMessageID: o.GetProviderMessageId(),
			RetryAt:           now.Add(time.Duration(o.GetRetryAfterNanos())),
			ErrorCode:         o.GetErrorCode(),
			ErrorDetail:       o.GetErrorDetail(),
			TraceID:           o.GetTraceId(),
			SpanID:            o.GetSpanId(),
			NotAttempted:      o.GetNotAttempted(),
		}
	}
	start := time.Now()
	applied, err := s.store.Complete(outs)
	if err != nil {
		return nil, s.toStatus("complete", err)
	}
	s.traceTransitions(outs, applied, start, time.Now())
	resp := &trackerv1.CompleteResponse{Results: make([]*trackerv1.OutcomeResult, len(applied))}
	for i, a := range applied {
		resp.Results[i] = &trackerv1.OutcomeResult{MessageId: a.MessageID, Applied: a.Applied, Reason: a.Reason}
		if !a.Applied {
			s.log.Warn("outcome not applied", "message_id", a.MessageID, "reason", a.Reason, "worker", req.GetWorker())
		}
	}
	return resp, nil
}

func result(r trackerv1.Result) (store.Result, error) {
	switch r {
	case trackerv1.Result_RESULT_DELIVERED:
		return store.ResultDelivered, nil
	case trackerv1.Result_RESULT_RETRY:
		return store.ResultRetry, nil
	case trackerv1.Result_RESULT_FAILED:
		return store.ResultFailed, nil
	case trackerv1.Result_RESULT_UNKNOWN:
		return store.ResultUnknown, nil
	case trackerv1.Result_RESULT_RECONCILE_FOUND:
		return store.ResultReconcileFound, nil
	case trackerv1.Result_RESULT_RECONCILE_NOT_FOUND:
		return store.ResultReconcileNotFound, nil
	case trackerv1.Result_RESULT_RECONCILE_CANNOT_ANSWER:
		return store.ResultReconcileCannotAnswer, nil
	case trackerv1.Result_RESULT_RECONCILE_ERROR:
		return store.ResultReconcileError, nil
	}
	return 0, fmt.Errorf("result %s is not an outcome", r)
}

// GetMessage implements trackerv1.TrackerServiceServer.
func (s *Service) GetMessage(ctx context.Context, req *trackerv1.GetMessageRequest) (*trackerv1.GetMessageResponse, error) {
	m, d, timeline, err := s.store.Get(req.GetId())
	if err != nil {
		return nil, s.toStatus("get message", err)
	}
	return &trackerv1.GetMessageResponse{Message: m, Delivery: d, Timeline: timeline}, nil
}

// History implements trackerv1.TrackerServiceServer.
func (s *Service) History(ctx context.Context, req *trackerv1.HistoryRequest) (*trackerv1.HistoryResponse, error) {
	limit := int(req.GetLimit())
	if limit <= 0 {
		limit = 20
	}
	limit = min(limit, maxHistory)
	var (
		rows []store.Leased
		err  error
	)
	switch {
	case req.GetConversation() != "" && req.GetRecipient() != "":
		return nil, status.Error(codes.InvalidArgument, "give a conversation or a recipient, not both")
	case req.GetConversation() != "":
		rows, err = s.store.ConversationHistory(req.GetTenant(), req.GetConversation(), limit)
	case req.GetRecipient() != "":
		rows, err = s.store.RecipientHistory(req.GetTenant(), req.GetChannel(), req.GetRecipient(), limit)
	default:
		return nil, status.Error(codes.InvalidArgument, "give a conversation or a recipient")
	}
	if err != nil {
		return nil, s.toStatus("history", err)
	}
	resp := &trackerv1.HistoryResponse{Messages: make([]*trackerv1.Lease, len(rows))}
	for i, r := range rows {
		resp.Messages[i] = &trackerv1.Lease{Message: r.Message, Delivery: r.Delivery}
	}
	return resp, nil
}

// WatchEvents implements trackerv1.TrackerServiceServer.
func (s *Service) WatchEvents(req *trackerv1.WatchEventsRequest, stream trackerv1.TrackerService_WatchEventsServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	after := req.GetAfterSequence()
	filter := store.EventFilter{Type: req.GetType(), Channel: req.GetChannel()}
	for {
		evs, last, read, err := s.store.Events(after, eventPage, filter)
		if err != nil {
			return s.toStatus("read events", err)
		}
		after = last
		for _, ev := range evs {
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
		if read == eventPage {
			continue
		}
		if err := s.store.WaitEvents(ctx, after); err != nil {
			if errors.Is(err, store.ErrClosed) || isClosed(s.stopping) {
				return status.Error(codes.Unavailable, "tracker is shutting down; resume from the last sequence received")
			}
			return status.FromContextError(err).Err()
		}
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// Stats implements trackerv1.TrackerServiceServer.
func (s *Service) Stats(ctx context.Context, _ *trackerv1.StatsRequest) (*trackerv1.StatsResponse, error) {
	counts, err := s.store.Counts()
	if err != nil {
		return nil, s.toStatus("stats", err)
	}
	resp := &trackerv1.StatsResponse{
		Counts:            map[string]int64{},
		RecoveryIndexSize: int64(s.store.RecoverySize()),
		LastEventSequence: s.store.LastEvent(),
	}
	for st, n := range counts {
		resp.Counts[st.String()] = n
	}
	return resp, nil
}

// ExpireLeases moves expired leases to UNKNOWN (and on per their channel's
// policy; an expired reconcile lease stays UNKNOWN) every interval until
// ctx ends.
func (s *Service) ExpireLeases(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for {
			n, err := s.store.ExpireLeases(256)
			if err != nil {
				if !errors.Is(err, store.ErrClosed) {
					s.log.Error("expire leases", "error_code", "TRK_003", "err", err)
				}
				break
			}
			if n > 0 {
				s.log.Warn("leases expired without an outcome; applied the unknown-outcome policy", "count", n, "error_code", "DLV_005")
			}
			if n < 256 {
				break
			}
		}
	}
}

// toStatus is the one place store errors become gRPC status codes.
func (s *Service) toStatus(op string, err error) error {
	switch {
	case errors.Is(err, store.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, store.ErrFull):
		return status.Errorf(codes.ResourceExhausted, "%v: nothing was written; retry later or raise --max-pending", err)
	case errors.Is(err, store.ErrNotDeadLetter), errors.Is(err, store.ErrReplyNotOpen), errors.Is(err, store.ErrChunkGap):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, store.ErrClosed):
		return status.Error(codes.Unavailable, "tracker is shutting down; nothing was written")
	}
	s.log.Error(op, "error_code", "TRK_004", "err", err)
	return status.Errorf(codes.Internal, "%s: internal store error (TRK_004); see the tracker's log", op)
}

// Abort implements trackerv1.TrackerServiceServer.
func (s *Service) Abort(ctx context.Context, req *trackerv1.AbortRequest) (*trackerv1.AbortResponse, error) {
	if req.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "id is required")
	}
	d, err := s.store.Abort(req.GetId(), req.GetReason())
	if errors.Is(err, store.ErrNotFound) {
		// Not a message: a streamed reply?
		r, err := s.store.AbortReply(req.GetId(), req.GetReason())
		if errors.Is(err, store.ErrTerminal) {
			return &trackerv1.AbortResponse{Reply: r, AlreadyFinal: true}, nil
		}
		if err != nil {
			return nil, s.toStatus("abort", err)
		}
		_, ids, err := s.store.GetReply(r.GetId())
		if err != nil {
			return nil, s.toStatus("abort", err)
		}
		s.settle(ctx, ids)
		return &trackerv1.AbortResponse{Reply: r}, nil
	}
	if errors.Is(err, store.ErrTerminal) {
		return &trackerv1.AbortResponse{Delivery: d, AlreadyFinal: true}, nil
	}
	if err != nil {
		return nil, s.toStatus("abort", err)
	}
	if d.GetState() == storev1.State_STATE_IN_FLIGHT {
		d = s.settle(ctx, []string{req.GetId()})[0]
	}
	return &trackerv1.AbortResponse{Delivery: d}, nil
}

// abortSettle bounds how long Abort waits for attempts in flight to end.
const abortSettle = 5 * time.Second

// settle waits, up to abortSettle, until none of the messages is IN_FLIGHT:
// the abort already cancelled their provider calls (through the queue and
// the plugin host), and answering only once they have ended means nothing
// reaches a provider after the abort is acknowledged. It returns the
// messages' deliveries as it leaves them.
func (s *Service) settle(ctx context.Context, ids []string) []*storev1.Delivery {
	ctx, cancel := context.WithTimeout(ctx, abortSettle)
	defer cancel()
	out := make([]*storev1.Delivery, len(ids))
	for {
		seq := s.store.LastEvent()
		busy := false
		for i, id := range ids {
			d, err := s.store.Delivery(id)
			if err != nil {
				continue
			}
			out[i] = d
			busy = busy || d.GetState() == storev1.State_STATE_IN_FLIGHT
		}
		if !busy || s.store.WaitEvents(ctx, seq) != nil {
			if busy {
				s.log.Warn("abort answered while an attempt is still in flight; it will end ABORTED unless the provider confirms it", "error_code", "TRK_006")
			}
			return out
		}
	}
}

// ListDeadLetters implements trackerv1.TrackerServiceServer.
func (s *Service) ListDeadLetters(ctx context.Context, req *trackerv1.ListDeadLettersRequest) (*trackerv1.HistoryResponse, error) {
	f := store.DeadLetterFilter{Channel: req.GetChannel(), Code: req.GetCode(), Limit: int(req.GetLimit())}
	if req.GetSinceUnixNano() != 0 {
		f.Since = time.Unix(0, req.GetSinceUnixNano())
	}
	if f.Limit <= 0 || f.Limit > maxHistory {
		f.Limit = maxHistory
	}
	rows, err := s.store.DeadLetters(f)
	if err != nil {
		return nil, s.toStatus("list dead letters", err)
	}
	resp := &trackerv1.HistoryResponse{Messages: make([]*trackerv1.Lease, len(rows))}
	for i, r := range rows {
		resp.Messages[i] = &trackerv1.Lease{Message: r.Message, Delivery: r.Delivery}
	}
	return resp, nil
}

// Redrive implements trackerv1.TrackerServiceServer.
func (s *Service) Redrive(ctx context.Context, req *trackerv1.RedriveRequest) (*trackerv1.RedriveResponse, error) {
	d, err := s.store.Redrive(req.GetId())
	if err != nil {
		return nil, s.toStatus("redrive", err)
	}
	return &trackerv1.RedriveResponse{Delivery: d}, nil
}

// Purge implements trackerv1.TrackerServiceServer.
func (s *Service) Purge(ctx context.Context, req *trackerv1.RedriveRequest) (*trackerv1.RedriveResponse, error) {
	d, err := s.store.Purge(req.GetId())
	if err != nil {
		return nil, s.toStatus("purge", err)
	}
	return &trackerv1.RedriveResponse{Delivery: d}, nil
}

// Backup implements trackerv1.TrackerServiceServer.
func (s *Service) Backup(ctx context.Context, req *trackerv1.BackupRequest) (*trackerv1.BackupResponse, error) {
	if s.backupDir == "" {
		return nil, status.Error(codes.FailedPrecondition, "no backup folder configured: start the tracker with --backup-dir")
	}
	keep := int(req.GetKeep())
	if keep == 0 {
		keep = 3
	}
	path, err := s.store.Backup(s.backupDir, keep, s.now())
	if err != nil {
		return nil, s.toStatus("backup", err)
	}
	s.log.Info("backup written", "path", path, "keep", keep)
	return &trackerv1.BackupResponse{Path: path}, nil
}

// Verify implements trackerv1.TrackerServiceServer.
func (s *Service) Verify(ctx context.Context, req *trackerv1.VerifyRequest) (*trackerv1.VerifyResponse, error) {
	r := s.store.Verify(req.GetFull())
	resp := &trackerv1.VerifyResponse{
		Counts:          map[string]int64{},
		Messages:        int64(r.Messages),
		RecoveryEntries: int64(r.RecoveryEntries),
		Events:          int64(r.Events),
		StateHash:       r.StateHash,
		Problems:        r.Problems,
	}
	for st, n := range r.Counts {
		resp.Counts[st.String()] = n
	}
	return resp, nil
}

// RecordEvent implements trackerv1.TrackerServiceServer.
func (s *Service) RecordEvent(ctx context.Context, req *trackerv1.RecordEventRequest) (*trackerv1.RecordEventResponse, error) {
	seq, err := s.store.RecordEvent(req.GetType(), req.GetChannel(), req.GetErrorCode(), req.GetDetail())
	if err != nil {
		return nil, s.toStatus("record event", err)
	}
	return &trackerv1.RecordEventResponse{Sequence: seq}, nil
}

// OpenReply implements trackerv1.TrackerServiceServer.
func (s *Service) OpenReply(ctx context.Context, req *trackerv1.OpenReplyRequest) (*trackerv1.ReplyResponse, error) {
	if req.GetReply() == nil {
		return nil, status.Error(codes.InvalidArgument, "reply is required")
	}
	r, err := s.store.OpenReply(req.GetReply())
	if err != nil {
		return nil, s.toStatus("open reply", err)
	}
	return &trackerv1.ReplyResponse{Reply: r}, nil
}

// AppendChunk implements trackerv1.TrackerServiceServer.
func (s *Service) AppendChunk(ctx context.Context, req *trackerv1.AppendChunkRequest) (*trackerv1.AcceptResponse, error) {
	if req.GetMessage() == nil {
		return nil, status.Error(codes.InvalidArgument, "message is required")
	}
	if err := s.refuse(); err != nil {
		return nil, err
	}
	span := s.startChunkSpan(req.GetReplyId(), req.GetIndex(), req.GetMessage())
	a, err := s.store.AppendChunk(req.GetReplyId(), req.GetIndex(), req.GetMessage())
	endChunkSpan(span, err)
	if err != nil {
		return nil, s.toStatus("append chunk", err)
	}
	return &trackerv1.AcceptResponse{Message: a.Message, Delivery: a.Delivery, Duplicate: a.Duplicate}, nil
}

// CloseReply implements trackerv1.TrackerServiceServer.
func (s *Service) CloseReply(ctx context.Context, req *trackerv1.CloseReplyRequest) (*trackerv1.ReplyResponse, error) {
	r, err := s.store.CloseReply(req.GetReplyId())
	if err != nil {
		return nil, s.toStatus("close reply", err)
	}
	return &trackerv1.ReplyResponse{Reply: r}, nil
}

// RecoveryStatus implements trackerv1.TrackerServiceServer.
func (s *Service) RecoveryStatus(ctx context.Context, req *trackerv1.RecoveryStatusRequest) (*trackerv1.RecoveryStatusResponse, error) {
	limit := int(req.GetLimit())
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, maxHistory)
	p, err := s.store.RecoveryPlan(req.GetList(), limit)
	if err != nil {
		return nil, s.toStatus("recovery status", err)
	}
	resp := &trackerv1.RecoveryStatusResponse{
		Due: int64(p.Due), InFlight: int64(p.InFlight), Blocked: int64(p.Blocked),
		Unknown: map[string]int64{}, AbortedExcluded: p.AbortedExcluded,
	}
	for k, n := range p.Unknown {
		resp.Unknown[k] = int64(n)
	}
	for _, it := range p.Items {
		var at int64
		if !it.At.IsZero() {
			at = it.At.UnixNano()
		}
		resp.Items = append(resp.Items, &trackerv1.RecoveryItem{Id: it.ID, Channel: it.Channel, Kind: it.Kind, AtUnixNano: at, Action: it.Action})
	}
	return resp, nil
}
