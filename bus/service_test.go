package bus

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

func testEngineConfig() selector.Config {
	return selector.Config{
		LaunchTimeout:  time.Second,
		ReplyTimeout:   500 * time.Millisecond,
		HeartbeatStale: 2 * time.Second,
		HostStale:      3 * time.Second,
		RecoveryGrace:  100 * time.Millisecond,
		BackoffBase:    50 * time.Millisecond,
		BackoffMax:     500 * time.Millisecond,
	}
}

// runningService is a SelectorService running in a goroutine.
type runningService struct {
	svc    *SelectorService
	cancel context.CancelFunc
	done   chan error
}

func startService(t testing.TB, nc *nats.Conn, cfg ServiceConfig, prep ...func(*SelectorService)) *runningService {
	t.Helper()
	if cfg.Engine == (selector.Config{}) {
		cfg.Engine = testEngineConfig()
	}
	svc := NewSelectorService(nc, cfg, testLog())
	for _, p := range prep {
		p(svc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningService{svc: svc, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- svc.Run(ctx) }()
	select {
	case <-svc.Ready():
	case err := <-r.done:
		t.Fatalf("service stopped before ready: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatalf("service not ready in time")
	}
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop shuts the service down and waits for Run to return; idempotent.
func (r *runningService) stop(t testing.TB) {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok && err != nil {
			t.Errorf("Run: %v", err)
		}
		if ok {
			close(r.done)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("service did not stop in time")
	}
}

func statusOf(t testing.TB, c *client.Client) schemas.SelectorStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return st
}

func targetLine(st schemas.SelectorStatus, target string) (schemas.TargetStatus, bool) {
	for _, ts := range st.Targets {
		if ts.Target == target {
			return ts, true
		}
	}
	return schemas.TargetStatus{}, false
}

func waitTargetState(t testing.TB, c *client.Client, target, state string) schemas.TargetStatus {
	t.Helper()
	var line schemas.TargetStatus
	waitFor(t, 10*time.Second, target+" "+state, func() bool {
		var ok bool
		line, ok = targetLine(statusOf(t, c), target)
		return ok && line.State == state
	})
	return line
}

// TestServiceLaunchToActive brings a selector up with a fake worker, declares
// a target whose name needs encoding, and waits until its task is active and
// persisted.
func TestServiceLaunchToActive(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	// No selector yet: no responders.
	if _, err := c.Status(testCtx(t, time.Second)); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("status without a selector: %v, want ErrNoResponders", err)
	}
	// Slow the store down, so that a launch sent before its state is stored
	// would reach the worker first.
	r := startService(t, connect(t, s.ClientURL()), ServiceConfig{Faults: &ServiceFaults{
		BeforeWrite: func(ctx context.Context, _ string) error {
			sleepCtx(ctx, 20*time.Millisecond)
			return nil
		},
	}})
	if r.svc.RestartToReady() <= 0 {
		t.Fatalf("restart-to-ready not recorded")
	}
	w := startFakeWorker(t, connect(t, s.ClientURL()), "", "h1", 4096)

	ctx := testCtx(t, 10*time.Second)
	const target = "I.I.I.I"
	// Write-ahead: when the launch arrives, its state is already stored.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := js.KeyValue(ctx, protocol.TasksBucket)
	if err != nil {
		t.Fatal(err)
	}
	var writeAhead []string
	w.mu.Lock()
	w.onLaunchHook = func(req schemas.LaunchRequest) {
		problem := ""
		e, err := tasks.Get(ctx, protocol.EncodeName(req.Target))
		if err != nil {
			problem = "no state stored: " + err.Error()
		} else if st, err := schemas.DecodeTaskState(e.Value()); err != nil {
			problem = "bad state stored: " + err.Error()
		} else if st.Task == nil || st.Task.TaskID != req.TaskID || st.Epoch != req.Epoch {
			problem = fmt.Sprintf("stored state %+v does not record launch %s epoch %d", st, req.TaskID, req.Epoch)
		}
		w.mu.Lock()
		writeAhead = append(writeAhead, problem)
		w.mu.Unlock()
	}
	w.mu.Unlock()
	if err := c.PutTarget(ctx, target, declaredSpec()); err != nil {
		t.Fatal(err)
	}
	line := waitTargetState(t, c, target, selector.StateActive)
	if line.Host != "h1" || line.PID <= 1000 || line.TaskID == "" {
		t.Fatalf("active line = %+v", line)
	}
	if w.launchCount() != 1 {
		t.Fatalf("worker saw %d launches, want 1", w.launchCount())
	}
	w.mu.Lock()
	if len(writeAhead) != 1 || writeAhead[0] != "" {
		t.Fatalf("write-ahead violated: %q", writeAhead)
	}
	w.mu.Unlock()
	// The state is persisted under the encoded key.
	waitFor(t, 5*time.Second, "persisted active state", func() bool {
		e, err := tasks.Get(ctx, protocol.EncodeName(target))
		if err != nil {
			return false
		}
		st, err := schemas.DecodeTaskState(e.Value())
		return err == nil && st.Task != nil && st.Task.TaskID == line.TaskID && st.Task.State == schemas.TaskActive
	})

	// Deleting the target kills its task and deletes its state.
	if err := c.DeleteTarget(ctx, target); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "kill of the deleted target's task", func() bool { return w.killCount() == 1 })
	waitFor(t, 5*time.Second, "state deleted", func() bool {
		_, err := tasks.Get(ctx, protocol.EncodeName(target))
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	waitFor(t, 5*time.Second, "target gone from status", func() bool {
		_, ok := targetLine(statusOf(t, c), target)
		return !ok
	})
	r.stop(t)
	if _, err := c.Status(testCtx(t, time.Second)); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("status after shutdown: %v, want ErrNoResponders", err)
	}
}

// TestServiceRestartNoDuplicate restarts the selector under a live task: the
// new one rebuilds its state from the buckets and the heartbeats and
// launches nothing new.
func TestServiceRestartNoDuplicate(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	w := startFakeWorker(t, connect(t, s.ClientURL()), "", "h1", 4096)
	r1 := startService(t, connect(t, s.ClientURL()), ServiceConfig{})
	ctx := testCtx(t, 20*time.Second)
	for _, tg := range []string{"a", "b.b"} {
		if err := c.PutTarget(ctx, tg, declaredSpec()); err != nil {
			t.Fatal(err)
		}
	}
	a := waitTargetState(t, c, "a", selector.StateActive)
	b := waitTargetState(t, c, "b.b", selector.StateActive)
	// Wait until both active states are stored: the restart must find them.
	js, _ := jetstream.New(nc)
	tasks, err := js.KeyValue(ctx, protocol.TasksBucket)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "both states stored", func() bool {
		n := 0
		for _, tg := range []string{"a", "b.b"} {
			if e, err := tasks.Get(ctx, protocol.EncodeName(tg)); err == nil {
				if st, err := schemas.DecodeTaskState(e.Value()); err == nil && st.Task != nil && st.Task.State == schemas.TaskActive {
					n++
				}
			}
		}
		return n == 2
	})
	r1.stop(t)

	cfg := ServiceConfig{}
	cfg.Engine = testEngineConfig()
	cfg.Engine.RecoveryGrace = 2 * time.Second // long: the heartbeats must end it early
	startService(t, connect(t, s.ClientURL()), cfg)
	a2 := waitTargetState(t, c, "a", selector.StateActive)
	b2 := waitTargetState(t, c, "b.b", selector.StateActive)
	if a2.TaskID != a.TaskID || b2.TaskID != b.TaskID || a2.PID != a.PID {
		t.Fatalf("tasks changed over the restart: %+v/%+v -> %+v/%+v", a, b, a2, b2)
	}
	waitFor(t, 5*time.Second, "ready after recovery", func() bool { return statusOf(t, c).Ready })
	st := statusOf(t, c)
	if st.Counters.Launches != 0 || w.launchCount() != 2 {
		t.Fatalf("launches after restart: selector %d, worker total %d (want 0 and 2)", st.Counters.Launches, w.launchCount())
	}
}

// TestServiceMalformedFlood sends garbage on every subscribed subject: the
// service keeps answering and counts each source.
func TestServiceMalformedFlood(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	r := startService(t, connect(t, s.ClientURL()), ServiceConfig{})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 20*time.Second)
	subj := protocol.NewSubjects("")
	good := &schemas.Heartbeat{V: 1, TaskID: "t", Epoch: 1, PID: 1, Host: "h1", Target: "x", Type: "work", Seq: 1, SentAt: time.Now().UTC()}
	mismatch := schemas.AppendHeartbeat(nil, good) // valid body, on another target's subject
	garbage := [][]byte{nil, []byte("{"), []byte(`{"v":2}`), []byte("\xff\xfe"), make([]byte, 70<<10)}
	const rounds = 40
	for range rounds {
		for _, g := range garbage {
			_ = nc.Publish(subj.Heartbeat("h1", "x"), g)
			_ = nc.Publish(subj.Host("h1"), g)
		}
		_ = nc.Publish(subj.Heartbeat("h1", "other"), mismatch)
		_ = nc.Publish(subj.Prefix+".heartbeat.=00.x", mismatch)
	}
	events := 0
	for _, g := range garbage[:4] {
		if _, err := js.Publish(ctx, subj.Event("x"), g); err != nil {
			t.Fatal(err)
		}
		events++
	}
	// A valid event body on the wrong target's subject.
	ev := schemas.TaskEvent{V: 1, TaskID: "t", Epoch: 1, PID: 1, Host: "h1", Target: "x", Type: "work", Kind: schemas.EventDone, At: time.Now().UTC()}
	if _, err := js.Publish(ctx, subj.Event("y"), mustMarshal(t, &ev)); err != nil {
		t.Fatal(err)
	}
	events++
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	wantHB := uint64(rounds * (len(garbage) + 2))
	waitFor(t, 10*time.Second, "every malformed message counted", func() bool {
		m := statusOf(t, c).Counters.MalformedMessages
		return m[SourceHeartbeat] == wantHB && m[SourceHost] == uint64(rounds*len(garbage)) && m[SourceEvent] == uint64(events)
	})
	// Malformed events are terminated, not left for redelivery.
	waitFor(t, 5*time.Second, "events settled", func() bool {
		info, err := r.svc.store.Consumer.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
	// A status request still answers quickly.
	start := time.Now()
	statusOf(t, c)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("status took %v", d)
	}
}

// TestServiceEventsAcked checks that a valid task event is handled and acked.
func TestServiceEventsAcked(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	r := startService(t, connect(t, s.ClientURL()), ServiceConfig{})
	w := startFakeWorker(t, connect(t, s.ClientURL()), "", "h1", 4096)
	ctx := testCtx(t, 20*time.Second)
	if err := c.PutTarget(ctx, "t1", declaredSpec()); err != nil {
		t.Fatal(err)
	}
	line := waitTargetState(t, c, "t1", selector.StateActive)
	js, _ := jetstream.New(nc)
	ev := schemas.TaskEvent{V: 1, TaskID: line.TaskID, Epoch: line.Epoch, PID: line.PID, Host: "h1", Target: "t1", Type: "work",
		Kind: schemas.EventFailed, Reason: schemas.ReasonCrashed, At: time.Now().UTC()}
	w.mu.Lock()
	delete(w.tasks, line.TaskID) // the task is gone on the worker too
	w.mu.Unlock()
	if _, err := js.Publish(ctx, protocol.NewSubjects("").Event("t1"), mustMarshal(t, &ev)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "event handled and acked", func() bool {
		info, err := r.svc.store.Consumer.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0 && info.AckFloor.Stream == 1
	})
	if st := statusOf(t, c); st.Counters.Events != 1 {
		t.Fatalf("events counted = %d, want 1", st.Counters.Events)
	}
}

// TestServiceStoreConflict: another writer changes a target's state behind
// the selector's back; the selector's next write of it loses its
// compare-and-swap, and the selector stops launching and says so.
func TestServiceStoreConflict(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	startService(t, connect(t, s.ClientURL()), ServiceConfig{})
	startFakeWorker(t, connect(t, s.ClientURL()), "", "h1", 4096)
	ctx := testCtx(t, 20*time.Second)
	if err := c.PutTarget(ctx, "x", declaredSpec()); err != nil {
		t.Fatal(err)
	}
	waitTargetState(t, c, "x", selector.StateActive)
	js, _ := jetstream.New(nc)
	tasks, err := js.KeyValue(ctx, protocol.TasksBucket)
	if err != nil {
		t.Fatal(err)
	}
	var e jetstream.KeyValueEntry
	waitFor(t, 5*time.Second, "active state stored", func() bool {
		var err error
		e, err = tasks.Get(ctx, protocol.EncodeName("x"))
		if err != nil {
			return false
		}
		st, err := schemas.DecodeTaskState(e.Value())
		return err == nil && st.Task != nil && st.Task.State == schemas.TaskActive
	})
	// The intruder rewrites the same value: only the revision changes.
	if _, err := tasks.Put(ctx, protocol.EncodeName("x"), e.Value()); err != nil {
		t.Fatal(err)
	}
	// Deleting the target makes the selector delete its state: conflict.
	if err := c.DeleteTarget(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "conflict reported", func() bool {
		st := statusOf(t, c)
		return st.LaunchesStopped != "" && st.Counters.StoreErrors > 0
	})
	// The intruder's key was not deleted.
	if _, err := tasks.Get(ctx, protocol.EncodeName("x")); err != nil {
		t.Fatalf("the conflicting delete went through: %v", err)
	}
}
