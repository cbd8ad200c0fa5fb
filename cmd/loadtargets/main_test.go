package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/demo"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
)

func TestRunRefusesBadUsage(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"t": {"v": 1, "profile": "nope"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "give -demo or -file"},
		{[]string{"-demo", "-file", bad}, nil, "give -demo or -file"},
		{[]string{"-file", bad}, nil, `target "t"`},
		{[]string{"-file", filepath.Join(dir, "missing.json")}, nil, "-file"},
		{[]string{"-demo"}, map[string]string{"NATS_USER": "operator"}, "NATS_PASSWORD: want"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			err := run(context.Background(), tc.args, slog.New(slog.DiscardHandler))
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run = %v, want a usage error containing %q", err, tc.want)
			}
		})
	}
}

// TestRunLoadsDemoTargets: started before the selector has created the
// bucket, it waits for it, then puts every demo target.
func TestRunLoadsDemoTargets(t *testing.T) {
	srv := natstest.Server(t)
	t.Setenv("NATS_URL", srv.ClientURL())
	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), []string{"-demo", "-wait", "30s"}, slog.New(slog.NewTextHandler(logs, nil)))
	}()

	nc := natstest.Conn(t, srv.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The bucket appears only once a first attempt has failed.
	for !strings.Contains(logs.String(), "cannot put target yet") {
		select {
		case err := <-done:
			t.Fatalf("run returned before the bucket existed: %v", err)
		case <-ctx.Done():
			t.Fatalf("no failed attempt logged: %s", logs.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if _, err := bus.EnsureStore(ctx, js, protocol.NewSubjects(""), bus.StoreConfig{}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("run did not finish")
	}
	kv, err := js.KeyValue(ctx, protocol.TargetsBucket)
	if err != nil {
		t.Fatal(err)
	}
	want := demo.Targets()
	for name := range want {
		if _, err := kv.Get(ctx, protocol.EncodeName(name)); err != nil {
			t.Errorf("target %q not loaded: %v", name, err)
		}
	}
	keys, err := kv.Keys(ctx)
	if err != nil || len(keys) != len(want) || len(want) == 0 {
		t.Fatalf("%d keys (%v), want %d", len(keys), err, len(want))
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
