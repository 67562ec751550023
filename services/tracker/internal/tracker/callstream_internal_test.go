package tracker

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc"
)

// oneRequest is a stream that delivers one request, then waits for its
// context.
type oneRequest struct {
	grpc.BidiStreamingServer[string, string]
	ctx  context.Context
	sent bool
}

func (s *oneRequest) Context() context.Context { return s.ctx }

func (s *oneRequest) Recv() (*string, error) {
	if s.sent {
		<-s.ctx.Done()
		return nil, io.EOF
	}
	s.sent = true
	req := "boom"
	return &req, nil
}

// A panic while a stream's request is handled, which happens on serveCalls'
// receiving goroutine, comes out of serveCalls itself, where the server's
// recovery interceptor turns it into INTERNAL; left on the receiving
// goroutine, it would end the process.
func TestServeCallsRaisesAHandlersPanicOnItsOwnGoroutine(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got any
	func() {
		defer func() { got = recover() }()
		serveCalls(&oneRequest{ctx: ctx}, nil, func(_ context.Context, req *string) (*string, error) {
			panic("handling " + *req)
		})
	}()
	msg := fmt.Sprint(got)
	if !strings.Contains(msg, "handling boom") || !strings.Contains(msg, "stack of the stream's receiving goroutine") {
		t.Fatalf("serveCalls recovered %q; want the handler's panic with its goroutine's stack", msg)
	}
}
