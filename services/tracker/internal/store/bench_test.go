package store

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldchat/herald/bench/load"
	storev1 "github.com/heraldchat/herald/proto/herald/store/v1"
)

// BenchmarkAccept measures durable Accepts on the real disk, beside raw
// Pebble Sync commits of the same size, at 1 and 64 concurrent writers.
func BenchmarkAccept(b *testing.B) {
	for _, writers := range []int{1, 64} {
		b.Run(fmt.Sprintf("store/writers=%d", writers), func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			text := string(make([]byte, 256))
			var n atomic.Int64
			b.SetParallelism(writers)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					m := newMessage(fmt.Sprint("c", n.Add(1)))
					m.Text = text
					if _, err := s.Accept(m); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
		b.Run(fmt.Sprintf("rawpebble/writers=%d", writers), func(b *testing.B) {
			db, err := pebble.Open(b.TempDir(), &pebble.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			val := make([]byte, 256)
			var n atomic.Int64
			b.SetParallelism(writers)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := db.Set(fmt.Appendf(nil, "k%016d", n.Add(1)), val, pebble.Sync); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkLifecycle measures one message's whole durable life in the
// store as the pipeline drives it under load: accepted in a batch, leased
// in a batch, its delivery completed in a batch (128 each, one synced
// commit per batch), each message in a new conversation. ns/op is per
// message; run with -cpuprofile to see where the tracker's CPU goes.
func BenchmarkLifecycle(b *testing.B) {
	const batch = 128
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	// Text that compresses like prose, not like zeros: the bytes that
	// reach the tables drive the flush and compaction costs.
	r := rand.New(rand.NewPCG(1, 2))
	cpu0 := load.CPUTime()
	b.ResetTimer()
	for done := 0; done < b.N; done += batch {
		msgs := make([]*storev1.Message, batch)
		for i := range msgs {
			msgs[i] = newMessage(fmt.Sprint("c", done+i))
			msgs[i].Text = randomText(r, 256)
		}
		if _, errs := s.AcceptBatch(msgs); errs[0] != nil {
			b.Fatal(errs[0])
		}
		leased, err := s.Lease("bench", batch, time.Minute, nil, false)
		if err != nil {
			b.Fatal(err)
		}
		outs := make([]Outcome, len(leased))
		for i, l := range leased {
			outs[i] = Outcome{MessageID: l.Message.Id, LeaseToken: l.Delivery.LeaseToken, Result: ResultDelivered, ProviderMessageID: "p"}
		}
		if _, err := s.Complete(outs); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// Flushes and compactions run on Pebble's own goroutines; CPU time
	// counts them, wall time per message does not.
	b.ReportMetric(float64(load.CPUTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

// randomText is n letters and spaces drawn from r.
func randomText(r *rand.Rand, n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyz      "
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[r.IntN(len(letters))]
	}
	return string(b)
}
