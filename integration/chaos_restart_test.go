package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// Chaos faults 5, 6 and 8: the selector killed, its tasks bucket lost, the
// NATS server restarted.

// TestChaosSelectorKill (fault 5): the selector is killed (in process: its
// connection closed first, so that nothing more leaves it, then its Run
// cancelled) at four awkward moments, and a new selector starts on the same
// store. After the restart no target runs twice, no finished phase runs
// again, and the phases completed are counted once. The test logs how long
// the new selector takes to launch again.
func TestChaosSelectorKill(t *testing.T) {
	// mid_launch: the launch has reached the worker, whose executor holds
	// it; the reply goes to a dead selector. The new selector must confirm
	// the recorded task by its heartbeat, not launch it again.
	t.Run("mid_launch", func(t *testing.T) {
		w := newChaosWorld(t, false)
		script := newChaosExec(map[string]*chaosRule{"m": {times: 1, delay: 800 * time.Millisecond}})
		w.startAuditedWorker("a", 4096, chaosWorkerOpts{script: script})
		sel := w.startSelector(serviceConfig(engineConfig()))
		w.declare("m", chaosSpec(1, 30))
		waitFor(t, 10*time.Second, func() (bool, string) {
			n := w.aud.Launches("m")
			return n >= 1, fmt.Sprintf("%d launches of m seen", n)
		})
		w.killSelector(sel)
		// An operator declares a target while no selector runs.
		w.declare("n", chaosSpec(1, 30))
		restarted := time.Now()
		w.startSelector(serviceConfig(engineConfig()))
		st := w.settle(chaosSettle, w.allActive())
		chaosLogRelaunch(t, w, restarted, "n")
		if ts, _ := targetLine(&st, "m"); ts.Epoch != 1 || len(w.aud.Procs("m")) != 1 {
			t.Errorf("m: %s, %d processes; want its first task confirmed", describeLine(ts), len(w.aud.Procs("m")))
		}
		w.checkAudit()
	})

	// reply_before_heartbeat: the launch reply (with its PID) has reached
	// the selector, the first heartbeat has not come yet when it dies. The
	// tasks bucket records the launch (the PID is stored only once the task
	// is confirmed).
	t.Run("reply_before_heartbeat", func(t *testing.T) {
		w := newChaosWorld(t, false)
		latch := &chaosLatch{}
		t.Cleanup(latch.release)
		script := newChaosExec(map[string]*chaosRule{"r": {times: 1, silent: latch}})
		w.startAuditedWorker("a", 4096, chaosWorkerOpts{script: script})
		sel := w.startSelector(serviceConfig(engineConfig()))
		w.declare("r", chaosSpec(1, 30))
		w.waitTarget(10*time.Second, "r", func(ts schemas.TargetStatus) bool {
			return ts.State == selector.StateLaunching && ts.PID > 0
		})
		w.killSelector(sel)
		restarted := time.Now()
		w.startSelector(serviceConfig(engineConfig()))
		latch.release() // the first heartbeat, late
		w.declare("n", chaosSpec(1, 30))
		st := w.settle(chaosSettle, w.allActive())
		chaosLogRelaunch(t, w, restarted, "n")
		if ts, _ := targetLine(&st, "r"); ts.Epoch != 1 || len(w.aud.Procs("r")) != 1 {
			t.Errorf("r: %s, %d processes; want its first task confirmed", describeLine(ts), len(w.aud.Procs("r")))
		}
		w.checkAudit()
	})

	// during_backoff: launches of k are refused for RAM until the global
	// backoff is high; the new selector starts without it and launches k
	// once, when the worker takes it.
	t.Run("during_backoff", func(t *testing.T) {
		w := newChaosWorld(t, false)
		script := newChaosExec(map[string]*chaosRule{"k": {times: -1, fail: worker.ErrInsufficientRAM}})
		w.startAuditedWorker("a", 4096, chaosWorkerOpts{script: script})
		cfg := engineConfig()
		cfg.BackoffMax = 5 * time.Second
		sel := w.startSelector(serviceConfig(cfg))
		w.declare("k", chaosSpec(1, 30))
		w.waitStatus(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
			return st.Backoff.Level >= 4, fmt.Sprintf("backoff level %d", st.Backoff.Level)
		})
		w.killSelector(sel)
		script.mu.Lock()
		script.rules["k"].times = 0 // the RAM is back
		script.mu.Unlock()
		restarted := time.Now()
		w.startSelector(serviceConfig(cfg))
		w.settle(chaosSettle, w.allActive())
		chaosLogRelaunch(t, w, restarted, "k")
		if n := len(w.aud.Procs("k")); n != 1 {
			t.Errorf("k: %d processes, want 1", n)
		}
		w.checkAudit()
	})

	// event_backlog: the tasks finish their first phase while no selector
	// runs; their done events wait in the stream. The new selector applies
	// each once, before it judges any recorded task gone.
	t.Run("event_backlog", func(t *testing.T) {
		w := newChaosWorld(t, false)
		w.startAuditedWorker("a", 4096, chaosWorkerOpts{})
		w.startAuditedWorker("b", 4096, chaosWorkerOpts{})
		sel := w.startSelector(serviceConfig(engineConfig()))
		targets := edgeTargetNames("e", 6)
		for _, name := range targets {
			w.declare(name, chaosSpec(1, 2))
		}
		st := w.settle(chaosSettle, w.allActive())
		for _, ts := range st.Targets {
			w.waitStoredTask(10*time.Second, ts.Target, ts.TaskID, schemas.TaskActive)
		}
		w.killSelector(sel)
		waitFor(t, 20*time.Second, func() (bool, string) {
			for _, name := range targets {
				if _, ok := w.aud.DoneEpoch(name, "p1"); !ok {
					return false, name + "'s p1 not reported done yet"
				}
			}
			return true, ""
		})
		restarted := time.Now()
		sel2 := w.startSelector(serviceConfig(engineConfig()))
		st = w.settle(chaosSettle, chaosBoth(w.allActive(), func(st *schemas.SelectorStatus) (bool, string) {
			for _, name := range targets {
				if ts, _ := targetLine(st, name); ts.Phase != "last" {
					return false, name + " not in its last phase: " + describeLine(ts)
				}
			}
			return true, ""
		}))
		chaosLogRelaunch(t, w, restarted, targets...)
		if got := st.Counters.PhasesCompleted; got != uint64(len(targets)) {
			t.Errorf("restarted selector completed %d phases, want %d", got, len(targets))
		}
		if got := sel2.svc.BacklogEvents(); got != uint64(len(targets)) {
			t.Errorf("restarted selector read %d backlog events, want %d", got, len(targets))
		}
		for _, name := range targets {
			if ps := w.aud.Procs(name); len(ps) != 2 || ps[0].Type != "p1" || ps[1].Type != "last" {
				t.Errorf("%s ran %v, want p1 then last", name, ps)
			}
		}
		w.checkAudit()
	})
}

