package soak

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskselector/taskselector/internal/audit"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
)

// fakeTask is a task the test ends by hand.
type fakeTask struct {
	mu     sync.Mutex
	pid    int64
	gone   bool
	hooks  worker.Hooks
	sample worker.Sample
}

func (f *fakeTask) PID() int64 { return f.pid }
func (f *fakeTask) Sample() worker.Sample {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sample
}
func (f *fakeTask) Kill() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gone {
		return worker.ErrGone
	}
	f.gone = true
	return nil
}

// exit ends the task on its own, as an executor reports it.
func (f *fakeTask) exit(ex worker.Exit) {
	f.mu.Lock()
	if f.gone {
		f.mu.Unlock()
		return
	}
	f.gone = true
	f.mu.Unlock()
	f.hooks.Exited(f, ex)
}

type fakeExec struct {
	mu    sync.Mutex
	tasks map[string]*fakeTask
}

func (x *fakeExec) Check(*worker.LaunchSpec) error { return nil }
func (x *fakeExec) UsedMiB() int64                 { return 0 }
func (x *fakeExec) Close() error                   { return nil }
func (x *fakeExec) Start(spec *worker.LaunchSpec, hooks worker.Hooks) (worker.Task, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.tasks == nil {
		x.tasks = map[string]*fakeTask{}
	}
	t := &fakeTask{pid: int64(len(x.tasks) + 1), hooks: hooks}
	x.tasks[spec.TaskID] = t
	return t, nil
}

