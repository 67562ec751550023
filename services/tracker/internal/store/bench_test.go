package store

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
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
