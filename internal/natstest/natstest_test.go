package natstest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestServerDefaults(t *testing.T) {
	a, b := Server(t), Server(t)
	if a.ClientURL() == b.ClientURL() {
		t.Fatalf("two default servers share %s", a.ClientURL())
	}
	if !a.JetStreamEnabled() {
		t.Fatal("JetStream is off")
	}
	if a.StoreDir() == b.StoreDir() {
		t.Fatalf("two default servers share the store %s", a.StoreDir())
	}
	nc := Conn(t, a.ClientURL())
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// TestRestartSamePortAndStore restarts a server on a fixed port and store:
// a connection made by Conn reconnects, and a KV entry written before the
// restart is still there.
func TestRestartSamePortAndStore(t *testing.T) {
	dir, port := t.TempDir(), FreePort(t)
	s := Server(t, StoreDir(dir), Port(port), NoCleanup())
	nc := Conn(t, s.ClientURL(), nats.ReconnectWait(20*time.Millisecond))
	reconnected := make(chan struct{}, 1)
	nc.SetReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "natstest"})
	if err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("put: %v", err)
	}

	Shutdown(s)
	Shutdown(s) // a second shutdown is harmless
	if s.Running() {
		t.Fatal("server still running after Shutdown")
	}
	s2 := Server(t, StoreDir(dir), Port(port))
	if s2.ClientURL() != s.ClientURL() {
		t.Fatalf("restarted at %s, want %s", s2.ClientURL(), s.ClientURL())
	}
	select {
	case <-reconnected:
	case <-ctx.Done():
		t.Fatal("connection did not reconnect to the restarted server")
	}
	kv, err = js.KeyValue(ctx, "natstest")
	if err != nil {
		t.Fatalf("bucket after the restart: %v", err)
	}
	ent, err := kv.Get(ctx, "k")
	if err != nil || string(ent.Value()) != "v" {
		t.Fatalf("entry after the restart: %v", err)
	}
}

func TestLog(t *testing.T) {
	const env = "NATSTEST_TEST_LOG"
	t.Setenv(env, "")
	if Log(env).Enabled(context.Background(), slog.LevelDebug) {
		t.Fatal("debug enabled with the variable unset")
	}
	t.Setenv(env, "1")
	if !Log(env).Enabled(context.Background(), slog.LevelDebug) {
		t.Fatal("debug disabled with the variable set")
	}
}
