package main

import (
	"fmt"
	"maps"
	"slices"
	"text/tabwriter"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

func newStateCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "state",
		Short: "Inspect the tracker's store",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return fmt.Errorf("give a subcommand: verify (see '%s --help')", cmd.CommandPath())
		},
	}
	cmd.AddCommand(newStateVerifyCmd(a))
	return cmd
}

func newStateVerifyCmd(a *app) *cobra.Command {
	var full bool
	cmd := &cobra.Command{
		Use:   "verify [--full]",
		Short: "Check the tracker's store invariants; exit 1 when a problem is found",
		Example: `  herald state verify
  herald state verify --full --timeout 5m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			resp, err := client.VerifyState(ctx, &gatewayv1.VerifyStateRequest{Full: full})
			if err != nil {
				return a.callError(err, "verify the tracker's state", "")
			}
			if a.output == "json" {
				err = a.printJSON(resp)
			} else {
				err = printVerify(a, resp, full)
			}
			if err != nil {
				return err
			}
			switch n := len(resp.GetProblems()); n {
			case 0:
				return nil
			case 1:
				return fmt.Errorf("1 problem found")
			default:
				return fmt.Errorf("%d problems found", n)
			}
		},
	}
	cmd.Flags().BoolVar(&full, "full", false, "also check the event log for gaps and that every record decodes (slower)")
	return cmd
}

func printVerify(a *app, resp *gatewayv1.VerifyStateResponse, full bool) error {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "messages:\t%d\n", resp.GetMessages())
	if full {
		fmt.Fprintf(tw, "events:\t%d\n", resp.GetEvents())
	} else {
		fmt.Fprintln(tw, "events:\tnot read (--full reads them)")
	}
	fmt.Fprintf(tw, "recovery entries:\t%d\n", resp.GetRecoveryEntries())
	fmt.Fprintf(tw, "state hash:\t%s\n", orDash(resp.GetStateHash()))
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "STATE\tMESSAGES")
	counts := resp.GetCounts()
	// Known states in lifecycle order, then anything newer by name.
	for n := int32(1); gatewayv1.DeliveryState_name[n] != ""; n++ {
		short := stateName(gatewayv1.DeliveryState(n))
		fmt.Fprintf(tw, "%s\t%d\n", short, counts[short])
	}
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		if _, known := gatewayv1.DeliveryState_value["DELIVERY_STATE_"+k]; !known {
			fmt.Fprintf(tw, "%s\t%d\n", k, counts[k])
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	if len(resp.GetProblems()) == 0 {
		_, err := fmt.Fprintln(a.stdout, "problems: none")
		return err
	}
	fmt.Fprintln(a.stdout, "problems:")
	for _, p := range resp.GetProblems() {
		fmt.Fprintf(a.stdout, "  %s\n", p)
	}
	return nil
}
