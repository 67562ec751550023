package pluginhost

import (
	"context"
	"fmt"
	"time"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// Orphan is an answer whose delivery stream ended before the queue
// acknowledged it.
type Orphan struct {
	Delivery *pluginsv1.Delivery
	Answer   *pluginsv1.DeliverResponse
	// Reconcile is true for the answer to a reconcile request.
	Reconcile bool
}

// Reporter records orphaned answers in the tracker.
type Reporter interface {
	Report(ctx context.Context, orphans []Orphan) error
}

// TrackerReporter reports orphans with the tracker's Complete, fenced by
// each attempt's lease token: an answer the queue did report before it died
// is refused as stale and changes nothing.
type TrackerReporter struct {
	Client trackerv1.TrackerServiceClient
	// Give up after this long; by then the leases have expired anyway.
	Timeout time.Duration
}

// Report implements Reporter. It retries until the tracker answers or the
// timeout passes.
func (r TrackerReporter) Report(ctx context.Context, orphans []Orphan) error {
	outs := make([]*trackerv1.Outcome, 0, len(orphans))
	for _, o := range orphans {
		if o.Delivery.GetLeaseToken() == 0 {
			continue // sent by a caller that holds no lease
		}
		outs = append(outs, orphanOutcome(o))
	}
	if len(outs) == 0 {
		return nil
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	backoff := 100 * time.Millisecond
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := r.Client.Complete(cctx, &trackerv1.CompleteRequest{Worker: "plugins", Outcomes: outs})
		ccancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("report %d outcomes: %w", len(outs), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// orphanOutcome maps an answer to the outcome to record. A retryable answer
// is retried after its retry-after (at least a second): the queue's backoff
// policy takes over from the next attempt. A reconcile answer maps to its
// RESULT_RECONCILE_* result.
func orphanOutcome(o Orphan) *trackerv1.Outcome {
	a := o.Answer
	out := &trackerv1.Outcome{
		MessageId:   o.Delivery.GetMessageId(),
		LeaseToken:  o.Delivery.GetLeaseToken(),
		ErrorCode:   a.GetErrorCode(),
		ErrorDetail: a.GetDescription(),
		Adapter:     a.GetAdapter(),
	}
	if o.Reconcile {
		switch a.GetReconcile() {
		case pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND:
			out.Result = trackerv1.Result_RESULT_RECONCILE_FOUND
			out.ProviderMessageId = a.GetProviderMessageId()
		case pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND:
			out.Result = trackerv1.Result_RESULT_RECONCILE_NOT_FOUND
		case pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER:
			out.Result = trackerv1.Result_RESULT_RECONCILE_CANNOT_ANSWER
		default:
			out.Result = trackerv1.Result_RESULT_RECONCILE_ERROR
			if ra := a.GetRetryAfterMs(); ra > 0 {
				out.RetryAfterNanos = (time.Duration(ra) * time.Millisecond).Nanoseconds()
			}
		}
		return out
	}
	switch a.GetOutcome() {
	case pluginsv1.Outcome_OUTCOME_DELIVERED:
		out.Result = trackerv1.Result_RESULT_DELIVERED
		out.ProviderMessageId = a.GetProviderMessageId()
	case pluginsv1.Outcome_OUTCOME_PERMANENT:
		out.Result = trackerv1.Result_RESULT_FAILED
	case pluginsv1.Outcome_OUTCOME_RETRYABLE:
		out.Result = trackerv1.Result_RESULT_RETRY
		out.RetryAfterNanos = max(time.Duration(a.GetRetryAfterMs())*time.Millisecond, time.Second).Nanoseconds()
	default:
		out.Result = trackerv1.Result_RESULT_UNKNOWN
	}
	return out
}
