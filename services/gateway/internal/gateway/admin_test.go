package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
	trackerv1 "github.com/heraldchat/herald/proto/herald/tracker/v1"
)

func TestAbort(t *testing.T) {
	tracker := &fakeTracker{deliveries: map[string]*storev1.Delivery{
		"pending":   {State: storev1.State_STATE_PENDING},
		"delivered": {State: storev1.State_STATE_DELIVERED},
	}}
	_, client := newGateway(t, tracker, Config{})
	tests := []struct {
		name     string
		req      *gatewayv1.AbortRequest
		want     *gatewayv1.AbortResponse
		wantCode codes.Code
	}{
		{name: "pending message becomes aborted", req: &gatewayv1.AbortRequest{Id: "pending", Reason: "customer cancelled"},
			want: &gatewayv1.AbortResponse{State: gatewayv1.DeliveryState_DELIVERY_STATE_ABORTED}},
		{name: "aborting again is already final", req: &gatewayv1.AbortRequest{Id: "pending"},
			want: &gatewayv1.AbortResponse{State: gatewayv1.DeliveryState_DELIVERY_STATE_ABORTED, AlreadyFinal: true}},
		{name: "delivered message stays delivered", req: &gatewayv1.AbortRequest{Id: "delivered"},
			want: &gatewayv1.AbortResponse{State: gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED, AlreadyFinal: true}},
		{name: "unknown id is not found", req: &gatewayv1.AbortRequest{Id: "missing"}, wantCode: codes.NotFound},
		{name: "missing id is invalid", req: &gatewayv1.AbortRequest{}, wantCode: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := client.Abort(context.Background(), tt.req)
			if status.Code(err) != tt.wantCode {
				t.Fatalf("Abort(%v) = %v, want code %v", tt.req, err, tt.wantCode)
			}
			if diff := cmp.Diff(got, tt.want, protocmp.Transform()); diff != "" {
				t.Errorf("Abort(%v) (-got +want):\n%s", tt.req, diff)
			}
		})
	}
	tracker.mu.Lock()
	defer tracker.mu.Unlock()
	if got := tracker.deliveries["pending"].GetReason(); got != "customer cancelled" {
		t.Errorf("tracker got reason %q, want the caller's", got)
	}
}

