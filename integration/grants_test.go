package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/taskselector/taskselector/internal/audit"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// Integration tests of the memory-manager protocol (issue 11): a task whose
// host cannot hold its full helper need asks the selector for helper RAM on
// tasks.alloc, through its worker; the selector grants it on other hosts and
// starts the helpers through their workers on tasks.helper.<host>.

// grantAllocRetry is the workers' AllocRetry in these tests: short, so that a
// refused task asks again soon.
const grantAllocRetry = 200 * time.Millisecond

// grantWorkerOpts are the knobs of startGrantWorker.
type grantWorkerOpts struct {
	noHelpers bool           // a v1 worker: no helper endpoint, no alloc requests
	aud       *audit.Auditor // records the host's processes and helpers, when set
}

// startGrantWorker runs a worker agent with the sim executor (speed 1) and
// the short AllocRetry, and waits until it is ready.
func (e *env) startGrantWorker(host string, ramMiB int64, o grantWorkerOpts) *workerProc {
	e.t.Helper()
	log := testLog()
	nc := e.connect("worker-" + host)
	sim, err := worker.NewSim(worker.SimConfig{Host: host, RAMMiB: ramMiB, Tick: 20 * time.Millisecond, Log: log})
	if err != nil {
		e.t.Fatalf("sim %s: %v", host, err)
	}
	var ex worker.Executor = sim
	if o.aud != nil {
		ex = o.aud.Wrap(host, sim)
	}
	agent, err := worker.New(nc, worker.Config{
		Host: host, RAMMiB: ramMiB, HeartbeatInterval: hbInterval, Executor: worker.SimExecutor,
		FlushTimeout: time.Second, PublishTimeout: 500 * time.Millisecond,
		RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		AllocRetry: grantAllocRetry, AllocTimeout: 5 * time.Second, NoHelpers: o.noHelpers,
	}, ex, log)
	if err != nil {
		e.t.Fatalf("worker %s: %v", host, err)
	}
	return e.runAgent(host, agent, ex, sim, nc)
}

// grantSpec is a declared target whose task runs for good: its wrapper
// takes 8 MiB, its helpers 16 MiB at least and 256 MiB at full size.
func grantSpec() schemas.TargetSpec {
	return schemas.TargetSpec{
		V: schemas.Version, Profile: schemas.ProfileDeclared,
		Phases: []schemas.Phase{{Type: "work", WrapperMiB: 8, HelpersMinMiB: 16, HelpersFullMiB: 256, WorkS: 1e7, Repeat: true}},
	}
}

// grantSmallRAM is the RAM of the host the task runs on: room for the task
// at its minimum size and a little more, far below its full size.
const grantSmallRAM = 40

// startSmallTask starts the worker "home" (grantSmallRAM), the selector and
// the target "t", and waits until its task is active on home.
func (e *env) startSmallTask(cfg selector.Config, aud *audit.Auditor) (*workerProc, schemas.TargetStatus) {
	e.t.Helper()
	home := e.startGrantWorker("home", grantSmallRAM, grantWorkerOpts{aud: aud})
	e.startSelector(serviceConfig(cfg))
	e.putTarget("t", grantSpec())
	ts := e.waitActive(20*time.Second, "t")
	if ts.Host != "home" || ts.BudgetMiB > grantSmallRAM || ts.FullMiB != 8+256 {
		e.t.Fatalf("task %s", describeLine(ts))
	}
	return home, ts
}

// helpersOf sums a target line's helpers per host.
func helpersOf(ts schemas.TargetStatus) map[string]int64 {
	m := map[string]int64{}
	for _, g := range ts.Helpers {
		m[g.Host] += g.MiB
	}
	return m
}

func hostLine(st *schemas.SelectorStatus, host string) (schemas.HostStatusLine, bool) {
	for _, h := range st.Hosts {
		if h.Host == host {
			return h, true
		}
	}
	return schemas.HostStatusLine{}, false
}

// waitGranted waits until target t holds want MiB of helpers on host, as
// status, the host's worker and the task's heartbeats all say.
func (e *env) waitGranted(sp *spy, taskID, host string, hw *workerProc, want int64) {
	e.t.Helper()
	e.waitStatus(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		ts, _ := targetLine(st, "t")
		hl, _ := hostLine(st, host)
		ok := helpersOf(ts)[host] == want && len(helpersOf(ts)) == 1 && hl.HelpersMiB == want
		return ok, fmt.Sprintf("helpers %v, host %+v", ts.Helpers, hl)
	})
	waitFor(e.t, 10*time.Second, func() (bool, string) {
		var mib int64
		for _, hs := range hw.agent.Helpers() {
			if hs.TaskID == taskID {
				mib += hs.MiB
			}
		}
		return mib == want, fmt.Sprintf("%s runs %+v", host, hw.agent.Helpers())
	})
	waitFor(e.t, 10*time.Second, func() (bool, string) {
		hb, ok := sp.lastHeartbeat(taskID)
		return ok && hb.hb.RAM.FleetHelpersMiB == want, fmt.Sprintf("last heartbeat %+v", hb.hb.RAM)
	})
}

