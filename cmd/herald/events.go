package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// caughtUpAfter is how long `herald events` without --follow waits for one
// more event before it decides it has printed everything that exists.
const caughtUpAfter = 300 * time.Millisecond

func newEventsCmd(a *app) *cobra.Command {
	var (
		req    gatewayv1.WatchEventsRequest
		follow bool
		since  string
	)
	cmd := &cobra.Command{
		Use:   "events [--type T] [--channel CH] [--since 1h|TIME] [--since-seq N] [--follow]",
		Short: "Print delivery events; with --follow, keep streaming until Ctrl-C",
		Example: `  herald events --type delivery.failed
  herald events --channel telegram --since-seq 1200 --follow
  herald events --type delivery.failed --since 1h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var after time.Time
			if since != "" {
				t, err := parseSince("since", since, a.now())
				if err != nil {
					return err
				}
				after = t
			}
			client, err := a.client()
			if err != nil {
				return err
			}
			return watchEvents(cmd.Context(), a, client, &req, follow, after)
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Type, "type", "", "only events of this type, such as delivery.failed")
	f.StringVar(&req.Channel, "channel", "", "only events of this channel")
	f.StringVar(&since, "since", "", "only events at or after then: a duration such as 1h, or a time such as 2026-11-21T10:00:00Z")
	f.Uint64Var(&req.AfterSequence, "since-seq", 0, "only events after this sequence number (resume from the last one printed)")
	f.BoolVarP(&follow, "follow", "f", false, "keep streaming new events until interrupted")
	return cmd
}

type recvResult struct {
	event *gatewayv1.Event
	err   error
}

// watchEvents prints events until the stream ends, the user interrupts
// (parent is cancelled), or, without follow, no event arrives within
// caughtUpAfter of the last one. Events before since (unless it is zero) are
// read but not printed: the gateway filters by sequence, not by time.
func watchEvents(parent context.Context, a *app, client gatewayv1.GatewayServiceClient, req *gatewayv1.WatchEventsRequest, follow bool, since time.Time) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	stream, err := client.WatchEvents(ctx, req)
	if err != nil {
		return a.callError(err, "watch events", "")
	}
	// The gateway sends headers once its own stream to the tracker is open;
	// wait for them within --timeout so that a silent gateway is an error,
	// not an empty listing.
	headerTimer := time.AfterFunc(a.timeout, cancel)
	_, err = stream.Header()
	if !headerTimer.Stop() {
		if parent.Err() != nil {
			return nil
		}
		return fmt.Errorf("cannot watch events: the gateway at %s did not answer within %s: check 'herald status' or raise --timeout", a.gateway, a.timeout)
	}
	if err != nil {
		return a.callError(err, "watch events", "")
	}

	results := make(chan recvResult)
	go func() {
		for {
			e, err := stream.Recv()
			select {
			case results <- recvResult{e, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()

	var idle <-chan time.Time
	var idleTimer *time.Timer
	if !follow {
		idleTimer = time.NewTimer(caughtUpAfter)
		defer idleTimer.Stop()
		idle = idleTimer.C
	}
	for {
		select {
		case <-parent.Done():
			return nil // interrupted: a normal way to stop
		case <-idle:
			return nil // caught up
		case r := <-results:
			if errors.Is(r.err, io.EOF) {
				return nil
			}
			if r.err != nil {
				if parent.Err() != nil {
					return nil
				}
				return a.callError(r.err, "watch events", "")
			}
			if since.IsZero() || !r.event.GetTime().AsTime().Before(since) {
				if err := printEvent(a, r.event); err != nil {
					return err
				}
			}
			// Skipped events count too: the stream is not idle while it
			// replays what came before --since.
			if idleTimer != nil {
				idleTimer.Reset(caughtUpAfter)
			}
		}
	}
}

// printEvent writes one event as one line: a text row, or a JSON object.
func printEvent(a *app, e *gatewayv1.Event) error {
	if a.output == "json" {
		b, err := protojson.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode event: %w", err)
		}
		_, err = fmt.Fprintf(a.stdout, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintf(a.stdout, "%d %s %s message=%s channel=%s state=%s attempt=%d error=%s %s\n",
		e.GetSequence(), formatTime(e.GetTime()), e.GetType(), e.GetMessageId(), orDash(e.GetChannel()),
		stateName(e.GetState()), e.GetAttempt(), orDash(e.GetErrorCode()), oneLine(e.GetDetail(), 200))
	return err
}
