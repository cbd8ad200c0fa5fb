package bus

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// testLog discards logs unless BUS_TEST_LOG is set.
func testLog() *slog.Logger { return natstest.Log("BUS_TEST_LOG") }

// connect opens a connection with Connect (it reconnects for good), named
// after the test and closed when the test ends.
func connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := natsconn.Connect(ctx, url, t.Name(), testLog(), nil, nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond every few milliseconds until it holds or the deadline
// passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func taskState(target, taskID string, epoch uint64) schemas.TaskState {
	now := time.Now().UTC()
	return schemas.TaskState{
		V: schemas.Version, Target: target, Phase: "work", Epoch: epoch,
		Task: &schemas.TaskRecord{
			TaskID: taskID, PID: 7, Type: "work", Host: "h1", State: schemas.TaskActive,
			BudgetMiB: 100, LaunchedAt: now, ConfirmedAt: &now,
		},
		UpdatedAt: now,
	}
}

func mustMarshal(t testing.TB, m schemas.Message) []byte {
	t.Helper()
	b, err := schemas.Marshal(m)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return b
}

func declaredSpec() schemas.TargetSpec {
	return schemas.TargetSpec{
		V: schemas.Version, Profile: schemas.ProfileDeclared,
		Phases: []schemas.Phase{{Type: "work", WrapperMiB: 10, HelpersMinMiB: 20, HelpersFullMiB: 100, WorkS: 3600, Repeat: true}},
	}
}

// fakeWorker is a plain NATS responder standing in for a worker agent: it
// answers launch (with a PID, idempotent by task_id), ps and kill for one
// host, heartbeats every task at once and then every interval, and
// publishes its HostStatus every interval.
type fakeWorker struct {
	nc   *nats.Conn
	subj protocol.Subjects
	host string
	ram  int64

	mu       sync.Mutex
	tasks    map[string]*schemas.Heartbeat // by task_id
	nextPID  int64
	launches int
	kills    []schemas.KillRequest
	// onLaunch, if set, runs on each launch request before it is answered.
	onLaunchHook func(schemas.LaunchRequest)
	// psError and killError make the worker refuse ps and kill requests:
	// it answers them with the reply's error set (and kills nothing).
	psError, killError bool
	// silent lists the tasks that no longer heartbeat (they still run).
	silent  map[string]bool
	psCount int

	stop chan struct{}
	done chan struct{}
}

func startFakeWorker(t testing.TB, nc *nats.Conn, prefix, host string, ramMiB int64) *fakeWorker {
	t.Helper()
	w := &fakeWorker{nc: nc, subj: protocol.NewSubjects(prefix), host: host, ram: ramMiB, tasks: map[string]*schemas.Heartbeat{}, silent: map[string]bool{},
		nextPID: 1000, stop: make(chan struct{}), done: make(chan struct{})}
	subs := []*nats.Subscription{}
	sub := func(subject string, h nats.MsgHandler) {
		s, err := nc.Subscribe(subject, h)
		if err != nil {
			t.Fatalf("fake worker subscribe %s: %v", subject, err)
		}
		subs = append(subs, s)
	}
	sub(w.subj.Launch(host), w.onLaunch)
	sub(w.subj.Ps(host), w.onPs)
	sub(w.subj.Kill(host), w.onKill)
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	go w.loop(50 * time.Millisecond)
	t.Cleanup(func() {
		close(w.stop)
		<-w.done
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	})
	return w
}

func (w *fakeWorker) onLaunch(m *nats.Msg) {
	req, err := schemas.DecodeLaunchRequest(m.Data)
	if err != nil {
		return
	}
	w.mu.Lock()
	hook := w.onLaunchHook
	w.mu.Unlock()
	if hook != nil {
		hook(req)
	}
	w.mu.Lock()
	hb, ok := w.tasks[req.TaskID]
	if !ok {
		w.launches++
		w.nextPID++
		hb = &schemas.Heartbeat{V: schemas.Version, TaskID: req.TaskID, Epoch: req.Epoch, PID: w.nextPID, Host: w.host,
			Target: req.Target, Type: req.Type, RAM: schemas.HeartbeatRAM{BudgetMiB: req.RAM.WrapperMiB + req.RAM.HelpersMiB}}
		w.tasks[req.TaskID] = hb
	}
	pid := hb.PID
	w.mu.Unlock()
	_ = m.Respond(mustMarshalNoT(&schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: pid}))
	if !ok {
		w.heartbeat(req.TaskID)
	}
}

