package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// maxDeadLetters is the most dead letters one ListDeadLetters call returns;
// --all acts on at most this many per run.
const maxDeadLetters = 1000

func newDLQCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "List, redrive and purge dead letters (messages that FAILED)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return fmt.Errorf("give a subcommand: list, redrive or purge (see '%s --help')", cmd.CommandPath())
		},
	}
	cmd.AddCommand(newDLQListCmd(a), newDLQRedriveCmd(a), newDLQPurgeCmd(a))
	return cmd
}

// dlqFilter holds the flags that select dead letters.
type dlqFilter struct {
	channel string
	since   string
	code    string
}

func (f *dlqFilter) addFlags(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.channel, "channel", "", "only dead letters of this channel")
	fs.StringVar(&f.since, "since", "", "only dead letters that failed since then: a duration such as 1h, or a time such as 2026-11-21T10:00:00Z")
	fs.StringVar(&f.code, "code", "", "only dead letters with this error code or reason, such as DLV_003 or PLG_001")
}

func (f *dlqFilter) set() bool { return f.channel != "" || f.since != "" || f.code != "" }

// request builds the ListDeadLetters request for f.
func (f *dlqFilter) request(a *app, limit uint32) (*gatewayv1.ListDeadLettersRequest, error) {
	req := &gatewayv1.ListDeadLettersRequest{Channel: f.channel, Code: f.code, Limit: limit}
	if f.since != "" {
		t, err := parseSince("since", f.since, a.now())
		if err != nil {
			return nil, err
		}
		req.Since = timestamppb.New(t)
	}
	return req, nil
}

// listDeadLetters makes one ListDeadLetters call within --timeout.
func listDeadLetters(ctx context.Context, a *app, req *gatewayv1.ListDeadLettersRequest) (*gatewayv1.ListDeadLettersResponse, error) {
	client, err := a.client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := a.callContext(ctx)
	defer cancel()
	resp, err := client.ListDeadLetters(ctx, req)
	if err != nil {
		return nil, a.callError(err, "list dead letters", "")
	}
	return resp, nil
}

func newDLQListCmd(a *app) *cobra.Command {
	var (
		f     dlqFilter
		limit uint32
	)
	cmd := &cobra.Command{
		Use:   "list [--channel CH] [--since 1h|TIME] [--code CODE] [--limit N]",
		Short: "List dead letters, oldest failure first",
		Example: `  herald dlq list --channel webhook --since 1h
  herald dlq list --code PLG_001 --limit 20`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 || limit > maxDeadLetters {
				return fmt.Errorf("--limit %d: give a number from 1 to %d", limit, maxDeadLetters)
			}
			req, err := f.request(a, limit)
			if err != nil {
				return err
			}
			resp, err := listDeadLetters(cmd.Context(), a, req)
			if err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			if len(resp.GetMessages()) == 0 {
				_, err := fmt.Fprintln(a.stdout, "no dead letters")
				return err
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tCHANNEL\tRECIPIENT\tREASON\tLAST ERROR\tATTEMPTS\tUPDATED")
			for _, m := range resp.GetMessages() {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n",
					m.GetId(), m.GetChannel(), oneLine(m.GetRecipient(), 40), orDash(oneLine(m.GetReason(), 40)),
					orDash(oneLine(lastError(m), 60)), m.GetAttempts(), formatTime(m.GetUpdatedAt()))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if uint32(len(resp.GetMessages())) == limit {
				_, err = fmt.Fprintf(a.stdout, "(showing the first %d; raise --limit or narrow the filters to see more)\n", limit)
			}
			return err
		},
	}
	f.addFlags(cmd)
	cmd.Flags().Uint32Var(&limit, "limit", 100, fmt.Sprintf("most dead letters to list (1 to %d)", maxDeadLetters))
	return cmd
}

// lastError is a message's last error with its code in front.
func lastError(m *gatewayv1.Message) string {
	if code := m.GetLastErrorCode(); code != "" {
		return code + " " + m.GetLastError()
	}
	return m.GetLastError()
}

