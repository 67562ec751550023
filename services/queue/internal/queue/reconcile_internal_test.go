package queue

import (
	"context"
	"log/slog"
	"testing"

	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// eventTracker accepts channel-health events and nothing else.
type eventTracker struct {
	trackerv1.TrackerServiceClient
}

func (eventTracker) RecordEvent(context.Context, *trackerv1.RecordEventRequest, ...grpc.CallOption) (*trackerv1.RecordEventResponse, error) {
	return &trackerv1.RecordEventResponse{}, nil
}

// Reconcile answers say nothing about whether the channel delivers: a run
// of failed or unanswerable questions neither opens the channel's circuit
// nor marks it degraded, and each answer becomes a RESULT_RECONCILE_*
// outcome under the reconcile lease's token.
func TestReconcileAnswersLeaveChannelHealthAlone(t *testing.T) {
	q := New(Config{BreakerFailures: 2, FailureThreshold: 2}, eventTracker{}, nil, slog.New(slog.DiscardHandler), nil)
	lease := &trackerv1.Lease{
		Message:  &storev1.Message{Id: "m1", Channel: "slack"},
		Delivery: &storev1.Delivery{State: storev1.State_STATE_UNKNOWN, Reconciling: true, LeaseToken: 3},
	}
	answers := []struct {
		answer pluginsv1.ReconcileAnswer
		code   string
		want   trackerv1.Result
	}{
		{pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR, "PLG_001", trackerv1.Result_RESULT_RECONCILE_ERROR},
		{pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER, "PLG_009", trackerv1.Result_RESULT_RECONCILE_CANNOT_ANSWER},
		{pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_UNSPECIFIED, "QUE_006", trackerv1.Result_RESULT_RECONCILE_ERROR},
		{pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR, "PLG_006", trackerv1.Result_RESULT_RECONCILE_ERROR},
		{pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND, "", trackerv1.Result_RESULT_RECONCILE_NOT_FOUND},
		{pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND, "", trackerv1.Result_RESULT_RECONCILE_ERROR}, // no provider id
	}
	for _, a := range answers {
		q.take("slack")
		j := &job{lease: lease, span: trace.SpanFromContext(context.Background()), reconcile: true}
		q.finish(j, &pluginsv1.DeliverResponse{Reconcile: a.answer, ErrorCode: a.code, Outcome: pluginsv1.Outcome_OUTCOME_UNKNOWN}, nil, 0)
		o := (<-q.outcomes).o
		if o.GetResult() != a.want || o.GetLeaseToken() != 3 || o.GetMessageId() != "m1" {
			t.Errorf("%s %s: outcome %v, want %s under lease 3", a.answer, a.code, o, a.want)
		}
	}
	if st := q.guard.breaker("slack").State(); st != gobreaker.StateClosed {
		t.Errorf("circuit %s after reconcile answers, want closed", st)
	}
	if d := q.guard.Degraded(); len(d) != 0 {
		t.Errorf("degraded channels %v after reconcile answers, want none", d)
	}
	if q.InFlight() != 0 {
		t.Errorf("%d slots still taken", q.InFlight())
	}
}
