package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// target is one of issue 7's checks: a per-round value compared with a
// bound; the verdict is on the median of the kept rounds' values.
type target struct {
	name    string
	bound   float64
	atLeast bool     // value ≥ bound passes; otherwise value ≤ bound
	needs   []string // subject keys
	// value computes the round's figure; ok=false when the round lacks it.
	value func(rd round) (float64, bool)
	// na, when set and returning a reason, makes the check not applicable.
	na func() string
}

func throughputRatio(a, b string) func(round) (float64, bool) {
	return func(rd round) (float64, bool) {
		x, okx := rd.samples[a]
		y, oky := rd.samples[b]
		if !okx || !oky || y.rate() == 0 {
			return 0, false
		}
		return x.rate() / y.rate(), true
	}
}

func targets(e *env) []target {
	return []target{
		{name: "Send@64 throughput ≥ 0.8 × skeleton@64", bound: 0.8, atLeast: true, needs: []string{"send64", "skel64"},
			value: throughputRatio("send64", "skel64")},
		{name: "Send@1 p50 ≤ 1.2 × skeleton@1 p50", bound: 1.2, needs: []string{"send1", "skel1"},
			value: func(rd round) (float64, bool) {
				x, okx := rd.samples["send1"]
				y, oky := rd.samples["skel1"]
				if !okx || !oky || y.p50 == 0 {
					return 0, false
				}
				return float64(x.p50) / float64(y.p50), true
			}},
		{name: "Send@1 p50 ≥ 0.8 × one fsync p50 (the ack waits for the disk)", bound: 0.8, atLeast: true, needs: []string{"send1"},
			value: func(rd round) (float64, bool) {
				x, ok := rd.samples["send1"]
				f := (rd.probeStart.p50 + rd.probeEnd.p50) / 2
				if !ok || f == 0 {
					return 0, false
				}
				return float64(x.p50) / float64(f), true
			}},
		{name: "Send@64 ≥ 1.0 × RabbitMQ publish-confirm@64", bound: 1.0, atLeast: true, needs: []string{"send64", "rabbit64"},
			value: throughputRatio("send64", "rabbit64")},
		{name: "Send@64 ≥ 3 × NATS JetStream (sync always) publish@64", bound: 3, atLeast: true, needs: []string{"send64", "nats64"},
			value: throughputRatio("send64", "nats64")},
		{name: "herald end to end (unary Sends) ≥ 1.0 × RabbitMQ end to end", bound: 1.0, atLeast: true, needs: []string{"heraldE2E", "rabbitE2E"},
			value: throughputRatio("heraldE2E", "rabbitE2E")},
		{name: "herald end to end (unary Sends) ≥ 5 × NATS end to end", bound: 5, atLeast: true, needs: []string{"heraldE2E", "natsE2E"},
			value: throughputRatio("heraldE2E", "natsE2E")},
		{name: "herald end to end (SendStream) ≥ 1.0 × RabbitMQ end to end", bound: 1.0, atLeast: true, needs: []string{"heraldE2Es", "rabbitE2E"},
			value: throughputRatio("heraldE2Es", "rabbitE2E")},
		{name: "herald end to end (SendStream) ≥ 5 × NATS end to end", bound: 5, atLeast: true, needs: []string{"heraldE2Es", "natsE2E"},
			value: throughputRatio("heraldE2Es", "natsE2E")},
		{name: "group commit: acknowledged Sends per WAL fsync at Send@64 ≥ 10", bound: 10, atLeast: true, needs: []string{"send64"},
			value: func(rd round) (float64, bool) {
				x, ok := rd.samples["send64"]
				return x.commitsPerFsync, ok && x.commitsPerFsync > 0
			},
			na: func() string {
				if e.commitMetrics == "" {
					return "n/a: metric missing (the tracker's /metrics has neither herald_tracker_commits_total/herald_tracker_wal_fsyncs_total nor herald_commits_total/herald_wal_fsyncs_total)"
				}
				return ""
			}},
		{name: "tracker store Accept@64 ≥ 0.7 × raw Pebble@64 (in process)", bound: 0.7, atLeast: true, needs: []string{"store64", "pebble64"},
			value: throughputRatio("store64", "pebble64")},
	}
}

