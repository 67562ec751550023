package main

import (
	"fmt"
	"maps"
	"slices"
	"text/tabwriter"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

func newStatusCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show each service's health, message counts per delivery state and the recovery-index size",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			resp, err := client.Status(ctx, &gatewayv1.StatusRequest{})
			if err != nil {
				return a.callError(err, "get the status", "")
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tADDRESS\tHEALTH\tDETAIL")
			for _, s := range resp.GetServices() {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.GetName(), orDash(s.GetAddress()), s.GetHealth(), oneLine(s.GetDetail(), 300))
			}
			fmt.Fprintln(tw)
			if !trackerAnswered(resp) {
				fmt.Fprintln(tw, "message counts: unavailable (the tracker did not answer; see above)")
				return tw.Flush()
			}
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
			fmt.Fprintln(tw)
			fmt.Fprintf(tw, "recovery index:\t%d\n", resp.GetRecoveryIndexSize())
			// Degraded channels, best effort: the plugin host may be down.
			if ch, err := client.ListChannels(ctx, &gatewayv1.ListChannelsRequest{}); err == nil {
				for _, c := range ch.GetChannels() {
					if !c.GetHealthy() {
						fmt.Fprintf(tw, "channel %s:\tDEGRADED (%d consecutive failures)\n", c.GetName(), c.GetConsecutiveFailures())
					}
				}
			}
			return tw.Flush()
		},
	}
}

// trackerAnswered reports whether the counts in resp come from the tracker:
// the gateway reports a tracker that did not answer in its service entry and
// then leaves the counts empty, which must not read as "no messages".
func trackerAnswered(resp *gatewayv1.StatusResponse) bool {
	if len(resp.GetCounts()) > 0 {
		return true
	}
	for _, s := range resp.GetServices() {
		if s.GetName() == "tracker" {
			return s.GetHealth() == "SERVING" && s.GetDetail() == ""
		}
	}
	return true
}
