package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []float64
		want float64
	}{
		{"odd count takes the middle", []float64{3, 1, 2}, 2},
		{"even count averages the middle two", []float64{4, 1, 3, 2}, 2.5},
		{"one value", []float64{7}, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := median(tc.in); got != tc.want {
				t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

func TestKeptRoundsDropsUnstableRoundsButNeverAll(t *testing.T) {
	res := results{rounds: []round{{n: 1, discarded: true}, {n: 2}, {n: 3, discarded: true}}}
	kept, stable := keptRounds(res)
	if !stable || len(kept) != 1 || kept[0].n != 2 {
		t.Errorf("keptRounds = %v, %v; want round 2 only, stable", kept, stable)
	}
	res = results{rounds: []round{{n: 1, discarded: true}, {n: 2, discarded: true}}}
	kept, stable = keptRounds(res)
	if stable || len(kept) != 2 {
		t.Errorf("keptRounds with every round discarded = %d rounds, stable %v; want both, flagged unstable", len(kept), stable)
	}
}

func TestWindowKeepsAtMostSizeOutstanding(t *testing.T) {
	var waited []int
	w := window[int]{size: 3, wait: func(i int) error { waited = append(waited, i); return nil }}
	for i := range 5 {
		if err := w.add(i); err != nil {
			t.Fatal(err)
		}
		if len(w.pending) >= 3 {
			t.Fatalf("after add(%d): %d outstanding, want < 3", i, len(w.pending))
		}
	}
	if err := w.drain(); err != nil {
		t.Fatal(err)
	}
	want := []int{0, 1, 2, 3, 4}
	if len(waited) != len(want) {
		t.Fatalf("waited %v, want %v (oldest first)", waited, want)
	}
	for i := range want {
		if waited[i] != want[i] {
			t.Fatalf("waited %v, want %v (oldest first)", waited, want)
		}
	}
}

func TestProcStatReadsOwnProcess(t *testing.T) {
	// Burn a little CPU so that utime+stime is not zero.
	end := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(end) {
	}
	ppid, cpu, err := procStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if ppid != os.Getppid() {
		t.Errorf("ppid = %d, want %d", ppid, os.Getppid())
	}
	if cpu <= 0 {
		t.Errorf("cpu = %s, want > 0", cpu)
	}
	if kb, err := vmHWM(os.Getpid()); err != nil || kb <= 0 {
		t.Errorf("vmHWM = %d, %v; want > 0", kb, err)
	}
	if got := withDescendants([]int{os.Getpid()}); len(got) == 0 || got[0] != os.Getpid() {
		t.Errorf("withDescendants = %v, want this process first", got)
	}
}

func TestThroughputTargetUsesRatesOfTheSameRound(t *testing.T) {
	rd := round{samples: map[string]sample{
		"send64": {ops: 300, elapsed: time.Second},
		"skel64": {ops: 600, elapsed: 2 * time.Second},
	}}
	if got, ok := throughputRatio("send64", "skel64")(rd); !ok || got != 1 {
		t.Errorf("ratio = %v, %v; want 1, true", got, ok)
	}
	if _, ok := throughputRatio("send64", "rabbit64")(rd); ok {
		t.Error("ratio with a missing subject reported ok")
	}
}

func TestCountAndDurFormat(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{count(1234567.4), "1,234,567"},
		{count(999), "999"},
		{dur(0), "-"},
		{dur(3500 * time.Nanosecond), "3.5µs"},
		{dur(250 * time.Microsecond), "250µs"},
		{dur(2500 * time.Microsecond), "2.50ms"},
		{dur(25 * time.Millisecond), "25.0ms"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestByServiceTableIsCPUPerMessageMedians(t *testing.T) {
	subjects := []subject{{key: "send64", name: "herald Send @64"}, {key: "rabbit64", name: "RabbitMQ @64"}}
	kept := []round{
		{samples: map[string]sample{
			"send64":   {ops: 1000, byService: map[string]time.Duration{"gateway": 20 * time.Millisecond, "tracker": 40 * time.Millisecond}},
			"rabbit64": {ops: 1000, srvCPU: time.Second},
		}},
		{samples: map[string]sample{
			"send64": {ops: 2000, byService: map[string]time.Duration{"gateway": 60 * time.Millisecond, "tracker": 60 * time.Millisecond}},
		}},
		{samples: map[string]sample{
			"send64": {ops: 1000, byService: map[string]time.Duration{"gateway": 25 * time.Millisecond, "tracker": 10 * time.Millisecond}},
		}},
	}
	var b strings.Builder
	printByService(&b, subjects, kept)
	out := b.String()
	// gateway: 20, 30, 25 µs per message → 25; tracker: 40, 30, 10 → 30;
	// the queue and plugins did not run; RabbitMQ has no services.
	want := "herald Send @64     25µs     30µs      -        -"
	if !strings.Contains(out, want) {
		t.Errorf("table:\n%s\nwant the row %q", out, want)
	}
	if strings.Contains(out, "RabbitMQ") {
		t.Errorf("table:\n%s\nlists a subject without services", out)
	}
	b.Reset()
	printByService(&b, subjects[1:], kept)
	if b.Len() != 0 {
		t.Errorf("with no herald subject printed %q, want nothing", b.String())
	}
}

func TestRoundRatiosSkipRoundsWithoutTheValue(t *testing.T) {
	kept := []round{{n: 1}, {n: 2}, {n: 3}, {n: 4}}
	value := func(rd round) (float64, bool) { return float64(rd.n) / 2, rd.n != 3 }
	if got, want := roundRatios(kept, value), "1.00 (rounds: 0.50 1.00 2.00)"; got != want {
		t.Errorf("roundRatios = %q, want %q", got, want)
	}
	if got := roundRatios(kept, func(round) (float64, bool) { return 0, false }); got != "-" {
		t.Errorf("roundRatios with no round = %q, want -", got)
	}
}
