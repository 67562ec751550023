package gateway

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// This file holds the operator's calls: abort, the dead-letter list, backup
// and verification. Each is a thin proxy to the tracker, which owns every
// rule about what may change; the gateway only validates and translates.

// Abort cancels a message before delivery. The tracker makes the abort
// durable before answering; a finished message answers already_final with
// its state, not an error.
func (s *Service) Abort(ctx context.Context, req *gatewayv1.AbortRequest) (*gatewayv1.AbortResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	if err := requireID(req.GetId(), "pass the id of the message to abort"); err != nil {
		return nil, err
	}
	resp, err := s.tracker.Abort(ctx, &trackerv1.AbortRequest{Id: req.GetId(), Reason: req.GetReason()})
	if err != nil {
		return nil, trackerError(ctx, s.log, opAbort, err)
	}
	out := &gatewayv1.AbortResponse{
		State:        gatewayv1.DeliveryState(resp.GetDelivery().GetState()),
		AlreadyFinal: resp.GetAlreadyFinal(),
	}
	if r := resp.GetReply(); r != nil {
		out.ReplyState = gatewayv1.ReplyState(r.GetState())
		out.ReplyChunks = r.GetChunks()
		out.ReplyDelivered = r.GetDeliveredAtAbort()
	}
	return out, nil
}

// ListDeadLetters lists FAILED messages, oldest failure first: 100 when the
// request sets no limit, at most 1000.
func (s *Service) ListDeadLetters(ctx context.Context, req *gatewayv1.ListDeadLettersRequest) (*gatewayv1.ListDeadLettersResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	treq, err := validateListDeadLetters(req)
	if err != nil {
		return nil, err
	}
	resp, err := s.tracker.ListDeadLetters(ctx, treq)
	if err != nil {
		return nil, trackerError(ctx, s.log, "ListDeadLetters", err)
	}
	out := &gatewayv1.ListDeadLettersResponse{Messages: make([]*gatewayv1.Message, 0, len(resp.GetMessages()))}
	for _, m := range resp.GetMessages() {
		out.Messages = append(out.Messages, toMessage(m.GetMessage(), m.GetDelivery()))
	}
	return out, nil
}

// Redrive makes a dead letter PENDING again with a fresh attempt budget.
func (s *Service) Redrive(ctx context.Context, req *gatewayv1.RedriveRequest) (*gatewayv1.RedriveResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	if err := requireID(req.GetId(), "pass the id of a dead letter; ListDeadLetters lists them"); err != nil {
		return nil, err
	}
	resp, err := s.tracker.Redrive(ctx, &trackerv1.RedriveRequest{Id: req.GetId()})
	if err != nil {
		return nil, trackerError(ctx, s.log, opRedrive, err)
	}
	return &gatewayv1.RedriveResponse{State: gatewayv1.DeliveryState(resp.GetDelivery().GetState())}, nil
}

// Purge removes a dead letter from the list; the message stays readable.
func (s *Service) Purge(ctx context.Context, req *gatewayv1.PurgeRequest) (*gatewayv1.PurgeResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	if err := requireID(req.GetId(), "pass the id of a dead letter; ListDeadLetters lists them"); err != nil {
		return nil, err
	}
	resp, err := s.tracker.Purge(ctx, &trackerv1.RedriveRequest{Id: req.GetId()})
	if err != nil {
		return nil, trackerError(ctx, s.log, opPurge, err)
	}
	return &gatewayv1.PurgeResponse{State: gatewayv1.DeliveryState(resp.GetDelivery().GetState())}, nil
}

// Backup asks the tracker for a checkpoint of its store and returns the
// folder it wrote, on the tracker's host.
func (s *Service) Backup(ctx context.Context, req *gatewayv1.BackupRequest) (*gatewayv1.BackupResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	resp, err := s.tracker.Backup(ctx, &trackerv1.BackupRequest{Keep: req.GetKeep()})
	if err != nil {
		return nil, trackerError(ctx, s.log, opBackup, err)
	}
	if resp.GetPath() == "" {
		// An answer without a path would read as success with nowhere to look.
		return nil, trackerError(ctx, s.log, opBackup, status.Error(codes.Internal, "tracker answered Backup without a path"))
	}
	return &gatewayv1.BackupResponse{Path: resp.GetPath()}, nil
}

// VerifyState returns the tracker's check of its store invariants. Problems
// found are part of the answer, not an error.
func (s *Service) VerifyState(ctx context.Context, req *gatewayv1.VerifyStateRequest) (*gatewayv1.VerifyStateResponse, error) {
	if err := s.admit(); err != nil {
		return nil, err
	}
	resp, err := s.tracker.Verify(ctx, &trackerv1.VerifyRequest{Full: req.GetFull()})
	if err != nil {
		return nil, trackerError(ctx, s.log, "VerifyState", err)
	}
	out := &gatewayv1.VerifyStateResponse{
		Counts:          make(map[string]int64, len(resp.GetCounts())),
		Messages:        resp.GetMessages(),
		RecoveryEntries: resp.GetRecoveryEntries(),
		Events:          resp.GetEvents(),
		StateHash:       resp.GetStateHash(),
		Problems:        resp.GetProblems(),
	}
	for k, n := range resp.GetCounts() {
		out.Counts[stateName(k)] = n
	}
	return out, nil
}
