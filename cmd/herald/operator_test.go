package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
)

const (
	failed    = gatewayv1.DeliveryState_DELIVERY_STATE_FAILED
	pending   = gatewayv1.DeliveryState_DELIVERY_STATE_PENDING
	delivered = gatewayv1.DeliveryState_DELIVERY_STATE_DELIVERED
)

// wantInOrder fails the test unless out contains each of want, in order.
func wantInOrder(t *testing.T, out string, want ...string) {
	t.Helper()
	rest := out
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("output lacks %q (in order); output:\n%s", w, out)
		}
		rest = rest[i+len(w):]
	}
}

// dlqFake is a gateway with three listed dead letters; C was redriven by
// someone else after the listing, so it is no longer one.
func dlqFake() *fakeGateway {
	return &fakeGateway{
		states: map[string]gatewayv1.DeliveryState{"A": failed, "B": failed, "C": pending},
		deadLetters: []*gatewayv1.Message{
			{Id: "A", Channel: "webhook", Recipient: "http://127.0.0.1:9000/hook", State: failed, Attempts: 5,
				LastErrorCode: "DLV_002", LastError: "HTTP 503", Reason: "attempts exhausted", UpdatedAt: timestamppb.New(accepted)},
			{Id: "B", Channel: "telegram", Recipient: "12345", State: failed, Attempts: 1,
				LastErrorCode: "PLG_001", LastError: "chat not found", Reason: "PLG_001", UpdatedAt: timestamppb.New(accepted.Add(time.Second))},
			{Id: "C", Channel: "webhook", Recipient: "http://127.0.0.1:9000/hook", State: failed, Attempts: 5},
		},
	}
}

func TestAbort(t *testing.T) {
	f := &fakeGateway{states: map[string]gatewayv1.DeliveryState{"P": pending, "D": delivered}}
	addr := startFake(t, f)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{name: "pending message is aborted", args: []string{"abort", "P", "--reason", "wrong customer"},
			wantOut: "id=P state=ABORTED\n"},
		{name: "delivered message is left as it is", args: []string{"abort", "D"},
			wantOut: "id=D state=DELIVERED already_final=true (nothing changed)\n"},
		{name: "unknown message", args: []string{"abort", "X"}, wantCode: 1,
			wantErr: "herald: no message with id X: check the id; 'herald history' lists recent messages\n"},
		{name: "no id", args: []string{"abort"}, wantCode: 1,
			wantErr: "herald: give exactly one message id: herald abort <id>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := herald(t, context.Background(), addr, tt.args...)
			if code != tt.wantCode || stdout != tt.wantOut || !strings.HasPrefix(stderr, tt.wantErr) {
				t.Errorf("herald %v = exit %d, stdout %q, stderr %q; want exit %d, stdout %q, stderr starting %q",
					tt.args, code, stdout, stderr, tt.wantCode, tt.wantOut, tt.wantErr)
			}
		})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if got := f.aborts[0]; got.GetId() != "P" || got.GetReason() != "wrong customer" {
		t.Errorf("abort request = %v, want id P with the reason", got)
	}
}

func TestDLQListPrintsTableAndSendsFilters(t *testing.T) {
	f := dlqFake()
	addr := startFake(t, f)
	start := time.Now()
	code, stdout, stderr := herald(t, context.Background(), addr, "dlq", "list", "--channel", "webhook", "--since", "1h", "--code", "PLG_001", "--limit", "5")
	if code != 0 {
		t.Fatalf("exit %d; stderr: %s", code, stderr)
	}
	wantInOrder(t, stdout, "ID", "CHANNEL", "RECIPIENT", "REASON", "LAST ERROR", "ATTEMPTS", "UPDATED",
		"A", "webhook", "http://127.0.0.1:9000/hook", "attempts exhausted", "DLV_002 HTTP 503", "5", "2026-11-21T10:00:00.000Z",
		"B", "telegram", "12345", "PLG_001", "PLG_001 chat not found", "1", "2026-11-21T10:00:01.000Z")

	code, _, stderr = herald(t, context.Background(), addr, "dlq", "list", "--since", "2026-11-21T09:00:00Z")
	if code != 0 {
		t.Fatalf("exit %d; stderr: %s", code, stderr)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	got := f.dlqLists[0]
	if got.GetChannel() != "webhook" || got.GetCode() != "PLG_001" || got.GetLimit() != 5 {
		t.Errorf("list request = %v, want channel webhook, code PLG_001, limit 5", got)
	}
	if since := got.GetSince().AsTime(); since.Before(start.Add(-time.Hour-time.Minute)) || since.After(time.Now().Add(-time.Hour)) {
		t.Errorf("list request since = %v, want about an hour before %v", since, start)
	}
	if since := f.dlqLists[1].GetSince().AsTime(); !since.Equal(time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)) {
		t.Errorf("list request since = %v, want 2026-11-21T09:00:00Z", since)
	}
	if limit := f.dlqLists[1].GetLimit(); limit != 100 {
		t.Errorf("list request limit = %d, want the default 100", limit)
	}
}

