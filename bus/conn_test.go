package bus

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// recordingHandler is a slog.Handler that remembers messages.
type recordingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.mu.Unlock()
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }
func (h *recordingHandler) saw(prefix string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range h.msgs {
		if strings.HasPrefix(m, prefix) {
			return true
		}
	}
	return false
}

// TestConnectRetryAndServerRestart connects before the server exists, then
// restarts the server (same port, same file store) under a running selector:
// the client reconnects, the service is told of both changes, its
// subscriptions and event consumer resume, and the KV state survives.
func TestConnectRetryAndServerRestart(t *testing.T) {
	dir := t.TempDir()
	port := natstest.FreePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	rec := &recordingHandler{}
	var mu sync.Mutex
	disc, reco := 0, 0
	type result struct {
		nc  *nats.Conn
		err error
	}
	connected := make(chan result, 1)
	ctx := testCtx(t, 60*time.Second)
	go func() {
		nc, err := natsconn.Connect(ctx, url, "selector", slog.New(rec),
			func() { mu.Lock(); disc++; mu.Unlock() },
			func() { mu.Lock(); reco++; mu.Unlock() })
		connected <- result{nc, err}
	}()
	waitFor(t, 10*time.Second, "a failed first connect", func() bool { return rec.saw("nats connect failed") })
	srv := natstest.Server(t, natstest.StoreDir(dir), natstest.Port(port))
	res := <-connected
	if res.err != nil {
		t.Fatalf("connect: %v", res.err)
	}
	defer res.nc.Close()
	snc := connect(t, url)

	r := startService(t, snc, ServiceConfig{})
	opNC := connect(t, url)
	c, err := client.New(opNC, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PutTarget(ctx, "keep.me", declaredSpec()); err != nil {
		t.Fatal(err)
	}
	if natsconn.StatsOf(snc) == nil {
		t.Fatalf("no stats for a connection made by Connect")
	}

	natstest.Shutdown(srv)
	waitFor(t, 10*time.Second, "service sees the disconnect", func() bool { return !r.svc.Status().Connected })
	waitFor(t, 10*time.Second, "first client's disconnect callback", func() bool { mu.Lock(); defer mu.Unlock(); return disc == 1 })
	natstest.Server(t, natstest.StoreDir(dir), natstest.Port(port))
	waitFor(t, 10*time.Second, "service sees the reconnect", func() bool { return r.svc.Status().Connected })
	waitFor(t, 10*time.Second, "first client's reconnect callback", func() bool { mu.Lock(); defer mu.Unlock(); return reco == 1 })
	if st := natsconn.StatsOf(snc); st.Disconnects.Load() != 1 || st.Reconnects.Load() != 1 {
		t.Fatalf("stats: %d disconnects, %d reconnects", st.Disconnects.Load(), st.Reconnects.Load())
	}

	// Status answers again (the status subscription was restored).
	waitFor(t, 10*time.Second, "status answers after the restart", func() bool {
		sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		_, err := c.Status(sctx)
		return err == nil
	})
	// The target declared before the restart survived in the file store.
	js, err := jetstream.New(opNC)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, protocol.TargetsBucket)
	if err != nil {
		t.Fatalf("targets bucket after restart: %v", err)
	}
	if _, err := kv.Get(ctx, protocol.EncodeName("keep.me")); err != nil {
		t.Fatalf("target lost over the restart: %v", err)
	}
	if _, ok := targetLine(statusOf(t, c), "keep.me"); !ok {
		t.Fatalf("service forgot the target")
	}
	// The event consumer resumed: a malformed event is counted.
	waitFor(t, 15*time.Second, "event consumed after the restart", func() bool {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if _, err := js.Publish(pctx, protocol.NewSubjects("").Event("keep.me"), []byte("junk")); err != nil {
			return false
		}
		return statusOf(t, c).Counters.MalformedMessages[SourceEvent] > 0
	})
	// A new target after the restart is picked up by the live watch.
	if err := c.PutTarget(ctx, "new", schemas.TargetSpec{V: 1, Profile: schemas.ProfileDeclared, Phases: declaredSpec().Phases}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "target watch resumed after the restart", func() bool {
		_, ok := targetLine(statusOf(t, c), "new")
		return ok
	})
	if err := c.DeleteTarget(ctx, "keep.me"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "deleted target gone after the restart", func() bool {
		_, ok := targetLine(statusOf(t, c), "keep.me")
		return !ok
	})
	r.stop(t)
}
