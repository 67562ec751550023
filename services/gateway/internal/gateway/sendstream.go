package gateway

import (
	"context"
	"io"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/heraldchat/herald/pkg/telemetry"
	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

// sendStreamWindow is how many requests of one SendStream may await their
// answers. It bounds the memory a stream holds; a writer that gets ahead of
// it is held back by gRPC's flow control, since the gateway stops reading.
const sendStreamWindow = 1024

// msgStreamDraining ends a SendStream of a draining gateway.
const msgStreamDraining = "gateway is draining: every request it read has been answered; send the unanswered ones again on another instance or after restart"

// tracerName names the gateway's own spans; the per-call spans come from
// otelgrpc.
const tracerName = "github.com/heraldchat/herald/services/gateway"

// SendStream is Send for many messages on one stream: each request read goes
// to the tracker through the same accepter as Send's (so requests read
// together travel and commit together), and each is answered once the
// tracker has, in the order the answers come. Messages of one conversation
// keep the order they were written in: one of them is with the tracker at a
// time, the next waits for its answer.
func (s *Service) SendStream(stream grpc.BidiStreamingServer[gatewayv1.SendStreamRequest, gatewayv1.SendStreamResponse]) error {
	if err := s.admit(); err != nil {
		return err
	}
	ss := &sendStream{
		s:        s,
		stream:   stream,
		ctx:      stream.Context(),
		answers:  make(chan streamAnswer, sendStreamWindow),
		slots:    make(chan struct{}, sendStreamWindow),
		received: make(chan struct{}),
		tracer:   otel.Tracer(tracerName),
		convs:    map[string][]*streamSend{},
	}
	go ss.receive()
	return ss.answer()
}

// sendStream is one SendStream call: a receiving goroutine reads requests
// and hands them to the accepter; the call's own goroutine writes the
// answers and hands on the next message of a conversation.
type sendStream struct {
	s      *Service
	stream grpc.BidiStreamingServer[gatewayv1.SendStreamRequest, gatewayv1.SendStreamResponse]
	ctx    context.Context
	tracer trace.Tracer

	// answers never blocks: at most sendStreamWindow requests are read and
	// unanswered, since the receiver takes a slot before each read and the
	// writer frees one after each answer.
	answers  chan streamAnswer
	slots    chan struct{}
	received chan struct{} // closed when the receiver stops reading

	mu      sync.Mutex
	closing bool  // the stream is ending: read nothing more into the tracker
	read    int   // requests read and handed on
	eof     bool  // the caller closed its side
	recvErr error // why reading failed
	// convs holds, by tenant and conversation, the messages that wait for
	// an earlier message of their conversation to be answered; a key is
	// present while one of its messages is with the tracker.
	convs map[string][]*streamSend
}

// streamSend is one request read: valid ones go to the tracker.
type streamSend struct {
	ref     uint64
	channel string
	conv    string // tenant and conversation; "" when refused before it went
	req     *trackerv1.AcceptRequest
	start   time.Time
	span    trace.Span
}

// streamAnswer is what became of one request: the tracker's answer, or
// refused when the gateway refused it before it went. The writer turns it
// into the caller's answer, so that the accepter's callback, which may run
// under the accepter's lock, only hands it on.
type streamAnswer struct {
	m       *streamSend
	acc     acceptAnswer
	refused error
}

// receive reads requests until the caller closes its side, the stream
// ends, or the gateway drains.
func (ss *sendStream) receive() {
	defer close(ss.received)
	for {
		select {
		case ss.slots <- struct{}{}:
		case <-ss.ctx.Done():
			return
		case <-ss.s.drained:
			return
		}
		req, err := ss.stream.Recv()
		if err != nil {
			ss.mu.Lock()
			if err == io.EOF {
				ss.eof = true
			} else {
				ss.recvErr = err
			}
			ss.mu.Unlock()
			return
		}
		ss.mu.Lock()
		if ss.closing {
			// Read after the writer decided to end the stream: never handed
			// on, so nothing is written and the caller sends it again.
			ss.mu.Unlock()
			return
		}
		ss.read++
		ss.mu.Unlock()
		ss.submit(req)
	}
}

// submit hands one request to the accepter, or queues it behind the
// unanswered message of its conversation, or answers it at once when it is
// invalid.
func (ss *sendStream) submit(in *gatewayv1.SendStreamRequest) {
	m := &streamSend{ref: in.GetRef(), channel: in.GetRequest().GetChannel(), start: time.Now()}
	var traceCtx context.Context
	traceCtx, m.span = ss.startSpan(in)
	areq, err := ss.s.acceptRequest(traceCtx, in.GetRequest())
	if err != nil {
		ss.answers <- streamAnswer{m: m, refused: err}
		return
	}
	m.req = areq
	m.conv = areq.GetMessage().GetTenant() + "\x00" + areq.GetMessage().GetConversation()
	ss.mu.Lock()
	if waiting, busy := ss.convs[m.conv]; busy {
		ss.convs[m.conv] = append(waiting, m)
		ss.mu.Unlock()
		return
	}
	ss.convs[m.conv] = nil
	ss.mu.Unlock()
	ss.accept(m)
}

// accept hands m to the accepter; its answer goes to the writer.
func (ss *sendStream) accept(m *streamSend) {
	ss.s.accepter.acceptAsync(ss.ctx, m.req, func(ans acceptAnswer) {
		ss.answers <- streamAnswer{m: m, acc: ans}
	})
}

// finish builds the caller's answer to a, counts it and ends its span.
func (ss *sendStream) finish(a streamAnswer) *gatewayv1.SendStreamResponse {
	m := a.m
	var resp *gatewayv1.SendResponse
	err := a.refused
	if err == nil {
		resp, err = ss.s.sendResponse(ss.ctx, a.acc.resp, a.acc.err)
	}
	ss.s.metrics.observeSend(m.start, m.channel, resp, err)
	out := &gatewayv1.SendStreamResponse{Ref: m.ref, Response: resp}
	if err != nil {
		st := status.Convert(err)
		out.Code, out.Error = int32(st.Code()), st.Message()
		m.span.SetStatus(codes.Error, st.Code().String())
	}
	m.span.End()
	return out
}

// next hands on the message that waits behind conv's answered one.
func (ss *sendStream) next(conv string) {
	ss.mu.Lock()
	waiting := ss.convs[conv]
	if len(waiting) == 0 {
		delete(ss.convs, conv)
		ss.mu.Unlock()
		return
	}
	m := waiting[0]
	waiting[0] = nil
	ss.convs[conv] = waiting[1:]
	ss.mu.Unlock()
	ss.accept(m)
}

// startSpan starts the message's own span: a child of the trace context the
// request carries, or the root of a new trace linked to the stream's span,
// so that a stream of thousands of messages is not one trace.
func (ss *sendStream) startSpan(in *gatewayv1.SendStreamRequest) (context.Context, trace.Span) {
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}
	parent := context.Background()
	if tp := in.GetTraceparent(); tp != "" {
		parent = telemetry.ExtractTrace(parent, tp, in.GetTracestate())
	}
	if !trace.SpanContextFromContext(parent).IsValid() {
		opts = append(opts, trace.WithNewRoot())
		if sc := trace.SpanContextFromContext(ss.ctx); sc.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
		}
	}
	return ss.tracer.Start(parent, "gateway.SendStream.message", opts...)
}

