package queue

import (
	"context"
	"time"

	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// eventAborted is the tracker's event type for an abort.
const eventAborted = "message.aborted"

// followAborts cancels in-flight provider calls of messages aborted in the
// tracker. The abort is already durable when the event appears; this only
// stops the call early. Whatever the call ends with, the tracker records
// ABORTED unless the provider confirmed it.
func (q *Queue) followAborts(ctx context.Context) {
	var after uint64
	if st, err := q.tracker.Stats(ctx, &trackerv1.StatsRequest{}); err == nil {
		after = st.GetLastEventSequence()
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		stream, err := q.tracker.WatchEvents(ctx, &trackerv1.WatchEventsRequest{AfterSequence: after, Type: eventAborted})
		if err != nil {
			sleep(ctx, backoff)
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		for {
			ev, err := stream.Recv()
			if err != nil {
				break
			}
			backoff = 100 * time.Millisecond
			after = ev.GetSequence()
			if n := q.disp.cancelMessage(ev.GetMessageId()); n > 0 {
				q.log.Info("cancelled an in-flight delivery after its abort", "message_id", ev.GetMessageId())
			}
		}
		sleep(ctx, backoff)
	}
}

// cancelMessage asks the plugin host to cancel every pending call of the
// message; the answers still come back and are reported as usual. A call
// of the message not sent yet is not sent (see dispatcher.aborts).
func (d *dispatcher) cancelMessage(id string) int {
	d.mu.Lock()
	d.aborts.add(id) // for a lease of it that has not arrived yet
	c := d.cur
	var ids []uint64
	if c != nil {
		for reqID, j := range c.pending {
			if j.lease.GetMessage().GetId() == id {
				j.aborted.Store(true)
				ids = append(ids, reqID)
			}
		}
	}
	d.mu.Unlock()
	for _, reqID := range ids {
		c.sendCancel(reqID)
	}
	return len(ids)
}
