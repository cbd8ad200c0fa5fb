package audit

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// fakeExec starts tasks that run until killed or ended by the test.
type fakeExec struct {
	mu    sync.Mutex
	pid   int64
	tasks map[string]*fakeTask
}

type fakeTask struct {
	pid   int64
	hooks worker.Hooks
	gone  bool
}

func (f *fakeExec) Check(*worker.LaunchSpec) error { return nil }
func (f *fakeExec) UsedMiB() int64                 { return 0 }
func (f *fakeExec) Close() error                   { return nil }
func (f *fakeExec) Start(spec *worker.LaunchSpec, hooks worker.Hooks) (worker.Task, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if spec.Type == "fail" {
		return nil, worker.ErrInsufficientRAM
	}
	f.pid++
	t := &fakeTask{pid: f.pid, hooks: hooks}
	if f.tasks == nil {
		f.tasks = map[string]*fakeTask{}
	}
	f.tasks[spec.TaskID] = t
	return t, nil
}

func (t *fakeTask) PID() int64            { return t.pid }
func (t *fakeTask) Sample() worker.Sample { return worker.Sample{} }
func (t *fakeTask) Kill() error {
	if t.gone {
		return worker.ErrGone
	}
	t.gone = true
	return nil
}

// clock is a fake clock for the auditor.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time          { return c.now }
func (c *clock) advance(d time.Duration) { c.now = c.now.Add(d) }

func spec(id, target string, epoch uint64) *worker.LaunchSpec {
	return &worker.LaunchSpec{TaskID: id, Epoch: epoch, Target: target, Type: "work", RAM: schemas.TaskRAM{WrapperMiB: 8, HelpersMiB: 56}}
}

func newTestAuditor() (*Auditor, *clock) {
	c := &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	return New(Config{KillBound: time.Second, Now: c.Now}), c
}

