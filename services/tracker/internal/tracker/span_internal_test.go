package tracker

import "testing"

func TestSampledReadsTheFlags(t *testing.T) {
	tests := []struct {
		traceparent string
		want        bool
	}{
		{"", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03", true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0B", true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0a", false},
		{"x", true},  // not a traceparent: the propagator decides
		{"ab", true}, // likewise
	}
	for _, tt := range tests {
		if got := sampled(tt.traceparent); got != tt.want {
			t.Errorf("sampled(%q) = %v, want %v", tt.traceparent, got, tt.want)
		}
	}
}
