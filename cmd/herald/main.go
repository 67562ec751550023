// Command herald is the operator's command line for a running herald: send a
// message, read its state and history, watch delivery events, check the
// services' health, abort messages, work the dead-letter list, back up and
// verify the tracker's store. It talks only to the gateway's public API.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/heraldchat/herald/pkg/grpcclient"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one herald command and returns the process exit code. Errors
// are printed to stderr as "herald: <what happened and what to do>".
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, now: time.Now}
	root := newRootCmd(a, getenv)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	a.close()
	if err != nil {
		fmt.Fprintf(stderr, "herald: %v\n", err)
		return 1
	}
	return 0
}

// app holds the global flags and the gateway connection shared by commands.
type app struct {
	stdout io.Writer
	// now is the clock that --since durations count back from.
	now func() time.Time

	gateway string
	tenant  string
	timeout time.Duration
	output  string

	conn *grpc.ClientConn
}

func newRootCmd(a *app, getenv func(string) string) *cobra.Command {
	gatewayDefault := getenv("HERALD_GATEWAY")
	if gatewayDefault == "" {
		gatewayDefault = "127.0.0.1:7300"
	}
	root := &cobra.Command{
		Use:           "herald",
		Short:         "Operate a running herald: send messages, read their state, watch delivery events",
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if a.output != "text" && a.output != "json" {
				return fmt.Errorf("--output %q: use text or json", a.output)
			}
			if a.timeout <= 0 {
				return fmt.Errorf("--timeout %s: give a positive duration, such as 10s", a.timeout)
			}
			if a.gateway == "" {
				return errors.New("--gateway is empty: give the gateway's host:port, such as 127.0.0.1:7300")
			}
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.gateway, "gateway", gatewayDefault, "gateway address host:port (env HERALD_GATEWAY)")
	pf.StringVar(&a.tenant, "tenant", getenv("HERALD_TENANT"), "tenant (env HERALD_TENANT; the gateway defaults it to \"default\")")
	pf.DurationVar(&a.timeout, "timeout", 10*time.Second, "how long to wait for each answer from the gateway")
	pf.StringVar(&a.output, "output", "text", "output format: text or json")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%v (see '%s --help')", err, cmd.CommandPath())
	})

	root.AddCommand(newSendCmd(a), newGetCmd(a), newHistoryCmd(a), newStatusCmd(a), newEventsCmd(a),
		newAbortCmd(a), newDLQCmd(a), newBackupCmd(a), newStateCmd(a), newTraceCmd(a, getenv), newRecoveryCmd(a), newPluginsCmd(a))
	return root
}

// client returns a GatewayService client, connecting on first use. Dialling
// does not block: an unreachable gateway shows up as the first call's error.
func (a *app) client() (gatewayv1.GatewayServiceClient, error) {
	if a.conn == nil {
		conn, err := grpcclient.Dial(a.gateway)
		if err != nil {
			return nil, fmt.Errorf("--gateway %q: %v; give host:port, such as 127.0.0.1:7300", a.gateway, err)
		}
		a.conn = conn
	}
	return gatewayv1.NewGatewayServiceClient(a.conn), nil
}

func (a *app) close() {
	if a.conn != nil {
		_ = a.conn.Close()
	}
}

// callContext bounds one unary call by --timeout.
func (a *app) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.timeout)
}

// callError turns an error from a gateway call into what the operator reads.
// what names the attempted action ("send the message"); whenTimedOut, if not
// empty, replaces the generic advice after a timeout.
func (a *app) callError(err error, what, whenTimedOut string) error {
	st := status.Convert(err)
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		if isConnectionError(msg) {
			return fmt.Errorf("cannot reach the gateway at %s: is herald running? (make run)", a.gateway)
		}
		return fmt.Errorf("cannot %s: %s", what, msg)
	case codes.DeadlineExceeded:
		if whenTimedOut != "" {
			return fmt.Errorf("cannot %s: no answer within %s: %s", what, a.timeout, whenTimedOut)
		}
		return fmt.Errorf("cannot %s: the gateway at %s did not answer within %s: check 'herald status' or raise --timeout", what, a.gateway, a.timeout)
	case codes.Canceled:
		return fmt.Errorf("cannot %s: interrupted", what)
	case codes.Unimplemented:
		return fmt.Errorf("cannot %s: the gateway at %s does not support it: upgrade the gateway", what, a.gateway)
	default:
		return fmt.Errorf("cannot %s: %s", what, msg)
	}
}

// isConnectionError tells a transport failure, generated by the client's
// gRPC library, from an UNAVAILABLE answer sent by the gateway itself.
func isConnectionError(msg string) bool {
	for _, s := range []string{"connection error", "transport:", "dial tcp", "connection refused", "name resolver", "produced zero addresses", "connection closed"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// printJSON writes m as indented protojson.
func (a *app) printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	_, err = fmt.Fprintf(a.stdout, "%s\n", b)
	return err
}

// stateName is a delivery state's short name: PENDING, DELIVERED, ...
func stateName(s gatewayv1.DeliveryState) string {
	return strings.TrimPrefix(s.String(), "DELIVERY_STATE_")
}

// parseSince reads a --since value: a duration back from now ("1h", "90m")
// or an RFC 3339 time ("2026-11-21T10:00:00Z").
func parseSince(flag, v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--%s %q: give a positive duration, such as 1h", flag, v)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("--%s %q: give a duration back from now, such as 1h or 30m, or a time, such as 2026-11-21T10:00:00Z", flag, v)
	}
	return t, nil
}

// formatTime formats t in UTC with milliseconds, or "-" when unset.
func formatTime(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().UTC().Format("2006-01-02T15:04:05.000Z")
}

// orDash returns s, or "-" when s is empty, so that columns stay aligned.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine shortens s to max runes on one line, for tables.
func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	r := []rune(s)
	if len(r) > max {
		return string(r[:max-1]) + "…"
	}
	return s
}