func TestDLQRedrive(t *testing.T) {
	tests := []struct {
		name         string
		args         []string
		wantCode     int
		wantOut      []string
		wantErr      string
		wantRedriven []string
	}{
		{name: "dry run lists what it would redrive and changes nothing",
			args:    []string{"dlq", "redrive", "--all", "--dry-run"},
			wantOut: []string{"would redrive id=A channel=webhook", "would redrive id=B", "would redrive id=C", "would redrive 3\n"}},
		{name: "all redrives each and skips what changed since the listing",
			args: []string{"dlq", "redrive", "--all", "--channel", "webhook"},
			wantOut: []string{"redriven id=A state=PENDING\n", "redriven id=B state=PENDING\n",
				"skipped id=C: message is not a dead letter", "redriven 2, skipped 1 (no longer dead letters)\n"},
			wantRedriven: []string{"A", "B"}},
		{name: "one id", args: []string{"dlq", "redrive", "A"},
			wantOut: []string{"redriven id=A state=PENDING\nredriven 1\n"}, wantRedriven: []string{"A"}},
		{name: "one id that is not a dead letter", args: []string{"dlq", "redrive", "C"}, wantCode: 1,
			wantErr: "herald: cannot redrive message C: message is not a dead letter: C is DELIVERY_STATE_PENDING\n"},
		{name: "one unknown id", args: []string{"dlq", "redrive", "X"}, wantCode: 1,
			wantErr: "herald: no message with id X"},
		{name: "neither id nor all", args: []string{"dlq", "redrive"}, wantCode: 1,
			wantErr: "herald: give exactly one dead letter's id, or --all"},
		{name: "id and all", args: []string{"dlq", "redrive", "A", "--all"}, wantCode: 1,
			wantErr: "herald: give a message id or --all, not both\n"},
		{name: "filters need all", args: []string{"dlq", "redrive", "A", "--channel", "webhook"}, wantCode: 1,
			wantErr: "herald: --channel, --since and --code select dead letters for --all"},
		{name: "bad since", args: []string{"dlq", "redrive", "--all", "--since", "yesterday"}, wantCode: 1,
			wantErr: "herald: --since \"yesterday\": give a duration back from now"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := dlqFake()
			addr := startFake(t, f)
			code, stdout, stderr := herald(t, context.Background(), addr, tt.args...)
			if code != tt.wantCode || !strings.HasPrefix(stderr, tt.wantErr) {
				t.Fatalf("herald %v = exit %d, stderr %q; want exit %d, stderr starting %q", tt.args, code, stderr, tt.wantCode, tt.wantErr)
			}
			wantInOrder(t, stdout, tt.wantOut...)
			f.mu.Lock()
			defer f.mu.Unlock()
			if strings.Join(f.redriven, ",") != strings.Join(tt.wantRedriven, ",") {
				t.Errorf("redriven %v, want %v", f.redriven, tt.wantRedriven)
			}
		})
	}
}

