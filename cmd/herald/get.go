package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

func newGetCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show a message's state, attempts, last error and timeline",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return errors.New("give exactly one message id: herald get <id> (herald history lists recent ids)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			resp, err := client.GetMessage(ctx, &gatewayv1.GetMessageRequest{Id: args[0]})
			if status.Code(err) == codes.NotFound {
				return fmt.Errorf("no message with id %s: check the id; 'herald history' lists recent messages", args[0])
			}
			if err != nil {
				return a.callError(err, "get message "+args[0], "")
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			return printMessage(a, resp)
		},
	}
}

func printMessage(a *app, resp *gatewayv1.GetMessageResponse) error {
	m := resp.GetMessage()
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("id", m.GetId())
	row("tenant", m.GetTenant())
	row("channel", m.GetChannel())
	row("recipient", m.GetRecipient())
	row("conversation", m.GetConversation())
	row("sequence", fmt.Sprint(m.GetSequence()))
	row("state", stateName(m.GetState()))
	row("attempts", fmt.Sprint(m.GetAttempts()))
	lastErr := m.GetLastError()
	if code := m.GetLastErrorCode(); code != "" {
		lastErr = code + " " + lastErr
	}
	row("last error", orDash(lastErr))
	row("reason", orDash(m.GetReason()))
	row("provider id", orDash(m.GetProviderMessageId()))
	row("trace id", orDash(m.GetTraceId()))
	row("accepted at", formatTime(m.GetAcceptedAt()))
	row("updated at", formatTime(m.GetUpdatedAt()))
	row("next attempt", formatTime(m.GetNextAttemptAt()))
	md := m.GetMetadata()
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(md)) {
		kv = append(kv, k+"="+md[k])
	}
	row("metadata", orDash(strings.Join(kv, " ")))
	row("text", oneLine(m.GetText(), 200))
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(a.stdout, "timeline:")
	if len(resp.GetTimeline()) == 0 {
		fmt.Fprintln(a.stdout, "  (no events)")
		return nil
	}
	tw = tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	for _, e := range resp.GetTimeline() {
		fmt.Fprintf(tw, "  %s\t%s\t%s\tattempt=%d\terror=%s\t%s\n",
			formatTime(e.GetTime()), e.GetType(), stateName(e.GetState()), e.GetAttempt(), orDash(e.GetErrorCode()), oneLine(e.GetDetail(), 200))
	}
	return tw.Flush()
}
