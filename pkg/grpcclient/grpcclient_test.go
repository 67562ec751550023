package grpcclient_test

import (
	"testing"

	"github.com/heraldchat/herald/pkg/grpcclient"
)

func TestDialDoesNotBlock(t *testing.T) {
	// Nothing listens on port 1; Dial must still return at once.
	conn, err := grpcclient.Dial("127.0.0.1:1")
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	if err := conn.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}