// chaosLogRelaunch logs how long after restarted the selector launched again:
// the first and the last of targets' first processes started after it.
func chaosLogRelaunch(t *testing.T, w *chaosWorld, restarted time.Time, targets ...string) {
	t.Helper()
	first, ok := w.firstStartAfter(restarted, targets...)
	last, _ := w.lastStartAfter(restarted, targets...)
	if !ok {
		t.Errorf("nothing of %v started after the restart", targets)
		return
	}
	t.Logf("restart → launching again: first start %v, all %d started %v after the new selector was started",
		first.Sub(restarted).Round(time.Millisecond), len(targets), last.Sub(restarted).Round(time.Millisecond))
}

// TestChaosTasksBucketLost (fault 6): the tasks bucket is deleted while the
// selector runs. The running tasks are not disturbed, the selector goes on
// launching (the first phases end and the last ones start, and a target
// declared afterwards runs), the bucket holds every target's state again,
// and a selector restarted after that rebuilds the same state and launches
// nothing twice.
func TestChaosTasksBucketLost(t *testing.T) {
	w := newChaosWorld(t, false)
	w.startAuditedWorker("a", 4096, chaosWorkerOpts{})
	w.startAuditedWorker("b", 4096, chaosWorkerOpts{})
	sel := w.startSelector(serviceConfig(engineConfig()))
	targets := edgeTargetNames("t", 4)
	for _, name := range targets {
		w.declare(name, chaosSpec(1, 2))
	}
	st := w.settle(chaosSettle, w.allActive())
	for _, ts := range st.Targets {
		w.waitStoredTask(10*time.Second, ts.Target, ts.TaskID, schemas.TaskActive)
	}

	lost := time.Now()
	if err := w.js.DeleteKeyValue(w.ctx(10*time.Second), protocol.TasksBucket); err != nil {
		t.Fatalf("delete the tasks bucket: %v", err)
	}
	w.declare("after", chaosSpec(1, 2))
	st = w.settle(15*time.Second, chaosBoth(w.allActive(), func(st *schemas.SelectorStatus) (bool, string) {
		for _, ts := range st.Targets {
			if ts.Phase != "last" {
				return false, ts.Target + " not in its last phase: " + describeLine(ts)
			}
		}
		return true, ""
	}))
	t.Logf("every target in its last phase %v after the bucket was deleted", time.Since(lost).Round(time.Millisecond))
	// The state is stored again.
	for _, ts := range st.Targets {
		w.waitStoredTask(chaosSettle, ts.Target, ts.TaskID, schemas.TaskActive)
	}
	w.checkAudit()

	w.killSelector(sel)
	w.startSelector(serviceConfig(engineConfig()))
	st = w.settle(chaosSettle, w.allActive())
	for _, name := range w.desiredTargets() {
		ts, _ := targetLine(&st, name)
		if ps := w.aud.Procs(name); len(ps) != 2 || ps[1].TaskID != ts.TaskID {
			t.Errorf("%s ran %v, now %s; want p1, then last, kept across the restart", name, ps, describeLine(ts))
		}
	}
	w.checkAudit()
}