// TestGrantHelperRAMOnAnotherHost: a task on a host too small for its full
// size gets the rest of its helper RAM on another host (its first requests,
// sent before that host exists, may be refused). The helpers run
// there (listed by that worker, booked in that host's ledger), the task's
// heartbeats report them, and status lists them under the target.
func TestGrantHelperRAMOnAnotherHost(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	_, ts := e.startSmallTask(engineConfig(), nil)
	big := e.startGrantWorker("big", 4096, grantWorkerOpts{})
	want := ts.FullMiB - ts.BudgetMiB
	e.waitGranted(sp, ts.TaskID, "big", big, want)
	// The helpers hold their RAM on big.
	if used := big.sim.UsedMiB(); used != want {
		t.Errorf("big's sim holds %d MiB, want the helpers' %d", used, want)
	}
}

// TestGrantRefusedTakesABackoffStep: with no room anywhere for the helpers,
// the request is refused (insufficient_ram) and counted. A top-up beyond
// the task's minimum takes no backoff step; once the phase's minimum is
// raised above what the task holds, the refusal of the RAM it needs to run
// takes one, visible in status. Once a host with room appears, the task's
// next request is granted.
func TestGrantRefusedTakesABackoffStep(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	cfg := engineConfig()
	cfg.BackoffBase, cfg.BackoffMax = 2*time.Second, 4*time.Second // a level that lasts long enough to be seen
	home, ts := e.startSmallTask(cfg, nil)
	// A top-up beyond the task's minimum is refused without a backoff
	// step: the task runs on, so nothing failed.
	st := e.waitStatus(10*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		return st.Counters.Failures[selector.FailAllocRefused] >= 1,
			fmt.Sprintf("failures %v, backoff %+v", st.Counters.Failures, st.Backoff)
	})
	if st.Backoff.Level != 0 {
		t.Errorf("a top-up refusal stepped the backoff: %+v", st.Backoff)
	}
	// The operator raises the phase's minimum above what the task holds:
	// its next request is one it needs to run, and its refusal is the
	// plan's launch that could not allocate RAM for its helpers.
	spec := grantSpec()
	spec.Phases[0].HelpersMinMiB = 64
	e.putTarget("t", spec)
	st = e.waitStatus(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		return st.Counters.Failures[selector.FailAllocRefused] >= 1 && st.Backoff.Level >= 1,
			fmt.Sprintf("failures %v, backoff %+v", st.Counters.Failures, st.Backoff)
	})
	if !st.Backoff.NextLaunchAt.After(st.At) {
		t.Errorf("backoff %+v at %v: the next launch should wait", st.Backoff, st.At)
	}
	if line, _ := targetLine(&st, "t"); len(line.Helpers) != 0 || line.State != selector.StateActive {
		t.Errorf("the refused task: %s, helpers %v", describeLine(line), line.Helpers)
	}
	if s := home.agent.Stats(); s.AllocRefusals == 0 || s.Allocs == 0 {
		t.Errorf("worker stats %+v", s)
	}
	big := e.startGrantWorker("big", 4096, grantWorkerOpts{})
	e.waitGranted(sp, ts.TaskID, "big", big, ts.FullMiB-ts.BudgetMiB)
}

// TestGrantHelpersDieWithTheirTask: when the task ends (its target is
// deleted, so it is killed), its helpers on the other host are stopped and
// leave that host's ledger.
func TestGrantHelpersDieWithTheirTask(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	aud := audit.New(audit.Config{HelperBound: 5 * time.Second})
	_, ts := e.startSmallTask(engineConfig(), aud)
	big := e.startGrantWorker("big", 4096, grantWorkerOpts{aud: aud})
	e.waitGranted(sp, ts.TaskID, "big", big, ts.FullMiB-ts.BudgetMiB)

	if err := e.client.DeleteTarget(e.ctx(10*time.Second), "t"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() (bool, string) {
		return len(big.agent.Helpers()) == 0 && big.sim.UsedMiB() == 0,
			fmt.Sprintf("big runs %+v, sim %d MiB", big.agent.Helpers(), big.sim.UsedMiB())
	})
	e.waitStatus(10*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		hl, _ := hostLine(st, "big")
		_, present := targetLine(st, "t")
		return hl.HelpersMiB == 0 && hl.ReservedMiB == 0 && !present, fmt.Sprintf("big %+v; %s", hl, describe(st))
	})
	// The auditor saw the helper start after its task and end within
	// HelperBound of it.
	hs := aud.Helpers()
	if len(hs) != 1 || hs[0].Host != "big" || hs[0].TaskID != ts.TaskID || hs[0].End.IsZero() {
		t.Fatalf("helpers recorded: %+v", hs)
	}
	if v := aud.Violations(); len(v) != 0 {
		t.Fatalf("violations: %v", v)
	}
	if v := aud.CheckCapacity(map[string]int64{"home": grantSmallRAM, "big": 4096}); len(v) != 0 {
		t.Fatalf("capacity: %v", v)
	}
}