// answer writes answers until every request read has one and the receiver
// has stopped; then it ends the stream.
func (ss *sendStream) answer() error {
	received := ss.received
	drained := ss.s.drained
	answered := 0
	for {
		select {
		case a := <-ss.answers:
			if err := ss.stream.Send(ss.finish(a)); err != nil {
				ss.close()
				return err
			}
			<-ss.slots
			answered++
			if a.m.conv != "" {
				ss.next(a.m.conv)
			}
		case <-received:
			received = nil
		case <-drained:
			drained = nil
			ss.close()
		case <-ss.ctx.Done():
			ss.close()
			return status.FromContextError(ss.ctx.Err()).Err()
		}
		ss.mu.Lock()
		closing, read, eof, recvErr := ss.closing, ss.read, ss.eof, ss.recvErr
		ss.mu.Unlock()
		if answered < read || (received != nil && !closing) {
			continue
		}
		// Every request read is answered and no more will be read.
		switch {
		case recvErr != nil:
			return recvErr
		case eof:
			return nil // the caller closed its side
		case ss.ctx.Err() != nil:
			return status.FromContextError(ss.ctx.Err()).Err()
		default:
			// The receiver stopped for the drain (the stream's own end is
			// handled above).
			return status.Error(grpccodes.Unavailable, msgStreamDraining)
		}
	}
}

// close stops requests from being handed on; those already handed on are
// still answered.
func (ss *sendStream) close() {
	ss.mu.Lock()
	ss.closing = true
	ss.mu.Unlock()
}