// dlqAction is redrive or purge, as the batch runner needs it.
type dlqAction struct {
	verb      string // "redrive"
	done      string // "redriven"
	wouldVerb string // "would redrive"
	call      func(ctx context.Context, client gatewayv1.GatewayServiceClient, id string) (gatewayv1.DeliveryState, error)
}

var (
	redriveAction = dlqAction{verb: "redrive", done: "redriven", wouldVerb: "would redrive",
		call: func(ctx context.Context, c gatewayv1.GatewayServiceClient, id string) (gatewayv1.DeliveryState, error) {
			resp, err := c.Redrive(ctx, &gatewayv1.RedriveRequest{Id: id})
			return resp.GetState(), err
		}}
	purgeAction = dlqAction{verb: "purge", done: "purged", wouldVerb: "would purge",
		call: func(ctx context.Context, c gatewayv1.GatewayServiceClient, id string) (gatewayv1.DeliveryState, error) {
			resp, err := c.Purge(ctx, &gatewayv1.PurgeRequest{Id: id})
			return resp.GetState(), err
		}}
)

// dlqTarget is what a redrive or purge command acts on: one id, or --all
// dead letters that match the filter.
type dlqTarget struct {
	all    bool
	dryRun bool
	filter dlqFilter
}

func (t *dlqTarget) check(args []string, act dlqAction) error {
	switch {
	case t.all && len(args) > 0:
		return fmt.Errorf("give a message id or --all, not both")
	case !t.all && len(args) != 1:
		return fmt.Errorf("give exactly one dead letter's id, or --all to %s every dead letter that matches --channel, --since and --code ('herald dlq list' shows them)", act.verb)
	case !t.all && t.filter.set():
		return errors.New("--channel, --since and --code select dead letters for --all: leave them out when you give an id")
	}
	return nil
}

// run acts on the target and prints one line per message, then a summary.
func (t *dlqTarget) run(ctx context.Context, a *app, act dlqAction, args []string) error {
	if a.output == "json" {
		return fmt.Errorf("--output json is not supported by dlq %s: use 'herald dlq list --output json' to read the dead letters", act.verb)
	}
	var msgs []*gatewayv1.Message
	more := false
	if t.all {
		req, err := t.filter.request(a, maxDeadLetters)
		if err != nil {
			return err
		}
		resp, err := listDeadLetters(ctx, a, req)
		if err != nil {
			return err
		}
		msgs = resp.GetMessages()
		more = len(msgs) == maxDeadLetters
	} else if t.dryRun {
		m, err := getDeadLetter(ctx, a, args[0], act)
		if err != nil {
			return err
		}
		msgs = []*gatewayv1.Message{m}
	} else {
		// The gateway checks that it is a dead letter; no need to ask first.
		msgs = []*gatewayv1.Message{{Id: args[0]}}
	}

	if t.dryRun {
		for _, m := range msgs {
			fmt.Fprintf(a.stdout, "%s id=%s channel=%s reason=%s error=%s attempts=%d updated=%s\n",
				act.wouldVerb, m.GetId(), m.GetChannel(), orDash(oneLine(m.GetReason(), 60)), orDash(m.GetLastErrorCode()),
				m.GetAttempts(), formatTime(m.GetUpdatedAt()))
		}
		fmt.Fprintf(a.stdout, "%s %d\n", act.wouldVerb, len(msgs))
		return t.printMore(a, more, act)
	}

	client, err := a.client()
	if err != nil {
		return err
	}
	done, skipped := 0, 0
	summary := func() {
		line := fmt.Sprintf("%s %d", act.done, done)
		if skipped > 0 {
			line += fmt.Sprintf(", skipped %d (no longer dead letters)", skipped)
		}
		fmt.Fprintln(a.stdout, line)
	}
	for _, m := range msgs {
		cctx, cancel := a.callContext(ctx)
		state, err := act.call(cctx, client, m.GetId())
		cancel()
		switch code := status.Code(err); {
		case err == nil:
			done++
			fmt.Fprintf(a.stdout, "%s id=%s state=%s\n", act.done, m.GetId(), stateName(state))
		case t.all && (code == codes.FailedPrecondition || code == codes.NotFound):
			// Changed since it was listed (redriven, purged, or
			// finished by someone else): nothing to do for it.
			skipped++
			fmt.Fprintf(a.stdout, "skipped id=%s: %s\n", m.GetId(), status.Convert(err).Message())
		case !t.all && code == codes.NotFound:
			return fmt.Errorf("no message with id %s: check the id; 'herald dlq list' lists dead letters", m.GetId())
		default:
			summary()
			return a.callError(err, act.verb+" message "+m.GetId(),
				"the "+act.verb+" may or may not have been made; 'herald get "+m.GetId()+"' shows its state")
		}
	}
	summary()
	return t.printMore(a, more, act)
}

