package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

func newAbortCmd(a *app) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     "abort ID [--reason TEXT]",
		Short:   "Cancel a message before delivery; a finished message is left as it is",
		Example: `  herald abort 01JD7X0000000000000000000A --reason "sent to the wrong customer"`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return errors.New("give exactly one message id: herald abort <id> (herald history lists recent ids)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			client, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			resp, err := client.Abort(ctx, &gatewayv1.AbortRequest{Id: id, Reason: reason})
			if status.Code(err) == codes.NotFound {
				return fmt.Errorf("no message with id %s: check the id; 'herald history' lists recent messages", id)
			}
			if err != nil {
				// Abort is idempotent: repeating it is always safe.
				return a.callError(err, "abort message "+id, "the abort may or may not have been made; run the same command again")
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			line := fmt.Sprintf("id=%s state=%s", id, stateName(resp.GetState()))
			switch {
			case resp.GetAlreadyFinal():
				line += " already_final=true (nothing changed)"
			case resp.GetState() == gatewayv1.DeliveryState_DELIVERY_STATE_IN_FLIGHT:
				// The attempt under way is cancelled; the provider may
				// still confirm it first, and then the message stays sent.
				line += " abort_requested=true (ends ABORTED unless the provider confirms the attempt in flight; 'herald get " + id + "' shows the end)"
			}
			_, err = fmt.Fprintln(a.stdout, line)
			return err
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the message is aborted; kept in its timeline")
	return cmd
}
