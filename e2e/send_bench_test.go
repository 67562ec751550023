package e2e

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	gatewayv1 "github.com/heraldchat/herald/proto/herald/gateway/v1"
	"github.com/heraldchat/herald/services/gateway/gatewaytest"
	"github.com/heraldchat/herald/services/tracker/trackertest"
)

// BenchmarkSendNoQueue measures Send through a real gateway and tracker in
// process (Pebble in memory, so the disk is not measured) with no queue
// running: the cost of the Send path itself.
func BenchmarkSendNoQueue(b *testing.B) {
	tracker := trackertest.Start(b)
	gw := gatewaytest.Start(b, tracker)
	conn, err := grpc.NewClient(gw, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	c := gatewayv1.NewGatewayServiceClient(conn)
	text := string(make([]byte, 256))
	for _, p := range []int{1, 32} {
		b.Run(fmt.Sprint("parallel=", p), func(b *testing.B) {
			var n atomic.Int64
			b.SetParallelism(p)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.Send(context.Background(), &gatewayv1.SendRequest{Channel: "mock", Recipient: "ok", Conversation: fmt.Sprint("c", n.Add(1)), Text: text}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