// keptRounds returns the rounds the verdict uses: those whose fsync probes
// agree, or every round (flagged) when none does.
func keptRounds(res results) ([]round, bool) {
	var kept []round
	for _, rd := range res.rounds {
		if !rd.discarded {
			kept = append(kept, rd)
		}
	}
	if len(kept) == 0 && len(res.rounds) > 0 {
		return res.rounds, false
	}
	return kept, true
}

func report(w io.Writer, e *env, subjects []subject, res results) {
	cfg := e.cfg
	kept, stable := keptRounds(res)
	host, _ := os.Hostname()
	fmt.Fprintf(w, "\nherald bench-peers, %s, host %s (%d CPUs, %s), payload %d B, %d rounds × %s per subject\n",
		time.Now().UTC().Format(time.RFC3339), host, runtime.NumCPU(), runtime.GOARCH, cfg.payload, cfg.rounds, cfg.dur)
	var discarded []string
	for _, rd := range res.rounds {
		if rd.discarded {
			discarded = append(discarded, fmt.Sprintf("round %d (fsync probes %.1f× apart)", rd.n, rd.probeRatio))
		}
	}
	switch {
	case len(res.rounds) == 0:
		fmt.Fprintln(w, "no round completed")
	case !stable:
		fmt.Fprintf(w, "every round was discarded (%s): the figures below use all rounds and are unreliable\n", strings.Join(discarded, ", "))
	case len(discarded) > 0:
		fmt.Fprintf(w, "kept %d of %d rounds; discarded: %s\n", len(kept), len(res.rounds), strings.Join(discarded, ", "))
	default:
		fmt.Fprintf(w, "kept %d of %d rounds (every round's start and end fsync probes within 2×)\n", len(kept), len(res.rounds))
	}
	fmt.Fprintln(w)

	rows := [][]string{{"subject", "msgs/s", "p50", "p99", "CPU/msg", "srv CPU/msg", "peak RSS", "acks/fsync"}}
	var probes []sample
	for _, rd := range kept {
		probes = append(probes, rd.probeStart, rd.probeEnd)
	}
	if len(probes) > 0 {
		rows = append(rows, row("fsync probe (256 B append + fdatasync)", probes))
	}
	for _, s := range subjects {
		var ss []sample
		for _, rd := range kept {
			if smp, ok := rd.samples[s.key]; ok {
				ss = append(ss, smp)
			}
		}
		if err := res.failed[s.key]; err != nil && len(ss) == 0 {
			rows = append(rows, []string{s.name, "FAILED: " + err.Error()})
			continue
		}
		if len(ss) == 0 {
			rows = append(rows, []string{s.name, "not measured"})
			continue
		}
		r := row(s.name, ss)
		if err := res.failed[s.key]; err != nil {
			r[0] += " (failed later: " + err.Error() + ")"
		}
		rows = append(rows, r)
	}
	printTable(w, rows)
	fmt.Fprintf(w, `
msgs/s, p50, p99, CPU/msg: medians over the kept rounds. p50/p99 are per call (publish → confirm,
Send → answer, commit → return); end-to-end rows measure throughput only: messages published
during -duration, divided by the time until the last was consumed and acknowledged (brokers) or
recorded DELIVERED by the tracker (herald).
CPU/msg: user+system CPU per message of every process of the subject: the harness's own
(getrusage: its clients, and the fsync probe) plus the subject's server processes
(/proc/<pid>/stat utime+stime: skeleton proxy+server; RabbitMQ's Erlang VM and its children, and
epmd; nats-server; herald's gateway, tracker, plugins and queue, the queue only while it runs).
herald-storebench rows count that process alone (getrusage around its loop); srv CPU/msg is the
servers' share. peak RSS: VmHWM summed over the subject's server processes (the harness is not
counted), highest over the rounds; the long-lived servers' peak covers the whole run so far.
acks/fsync: acknowledged writes per WAL fsync during the measurement (herald: Sends answered per fsync, from the tracker's %s).
Skeleton: separate processes (proxy and server re-executed from this binary), client in the harness.
herald Send: %s.
`, orDash(e.commitMetrics), sendMode(cfg))
	printByService(w, subjects, kept)

	fmt.Fprintf(w, "\ntargets (median of per-round values over %d kept rounds):\n", len(kept))
	for _, t := range targets(e) {
		fmt.Fprintf(w, "  %-66s ", t.name)
		var missing []string
		for _, k := range t.needs {
			if !measured(subjects, k) {
				missing = append(missing, k)
			}
		}
		if len(missing) > 0 {
			fmt.Fprintf(w, "skipped: %s not measured\n", strings.Join(missing, ", "))
			continue
		}
		if t.na != nil {
			if why := t.na(); why != "" {
				fmt.Fprintln(w, why)
				continue
			}
		}
		vals, per := roundValues(kept, t.value)
		if len(vals) == 0 {
			fmt.Fprintln(w, "skipped: no round measured it")
			continue
		}
		m := median(vals)
		pass := m <= t.bound
		if t.atLeast {
			pass = m >= t.bound
		}
		verdict := "FAIL"
		if pass {
			verdict = "PASS"
		}
		fmt.Fprintf(w, "%s  %.2f (rounds: %s)\n", verdict, m, strings.Join(per, " "))
	}
	if measured(subjects, "store64") && measured(subjects, "pebble64k8") {
		fmt.Fprintf(w, "\ncontext, not a target (median of per-round ratios):\n")
		fmt.Fprintf(w, "  %-66s %s\n", fmt.Sprintf("tracker store Accept@64 ÷ raw Pebble@64 with %d keys per commit", acceptKeys),
			roundRatios(kept, throughputRatio("store64", "pebble64k8")))
	}
	compareBaseline(w, subjects, kept)
}