func TestDLQPurge(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantOut    []string
		wantErr    string
		wantPurged []string
	}{
		{name: "refuses without dry-run or yes", args: []string{"dlq", "purge", "--all"}, wantCode: 1,
			wantErr: "herald: purge cannot be undone: add --dry-run to see what would be purged, or --yes to purge\n"},
		{name: "refuses one id without dry-run or yes", args: []string{"dlq", "purge", "A"}, wantCode: 1,
			wantErr: "herald: purge cannot be undone"},
		{name: "refuses both dry-run and yes", args: []string{"dlq", "purge", "--all", "--dry-run", "--yes"}, wantCode: 1,
			wantErr: "herald: give --dry-run or --yes, not both\n"},
		{name: "dry run changes nothing", args: []string{"dlq", "purge", "--all", "--code", "PLG_001", "--dry-run"},
			wantOut: []string{"would purge id=A", "would purge id=B", "would purge id=C", "would purge 3\n"}},
		{name: "dry run of one id checks it is a dead letter", args: []string{"dlq", "purge", "01JD7X0000000000000000000A", "--dry-run"},
			wantOut: []string{"would purge id=01JD7X0000000000000000000A channel=webhook reason=permanent error error=DLV_003 attempts=3", "would purge 1\n"}},
		{name: "yes purges", args: []string{"dlq", "purge", "--all", "--yes"},
			wantOut:    []string{"purged id=A state=FAILED\n", "purged id=B state=FAILED\n", "skipped id=C", "purged 2, skipped 1"},
			wantPurged: []string{"A", "B"}},
		{name: "yes purges one id", args: []string{"dlq", "purge", "B", "--yes"},
			wantOut: []string{"purged id=B state=FAILED\npurged 1\n"}, wantPurged: []string{"B"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := dlqFake()
			addr := startFake(t, f)
			code, stdout, stderr := herald(t, context.Background(), addr, tt.args...)
			if code != tt.wantCode || !strings.HasPrefix(stderr, tt.wantErr) {
				t.Fatalf("herald %v = exit %d, stderr %q; want exit %d, stderr starting %q", tt.args, code, stderr, tt.wantCode, tt.wantErr)
			}
			wantInOrder(t, stdout, tt.wantOut...)
			f.mu.Lock()
			defer f.mu.Unlock()
			if strings.Join(f.purged, ",") != strings.Join(tt.wantPurged, ",") {
				t.Errorf("purged %v, want %v", f.purged, tt.wantPurged)
			}
			if tt.wantCode != 0 && len(f.dlqLists) != 0 {
				t.Errorf("a refused purge listed dead letters %d times, want none", len(f.dlqLists))
			}
		})
	}
}

func TestDLQBatchStopsOnGatewayError(t *testing.T) {
	f := dlqFake()
	f.adminErr = status.Error(codes.Unavailable, "tracker unreachable: retry shortly")
	addr := startFake(t, f)
	code, stdout, stderr := herald(t, context.Background(), addr, "dlq", "redrive", "--all")
	if code != 1 || stdout != "redriven 0\n" || stderr != "herald: cannot redrive message A: tracker unreachable: retry shortly\n" {
		t.Errorf("exit %d, stdout %q, stderr %q; want exit 1, the summary so far and the gateway's error", code, stdout, stderr)
	}
}

func TestBackup(t *testing.T) {
	f := &fakeGateway{}
	addr := startFake(t, f)
	code, stdout, stderr := herald(t, context.Background(), addr, "backup", "--keep", "7")
	if code != 0 || stdout != "/var/lib/herald/backups/20261121T100000Z\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want the backup path", code, stdout, stderr)
	}
	f.mu.Lock()
	if len(f.backups) != 1 || f.backups[0].GetKeep() != 7 {
		t.Errorf("backup requests = %v, want one with keep 7", f.backups)
	}
	f.mu.Unlock()

	code, _, stderr = herald(t, context.Background(), addr, "backup", "--keep", "0")
	if code != 1 || !strings.HasPrefix(stderr, "herald: --keep 0: keep at least 1 backup") {
		t.Errorf("backup --keep 0 = exit %d, stderr %q", code, stderr)
	}

	noDir := startFake(t, &fakeGateway{adminErr: status.Error(codes.FailedPrecondition, "no backup folder configured: start the tracker with --backup-dir")})
	code, _, stderr = herald(t, context.Background(), noDir, "backup")
	if want := "herald: cannot back up the tracker: no backup folder configured: start the tracker with --backup-dir\n"; code != 1 || stderr != want {
		t.Errorf("backup without a folder = exit %d, stderr %q; want exit 1, %q", code, stderr, want)
	}
}

