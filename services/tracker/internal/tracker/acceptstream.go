package tracker

import (
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
	"github.com/heraldchat/herald/services/tracker/internal/store"
)

// maxAcceptBatch bounds the items of one AcceptStream request.
const maxAcceptBatch = 1024

// acceptConcurrency is how many batches of one stream are committed at
// once: their commits share fsyncs, as concurrent Accept calls would.
const acceptConcurrency = 16

// AcceptStream implements trackerv1.TrackerServiceServer: each request is
// one store batch (AcceptBatch), handled concurrently with the stream's
// other requests, answered item by item.
func (s *Service) AcceptStream(stream trackerv1.TrackerService_AcceptStreamServer) error {
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		closing bool // set when the handler returns: no batch starts after
		sendMu  sync.Mutex
		sendErr error
		slots   = make(chan struct{}, acceptConcurrency)
	)
	defer func() {
		mu.Lock()
		closing = true
		mu.Unlock()
		wg.Wait() // batches under way finish and answer first
	}()
	// Whoever receives a request commits it: before it does, it starts the
	// next receiver, so requests still overlap (their commits share
	// fsyncs), and no hand-off stands between a request's arrival and its
	// commit.
	recvErr := make(chan error, 1)
	var receive func()
	receive = func() {
		req, err := stream.Recv()
		if err == nil {
			if n := len(req.GetItems()); n > maxAcceptBatch {
				err = status.Errorf(codes.InvalidArgument, "%d items in one request; send at most %d", n, maxAcceptBatch)
			}
		}
		if err != nil {
			recvErr <- err
			return
		}
		select {
		case slots <- struct{}{}:
		case <-stream.Context().Done():
			recvErr <- stream.Context().Err()
			return
		}
		defer func() { <-slots }()
		mu.Lock()
		if closing {
			mu.Unlock()
			return
		}
		wg.Add(1)
		mu.Unlock()
		defer wg.Done()
		go receive()
		resp := s.acceptBatch(req.GetItems())
		sendMu.Lock()
		defer sendMu.Unlock()
		if sendErr == nil {
			sendErr = stream.Send(resp)
		}
	}
	go receive()
	select {
	case err := <-recvErr:
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	case <-s.stopping:
		return status.Error(codes.Unavailable, "tracker is shutting down; items without an answer were not written: retry after it restarts")
	}
}

// acceptBatch accepts the items with one store batch and answers each.
func (s *Service) acceptBatch(items []*trackerv1.AcceptItem) *trackerv1.AcceptStreamResponse {
	resp := &trackerv1.AcceptStreamResponse{Results: make([]*trackerv1.AcceptResult, len(items))}
	msgs := make([]*storev1.Message, 0, len(items))
	idx := make([]int, 0, len(items))
	now := s.now()
	refused := status.Convert(s.refuse())
	for i, it := range items {
		resp.Results[i] = &trackerv1.AcceptResult{RequestId: it.GetRequestId()}
		m := it.GetRequest().GetMessage()
		switch {
		case m == nil:
			resp.Results[i].Code, resp.Results[i].Error = int32(codes.InvalidArgument), "message is required"
			continue
		case refused.Code() != codes.OK:
			resp.Results[i].Code, resp.Results[i].Error = int32(refused.Code()), refused.Message()
			continue
		}
		if ttl := it.GetRequest().GetTtlNanos(); ttl > 0 {
			m.ExpiresAtUnixNano = now.Add(time.Duration(ttl)).UnixNano()
		}
		msgs = append(msgs, m)
		idx = append(idx, i)
	}
	start := time.Now()
	accepted, errs := s.store.AcceptBatch(msgs)
	end := time.Now()
	for j, i := range idx {
		r := resp.Results[i]
		if errs[j] != nil {
			st := status.Convert(s.toStatus("accept", errs[j]))
			r.Code, r.Error = int32(st.Code()), st.Message()
		} else {
			r.Response = acceptAnswer(accepted[j])
		}
		s.traceAccept(msgs[j], errs[j], start, end, len(msgs))
	}
	return resp
}

// acceptAnswer is an AcceptStream item's answer: the fields of the message
// and delivery that Send answers with, not the text and metadata the gateway
// has just sent (marshalling them back and unmarshalling them again cost
// both ends more CPU per Send than the rest of the answer).
func acceptAnswer(a store.Accepted) *trackerv1.AcceptResponse {
	m := a.Message
	return &trackerv1.AcceptResponse{
		Message: &storev1.Message{
			Id: m.GetId(), Tenant: m.GetTenant(), Conversation: m.GetConversation(),
			Sequence: m.GetSequence(), AcceptedAtUnixNano: m.GetAcceptedAtUnixNano(),
		},
		Delivery:  &storev1.Delivery{State: a.Delivery.GetState()},
		Duplicate: a.Duplicate,
	}
}