// TestChaosNATSServerRestart (fault 8): the embedded server is shut down and
// started again on the same port and file store. It stays down until the
// workers have fenced themselves (their fence time is shorter than the
// outage), so every task stops; nothing is declared lost while the selector
// is cut off (full disruption). When the server is back, the buckets and the
// stream are intact, the fenced events arrive, and every target is
// relaunched once, with no overlap. The test logs server back → all active.
func TestChaosNATSServerRestart(t *testing.T) {
	w := newChaosWorld(t, true)
	const fence = time.Second
	cfg := engineConfig()
	if err := worker.CheckFenceMargin(cfg.HostStale, fence, hbInterval); err != nil {
		t.Fatal(err)
	}
	ws := []*workerProc{
		w.startAuditedWorker("a", 4096, chaosWorkerOpts{fenceAfter: fence}),
		w.startAuditedWorker("b", 4096, chaosWorkerOpts{fenceAfter: fence}),
	}
	sel := w.startSelector(serviceConfig(cfg))
	targets := edgeTargetNames("s", 4)
	for _, name := range targets {
		w.declare(name, chaosSpec(1, 0.5))
	}
	before := w.settle(chaosSettle, chaosBoth(w.allActive(), func(st *schemas.SelectorStatus) (bool, string) {
		for _, ts := range st.Targets {
			if ts.Phase != "last" {
				return false, ts.Target + " not in its last phase yet"
			}
		}
		return true, ""
	}))

	w.restartServer(func() {
		waitFor(t, 20*time.Second, func() (bool, string) {
			for _, p := range ws {
				if s := p.agent.Stats(); !s.Fenced || s.Running != 0 {
					return false, fmt.Sprintf("%s: fenced %v, running %d", p.host, s.Fenced, s.Running)
				}
			}
			return true, ""
		})
		if st := sel.svc.Status(); st.Connected {
			t.Errorf("the selector says it is connected while the server is down")
		}
	})
	back := time.Now()
	st := w.settle(chaosSettle, chaosBoth(w.allActive(), func(st *schemas.SelectorStatus) (bool, string) {
		for _, name := range targets {
			old, _ := targetLine(&before, name)
			if ts, _ := targetLine(st, name); ts.Epoch <= old.Epoch {
				return false, name + " not relaunched yet: " + describeLine(ts)
			}
		}
		return true, ""
	}))
	last, _ := w.lastStartAfter(back, targets...)
	t.Logf("server back → every fenced target relaunched in %v", last.Sub(back).Round(time.Millisecond))
	if st.Counters.HostsLost != 0 {
		t.Errorf("%d hosts declared lost over a server restart", st.Counters.HostsLost)
	}
	if !sel.running() {
		t.Fatal("selector Run returned during the server restart")
	}
	for _, name := range targets {
		old, _ := targetLine(&before, name)
		if ts, _ := targetLine(&st, name); ts.Phase != "last" || ts.Epoch != old.Epoch+1 {
			t.Errorf("%s: %s, was %s: want its last phase relaunched once", name, describeLine(ts), describeLine(old))
		}
	}
	w.declare("after", chaosSpec(1, 0.5))
	w.settle(chaosSettle, w.allActive())
	if st := w.mustStatus(); st.Disruption != selector.DisruptionNormal {
		t.Errorf("disruption %q after the restart", st.Disruption)
	}
	w.checkAudit()
}
