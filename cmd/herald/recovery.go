package main

import (
	"fmt"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

func newRecoveryCmd(a *app) *cobra.Command {
	root := &cobra.Command{Use: "recovery", Short: "What recovery would do"}
	var list, dryRun bool
	var limit uint32
	status := &cobra.Command{
		Use:   "status [--dry-run --list]",
		Short: "Show what recovery would (re)send right now, from the tracker's recovery index",
		Long: `Show the counts recovery works from: messages due, in flight (with what happens if
their lease expires), unknown outcomes by policy, messages waiting behind their
conversation, and aborted messages, which recovery never sends. Nothing is
changed. With --dry-run --list, every message recovery would act on and why.`,
		Example: `  herald recovery status
  herald recovery status --dry-run --list --limit 50`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if list && !dryRun {
				return fmt.Errorf("--list goes with --dry-run: recovery status never acts, and says so")
			}
			client, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			resp, err := client.RecoveryStatus(ctx, &gatewayv1.RecoveryStatusRequest{List: list, Limit: limit})
			if err != nil {
				return a.callError(err, "read the recovery status", "")
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 2, 2, ' ', 0)
			fmt.Fprintf(w, "due\t%d\n", resp.GetDue())
			fmt.Fprintf(w, "in flight\t%d\n", resp.GetInFlight())
			fmt.Fprintf(w, "waiting behind their conversation\t%d\n", resp.GetBlocked())
			policies := make([]string, 0, len(resp.GetUnknown()))
			for p := range resp.GetUnknown() {
				policies = append(policies, p)
			}
			sort.Strings(policies)
			if len(policies) == 0 {
				fmt.Fprintf(w, "unknown outcome\t0\n")
			}
			for _, p := range policies {
				fmt.Fprintf(w, "unknown outcome (policy %s)\t%d\n", p, resp.GetUnknown()[p])
			}
			fmt.Fprintf(w, "aborted (excluded, never sent)\t%d\n", resp.GetAbortedExcluded())
			if err := w.Flush(); err != nil {
				return err
			}
			if !list {
				return nil
			}
			fmt.Fprintln(a.stdout)
			w = tabwriter.NewWriter(a.stdout, 0, 2, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tCHANNEL\tKIND\tAT\tWOULD")
			for _, it := range resp.GetItems() {
				at := "-"
				if it.GetAt() != nil {
					at = it.GetAt().AsTime().UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", it.GetId(), it.GetChannel(), it.GetKind(), at, it.GetAction())
			}
			return w.Flush()
		},
	}
	status.Flags().BoolVar(&dryRun, "dry-run", false, "change nothing (recovery status never does); needed with --list")
	status.Flags().BoolVar(&list, "list", false, "list each message recovery would act on and why")
	status.Flags().Uint32Var(&limit, "limit", 100, "most messages to list")
	root.AddCommand(status)
	return root
}
