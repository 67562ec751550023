package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Messages sent to callers. They say what happened to the request and what to
// do next; internal details stay in the gateway's log.
const (
	msgDraining        = "gateway is draining; retry on another instance or after restart"
	msgSendUnavailable = "tracker unreachable: the message was not accepted; retry with the same idempotency_key"
	msgSendDeadline    = "the message may or may not have been accepted; retry with the same idempotency_key"
	msgSendBroken      = "the connection to the tracker broke before it answered: the message may or may not have been accepted; retry with the same idempotency_key"
	msgSendInternal    = "the tracker could not store the message: it may or may not have been accepted; retry with the same idempotency_key"
	msgReadUnavailable = "tracker unreachable: retry shortly"
	msgReadDeadline    = "the tracker did not answer in time: retry, or raise the deadline"
	msgReadInternal    = "the tracker failed to answer: retry shortly; operators can find the cause in the gateway's log"
	msgCanceled        = "the call was cancelled by the caller"
	// An operator's change (abort, redrive, purge, backup) that timed out or
	// failed inside the tracker may have been made: say so, so that nobody
	// reads "failed" as "nothing happened".
	msgChangeDeadline = "the tracker did not answer in time: the change may or may not have been made; check the message (or the backup folder) before retrying"
	msgChangeInternal = "the tracker failed: the change may or may not have been made; check the message (or the backup folder) before retrying; operators can find the cause in the gateway's log"
)

// The ops that write. Send is the only one a backend calls; the others are
// operator changes.
const (
	opSend    op = "Send"
	opAbort   op = "Abort"
	opRedrive op = "Redrive"
	opPurge   op = "Purge"
	opBackup  op = "Backup"
)

// op names the gateway call an error comes from, which decides what the caller
// is told: only Send talks about idempotency keys, and only the ops that
// change something warn that a timeout may have left the change made.
type op string

// changes reports whether o is an operator change other than Send.
func (o op) changes() bool {
	return o == opAbort || o == opRedrive || o == opPurge || o == opBackup
}

// streamBrokenError: the accept stream broke after the request was sent and
// before it was answered, so the tracker may have accepted it.
type streamBrokenError struct{ cause error }

func (e *streamBrokenError) Error() string {
	return "accept stream broke before the answer: " + e.cause.Error()
}

// trackerError turns an error from a tracker call into the status the caller
// of op receives. It is the only place where the gateway translates errors.
//
// Codes that mean the same thing to the gateway's caller as to the gateway
// (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, NOT_FOUND, ALREADY_EXISTS,
// FAILED_PRECONDITION) pass through with the tracker's message. UNAVAILABLE
// and connection failures mean the request was not processed;
// DEADLINE_EXCEEDED means it may have been.
// Anything else is logged and reported without its internal detail.
func trackerError(ctx context.Context, log *slog.Logger, o op, err error) error {
	if err == nil {
		return nil
	}
	var broken *streamBrokenError
	if errors.As(err, &broken) {
		log.WarnContext(ctx, "the accept stream to the tracker broke before it answered", "op", string(o), "error", broken.cause.Error())
		return status.Error(codes.Unavailable, msgSendBroken)
	}
	code, msg := codes.Unknown, err.Error()
	if st, ok := status.FromError(err); ok {
		code, msg = st.Code(), st.Message()
	} else {
		var netErr net.Error
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			code = codes.DeadlineExceeded
		case errors.Is(err, context.Canceled):
			code = codes.Canceled
		case errors.As(err, &netErr):
			code = codes.Unavailable
		}
	}
	write := o == opSend

	switch code {
	case codes.InvalidArgument, codes.ResourceExhausted, codes.NotFound, codes.AlreadyExists, codes.FailedPrecondition:
		return status.Error(code, msg)
	case codes.Canceled:
		return status.Error(codes.Canceled, msgCanceled)
	case codes.Unavailable:
		log.WarnContext(ctx, "tracker unavailable", "op", string(o), "error", msg)
		if write {
			return status.Error(codes.Unavailable, msgSendUnavailable)
		}
		return status.Error(codes.Unavailable, msgReadUnavailable)
	case codes.DeadlineExceeded:
		log.WarnContext(ctx, "tracker call timed out", "op", string(o), "error", msg)
		if write {
			return status.Error(codes.DeadlineExceeded, msgSendDeadline)
		}
		if o.changes() {
			return status.Error(codes.DeadlineExceeded, msgChangeDeadline)
		}
		return status.Error(codes.DeadlineExceeded, msgReadDeadline)
	default:
		log.ErrorContext(ctx, "tracker call failed", "op", string(o), "code", code.String(), "error", msg)
		if write {
			return status.Error(codes.Internal, msgSendInternal)
		}
		if o.changes() {
			return status.Error(codes.Internal, msgChangeInternal)
		}
		return status.Error(codes.Internal, msgReadInternal)
	}
}
