package gateway

import (
	"context"
	"time"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/heraldchat/herald/pkg/telemetry"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

const (
	opOpenReply   op = "OpenReply"
	opAppendChunk op = "AppendChunk"
	opCloseReply  op = "CloseReply"
)

// OpenReply starts a streamed reply; its chunks follow with AppendChunk.
func (s *Service) OpenReply(ctx context.Context, req *gatewayv1.OpenReplyRequest) (*gatewayv1.OpenReplyResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	// A reply is addressed like a message: the same rules, the same errors.
	v, err := validateSend(&gatewayv1.SendRequest{Tenant: req.GetTenant(), Channel: req.GetChannel(), Recipient: req.GetRecipient(), Conversation: req.GetConversation()})
	if err != nil {
		return nil, err
	}
	id := req.GetId()
	if id == "" {
		id = s.newID()
	} else if _, err := ulid.ParseStrict(id); err != nil {
		var bad violations
		bad.add("id", "%q is not a ULID: leave it empty to have one assigned", truncate(id))
		return nil, bad.err()
	}
	traceparent, tracestate := telemetry.InjectTrace(ctx)
	resp, err := s.tracker.OpenReply(ctx, &trackerv1.OpenReplyRequest{Reply: &storev1.Reply{
		Id: id, Tenant: v.tenant, Channel: req.GetChannel(), Recipient: req.GetRecipient(), Conversation: v.conversation,
		ReplyTo: req.GetReplyTo(), Traceparent: traceparent, Tracestate: tracestate,
	}})
	if err != nil {
		return nil, trackerError(ctx, s.log, opOpenReply, err)
	}
	return &gatewayv1.OpenReplyResponse{ReplyId: resp.GetReply().GetId(), State: gatewayv1.ReplyState(resp.GetReply().GetState())}, nil
}

// AppendChunk adds one chunk; it answers once the chunk is durable.
func (s *Service) AppendChunk(ctx context.Context, req *gatewayv1.AppendChunkRequest) (*gatewayv1.AppendChunkResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	var v violations
	if req.GetReplyId() == "" {
		v.add("reply_id", "required: pass the id OpenReply returned")
	}
	switch text := req.GetText(); {
	case len(text) > maxTextLen:
		v.add("text", "is %d bytes long: at most %d bytes (64 KiB) are allowed; split it into more chunks", len(text), maxTextLen)
	case !utf8.ValidString(text):
		v.add("text", "is not valid UTF-8")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	traceparent, tracestate := telemetry.InjectTrace(ctx)
	resp, err := s.tracker.AppendChunk(ctx, &trackerv1.AppendChunkRequest{
		ReplyId: req.GetReplyId(), Index: req.GetIndex(),
		Message: &storev1.Message{Id: s.newID(), Text: req.GetText(), Traceparent: traceparent, Tracestate: tracestate},
	})
	if err != nil {
		return nil, trackerError(ctx, s.log, opAppendChunk, err)
	}
	return &gatewayv1.AppendChunkResponse{
		Id:        resp.GetMessage().GetId(),
		State:     gatewayv1.DeliveryState(resp.GetDelivery().GetState()),
		Duplicate: resp.GetDuplicate(),
	}, nil
}

// CloseReply marks a reply complete.
func (s *Service) CloseReply(ctx context.Context, req *gatewayv1.CloseReplyRequest) (*gatewayv1.CloseReplyResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	if err := requireID(req.GetReplyId(), "pass the id OpenReply returned"); err != nil {
		return nil, err
	}
	resp, err := s.tracker.CloseReply(ctx, &trackerv1.CloseReplyRequest{ReplyId: req.GetReplyId()})
	if err != nil {
		return nil, trackerError(ctx, s.log, opCloseReply, err)
	}
	return &gatewayv1.CloseReplyResponse{State: gatewayv1.ReplyState(resp.GetReply().GetState()), Chunks: resp.GetReply().GetChunks()}, nil
}

// RecoveryStatus reports what recovery would do right now.
func (s *Service) RecoveryStatus(ctx context.Context, req *gatewayv1.RecoveryStatusRequest) (*gatewayv1.RecoveryStatusResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	resp, err := s.tracker.RecoveryStatus(ctx, &trackerv1.RecoveryStatusRequest{List: req.GetList(), Limit: req.GetLimit()})
	if err != nil {
		return nil, trackerError(ctx, s.log, "RecoveryStatus", err)
	}
	out := &gatewayv1.RecoveryStatusResponse{
		Due: resp.GetDue(), InFlight: resp.GetInFlight(), Blocked: resp.GetBlocked(),
		Unknown: resp.GetUnknown(), AbortedExcluded: resp.GetAbortedExcluded(),
	}
	for _, it := range resp.GetItems() {
		item := &gatewayv1.RecoveryItem{Id: it.GetId(), Channel: it.GetChannel(), Kind: it.GetKind(), Action: it.GetAction()}
		if n := it.GetAtUnixNano(); n != 0 {
			item.At = timestamppb.New(time.Unix(0, n))
		}
		out.Items = append(out.Items, item)
	}
	return out, nil
}

// ListChannels reports the plugin host's channels and their health.
func (s *Service) ListChannels(ctx context.Context, _ *gatewayv1.ListChannelsRequest) (*gatewayv1.ListChannelsResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	if s.plugins == nil {
		return nil, status.Error(codes.Unavailable, "this gateway has no plugin host configured: start it with --plugins")
	}
	resp, err := s.plugins.ListChannels(ctx, &pluginsv1.ListChannelsRequest{})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "the plugin host does not answer (%v): is it running?", status.Code(err))
	}
	out := &gatewayv1.ListChannelsResponse{}
	for _, c := range resp.GetChannels() {
		out.Channels = append(out.Channels, &gatewayv1.Channel{Name: c.GetName(), Adapter: c.GetAdapter(), Healthy: c.GetHealthy(), ConsecutiveFailures: c.GetConsecutiveFailures()})
	}
	return out, nil
}
