package main

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

func newHistoryCmd(a *app) *cobra.Command {
	var req gatewayv1.HistoryRequest
	cmd := &cobra.Command{
		Use:   "history (--conversation C | --recipient R [--channel CH]) [--limit N]",
		Short: "List a conversation's or a recipient's messages, newest first",
		Example: `  herald history --conversation c1 --limit 5
  herald history --recipient http://127.0.0.1:9000/hook --channel webhook`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case req.Conversation == "" && req.Recipient == "":
				return errors.New("give --conversation or --recipient to choose whose history to list")
			case req.Conversation != "" && req.Recipient != "":
				return errors.New("give --conversation or --recipient, not both")
			}
			if req.Limit < 1 || req.Limit > 1000 {
				return fmt.Errorf("--limit %d: give a number from 1 to 1000", req.Limit)
			}
			req.Tenant = a.tenant
			client, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			resp, err := client.History(ctx, &req)
			if err != nil {
				return a.callError(err, "list history", "")
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			if len(resp.GetMessages()) == 0 {
				_, err := fmt.Fprintln(a.stdout, "no messages")
				return err
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSEQ\tSTATE\tATTEMPTS\tCHANNEL\tRECIPIENT\tCONVERSATION\tACCEPTED\tTEXT")
			for _, m := range resp.GetMessages() {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n",
					m.GetId(), m.GetSequence(), stateName(m.GetState()), m.GetAttempts(), m.GetChannel(),
					oneLine(m.GetRecipient(), 40), oneLine(m.GetConversation(), 30), formatTime(m.GetAcceptedAt()), oneLine(m.GetText(), 40))
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Conversation, "conversation", "", "conversation to list")
	f.StringVar(&req.Recipient, "recipient", "", "recipient address to list")
	f.StringVar(&req.Channel, "channel", "", "with --recipient: the recipient's channel")
	f.Uint32Var(&req.Limit, "limit", 20, "most messages to list (1 to 1000)")
	return cmd
}