func TestChaosExecEndsEachTaskOnce(t *testing.T) {
	aud := audit.New(audit.Config{})
	inner := &fakeExec{}
	var mu sync.Mutex
	var starts, silent []string
	exits := map[worker.Task][]string{}
	x := newChaosExec("h1", aud.Wrap("h1", inner), func(_, target, _ string, _ time.Time, s bool) {
		mu.Lock()
		defer mu.Unlock()
		starts = append(starts, target)
		if s {
			silent = append(silent, target)
		}
	}, func(target string) (time.Duration, bool) { return 0, target == "quiet" })
	hooks := worker.Hooks{Exited: func(t worker.Task, ex worker.Exit) {
		mu.Lock()
		defer mu.Unlock()
		exits[t] = append(exits[t], ex.Kind+"/"+ex.Reason)
	}}
	start := func(target string) *chaosTask {
		t.Helper()
		tk, err := x.Start(&worker.LaunchSpec{TaskID: target + "#1", Epoch: 1, Target: target, Type: "w"}, hooks)
		if err != nil {
			t.Fatal(err)
		}
		return tk.(*chaosTask)
	}
	a, b, c, q := start("a"), start("b"), start("c"), start("quiet")
	if len(x.running()) != 4 || !q.Sample().Silent || a.Sample().Silent || fmt.Sprint(silent) != "[quiet]" {
		t.Fatalf("running %d, silent %q", len(x.running()), silent)
	}

	// A crash reaches the agent once, with the task the agent holds; the
	// inner executor's own end afterwards is swallowed, a later kill is
	// too late.
	if !a.crash(worker.Exit{Kind: schemas.EventFailed, Reason: schemas.ReasonCrashed}) || a.crash(worker.Exit{}) {
		t.Error("crash")
	}
	inner.tasks["a#1"].exit(worker.Exit{Kind: schemas.EventDone})
	if err := a.Kill(); err != worker.ErrGone {
		t.Errorf("kill after crash: %v", err)
	}
	// An end of its own is handed on with the outer task.
	inner.tasks["b#1"].exit(worker.Exit{Kind: schemas.EventDone})
	if b.crash(worker.Exit{}) {
		t.Error("crashed a task that had ended")
	}
	// A kill ends it without the hook.
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	c.hang()
	mu.Lock()
	if fmt.Sprint(exits[a]) != "[failed/crashed]" || fmt.Sprint(exits[b]) != "[done/]" || len(exits[c]) != 0 || len(exits) != 2 {
		t.Errorf("exits %v", exits)
	}
	mu.Unlock()
	if r := x.running(); len(r) != 1 || r[0] != q {
		t.Errorf("running %v, want the silent one", r)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if len(aud.Live("")) != 0 || len(x.running()) != 0 {
		t.Errorf("after close: auditor sees %v live", aud.Live(""))
	}
	if v := aud.Violations(); len(v) != 0 {
		t.Errorf("violations %q", v)
	}
}

func TestTracker(t *testing.T) {
	tr := newTracker()
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tr.expect(KindHostLoss, "loss", "", t0, []string{"a", "b"}, nil, 10*time.Second)
	tr.expectAny(KindSelectorKill, "kill", t0.Add(time.Second), map[string]bool{"old": true}, 10*time.Second)
	tr.expect(KindCrash, "crash", "h1", t0, []string{"c"}, nil, 5*time.Second)
	tr.expect(KindHang, "none", "", t0, nil, nil, time.Second) // nothing to measure
	if tr.pending() != 3 || !tr.awaited("a") || !tr.awaited("zzz") || !tr.hostAwaited("h1") {
		t.Fatalf("pending %d", tr.pending())
	}
	tr.started("a", "a#2", t0.Add(-time.Second))  // before the fault: no
	tr.started("x", "old", t0.Add(2*time.Second)) // launched before the restart
	tr.started("a", "a#2", t0.Add(3*time.Second))
	tr.started("b", "b#2", t0.Add(4*time.Second))
	if tr.pending() != 1 {
		t.Fatalf("pending %d after every start", tr.pending())
	}
	tr.expire(t0.Add(6 * time.Second))
	got, stalled := tr.results()
	if fmt.Sprint(got[KindHostLoss]) != "[4s]" || fmt.Sprint(got[KindSelectorKill]) != "[2s]" || len(got[KindCrash]) != 0 {
		t.Errorf("results %v", got)
	}
	if len(stalled) != 1 || !strings.Contains(stalled[0], `"c"`) || tr.hostAwaited("h1") {
		t.Errorf("stalled %q", stalled)
	}
	late := tr.overdue(t0, func(string) time.Duration { return 0 })
	if len(late) != 0 {
		t.Errorf("overdue with nothing open: %q", late)
	}
}

func TestSummarize(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	s := summarize(ds)
	if s.N != 100 || s.P50 != 50*time.Millisecond || s.P99 != 99*time.Millisecond || s.Max != 100*time.Millisecond {
		t.Errorf("%+v", s)
	}
	if s := summarize(nil); s != (Stats{}) {
		t.Errorf("empty: %+v", s)
	}
	if s := summarize([]time.Duration{time.Second}); s.P50 != time.Second || s.P99 != time.Second {
		t.Errorf("one: %+v", s)
	}
}

func TestGoalsAndReport(t *testing.T) {
	tm := DefaultTimers()
	gs := goals(tm, map[string][]time.Duration{
		KindCrash:        {time.Second, 2 * time.Second},
		KindCrashSilent:  {4 * time.Second},
		KindSelectorKill: {2 * time.Second},
	})
	if len(gs) != 3 || gs[0].Met || gs[0].Value != 4*time.Second || gs[1].N != 0 || gs[1].Met || !gs[2].Met {
		t.Errorf("goals %+v", gs)
	}
	r := Result{Faults: map[string]int{KindCrash: 2}, Goals: gs, Violations: []string{"x"}}
	var b strings.Builder
	if err := r.WriteTable(&b); err != nil || !strings.Contains(b.String(), "NO") || !strings.Contains(b.String(), "not measured") {
		t.Errorf("table (%v):\n%s", err, b.String())
	}
	line, err := r.JSON()
	if err != nil || strings.Contains(string(line), "\n") || !strings.Contains(string(line), `"violations":1`) {
		t.Errorf("JSON %s (%v)", line, err)
	}
}