// roundValues returns value in each kept round that has it, and each
// formatted.
func roundValues(kept []round, value func(round) (float64, bool)) (vals []float64, per []string) {
	for _, rd := range kept {
		if v, ok := value(rd); ok {
			vals = append(vals, v)
			per = append(per, strconv.FormatFloat(v, 'f', 2, 64))
		}
	}
	return vals, per
}

// roundRatios formats the median of value over the kept rounds, and each
// round's.
func roundRatios(kept []round, value func(round) (float64, bool)) string {
	vals, per := roundValues(kept, value)
	if len(vals) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f (rounds: %s)", median(vals), strings.Join(per, " "))
}

// serviceOrder is the order of herald's services along a message's way.
var serviceOrder = []string{"gateway", "tracker", "queue", "plugins"}

// printByService prints, for each subject that knows its processes by
// name (herald's rows), the servers' CPU per message by service: where
// herald's srv CPU/msg goes, beside the brokers' single server process.
func printByService(w io.Writer, subjects []subject, kept []round) {
	rows := [][]string{append([]string{"subject"}, serviceOrder...)}
	for _, sj := range subjects {
		var ss []sample
		for _, rd := range kept {
			if smp, ok := rd.samples[sj.key]; ok && len(smp.byService) > 0 && smp.ops > 0 {
				ss = append(ss, smp)
			}
		}
		if len(ss) == 0 {
			continue
		}
		r := []string{sj.name}
		for _, svc := range serviceOrder {
			vals := make([]float64, 0, len(ss))
			for _, smp := range ss {
				if cpu, ok := smp.byService[svc]; ok {
					vals = append(vals, float64(cpu)/float64(smp.ops))
				}
			}
			if len(vals) == 0 {
				r = append(r, "-")
				continue
			}
			r = append(r, dur(time.Duration(median(vals))))
		}
		rows = append(rows, r)
	}
	if len(rows) == 1 {
		return
	}
	fmt.Fprintf(w, "\nherald's srv CPU/msg by service (medians over the kept rounds; \"-\": not running, as the queue in the Send rows):\n")
	printTable(w, rows)
}

