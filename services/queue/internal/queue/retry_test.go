package queue

import (
	"testing"
	"time"
)

func TestParseRetryPolicy(t *testing.T) {
	def := RetryPolicy{Initial: time.Second, Multiplier: 2, Max: 5 * time.Minute, MaxAttempts: 10}
	tests := []struct {
		in      string
		wantCh  string
		want    RetryPolicy
		wantErr bool
	}{
		{in: "telegram:initial=2s,attempts=5", wantCh: "telegram", want: RetryPolicy{Initial: 2 * time.Second, Multiplier: 2, Max: 5 * time.Minute, MaxAttempts: 5}},
		{in: "slack:max=10s,multiplier=3,max-age=1h", wantCh: "slack", want: RetryPolicy{Initial: time.Second, Multiplier: 3, Max: 10 * time.Second, MaxAttempts: 10, MaxAge: time.Hour}},
		{in: "noseparator", wantErr: true},
		{in: "x:bogus=1", wantErr: true},
		{in: "x:multiplier=0.5", wantErr: true},
		{in: "x:initial=2m,max=1m", wantErr: true},
	}
	for _, tt := range tests {
		ch, got, err := ParseRetryPolicy(tt.in, def)
		if (err != nil) != tt.wantErr {
			t.Errorf("%q: err %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && (ch != tt.wantCh || got != tt.want) {
			t.Errorf("%q: got %s %+v, want %s %+v", tt.in, ch, got, tt.wantCh, tt.want)
		}
	}
}

func TestDelayGrowsAndIsCapped(t *testing.T) {
	p := RetryPolicy{Initial: time.Second, Multiplier: 2, Max: 5 * time.Second}
	for attempt, want := range map[uint32]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 10: 5 * time.Second} {
		got := p.Delay(attempt)
		if got < want*8/10 || got > want*12/10 {
			t.Errorf("attempt %d: delay %s, want %s ±20%%", attempt, got, want)
		}
	}
}
