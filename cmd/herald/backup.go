package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

func newBackupCmd(a *app) *cobra.Command {
	var keep uint32
	cmd := &cobra.Command{
		Use:   "backup [--keep N]",
		Short: "Write a consistent checkpoint of the tracker's store and print its folder",
		Long: `Write an online, consistent checkpoint of the tracker's store into its backup
folder (the tracker's --backup-dir) and print the new backup's path, on the
tracker's host. Only the newest --keep backups are kept.`,
		Example: `  herald backup
  herald backup --keep 7 --timeout 5m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keep < 1 {
				return errors.New("--keep 0: keep at least 1 backup")
			}
			client, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			resp, err := client.Backup(ctx, &gatewayv1.BackupRequest{Keep: keep})
			if err != nil {
				return a.callError(err, "back up the tracker",
					"the backup may still be written; check the tracker's backup folder, or raise --timeout for a large store")
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			_, err = fmt.Fprintln(a.stdout, resp.GetPath())
			return err
		},
	}
	cmd.Flags().Uint32Var(&keep, "keep", 3, "how many of the newest backups to keep, this one included")
	return cmd
}