func TestStateVerify(t *testing.T) {
	healthy := &gatewayv1.VerifyStateResponse{
		Counts: map[string]int64{"PENDING": 2, "DELIVERED": 7}, Messages: 9, RecoveryEntries: 2, Events: 30, StateHash: "9f86d081884c7d65",
	}
	broken := &gatewayv1.VerifyStateResponse{
		Counts: map[string]int64{"PENDING": 2}, Messages: 2, RecoveryEntries: 1, StateHash: "2c26b46b68ffc68f",
		Problems: []string{"message 01X is PENDING but has no recovery entry", "counter PENDING is 3, records say 2"},
	}
	tests := []struct {
		name     string
		resp     *gatewayv1.VerifyStateResponse
		args     []string
		wantCode int
		wantOut  []string
		wantErr  string
	}{
		{name: "healthy store exits 0", resp: healthy, args: []string{"state", "verify", "--full"},
			wantOut: []string{"messages:", "9", "events:", "30", "recovery entries:", "2", "state hash:", "9f86d081884c7d65",
				"PENDING", "2", "DELIVERED", "7", "problems: none\n"}},
		{name: "problems exit 1 and are listed", resp: broken, args: []string{"state", "verify"}, wantCode: 1,
			wantOut: []string{"messages:", "2", "events:", "not read", "recovery entries:", "1", "state hash:", "2c26b46b68ffc68f",
				"problems:\n", "  message 01X is PENDING but has no recovery entry\n", "  counter PENDING is 3, records say 2\n"},
			wantErr: "herald: 2 problems found\n"},
		{name: "problems exit 1 with json output too", resp: broken, args: []string{"--output", "json", "state", "verify"}, wantCode: 1,
			wantOut: []string{`"stateHash"`, `"2c26b46b68ffc68f"`, `"problems"`}, wantErr: "herald: 2 problems found\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := startFake(t, &fakeGateway{verify: tt.resp})
			code, stdout, stderr := herald(t, context.Background(), addr, tt.args...)
			if code != tt.wantCode || stderr != tt.wantErr {
				t.Fatalf("herald %v = exit %d, stderr %q; want exit %d, stderr %q", tt.args, code, stderr, tt.wantCode, tt.wantErr)
			}
			wantInOrder(t, stdout, tt.wantOut...)
		})
	}
}

func TestEventsSince(t *testing.T) {
	now := time.Now()
	addr := startFake(t, &fakeGateway{events: []*gatewayv1.Event{
		{Sequence: 1, Time: timestamppb.New(now.Add(-2 * time.Hour)), Type: "message.accepted", MessageId: "OLD"},
		{Sequence: 2, Time: timestamppb.New(now.Add(-30 * time.Minute)), Type: "delivery.failed", MessageId: "NEW"},
		{Sequence: 3, Type: "delivery.failed", MessageId: "NOTIME"},
	}})
	tests := []struct {
		name    string
		args    []string
		want    []string
		notWant []string
	}{
		{name: "duration", args: []string{"events", "--since", "1h"}, want: []string{"message=NEW"}, notWant: []string{"message=OLD", "message=NOTIME"}},
		{name: "time", args: []string{"events", "--since", now.Add(-3 * time.Hour).UTC().Format(time.RFC3339)},
			want: []string{"message=OLD", "message=NEW"}, notWant: []string{"message=NOTIME"}},
		{name: "with type", args: []string{"events", "--since", "3h", "--type", "delivery.failed"},
			want: []string{"message=NEW"}, notWant: []string{"message=OLD"}},
		{name: "without since prints everything", args: []string{"events"}, want: []string{"message=OLD", "message=NEW", "message=NOTIME"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := herald(t, context.Background(), addr, tt.args...)
			if code != 0 {
				t.Fatalf("exit %d; stderr: %s", code, stderr)
			}
			wantInOrder(t, stdout, tt.want...)
			for _, nw := range tt.notWant {
				if strings.Contains(stdout, nw) {
					t.Errorf("output has %q; output:\n%s", nw, stdout)
				}
			}
		})
	}

	code, _, stderr := herald(t, context.Background(), addr, "events", "--since", "-1h")
	if code != 1 || !strings.HasPrefix(stderr, "herald: --since \"-1h\": give a positive duration") {
		t.Errorf("events --since -1h = exit %d, stderr %q", code, stderr)
	}
}
