package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

// maxLine bounds one line of --file: a message's text, metadata and key
// together stay far below it.
const maxLine = 1 << 20

// sendLines sends every non-empty line of in, each a SendRequest in JSON,
// over one SendStream, filling what a line leaves out from defaults. It
// prints one line per message as its answer comes (ref = line number), and
// fails when any message was not accepted.
func (a *app) sendLines(ctx context.Context, in io.Reader, defaults *gatewayv1.SendRequest) error {
	client, err := a.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.SendStream(ctx)
	if err != nil {
		return a.callError(err, "open a send stream", "")
	}

	var (
		outMu      sync.Mutex
		unanswered = map[uint64]bool{} // lines sent, not yet answered
		accepted   int
		failed     int
		readErr    error
	)
	report := func(out *gatewayv1.SendStreamResponse) error {
		outMu.Lock()
		defer outMu.Unlock()
		delete(unanswered, out.GetRef())
		if out.GetResponse() != nil {
			accepted++
		} else {
			failed++
		}
		if a.output == "json" {
			b, err := protojson.Marshal(out)
			if err != nil {
				return fmt.Errorf("encode output: %w", err)
			}
			_, err = fmt.Fprintf(a.stdout, "%s\n", b)
			return err
		}
		var err error
		if r := out.GetResponse(); r != nil {
			_, err = fmt.Fprintf(a.stdout, "line=%d %s\n", out.GetRef(), sentLine(r))
		} else {
			_, err = fmt.Fprintf(a.stdout, "line=%d error=%s: %s\n", out.GetRef(), codes.Code(out.GetCode()), out.GetError())
		}
		return err
	}

	lines := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer stream.CloseSend()
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64<<10), maxLine)
		for n := uint64(1); sc.Scan(); n++ {
			text := strings.TrimSpace(sc.Text())
			if text == "" {
				continue
			}
			outMu.Lock()
			lines++
			outMu.Unlock()
			req := &gatewayv1.SendRequest{}
			if err := protojson.Unmarshal([]byte(text), req); err != nil {
				// Never sent: reported like the gateway's own refusals.
				_ = report(&gatewayv1.SendStreamResponse{Ref: n, Code: int32(codes.InvalidArgument),
					Error: fmt.Sprintf("not a SendRequest in JSON (fields channel, recipient, conversation, text, metadata, idempotency_key, ttl_seconds): %v", err)})
				continue
			}
			fillDefaults(req, defaults)
			outMu.Lock()
			unanswered[n] = true
			outMu.Unlock()
			if err := stream.Send(&gatewayv1.SendStreamRequest{Ref: n, Request: req}); err != nil {
				return // the stream's end comes from Recv
			}
		}
		if err := sc.Err(); err != nil {
			outMu.Lock()
			readErr = err
			outMu.Unlock()
		}
	}()

	var streamErr error
	for {
		out, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			streamErr = err
			break
		}
		if err := report(out); err != nil {
			cancel()
			<-done // the reader reports too: let it stop first
			return err
		}
	}
	cancel() // a reader still sending stops
	<-done

	outMu.Lock()
	defer outMu.Unlock()
	left := slices.Sorted(maps.Keys(unanswered))
	if a.output != "json" {
		fmt.Fprintf(a.stdout, "messages %d: accepted %d, failed %d, unanswered %d\n", lines, accepted, failed, len(left))
	}
	var errs []error
	if readErr != nil {
		errs = append(errs, fmt.Errorf("read the input after the last line sent: %v; send the rest again", readErr))
	}
	if streamErr != nil && len(left) > 0 {
		errs = append(errs, fmt.Errorf("%w; lines without an answer (%s) may or may not have been accepted: send them again, safely if they carry an idempotency_key",
			a.callError(streamErr, "finish the send stream", ""), lineList(left)))
	} else if streamErr != nil {
		errs = append(errs, a.callError(streamErr, "finish the send stream", ""))
	}
	if failed > 0 {
		errs = append(errs, fmt.Errorf("%d of the messages were not accepted: see the lines with error= above", failed))
	}
	return errors.Join(errs...)
}

// fillDefaults gives req the flags' values for the fields it leaves empty.
func fillDefaults(req, defaults *gatewayv1.SendRequest) {
	if req.Tenant == "" {
		req.Tenant = defaults.GetTenant()
	}
	if req.Channel == "" {
		req.Channel = defaults.GetChannel()
	}
	if req.Recipient == "" {
		req.Recipient = defaults.GetRecipient()
	}
	if req.Conversation == "" {
		req.Conversation = defaults.GetConversation()
	}
	if req.Text == "" {
		req.Text = defaults.GetText()
	}
	if req.TtlSeconds == 0 {
		req.TtlSeconds = defaults.GetTtlSeconds()
	}
	for k, v := range defaults.GetMetadata() {
		if _, ok := req.Metadata[k]; !ok {
			if req.Metadata == nil {
				req.Metadata = map[string]string{}
			}
			req.Metadata[k] = v
		}
	}
}

// lineList names up to 20 line numbers.
func lineList(lines []uint64) string {
	var b strings.Builder
	for i, n := range lines {
		if i == 20 {
			fmt.Fprintf(&b, " and %d more", len(lines)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprint(&b, n)
	}
	return b.String()
}