func TestListDeadLettersConvertsAndForwardsFilters(t *testing.T) {
	failed := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	tracker := &fakeTracker{deadLetters: []*trackerv1.Lease{{
		Message: &storev1.Message{Id: "A", Channel: "webhook", Recipient: "http://x", Conversation: "c1", AcceptedAtUnixNano: failed.Add(-time.Minute).UnixNano()},
		Delivery: &storev1.Delivery{State: storev1.State_STATE_FAILED, Attempts: 5, LastErrorCode: "DLV_002", LastError: "HTTP 503",
			Reason: "attempts exhausted", UpdatedUnixNano: failed.UnixNano()},
	}}}
	_, client := newGateway(t, tracker, Config{})

	got, err := client.ListDeadLetters(context.Background(), &gatewayv1.ListDeadLettersRequest{
		Channel: "webhook", Code: "DLV_002", Since: timestamppb.New(failed.Add(-time.Hour)),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := &gatewayv1.ListDeadLettersResponse{Messages: []*gatewayv1.Message{{
		Id: "A", Channel: "webhook", Recipient: "http://x", Conversation: "c1",
		State: gatewayv1.DeliveryState_DELIVERY_STATE_FAILED, Attempts: 5, LastErrorCode: "DLV_002", LastError: "HTTP 503",
		Reason: "attempts exhausted", AcceptedAt: timestamppb.New(failed.Add(-time.Minute)), UpdatedAt: timestamppb.New(failed),
	}}}
	if diff := cmp.Diff(got, want, protocmp.Transform()); diff != "" {
		t.Errorf("ListDeadLetters() (-got +want):\n%s", diff)
	}
	if _, err := client.ListDeadLetters(context.Background(), &gatewayv1.ListDeadLettersRequest{Limit: 5000}); err != nil {
		t.Fatal(err)
	}
	for _, req := range []*gatewayv1.ListDeadLettersRequest{
		{Channel: "Not A Channel"},
		{Code: strings.Repeat("X", 65)},
		{Since: &timestamppb.Timestamp{Nanos: -1}},
	} {
		if _, err := client.ListDeadLetters(context.Background(), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("ListDeadLetters(%v) = %v, want InvalidArgument", req, err)
		}
	}

	tracker.mu.Lock()
	defer tracker.mu.Unlock()
	wantReqs := []*trackerv1.ListDeadLettersRequest{
		{Channel: "webhook", Code: "DLV_002", SinceUnixNano: failed.Add(-time.Hour).UnixNano(), Limit: 100},
		{Limit: 1000},
	}
	if diff := cmp.Diff(tracker.dlqRequests, wantReqs, protocmp.Transform()); diff != "" {
		t.Errorf("tracker ListDeadLetters requests (-got +want):\n%s", diff)
	}
}

func TestRedriveAndPurge(t *testing.T) {
	tracker := &fakeTracker{deliveries: map[string]*storev1.Delivery{
		"dead1":   {State: storev1.State_STATE_FAILED},
		"dead2":   {State: storev1.State_STATE_FAILED},
		"pending": {State: storev1.State_STATE_PENDING},
	}}
	_, client := newGateway(t, tracker, Config{})
	ctx := context.Background()

	redriven, err := client.Redrive(ctx, &gatewayv1.RedriveRequest{Id: "dead1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := redriven.GetState(); got != gatewayv1.DeliveryState_DELIVERY_STATE_PENDING {
		t.Errorf("Redrive() state = %v, want PENDING", got)
	}
	purged, err := client.Purge(ctx, &gatewayv1.PurgeRequest{Id: "dead2"})
	if err != nil {
		t.Fatal(err)
	}
	if got := purged.GetState(); got != gatewayv1.DeliveryState_DELIVERY_STATE_FAILED {
		t.Errorf("Purge() state = %v, want FAILED", got)
	}

	calls := map[string]func(id string) error{
		"Redrive": func(id string) error { _, err := client.Redrive(ctx, &gatewayv1.RedriveRequest{Id: id}); return err },
		"Purge":   func(id string) error { _, err := client.Purge(ctx, &gatewayv1.PurgeRequest{Id: id}); return err },
	}
	for name, call := range calls {
		err := call("pending")
		if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "not a dead letter") {
			t.Errorf("%s(pending) = %v %q, want FailedPrecondition with the tracker's explanation", name, st.Code(), st.Message())
		}
		if got := status.Code(call("missing")); got != codes.NotFound {
			t.Errorf("%s(missing) = %v, want NotFound", name, got)
		}
		if got := status.Code(call("")); got != codes.InvalidArgument {
			t.Errorf("%s(no id) = %v, want InvalidArgument", name, got)
		}
	}
}

func TestBackup(t *testing.T) {
	tracker := &fakeTracker{backupPath: "/var/lib/herald/backups/20261121T100000Z"}
	_, client := newGateway(t, tracker, Config{})
	got, err := client.Backup(context.Background(), &gatewayv1.BackupRequest{Keep: 5})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetPath() != tracker.backupPath {
		t.Errorf("Backup() path = %q, want %q", got.GetPath(), tracker.backupPath)
	}
	tracker.mu.Lock()
	if len(tracker.backups) != 1 || tracker.backups[0].GetKeep() != 5 {
		t.Errorf("tracker Backup requests = %v, want one with keep 5", tracker.backups)
	}
	tracker.mu.Unlock()

	_, client = newGateway(t, &fakeTracker{}, Config{})
	_, err = client.Backup(context.Background(), &gatewayv1.BackupRequest{})
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "--backup-dir") {
		t.Errorf("Backup() without a backup folder = %v %q, want FailedPrecondition naming --backup-dir", st.Code(), st.Message())
	}
}

func TestVerifyStateConvertsCounts(t *testing.T) {
	tracker := &fakeTracker{verify: &trackerv1.VerifyResponse{
		Counts:   map[string]int64{"STATE_PENDING": 2, "STATE_FAILED": 1},
		Messages: 3, RecoveryEntries: 2, Events: 9, StateHash: "abc123",
		Problems: []string{"recovery entry for 01X points at a DELIVERED message"},
	}}
	_, client := newGateway(t, tracker, Config{})
	got, err := client.VerifyState(context.Background(), &gatewayv1.VerifyStateRequest{Full: true})
	if err != nil {
		t.Fatal(err)
	}
	want := &gatewayv1.VerifyStateResponse{
		Counts:   map[string]int64{"PENDING": 2, "FAILED": 1},
		Messages: 3, RecoveryEntries: 2, Events: 9, StateHash: "abc123",
		Problems: []string{"recovery entry for 01X points at a DELIVERED message"},
	}
	if diff := cmp.Diff(got, want, protocmp.Transform()); diff != "" {
		t.Errorf("VerifyState() (-got +want):\n%s", diff)
	}
}

func TestOperatorCallsTranslateTrackerErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name       string
		trackerErr error
		call       func(gatewayv1.GatewayServiceClient) error
		wantCode   codes.Code
		wantMsg    string
	}{
		{name: "redrive timeout may have changed the message", trackerErr: status.Error(codes.DeadlineExceeded, "slow"),
			call: func(c gatewayv1.GatewayServiceClient) error {
				_, err := c.Redrive(ctx, &gatewayv1.RedriveRequest{Id: "a"})
				return err
			},
			wantCode: codes.DeadlineExceeded, wantMsg: msgChangeDeadline},
		{name: "abort internal error hides the detail and may have changed the message", trackerErr: status.Error(codes.Internal, "pebble: corrupt"),
			call: func(c gatewayv1.GatewayServiceClient) error {
				_, err := c.Abort(ctx, &gatewayv1.AbortRequest{Id: "a"})
				return err
			},
			wantCode: codes.Internal, wantMsg: msgChangeInternal},
		{name: "verify internal error is a failed read", trackerErr: status.Error(codes.Internal, "pebble: corrupt"),
			call: func(c gatewayv1.GatewayServiceClient) error {
				_, err := c.VerifyState(ctx, &gatewayv1.VerifyStateRequest{})
				return err
			},
			wantCode: codes.Internal, wantMsg: msgReadInternal},
		{name: "list unavailable asks for a retry", trackerErr: status.Error(codes.Unavailable, "shutting down"),
			call: func(c gatewayv1.GatewayServiceClient) error {
				_, err := c.ListDeadLetters(ctx, &gatewayv1.ListDeadLettersRequest{})
				return err
			},
			wantCode: codes.Unavailable, wantMsg: msgReadUnavailable},
		{name: "failed precondition passes through", trackerErr: status.Error(codes.FailedPrecondition, "message is not a dead letter: a is PENDING"),
			call: func(c gatewayv1.GatewayServiceClient) error {
				_, err := c.Purge(ctx, &gatewayv1.PurgeRequest{Id: "a"})
				return err
			},
			wantCode: codes.FailedPrecondition, wantMsg: "message is not a dead letter: a is PENDING"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, client := newGateway(t, &fakeTracker{adminErr: tt.trackerErr}, Config{})
			st := status.Convert(tt.call(client))
			if st.Code() != tt.wantCode || st.Message() != tt.wantMsg {
				t.Errorf("got %v %q, want %v %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestOperatorCallsRefusedWhileDraining(t *testing.T) {
	svc, client := newGateway(t, &fakeTracker{backupPath: "/b"}, Config{})
	svc.Drain()
	_, err := client.Backup(context.Background(), &gatewayv1.BackupRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != msgDraining {
		t.Errorf("Backup() while draining = %v %q, want Unavailable %q", st.Code(), st.Message(), msgDraining)
	}
}
