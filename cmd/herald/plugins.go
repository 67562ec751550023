package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

func newPluginsCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "plugins",
		Short: "List the plugin host's channels, adapters and health",
		Long: `List each channel with its adapter and health. A channel is degraded after
consecutive failed deliveries (a channel.unhealthy event is recorded too) and healthy
again after one success.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			resp, err := client.ListChannels(ctx, &gatewayv1.ListChannelsRequest{})
			if err != nil {
				return a.callError(err, "list the channels", "")
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 2, 2, ' ', 0)
			fmt.Fprintln(w, "CHANNEL\tADAPTER\tHEALTH\tCONSECUTIVE FAILURES")
			for _, c := range resp.GetChannels() {
				health := "healthy"
				if !c.GetHealthy() {
					health = "DEGRADED"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\n", c.GetName(), c.GetAdapter(), health, c.GetConsecutiveFailures())
			}
			return w.Flush()
		},
	}
}