func (w *fakeWorker) onPs(m *nats.Msg) {
	w.mu.Lock()
	w.psCount++
	rep := schemas.PsReply{V: schemas.Version, Host: w.host, Tasks: []schemas.PsTask{}}
	if w.psError {
		rep.Error = &schemas.ReplyError{Code: schemas.CodeInvalid, Message: "fake worker refuses ps"}
		w.mu.Unlock()
		_ = m.Respond(mustMarshalNoT(&rep))
		return
	}
	for _, hb := range w.tasks {
		rep.Tasks = append(rep.Tasks, schemas.PsTask{TaskID: hb.TaskID, Epoch: hb.Epoch, PID: hb.PID, Target: hb.Target, Type: hb.Type,
			RAM: schemas.TaskRAM{HelpersMiB: hb.RAM.BudgetMiB}, StartedAt: time.Now().UTC()})
	}
	w.mu.Unlock()
	_ = m.Respond(mustMarshalNoT(&rep))
}

func (w *fakeWorker) onKill(m *nats.Msg) {
	req, err := schemas.DecodeKillRequest(m.Data)
	if err != nil {
		return
	}
	w.mu.Lock()
	w.kills = append(w.kills, req)
	reply := schemas.KillReply{V: schemas.Version, TaskID: req.TaskID, PID: req.PID, Running: false}
	if w.killError {
		reply.Error = &schemas.ReplyError{Code: schemas.CodeInvalid, Message: "fake worker refuses kill"}
	} else {
		delete(w.tasks, req.TaskID)
	}
	w.mu.Unlock()
	_ = m.Respond(mustMarshalNoT(&reply))
}

func (w *fakeWorker) heartbeat(taskID string) {
	w.mu.Lock()
	hb, ok := w.tasks[taskID]
	if !ok || w.silent[taskID] {
		w.mu.Unlock()
		return
	}
	hb.Seq++
	hb.SentAt = time.Now().UTC()
	data := schemas.AppendHeartbeat(nil, hb)
	subject := w.subj.Heartbeat(w.host, hb.Target)
	w.mu.Unlock()
	_ = w.nc.Publish(subject, data)
}

func (w *fakeWorker) loop(every time.Duration) {
	defer close(w.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		w.mu.Lock()
		st := schemas.HostStatus{V: schemas.Version, Host: w.host, RAM: schemas.HostRAM{TotalMiB: w.ram}, Tasks: []string{}, SentAt: time.Now().UTC()}
		var ids []string
		for id, hb := range w.tasks {
			st.Tasks = append(st.Tasks, id)
			st.RAM.UsedMiB += hb.RAM.BudgetMiB
			ids = append(ids, id)
		}
		w.mu.Unlock()
		_ = w.nc.Publish(w.subj.Host(w.host), mustMarshalNoT(&st))
		for _, id := range ids {
			w.heartbeat(id)
		}
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
	}
}

func (w *fakeWorker) launchCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.launches
}

// set changes the worker's behaviour under its lock.
func (w *fakeWorker) set(f func(w *fakeWorker)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(w)
}

func (w *fakeWorker) psRequests() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.psCount
}

func (w *fakeWorker) killCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.kills)
}

func mustMarshalNoT(m schemas.Message) []byte {
	b, err := schemas.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func kvOf(t testing.TB, nc *nats.Conn, bucket string) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 10*time.Second)
	if _, err := EnsureStore(ctx, js, protocol.NewSubjects(""), StoreConfig{}); err != nil {
		t.Fatalf("ensure store: %v", err)
	}
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}
