package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

func newTraceCmd(a *app, getenv func(string) string) *cobra.Command {
	var jaegerURL string
	cmd := &cobra.Command{
		Use:   "trace ID",
		Short: "Show a message's timeline from the event log and, with --jaeger-url, its span tree",
		Long: `trace prints every state change of a message from herald's event log: time,
event type, state, attempt, error code, and the trace and span ids each change
was made under. With --jaeger-url it also fetches the message's trace from
Jaeger's HTTP query API and prints its spans as a tree, each under its parent.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return errors.New("give exactly one message id: herald trace <id> (herald history lists recent ids)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if jaegerURL != "" {
				u, err := url.Parse(jaegerURL)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					return fmt.Errorf("--jaeger-url %q: give the Jaeger query service's base URL, such as http://127.0.0.1:16686", jaegerURL)
				}
			}
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
			traceID := messageTraceID(resp)

			var spans []jaegerSpan
			var jaegerErr error
			if jaegerURL != "" && traceID != "" {
				jctx, cancel := a.callContext(cmd.Context())
				defer cancel()
				spans, jaegerErr = fetchJaegerTrace(jctx, http.DefaultClient, jaegerURL, traceID)
			}
			if a.output == "json" {
				if err := printTraceJSON(a, resp, traceID, spans); err != nil {
					return err
				}
			} else if err := printTrace(a, resp, traceID, jaegerURL, spans); err != nil {
				return err
			}
			return jaegerErr
		},
	}
	def := getenv("HERALD_JAEGER_URL")
	cmd.Flags().StringVar(&jaegerURL, "jaeger-url", def, "Jaeger query service base URL, such as http://127.0.0.1:16686 (env HERALD_JAEGER_URL); empty skips spans")
	return cmd
}

// messageTraceID is the message's trace id, or the first one its timeline
// names.
func messageTraceID(resp *gatewayv1.GetMessageResponse) string {
	if id := resp.GetMessage().GetTraceId(); id != "" {
		return id
	}
	for _, e := range resp.GetTimeline() {
		if e.GetTraceId() != "" {
			return e.GetTraceId()
		}
	}
	return ""
}

func printTrace(a *app, resp *gatewayv1.GetMessageResponse, traceID, jaegerURL string, spans []jaegerSpan) error {
	m := resp.GetMessage()
	fmt.Fprintf(a.stdout, "message %s  %s  channel=%s conversation=%s attempts=%d\n",
		m.GetId(), stateName(m.GetState()), m.GetChannel(), orDash(m.GetConversation()), m.GetAttempts())
	fmt.Fprintf(a.stdout, "trace %s\n", orDash(traceID))
	fmt.Fprintln(a.stdout, "timeline:")
	if len(resp.GetTimeline()) == 0 {
		fmt.Fprintln(a.stdout, "  (no events)")
	} else {
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  TIME\tTYPE\tSTATE\tATTEMPT\tERROR\tTRACE\tSPAN\tDETAIL")
		for _, e := range resp.GetTimeline() {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n",
				formatTime(e.GetTime()), e.GetType(), stateName(e.GetState()), e.GetAttempt(), orDash(e.GetErrorCode()),
				orDash(e.GetTraceId()), orDash(e.GetSpanId()), oneLine(e.GetDetail(), 120))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	switch {
	case jaegerURL == "":
		return nil
	case traceID == "":
		fmt.Fprintln(a.stdout, "spans: the message carries no trace id")
		return nil
	case len(spans) == 0:
		return nil // the error, if any, is returned by the caller
	}
	fmt.Fprintf(a.stdout, "spans (%d, from %s):\n", len(spans), jaegerURL)
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  SPAN\tSTART\tDURATION\tSPAN ID")
	start := spans[0].StartTime
	for _, s := range spans {
		start = min(start, s.StartTime)
	}
	walkSpans(spans, func(s jaegerSpan, depth int) {
		fmt.Fprintf(tw, "  %s%s %s\t+%s\t%s\t%s\n", strings.Repeat("  ", depth), s.service, s.OperationName,
			micros(s.StartTime-start), micros(s.Duration), s.SpanID)
	})
	return tw.Flush()
}

func micros(us int64) string {
	return (time.Duration(us) * time.Microsecond).String()
}

// traceOutput is trace's --output json.
type traceOutput struct {
	Message  json.RawMessage `json:"message"`
	TraceID  string          `json:"trace_id,omitempty"`
	Timeline json.RawMessage `json:"timeline"`
	Spans    []spanOutput    `json:"spans,omitempty"`
}

type spanOutput struct {
	SpanID         string `json:"span_id"`
	ParentSpanID   string `json:"parent_span_id,omitempty"`
	Depth          int    `json:"depth"`
	Service        string `json:"service"`
	Operation      string `json:"operation"`
	StartMicros    int64  `json:"start_time_us"`
	DurationMicros int64  `json:"duration_us"`
}

func printTraceJSON(a *app, resp *gatewayv1.GetMessageResponse, traceID string, spans []jaegerSpan) error {
	mo := protojson.MarshalOptions{}
	msg, err := mo.Marshal(resp.GetMessage())
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	events := make([]json.RawMessage, 0, len(resp.GetTimeline()))
	for _, e := range resp.GetTimeline() {
		b, err := mo.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		events = append(events, b)
	}
	timeline, err := json.Marshal(events)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	out := traceOutput{Message: msg, TraceID: traceID, Timeline: timeline}
	walkSpans(spans, func(s jaegerSpan, depth int) {
		out.Spans = append(out.Spans, spanOutput{SpanID: s.SpanID, ParentSpanID: s.parent, Depth: depth, Service: s.service,
			Operation: s.OperationName, StartMicros: s.StartTime, DurationMicros: s.Duration})
	})
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	_, err = fmt.Fprintf(a.stdout, "%s\n", b)
	return err
}

// jaegerTraces is the answer of Jaeger's query API GET /api/traces/{id}.
type jaegerTraces struct {
	Data []struct {
		TraceID   string       `json:"traceID"`
		Spans     []jaegerSpan `json:"spans"`
		Processes map[string]struct {
			ServiceName string `json:"serviceName"`
		} `json:"processes"`
	} `json:"data"`
	Errors []struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	} `json:"errors"`
}

type jaegerSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	StartTime int64  `json:"startTime"` // µs since the epoch
	Duration  int64  `json:"duration"`  // µs
	ProcessID string `json:"processID"`

	service string // from processes[ProcessID]
	parent  string // span id of the parent in this trace; "" for a root
}

// fetchJaegerTrace reads one trace from Jaeger's HTTP query API and returns
// its spans with their service names and parents filled in.
func fetchJaegerTrace(ctx context.Context, hc *http.Client, base, traceID string) ([]jaegerSpan, error) {
	u := strings.TrimRight(base, "/") + "/api/traces/" + url.PathEscape(traceID)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("jaeger: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach Jaeger at %s: %w; check --jaeger-url", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("read trace %s from Jaeger: %w", traceID, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("trace %s is not in Jaeger at %s: spans are exported in batches a few seconds after the fact, and only when the services set OTEL_EXPORTER_OTLP_ENDPOINT", traceID, base)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the Jaeger query service at %s answered %s for trace %s: %s", base, resp.Status, traceID, oneLine(string(body), 200))
	}
	var tr jaegerTraces
	if err := json.Unmarshal(body, &tr); err != nil {
		return nil, fmt.Errorf("the answer for trace %s is not the query API's JSON: %w; is --jaeger-url the query service (port 16686)?", traceID, err)
	}
	if len(tr.Errors) > 0 && len(tr.Data) == 0 {
		return nil, fmt.Errorf("the Jaeger query service at %s: trace %s: %s", base, traceID, tr.Errors[0].Msg)
	}
	if len(tr.Data) == 0 || len(tr.Data[0].Spans) == 0 {
		return nil, fmt.Errorf("trace %s is not in Jaeger at %s yet", traceID, base)
	}
	d := tr.Data[0]
	ids := make(map[string]bool, len(d.Spans))
	for _, s := range d.Spans {
		ids[s.SpanID] = true
	}
	spans := make([]jaegerSpan, len(d.Spans))
	for i, s := range d.Spans {
		s.service = d.Processes[s.ProcessID].ServiceName
		if s.service == "" {
			s.service = "?"
		}
		// CHILD_OF names the parent; FOLLOWS_FROM only when there is none.
		// A parent outside the trace (not yet exported) makes a root.
		for _, want := range []string{"CHILD_OF", "FOLLOWS_FROM"} {
			for _, r := range s.References {
				if s.parent == "" && r.RefType == want && ids[r.SpanID] && r.SpanID != s.SpanID {
					s.parent = r.SpanID
				}
			}
		}
		spans[i] = s
	}
	return spans, nil
}

// walkSpans calls fn for every span depth first, children under their
// parent, siblings by start time. Spans in a parent cycle are visited once,
// as roots.
func walkSpans(spans []jaegerSpan, fn func(s jaegerSpan, depth int)) {
	children := map[string][]jaegerSpan{}
	for _, s := range spans {
		children[s.parent] = append(children[s.parent], s)
	}
	for _, c := range children {
		slices.SortStableFunc(c, func(x, y jaegerSpan) int {
			return cmp.Or(cmp.Compare(x.StartTime, y.StartTime), strings.Compare(x.SpanID, y.SpanID))
		})
	}
	seen := map[string]bool{}
	var walk func(s jaegerSpan, depth int)
	walk = func(s jaegerSpan, depth int) {
		if seen[s.SpanID] {
			return
		}
		seen[s.SpanID] = true
		fn(s, depth)
		for _, c := range children[s.SpanID] {
			walk(c, depth+1)
		}
	}
	for _, r := range children[""] {
		walk(r, 0)
	}
	for _, s := range spans { // parents that form a cycle
		if !seen[s.SpanID] {
			walk(s, 0)
		}
	}
}