func (t *dlqTarget) printMore(a *app, more bool, act dlqAction) error {
	if !more {
		return nil
	}
	_, err := fmt.Fprintf(a.stdout, "only the first %d dead letters were taken: run the command again for the rest\n", maxDeadLetters)
	return err
}

// getDeadLetter reads one message and checks that it is a dead letter, so
// that a dry run says what the real run would do.
func getDeadLetter(ctx context.Context, a *app, id string, act dlqAction) (*gatewayv1.Message, error) {
	client, err := a.client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := a.callContext(ctx)
	defer cancel()
	resp, err := client.GetMessage(ctx, &gatewayv1.GetMessageRequest{Id: id})
	if status.Code(err) == codes.NotFound {
		return nil, fmt.Errorf("no message with id %s: check the id; 'herald dlq list' lists dead letters", id)
	}
	if err != nil {
		return nil, a.callError(err, "get message "+id, "")
	}
	m := resp.GetMessage()
	if m.GetState() != gatewayv1.DeliveryState_DELIVERY_STATE_FAILED {
		return nil, fmt.Errorf("cannot %s message %s: it is %s, not a dead letter", act.verb, id, stateName(m.GetState()))
	}
	return m, nil
}

func newDLQRedriveCmd(a *app) *cobra.Command {
	var t dlqTarget
	cmd := &cobra.Command{
		Use:   "redrive (ID | --all [--channel CH] [--since 1h|TIME] [--code CODE]) [--dry-run]",
		Short: "Send dead letters again with a fresh attempt budget; their history is kept",
		Example: `  herald dlq redrive 01JD7X0000000000000000000A
  herald dlq redrive --all --channel webhook --since 1h --dry-run`,
		Args: func(_ *cobra.Command, args []string) error { return t.check(args, redriveAction) },
		RunE: func(cmd *cobra.Command, args []string) error {
			return t.run(cmd.Context(), a, redriveAction, args)
		},
	}
	t.filter.addFlags(cmd)
	cmd.Flags().BoolVar(&t.all, "all", false, "redrive every dead letter that matches the filters")
	cmd.Flags().BoolVar(&t.dryRun, "dry-run", false, "only print what would be redriven")
	return cmd
}

func newDLQPurgeCmd(a *app) *cobra.Command {
	var (
		t   dlqTarget
		yes bool
	)
	cmd := &cobra.Command{
		Use:   "purge (ID | --all [--channel CH] [--since 1h|TIME] [--code CODE]) (--dry-run | --yes)",
		Short: "Remove dead letters from the list for good; the messages and their history stay readable",
		Example: `  herald dlq purge --all --code PLG_001 --dry-run
  herald dlq purge 01JD7X0000000000000000000A --yes`,
		Args: func(_ *cobra.Command, args []string) error {
			if err := t.check(args, purgeAction); err != nil {
				return err
			}
			switch {
			case t.dryRun && yes:
				return errors.New("give --dry-run or --yes, not both")
			case !t.dryRun && !yes:
				return errors.New("purge cannot be undone: add --dry-run to see what would be purged, or --yes to purge")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return t.run(cmd.Context(), a, purgeAction, args)
		},
	}
	t.filter.addFlags(cmd)
	cmd.Flags().BoolVar(&t.all, "all", false, "purge every dead letter that matches the filters")
	cmd.Flags().BoolVar(&t.dryRun, "dry-run", false, "only print what would be purged")
	cmd.Flags().BoolVar(&yes, "yes", false, "purge: confirm that the dead letters leave the list for good")
	return cmd
}
