package queue

import (
	"log/slog"
	"testing"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// An abort's event can reach the queue before the lease of the same
// message: the tracker answers a lease once a later fsync has made it
// durable, and that fsync may be the abort's. The lease that comes after
// is not sent to the plugin host: it is reported not attempted (QUE_012),
// which the tracker records as ABORTED. A lease of another message still
// goes its way (here: no plugin host stream, QUE_001).
func TestLeaseAfterItsAbortIsNotSent(t *testing.T) {
	q := New(Config{}, eventTracker{}, nil, slog.New(slog.DiscardHandler), nil)
	if n := q.disp.cancelMessage("m1"); n != 0 {
		t.Fatalf("cancelled %d calls of m1, which has none yet", n)
	}
	for _, c := range []struct{ id, code string }{{"m1", "QUE_012"}, {"m2", "QUE_001"}} {
		q.take("mock")
		q.disp.dispatch(&trackerv1.Lease{
			Message:  &storev1.Message{Id: c.id, Channel: "mock", Recipient: "ok"},
			Delivery: &storev1.Delivery{State: storev1.State_STATE_IN_FLIGHT, LeaseToken: 1, Attempts: 1},
		})
		o := (<-q.outcomes).o
		if o.GetMessageId() != c.id || o.GetErrorCode() != c.code || !o.GetNotAttempted() {
			t.Errorf("%s: outcome %v, want %s, not attempted", c.id, o, c.code)
		}
	}
	if q.InFlight() != 0 {
		t.Errorf("%d slots still taken", q.InFlight())
	}
}
