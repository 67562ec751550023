package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

func newSendCmd(a *app) *cobra.Command {
	var (
		req  gatewayv1.SendRequest
		meta []string
		ttl  time.Duration
		file string
	)
	cmd := &cobra.Command{
		Use:   "send --channel CHANNEL --to RECIPIENT --text TEXT",
		Short: "Send a message and print its id, state and sequence",
		Example: `  herald send --channel webhook --to http://127.0.0.1:9000/hook --conversation c1 --text "hello"
  herald send --channel telegram --to 12345 --text "hi" --key order-17 --meta lang=en --ttl 1h
  herald send --file messages.jsonl                 # one SendRequest per line, over one SendStream
  herald send --channel mock --to u1 --file -       # lines from stdin; flags fill what a line leaves out`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" && req.Channel == "" {
				return errors.New("--channel is required: name the channel to deliver on, such as webhook, telegram or slack")
			}
			if file == "" && req.Recipient == "" {
				return errors.New("--to is required: give the recipient's address on the channel, such as a webhook URL or a chat id")
			}
			if len(meta) > 0 {
				req.Metadata = make(map[string]string, len(meta))
				for _, kv := range meta {
					k, v, ok := strings.Cut(kv, "=")
					if !ok || k == "" {
						return fmt.Errorf("--meta %q: write each entry as key=value", kv)
					}
					req.Metadata[k] = v
				}
			}
			if ttl < 0 {
				return fmt.Errorf("--ttl %s: give a positive duration such as 1h, or leave it out for no time-to-live", ttl)
			}
			// Round up so that a sub-second TTL does not become "no TTL".
			req.TtlSeconds = int64(math.Ceil(ttl.Seconds()))
			req.Tenant = a.tenant
			if file != "" {
				if req.IdempotencyKey != "" {
					return errors.New("--key with --file: one key would make every line the same message; give each line its own idempotency_key")
				}
				in := cmd.InOrStdin()
				if file != "-" {
					f, err := os.Open(file)
					if err != nil {
						return fmt.Errorf("--file: %w", err)
					}
					defer f.Close()
					in = f
				}
				return a.sendLines(cmd.Context(), in, &req)
			}

			client, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			resp, err := client.Send(ctx, &req)
			if err != nil {
				hint := "the message may or may not have been accepted; retry with the same --key"
				if req.IdempotencyKey == "" {
					hint = "the message may or may not have been accepted; check 'herald history' before sending again, and use --key to make retries safe"
				}
				return a.callError(err, "send the message", hint)
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			_, err = fmt.Fprintln(a.stdout, sentLine(resp))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Channel, "channel", "", "channel to deliver on: webhook, mock, telegram, slack, ...")
	f.StringVar(&req.Recipient, "to", "", "recipient address on the channel: a URL for webhook, a chat id for telegram")
	f.StringVar(&req.Conversation, "conversation", "", "conversation; messages of one conversation are delivered in order (default: the recipient)")
	f.StringVar(&req.Text, "text", "", "message text")
	f.StringVar(&req.IdempotencyKey, "key", "", "idempotency key: repeating a send with the same key returns the original message")
	f.StringArrayVar(&meta, "meta", nil, "metadata entry key=value (repeatable)")
	f.DurationVar(&ttl, "ttl", 0, "time-to-live, such as 1h; an undelivered message expires after it (default: none)")
	f.StringVar(&file, "file", "", "send every line of this file ('-' for stdin), each a SendRequest in JSON, over one stream; prints one line per message")
	return cmd
}

// sentLine is the text output for an accepted message.
func sentLine(r *gatewayv1.SendResponse) string {
	line := fmt.Sprintf("id=%s state=%s sequence=%d", r.GetId(), stateName(r.GetState()), r.GetSequence())
	if r.GetDuplicate() {
		line += " duplicate=true"
	}
	return line
}