// compareBaseline prints herald ÷ the baseline build, each the median of
// per-round ratios: both ran in the same rounds, so a slow phase of the
// machine touches both.
func compareBaseline(w io.Writer, subjects []subject, kept []round) {
	if !measured(subjects, "base-send1") {
		return
	}
	ratio := func(a, b string, f func(sample) float64) string {
		return roundRatios(kept, func(rd round) (float64, bool) {
			x, okx := rd.samples[a]
			y, oky := rd.samples[b]
			if !okx || !oky || f(y) <= 0 {
				return 0, false
			}
			return f(x) / f(y), true
		})
	}
	p50 := func(s sample) float64 { return float64(s.p50) }
	rate := func(s sample) float64 { return s.rate() }
	cpu := func(s sample) float64 { return float64(s.cpuPerMsg()) }
	fmt.Fprintf(w, "\nherald ÷ baseline herald (median of per-round ratios):\n")
	fmt.Fprintf(w, "  %-34s %s\n", "Send@1 p50", ratio("send1", "base-send1", p50))
	fmt.Fprintf(w, "  %-34s %s\n", "Send@1 CPU/msg", ratio("send1", "base-send1", cpu))
	fmt.Fprintf(w, "  %-34s %s\n", "Send@64 throughput", ratio("send64", "base-send64", rate))
	fmt.Fprintf(w, "  %-34s %s\n", "Send@64 CPU/msg", ratio("send64", "base-send64", cpu))
	fmt.Fprintf(w, "  %-34s %s\n", "end-to-end throughput", ratio("heraldE2E", "base-heraldE2E", rate))
	fmt.Fprintf(w, "  %-34s %s\n", "end-to-end CPU/msg", ratio("heraldE2E", "base-heraldE2E", cpu))
}

func measured(subjects []subject, key string) bool {
	return slices.ContainsFunc(subjects, func(s subject) bool { return s.key == key })
}

func sendMode(cfg config) string {
	if cfg.sendDelivering {
		return "measured with the queue running (deliveries compete for the CPU)"
	}
	return "measured with herald's queue stopped (like the brokers' publish rows, which have no consumer); the end-to-end row runs all four services"
}

func row(name string, ss []sample) []string {
	pick := func(f func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		return median(v)
	}
	d := func(f func(sample) time.Duration) string {
		return dur(time.Duration(pick(func(s sample) float64 { return float64(f(s)) })))
	}
	var rss int64
	for _, s := range ss {
		rss = max(rss, s.rssKiB)
	}
	rssText := "-"
	if rss > 0 {
		rssText = fmt.Sprintf("%.0f MiB", float64(rss)/1024)
	}
	cpf := "-"
	if c := pick(func(s sample) float64 { return s.commitsPerFsync }); c > 0 {
		cpf = strconv.FormatFloat(c, 'f', 1, 64)
	}
	return []string{name, count(pick(sample.rate)), d(func(s sample) time.Duration { return s.p50 }), d(func(s sample) time.Duration { return s.p99 }),
		d(sample.cpuPerMsg), d(sample.srvCPUPerMsg), rssText, cpf}
}

func printTable(w io.Writer, rows [][]string) {
	widths := map[int]int{}
	for _, r := range rows {
		if len(r) < 3 {
			continue // a failure line spans the row
		}
		for i, c := range r {
			widths[i] = max(widths[i], len([]rune(c)))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", max(widths[i]-len([]rune(c)), 0))
			switch {
			case i == 0:
				b.WriteString(c + pad)
			case len(r) < 3:
				b.WriteString("  " + c)
			default:
				b.WriteString("  " + pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// count formats a rate with thousands separators.
func count(x float64) string {
	s := strconv.FormatInt(int64(math.Round(x)), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func dur(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < 10*time.Microsecond:
		return fmt.Sprintf("%.1fµs", float64(d)/float64(time.Microsecond))
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
