package natsembed

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestStartNeedsStoreDir(t *testing.T) {
	if s, err := Start(context.Background(), Options{Port: -1}); err == nil {
		Shutdown(s)
		t.Fatal("started without a store directory")
	}
}

// TestStartShutdownRestart: a server comes up with JetStream and accepts a
// client; once shut down, a new one starts on the same port and store.
func TestStartShutdownRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	s, err := Start(ctx, Options{StoreDir: dir, Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	if !s.JetStreamEnabled() {
		Shutdown(s)
		t.Fatal("JetStream off")
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		Shutdown(s)
		t.Fatal(err)
	}
	nc.Close()
	port := s.Addr().(*net.TCPAddr).Port
	Shutdown(s)

	s, err = Start(ctx, Options{StoreDir: dir, Port: port})
	if err != nil {
		t.Fatalf("restart on port %d and the same store: %v", port, err)
	}
	Shutdown(s)
	Shutdown(nil) // safe on nil
}
