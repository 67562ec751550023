package queue

import (
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// A reconcile lease asks the provider, through the plugin host, whether it
// has a message whose outcome is unknown; the tracker decides what each
// answer means (see the store's reconcile.go). The queue only carries the
// answer back: it never sends the message for a reconcile lease, and the
// answer says nothing about the channel's health, so the circuit breaker
// and the health events ignore it.

// finishReconcile records a reconcile request's answer, like finish does a
// delivery's.
func (q *Queue) finishReconcile(j *job, r *pluginsv1.DeliverResponse, c *conn, reqID uint64) {
	o := q.decideReconcile(j, r)
	ch := j.lease.GetMessage().GetChannel()
	q.cfg.Metrics.reconciles.WithLabelValues(ch, reconcileLabel(o.GetResult())).Inc()
	if sc := j.span.SpanContext(); sc.IsValid() {
		o.TraceId, o.SpanId = sc.TraceID().String(), sc.SpanID().String()
	}
	j.span.SetAttributes(attribute.String("herald.reconcile", r.GetReconcile().String()), attribute.String("herald.error_code", r.GetErrorCode()))
	j.span.End()
	// The plugin host logs the answers it gave; the queue logs only the ones
	// it made up itself because the host went away or stayed silent.
	if strings.HasPrefix(r.GetErrorCode(), "QUE_") && !j.notAttempted {
		q.log.Warn("reconcile answer unknown: the plugin host did not answer; the tracker asks again later",
			"message_id", o.GetMessageId(), "channel", ch, "error_code", o.GetErrorCode(), "detail", o.GetErrorDetail())
	}
	q.outcomes <- report{o: o, c: c, reqID: reqID}
	q.release(ch)
}

// decideReconcile turns the plugin host's answer to a reconcile request
// into the outcome to record. Anything but a clear answer, the host's own
// failures included, is RESULT_RECONCILE_ERROR: the tracker asks again.
func (q *Queue) decideReconcile(j *job, r *pluginsv1.DeliverResponse) *trackerv1.Outcome {
	o := &trackerv1.Outcome{
		MessageId:   j.lease.GetMessage().GetId(),
		LeaseToken:  j.lease.GetDelivery().GetLeaseToken(),
		ErrorCode:   r.GetErrorCode(),
		ErrorDetail: describe(r),
		Adapter:     r.GetAdapter(),
	}
	switch r.GetReconcile() {
	case pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND:
		if r.GetProviderMessageId() != "" {
			o.Result = trackerv1.Result_RESULT_RECONCILE_FOUND
			o.ProviderMessageId = r.GetProviderMessageId()
			return o
		}
		o.ErrorCode, o.ErrorDetail = "DLV_003", "found without a provider message id"
	case pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND:
		o.Result = trackerv1.Result_RESULT_RECONCILE_NOT_FOUND
		return o
	case pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER:
		o.Result = trackerv1.Result_RESULT_RECONCILE_CANNOT_ANSWER
		return o
	}
	o.Result = trackerv1.Result_RESULT_RECONCILE_ERROR
	if j.notAttempted {
		// Never reached the plugin host: ask again soon, without spending
		// a try.
		o.NotAttempted = true
		o.RetryAfterNanos = (50 * time.Millisecond).Nanoseconds()
		return o
	}
	if ra := time.Duration(r.GetRetryAfterMs()) * time.Millisecond; ra > 0 {
		o.RetryAfterNanos = ra.Nanoseconds()
	}
	return o
}

// reconcileLabel is the herald_reconciles_total result label.
func reconcileLabel(r trackerv1.Result) string {
	switch r {
	case trackerv1.Result_RESULT_RECONCILE_FOUND:
		return "found"
	case trackerv1.Result_RESULT_RECONCILE_NOT_FOUND:
		return "not_found"
	case trackerv1.Result_RESULT_RECONCILE_CANNOT_ANSWER:
		return "cannot_answer"
	}
	return "error"
}
