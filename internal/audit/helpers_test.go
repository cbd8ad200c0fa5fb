package audit

import (
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
)

// simHost is a sim executor without a ticker, wrapped by the auditor.
func simHost(t *testing.T, a *Auditor, host string, ram int64) worker.Executor {
	t.Helper()
	sim, err := worker.NewSim(worker.SimConfig{Host: host, RAMMiB: ram, Tick: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	return a.Wrap(host, sim)
}

func helperSpec(id, taskID, target string, epoch uint64, mib int64) *worker.HelperSpec {
	return &worker.HelperSpec{HelperID: id, TaskID: taskID, Epoch: epoch, Target: target, Type: "work", TaskHost: "h1", MiB: mib}
}

func simSpec(id, target string) *worker.LaunchSpec {
	return &worker.LaunchSpec{TaskID: id, Epoch: 1, Target: target, Type: "work",
		RAM: schemas.TaskRAM{WrapperMiB: 8, HelpersMiB: 16}, Args: map[string]any{worker.ArgWorkS: 1e6, worker.ArgHelpersFullMiB: 256.0}}
}

// TestWrapKeepsHelpersAndFleetTasks: the wrapper of an executor that runs
// fleet helpers runs them too (the agent serves the helper subject only
// then), its tasks still ask for fleet helper RAM, and a task's exit names
// the very task Start returned (the agent matches them).
func TestWrapKeepsHelpersAndFleetTasks(t *testing.T) {
	a, _ := newTestAuditor()
	sim, err := worker.NewSim(worker.SimConfig{Host: "h1", RAMMiB: 1000, Tick: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	ex := a.Wrap("h1", sim)
	if _, ok := ex.(worker.HelperExecutor); !ok {
		t.Fatal("the wrapper of a sim executor runs no fleet helpers")
	}
	if _, ok := a.Wrap("h2", &fakeExec{}).(worker.HelperExecutor); ok {
		t.Fatal("the wrapper of an executor without helpers claims to run them")
	}
	exited := make(chan worker.Task, 1)
	sp := simSpec("a#1", "a")
	sp.Args[worker.ArgWorkS] = 1.0
	task, err := ex.Start(sp, worker.Hooks{Exited: func(t worker.Task, _ worker.Exit) { exited <- t }})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := task.(worker.FleetHelperTask); !ok {
		t.Fatal("the wrapped sim task does not ask for fleet helpers")
	}
	sim.Advance(time.Millisecond)
	sim.Advance(time.Hour)
	select {
	case got := <-exited:
		if got != task {
			t.Fatalf("exit names %T %p, Start returned %T %p", got, got, task, task)
		}
	default:
		t.Fatal("the task did not end")
	}
}

// TestHelperOutlivingItsTask: a helper that still runs HelperBound after its
// task ended is a violation; one stopped in time is not; one whose task the
// auditor never saw is not judged.
func TestHelperOutlivingItsTask(t *testing.T) {
	c := &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	a := New(Config{KillBound: time.Second, HelperBound: 3 * time.Second, Now: c.Now})
	h1, h2 := simHost(t, a, "h1", 1000), simHost(t, a, "h2", 1000)
	ta, err := h1.Start(simSpec("a#1", "a"), worker.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	tb, err := h1.Start(simSpec("b#1", "b"), worker.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	hx := h2.(worker.HelperExecutor)
	if _, err := hx.StartHelper(helperSpec("a#1/h1", "a#1", "a", 1, 100)); err != nil {
		t.Fatal(err)
	}
	hb, err := hx.StartHelper(helperSpec("b#1/h1", "b#1", "b", 1, 100))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hx.StartHelper(helperSpec("z#1/h1", "z#1", "z", 1, 100)); err != nil {
		t.Fatal(err)
	}
	c.advance(time.Second)
	if err := ta.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := tb.Kill(); err != nil {
		t.Fatal(err)
	}
	c.advance(2 * time.Second)
	if err := hb.Stop(); err != nil { // b's helper stops within the bound
		t.Fatal(err)
	}
	if v := a.Violations(); len(v) != 0 {
		t.Fatalf("violations within the bound: %v", v)
	}
	c.advance(2 * time.Second) // a's helper is now 4 s past its task
	v := a.Violations()
	if len(v) != 1 || !strings.Contains(v[0], "a#1/h1") || !strings.Contains(v[0], "outlived its task") {
		t.Fatalf("violations %v, want a's helper alone", v)
	}
	if n := len(a.Helpers()); n != 3 {
		t.Fatalf("%d helpers recorded", n)
	}
}

// TestHelpersCountInRAMChecks: helper RAM counts in the reservations
// CheckSettled compares and in CheckCapacity.
func TestHelpersCountInRAMChecks(t *testing.T) {
	a, _ := newTestAuditor()
	h1, h2 := simHost(t, a, "h1", 1000), simHost(t, a, "h2", 1000)
	if _, err := h1.Start(simSpec("a#1", "a"), worker.Hooks{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.(worker.HelperExecutor).StartHelper(helperSpec("a#1/h1", "a#1", "a", 1, 200)); err != nil {
		t.Fatal(err)
	}
	st := &schemas.SelectorStatus{Hosts: []schemas.HostStatusLine{
		{Host: "h1", ReservedMiB: 24}, {Host: "h2", ReservedMiB: 200, HelpersMiB: 200}}}
	if v := a.CheckSettled(st, nil); len(v) != 0 {
		t.Fatalf("settled: %v", v)
	}
	st.Hosts[1].ReservedMiB = 0 // the selector forgot the helper
	if v := a.CheckSettled(st, nil); len(v) != 1 || !strings.Contains(v[0], `"h2"`) {
		t.Fatalf("settled with the helper unbooked: %v", v)
	}
	if v := a.CheckCapacity(map[string]int64{"h1": 24, "h2": 199}); len(v) != 1 || !strings.Contains(v[0], `"h2"`) {
		t.Fatalf("capacity: %v", v)
	}
}