func TestOverlapAcrossHostsIsAViolation(t *testing.T) {
	a, c := newTestAuditor()
	h1, h2 := a.Wrap("h1", &fakeExec{}), a.Wrap("h2", &fakeExec{})
	t1, err := h1.Start(spec("a#1", "a", 1), worker.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	c.advance(time.Second)
	// h1 is partitioned, not dead: its process still runs when a new one
	// starts on h2. No exemption, whatever would fence it later.
	if _, err := h2.Start(spec("a#2", "a", 2), worker.Hooks{}); err != nil {
		t.Fatal(err)
	}
	c.advance(time.Second)
	_ = t1.Kill()
	v := a.Violations()
	if len(v) != 1 || !strings.Contains(v[0], "overlap") {
		t.Fatalf("violations %q", v)
	}
}

func TestSequentialTasksAndFailedStartsAreFine(t *testing.T) {
	a, c := newTestAuditor()
	ex := &fakeExec{}
	h1 := a.Wrap("h1", ex)
	t1, _ := h1.Start(spec("a#1", "a", 1), worker.Hooks{})
	c.advance(time.Second)
	if err := t1.Kill(); err != nil {
		t.Fatal(err)
	}
	c.advance(time.Millisecond)
	failing := spec("a#2", "a", 2)
	failing.Type = "fail"
	if _, err := h1.Start(failing, worker.Hooks{}); err == nil {
		t.Fatal("want a failed start")
	}
	if _, err := h1.Start(spec("a#3", "a", 3), worker.Hooks{}); err != nil {
		t.Fatal(err)
	}
	// A task that ends on its own is recorded through its hook.
	if _, err := h1.Start(spec("b#1", "b", 1), worker.Hooks{}); err != nil {
		t.Fatal(err)
	}
	c.advance(time.Second)
	ft := ex.tasks["b#1"]
	ft.hooks.Exited(ft, worker.Exit{Kind: schemas.EventDone})
	h2 := a.Wrap("h2", &fakeExec{})
	if _, err := h2.Start(spec("b#2", "b", 2), worker.Hooks{}); err != nil {
		t.Fatal(err)
	}
	if v := a.Violations(); len(v) != 0 {
		t.Fatalf("violations %q", v)
	}
	if got := len(a.Procs("a")); got != 2 {
		t.Fatalf("%d processes of a recorded, want 2 (the failed start is not one)", got)
	}
	if live := a.Live("h1"); len(live) != 1 || live[0].TaskID != "a#3" {
		t.Fatalf("live on h1: %v", live)
	}
}

func TestProcessOutlivingItsKillIsAViolation(t *testing.T) {
	a, c := newTestAuditor()
	h1 := a.Wrap("h1", &fakeExec{})
	h2 := a.Wrap("h2", &fakeExec{})
	if _, err := h1.Start(spec("a#1", "a", 1), worker.Hooks{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.Start(spec("b#1", "b", 1), worker.Hooks{}); err != nil {
		t.Fatal(err)
	}
	a.SetUnreachable("h2", true)
	for _, h := range []string{"h1", "h2"} {
		data, _ := schemas.Marshal(&schemas.KillRequest{V: schemas.Version, TaskID: map[string]string{"h1": "a#1", "h2": "b#1"}[h], PID: 1, Reason: "fenced: test"})
		a.onKill("tasks.kill."+h, data)
	}
	c.advance(500 * time.Millisecond)
	if v := a.Violations(); len(v) != 0 {
		t.Fatalf("within the bound: %q", v)
	}
	c.advance(time.Second)
	v := a.Violations()
	if len(v) != 1 || !strings.Contains(v[0], "a#1") || !strings.Contains(v[0], "outlived the kill") {
		t.Fatalf("violations %q (b#1's host is unreachable and exempt from the bound)", v)
	}
}

func TestFinishedPhaseLaunchedAgainIsAViolation(t *testing.T) {
	a, _ := newTestAuditor()
	sp := schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
		{Type: "build", WrapperMiB: 8, HelpersMinMiB: 8, HelpersFullMiB: 8, WorkS: 1},
		{Type: "serve", WrapperMiB: 8, HelpersMinMiB: 8, HelpersFullMiB: 8, WorkS: 1, Repeat: true},
	}}
	launch := func(typ string, epoch uint64) {
		req := schemas.LaunchRequest{V: schemas.Version, TaskID: "x", Epoch: epoch, Target: "a", Type: typ,
			RAM: schemas.TaskRAM{WrapperMiB: 8, HelpersMiB: 8}, Args: map[string]any{"spec": &sp}}
		data, err := schemas.Marshal(&req)
		if err != nil {
			t.Fatal(err)
		}
		a.onLaunch(data)
	}
	launch("build", 1)
	a.onEvent(&schemas.TaskEvent{Target: "a", Type: "build", Epoch: 1, Kind: schemas.EventDone})
	launch("serve", 2)
	a.onEvent(&schemas.TaskEvent{Target: "a", Type: "serve", Epoch: 2, Kind: schemas.EventDone})
	launch("serve", 3) // serve repeats: fine
	if v := a.Violations(); len(v) != 0 {
		t.Fatalf("violations %q", v)
	}
	launch("build", 4)
	if v := a.Violations(); len(v) != 1 || !strings.Contains(v[0], "finished phase runs again") {
		t.Fatalf("violations %q", v)
	}
}

func TestCheckSettled(t *testing.T) {
	a, _ := newTestAuditor()
	h1 := a.Wrap("h1", &fakeExec{})
	if _, err := h1.Start(spec("a#1", "a", 1), worker.Hooks{}); err != nil {
		t.Fatal(err)
	}
	good := schemas.SelectorStatus{
		Targets: []schemas.TargetStatus{
			{Target: "a", State: selector.StateActive, TaskID: "a#1", Host: "h1", BudgetMiB: 64},
			{Target: "b", State: selector.StatePending, Reason: "needs at least 100 MiB"},
		},
		Hosts: []schemas.HostStatusLine{{Host: "h1", ReservedMiB: 64, Tasks: 1}, {Host: "h2", Lost: true}},
	}
	if v := a.CheckSettled(&good, []string{"a", "b"}); len(v) != 0 {
		t.Fatalf("violations %q", v)
	}
	bad := good
	bad.Targets = []schemas.TargetStatus{{Target: "a", State: selector.StateActive, TaskID: "a#9", Host: "h1"}, {Target: "b", State: selector.StatePending}}
	bad.Hosts = []schemas.HostStatusLine{{Host: "h1", ReservedMiB: 128, Tasks: 2}, {Host: "h2", Lost: true, ReservedMiB: 5}}
	v := a.CheckSettled(&bad, []string{"a", "b", "c"})
	for _, want := range []string{"runs no such process", "no stated reason", `"c" is not in status`, "128 MiB reserved", "lost host"} {
		found := false
		for _, s := range v {
			found = found || strings.Contains(s, want)
		}
		if !found {
			t.Errorf("no violation mentions %q: %q", want, v)
		}
	}
}

// TestWrapReportsExitsAsItsOwnTask: a task that ends on its own reaches the
// caller's Exited hook as the task Wrap's Start returned, not as the inner
// executor's. A worker agent recognises the task that ended by comparing the
// two and ignores any other, so with the inner task it would never publish
// the done or failed event, and the target would be stuck.
func TestWrapReportsExitsAsItsOwnTask(t *testing.T) {
	a, c := newTestAuditor()
	inner := &fakeExec{}
	var ended []worker.Task
	var exits []worker.Exit
	hooks := worker.Hooks{Exited: func(t worker.Task, ex worker.Exit) {
		ended = append(ended, t)
		exits = append(exits, ex)
	}}
	got, err := a.Wrap("h1", inner).Start(spec("a#1", "a", 1), hooks)
	if err != nil {
		t.Fatal(err)
	}
	c.advance(time.Second)
	ft := inner.tasks["a#1"]
	ft.hooks.Exited(ft, worker.Exit{Kind: schemas.EventDone})
	if len(ended) != 1 || ended[0] != got {
		t.Fatalf("the exit hook got %v, want once the task Start returned (%p)", ended, got)
	}
	if exits[0].Kind != schemas.EventDone {
		t.Errorf("exit %+v passed on, want the inner executor's done", exits[0])
	}
	if got.PID() != ft.pid {
		t.Errorf("wrapped task's PID %d, want the inner task's %d", got.PID(), ft.pid)
	}
	if ps := a.Procs("a"); len(ps) != 1 || ps[0].End.IsZero() || len(a.Live("h1")) != 0 {
		t.Errorf("the end is not recorded: %v, live %v", ps, a.Live("h1"))
	}
	// No hook set: the end is still recorded, and nothing panics.
	if _, err := a.Wrap("h1", inner).Start(spec("b#1", "b", 1), worker.Hooks{}); err != nil {
		t.Fatal(err)
	}
	fb := inner.tasks["b#1"]
	fb.hooks.Exited(fb, worker.Exit{Kind: schemas.EventFailed})
	if ps := a.Procs("b"); len(ps) != 1 || ps[0].End.IsZero() {
		t.Errorf("the end of b#1 is not recorded: %v", ps)
	}
}

// killData returns a kill request for taskID.
func killData(t *testing.T, taskID string) []byte {
	t.Helper()
	data, err := schemas.Marshal(&schemas.KillRequest{V: schemas.Version, TaskID: taskID, PID: 1, Reason: "stale"})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestHealForgetsTheKillsSentWhileCutOff(t *testing.T) {
	a, c := newTestAuditor()
	h1 := a.Wrap("h1", &fakeExec{})
	t1, err := h1.Start(spec("a#1", "a", 1), worker.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h1.Start(spec("b#1", "b", 1), worker.Hooks{}); err != nil {
		t.Fatal(err)
	}
	a.Heal("h1") // not cut: nothing happens
	a.SetUnreachable("h1", true)
	c.advance(time.Second)
	a.onKill("tasks.kill.h1", killData(t, "a#1")) // cannot arrive; the fence stops a#1 later
	c.advance(3 * time.Second)
	_ = t1.Kill()
	a.Heal("h1")
	if v := a.Violations(); len(v) != 0 {
		t.Fatalf("a kill sent while cut off still binds: %q", v)
	}
	a.onKill("tasks.kill.h1", killData(t, "b#1")) // reachable again: judged as usual
	c.advance(2 * time.Second)
	if v := a.Violations(); len(v) != 1 || !strings.Contains(v[0], "b#1") {
		t.Fatalf("violations %q, want b#1 outliving its kill", v)
	}
}

func TestObserveRequestAndLaunchCount(t *testing.T) {
	a, _ := newTestAuditor()
	subj := protocol.NewSubjects("")
	req := schemas.LaunchRequest{V: schemas.Version, TaskID: "a#1", Epoch: 1, Target: "a", Type: "work",
		RAM: schemas.TaskRAM{WrapperMiB: 8, HelpersMiB: 8}}
	data, err := schemas.Marshal(&req)
	if err != nil {
		t.Fatal(err)
	}
	a.ObserveRequest(subj, subj.Launch("h1"), data)
	a.ObserveRequest(subj, subj.Launch("h2"), data)
	a.ObserveRequest(subj, subj.Ps("h1"), []byte("{}"))
	a.ObserveRequest(subj, subj.Launch("h1"), []byte("not json"))
	if n := a.LaunchCount(); n != 2 || a.Launches("a") != 2 {
		t.Errorf("launches %d (a: %d), want 2", n, a.Launches("a"))
	}
	a.ObserveRequest(subj, subj.Kill("h.1"), killData(t, "a#1"))
	a.mu.Lock()
	kills := len(a.kills)
	host := ""
	if kills > 0 {
		host = a.kills[0].host
	}
	a.mu.Unlock()
	if kills != 1 || host != "h.1" {
		t.Errorf("%d kills recorded, host %q; want 1 for h.1", kills, host)
	}
}