// TestGrantHelpersOnALostHost: when the host running a task's helpers is
// lost, they leave the ledger and the task's held list, the task goes on
// where it runs, and its worker learns it: its heartbeats report no fleet
// helpers any more.
func TestGrantHelpersOnALostHost(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	cfg := engineConfig()
	_, ts := e.startSmallTask(cfg, nil)
	big := e.startGrantWorker("big", 4096, grantWorkerOpts{})
	e.waitGranted(sp, ts.TaskID, "big", big, ts.FullMiB-ts.BudgetMiB)

	big.stop(t) // its sim helpers vanish with it, without a word
	st := e.waitStatus(cfg.HostStale+20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		hl, _ := hostLine(st, "big")
		line, _ := targetLine(st, "t")
		return hl.Lost && len(line.Helpers) == 0, fmt.Sprintf("big %+v, t's helpers %v", hl, line.Helpers)
	})
	if line, _ := targetLine(&st, "t"); line.State != selector.StateActive || line.TaskID != ts.TaskID || line.Host != "home" {
		t.Errorf("the task after its helpers' host was lost: %s", describeLine(line))
	}
	waitFor(t, 10*time.Second, func() (bool, string) {
		hb, ok := sp.lastHeartbeat(ts.TaskID)
		return ok && hb.hb.RAM.FleetHelpersMiB == 0, fmt.Sprintf("last heartbeat %+v", hb.hb.RAM)
	})
}

// TestGrantNotOnV1Worker: a worker that does not serve the helper subject
// (a v1 worker) answers no responders; the selector marks its host as one
// that runs no fleet helpers, refuses the request, and never grants there
// again, while the task runs on.
func TestGrantNotOnV1Worker(t *testing.T) {
	e := newEnv(t, false)
	_, ts := e.startSmallTask(engineConfig(), nil)
	old := e.startGrantWorker("old", 4096, grantWorkerOpts{noHelpers: true})
	st := e.waitStatus(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		hl, _ := hostLine(st, "old")
		return hl.NoHelpers && st.Counters.Failures[selector.FailAllocRefused] >= 1,
			fmt.Sprintf("old %+v, failures %v", hl, st.Counters.Failures)
	})
	line, _ := targetLine(&st, "t")
	if line.State != selector.StateActive || line.TaskID != ts.TaskID || len(line.Helpers) != 0 {
		t.Errorf("the task: %s, helpers %v", describeLine(line), line.Helpers)
	}
	// Later requests are refused without asking old again.
	before := e.mustStatus().Counters.Failures[selector.FailAllocRefused]
	e.waitStatus(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		return st.Counters.Failures[selector.FailAllocRefused] > before, "another refusal"
	})
	if hl, _ := hostLine(new(e.mustStatus()), "old"); hl.HelpersMiB != 0 || !hl.NoHelpers {
		t.Errorf("old %+v", hl)
	}
	if n := len(old.agent.Helpers()); n != 0 {
		t.Errorf("old runs %d helpers", n)
	}
}

// TestGrantHelpersSurviveSelectorRestart: a restarted selector learns the
// standing helpers from the hosts' statuses and books them to their task
// again: the helper keeps running, nothing is granted twice, and status
// lists it under the target.
func TestGrantHelpersSurviveSelectorRestart(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	home := e.startGrantWorker("home", grantSmallRAM, grantWorkerOpts{})
	sel := e.startSelector(serviceConfig(engineConfig()))
	e.putTarget("t", grantSpec())
	ts := e.waitActive(20*time.Second, "t")
	big := e.startGrantWorker("big", 4096, grantWorkerOpts{})
	want := ts.FullMiB - ts.BudgetMiB
	e.waitGranted(sp, ts.TaskID, "big", big, want)
	before := big.agent.Helpers()
	starts := big.agent.Stats().HelperStarts

	sel.stop(t)
	e.startSelector(serviceConfig(engineConfig()))
	e.waitStatus(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		line, _ := targetLine(st, "t")
		hl, _ := hostLine(st, "big")
		return line.TaskID == ts.TaskID && line.State == selector.StateActive && helpersOf(line)["big"] == want && hl.HelpersMiB == want,
			fmt.Sprintf("t %s helpers %v; big %+v", describeLine(line), line.Helpers, hl)
	})
	// A few of home's alloc refreshes later, still the one helper.
	refreshes := home.agent.Stats().Allocs
	waitFor(t, 10*time.Second, func() (bool, string) {
		n := home.agent.Stats().Allocs
		return n >= refreshes+2, fmt.Sprintf("%d alloc requests since the restart", n-refreshes)
	})
	after := big.agent.Helpers()
	if len(after) != 1 || after[0] != before[0] || big.agent.Stats().HelperStarts != starts || big.agent.Stats().HelperStops != 0 {
		t.Fatalf("big's helpers before %+v, after %+v; stats %+v", before, after, big.agent.Stats())
	}
}
