package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// Chaos faults 1 to 4: faults of single tasks and of RAM.

// TestChaosAuditorWrapReportsExitsToAgent checks that the auditor's
// executor wrapper lets a worker agent hear of a task that ends on its own:
// the first phase of a two-phase target finishes, its done event reaches
// the selector, and the second phase starts. (audit.Wrap once handed the
// agent the inner executor's task, which the agent ignored: no done event
// was published and the target stayed in its first phase.)
func TestChaosAuditorWrapReportsExitsToAgent(t *testing.T) {
	w := newChaosWorld(t, false)
	w.startSelector(serviceConfig(engineConfig()))
	sim, err := worker.NewSim(worker.SimConfig{Host: "h", RAMMiB: 4096, Speed: 1, Tick: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ex := w.aud.Wrap("h", sim)
	nc := w.connect("worker-h")
	agent, err := worker.New(nc, worker.Config{Host: "h", RAMMiB: 4096, HeartbeatInterval: hbInterval}, ex, testLog())
	if err != nil {
		t.Fatal(err)
	}
	p := &workerProc{host: "h", agent: agent, sim: sim, nc: nc, done: make(chan error, 1)}
	var ctx context.Context
	ctx, p.cancel = context.WithCancel(context.Background())
	go func() {
		defer ex.Close()
		p.done <- agent.Run(ctx)
	}()
	t.Cleanup(func() { p.stop(t) })
	<-agent.Ready()
	w.declare("x", chaosSpec(1, 0.3))
	waitFor(t, 5*time.Second, func() (bool, string) {
		st := agent.Stats()
		return st.EventsQueued >= 1, fmt.Sprintf("the agent queued %d events; the first phase ended %v",
			st.EventsQueued, len(w.aud.Procs("x")) > 0 && !w.aud.Procs("x")[0].End.IsZero())
	})
	w.settle(chaosSettle, chaosBoth(w.allActive(), w.inPhase("last")))
	w.checkAudit()
}

// TestChaosSilentLaunch (fault 1): a launch goes silent: the worker's
// executor hangs for longer than the reply timeout, so the launch reply
// comes too late, and the task sends no heartbeat.
//   - alive: the task does start; the selector asks the host at the launch
//     timeout, finds it running, kills it and launches the target again;
//   - never_started: the start fails after all; the host reports the task
//     gone and the target is launched again;
//   - still_starting: the start takes longer than the launch timeout; the
//     host lists the task as starting, the selector's kill is answered
//     "still running" and carried out once the task runs, and the target is
//     launched again only then.
//
// Either way the target runs exactly once at any time, and the targets
// waiting behind the silent launch are launched once it is resolved.
func TestChaosSilentLaunch(t *testing.T) {
	for _, tc := range []struct {
		name string
		rule chaosRule
	}{
		{"alive", chaosRule{times: 1, delay: 1200 * time.Millisecond, silent: &chaosLatch{}}},
		{"never_started", chaosRule{times: 1, delay: 1200 * time.Millisecond, fail: worker.ErrInsufficientRAM}},
		{"still_starting", chaosRule{times: 1, delay: 3 * time.Second, silent: &chaosLatch{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newChaosWorld(t, false)
			cfg := engineConfig()
			w.startAuditedWorker("a", 4096, chaosWorkerOpts{script: newChaosExec(map[string]*chaosRule{"s": &tc.rule})})
			w.startSelector(serviceConfig(cfg))
			sp := w.startSpy()
			w.declare("s", chaosSpec(1, 30)) // no done event before the fault is resolved
			w.waitTarget(10*time.Second, "s", func(ts schemas.TargetStatus) bool { return ts.TaskID != "" })
			// Others wait behind the silent launch, on another host.
			w.startAuditedWorker("b", 4096, chaosWorkerOpts{})
			for _, name := range []string{"n1", "n2"} {
				w.declare(name, chaosSpec(1, 0.5))
			}
			st := w.settle(chaosSettle, chaosBoth(w.allActive(), func(st *schemas.SelectorStatus) (bool, string) {
				ts, _ := targetLine(st, "s")
				return ts.Epoch >= 2, "s still at epoch 1: " + describeLine(ts)
			}))
			ls := sp.launches("s")
			if len(ls) < 2 {
				t.Fatalf("%d launches of s seen, want a relaunch", len(ls))
			}
			t.Logf("silent launch (%s): relaunched %v after the first launch (launch timeout %v, reply timeout %v)",
				tc.name, ls[1].at.Sub(ls[0].at).Round(time.Millisecond), cfg.LaunchTimeout, cfg.ReplyTimeout)
			if c := st.Counters; c.Timeouts < 1 {
				t.Errorf("counters timeouts=%d failures=%v: want the silent launch timed out", c.Timeouts, c.Failures)
			}
			w.checkAudit()
		})
	}
}

// TestChaosAliveButSilentTask (fault 2): tasks that run but send no
// heartbeat: one goes silent in mid-phase (the sim hangs it), one never
// sends its first heartbeat, and one target hangs at every launch, for
// good. Each silent task is killed before its target runs again, and the
// hanging target does not keep the others from running. The suite checks
// the system while that last fault is still active.
func TestChaosAliveButSilentTask(t *testing.T) {
	w := newChaosWorld(t, false)
	cfg := engineConfig()
	never := &chaosLatch{}
	t.Cleanup(never.release)
	// a holds one task at full size: quiet, which hangs in phase p1 (it
	// outlasts the hang); every other target goes to b.
	w.startAuditedWorker("a", chaosFullMiB+chaosMinMiB/2, chaosWorkerOpts{
		faults: worker.Faults{HangTargets: []string{"quiet:1"}, HangAfter: 300 * time.Millisecond}})
	w.startSelector(serviceConfig(cfg))
	w.declare("quiet", chaosSpec(1, 5))
	w.waitTarget(15*time.Second, "quiet", func(ts schemas.TargetStatus) bool { return ts.Host == "a" })
	w.startAuditedWorker("b", 4096, chaosWorkerOpts{script: newChaosExec(map[string]*chaosRule{
		"mute":   {times: 1, silent: &chaosLatch{}},
		"doomed": {times: -1, silent: never},
	})})
	w.declare("mute", chaosSpec(1, 30))
	for _, name := range []string{"ok1", "ok2"} {
		w.declare(name, chaosSpec(2, 0.5))
	}
	w.declare("ok3", longSpec())
	st := w.settle(chaosSettle, chaosBoth(w.allActive(), func(st *schemas.SelectorStatus) (bool, string) {
		for _, name := range []string{"quiet", "mute"} {
			if ts, _ := targetLine(st, name); ts.Epoch < 2 {
				return false, name + " not relaunched yet: " + describeLine(ts)
			}
		}
		return true, ""
	}))
	for _, name := range []string{"quiet", "mute"} {
		t.Logf("%s: gaps between its processes %s", name, chaosSummary(w.relaunchGaps(name)))
	}
	if c := st.Counters; c.Kills < 2 {
		t.Errorf("counters kills=%d failures=%v: want both silent tasks killed", c.Kills, c.Failures)
	}
	w.checkAudit()

	// A target that hangs at every launch, for good: it cycles through
	// launch, kill and relaunch, and the rest goes on.
	w.declare("doomed", chaosSpec(1, 0.5))
	waitFor(t, chaosSettle, func() (bool, string) {
		n := len(w.aud.Procs("doomed"))
		st, _ := w.status()
		ts, _ := targetLine(&st, "doomed")
		return n >= 3, fmt.Sprintf("doomed launched %d times, want 3 (each hung one killed first): %s; %v", n, describeLine(ts), w.aud.Procs("doomed"))
	})
	w.declare("late", chaosSpec(1, 0.5))
	w.settle(chaosSettle, w.allActive("late", "ok1", "ok2", "ok3", "quiet", "mute"))
	w.checkAudit()
}

// TestChaosCrashMidPhase (fault 3): tasks crash without a word in the
// middle of a phase (the sim drops them: no event, ps no longer lists
// them). Each target is launched again, in the same phase, once the
// selector has found its task gone; one target crashes at every launch,
// for good, and its restart delay grows while the others run. The test logs
// crash → relaunch times.
func TestChaosCrashMidPhase(t *testing.T) {
	w := newChaosWorld(t, false)
	cfg := engineConfig()
	crashOnce := []string{"c1", "c2", "c3", "c4"}
	faults := worker.Faults{CrashAfter: 400 * time.Millisecond, CrashTargets: []string{"loop"}}
	for _, name := range crashOnce {
		faults.CrashTargets = append(faults.CrashTargets, name+":1")
	}
	w.startAuditedWorker("a", 4096, chaosWorkerOpts{faults: faults})
	w.startAuditedWorker("b", 4096, chaosWorkerOpts{faults: faults})
	w.startSelector(serviceConfig(cfg))
	for _, name := range crashOnce {
		w.declare(name, chaosSpec(1, 2)) // p1 runs 2 s: the crash at 0.4 s is mid-phase
	}
	w.declare("steady", longSpec())
	w.settle(chaosSettle, chaosBoth(w.allActive(), func(st *schemas.SelectorStatus) (bool, string) {
		for _, name := range crashOnce {
			if ts, _ := targetLine(st, name); ts.Phase != "last" {
				return false, name + " not in its last phase: " + describeLine(ts)
			}
		}
		return true, ""
	}))
	var gaps []time.Duration
	for _, name := range crashOnce {
		ps := w.aud.Procs(name)
		if len(ps) < 3 {
			t.Errorf("%s: %d processes, want p1 crashed, p1 again, then last", name, len(ps))
			continue
		}
		if ps[0].Type != "p1" || ps[1].Type != "p1" || ps[1].Epoch <= ps[0].Epoch {
			t.Errorf("%s: processes %v, %v: want p1 relaunched at a new epoch after the crash", name, &ps[0], &ps[1])
		}
		gaps = append(gaps, ps[1].Start.Sub(ps[0].End))
	}
	t.Logf("crash → relaunch: %s (heartbeat stale %v, restart delay base %v)", chaosSummary(gaps), cfg.HeartbeatStale, cfg.RestartDelayBase)
	w.checkAudit()

	// A target that crashes at every launch, for good.
	w.declare("loop", chaosSpec(1, 2))
	waitFor(t, chaosSettle, func() (bool, string) {
		n := len(w.aud.Procs("loop"))
		return n >= 3, fmt.Sprintf("loop launched %d times, want 3", n)
	})
	st := w.settle(chaosSettle, w.allActive(append(crashOnce, "steady")...))
	if ts, _ := targetLine(&st, "loop"); ts.State == selector.StateActive && ts.Epoch < 3 {
		t.Errorf("loop: %s", describeLine(ts))
	}
	t.Logf("crash loop: gaps between launches %s (restart delay doubles from %v)", chaosSummary(w.relaunchGaps("loop")), cfg.RestartDelayBase)
	w.checkAudit()
}

// TestChaosRAMStarvation (fault 4): thirty targets want ten times the RAM
// the three hosts have (one of which has RAM taken by processes the selector
// does not own), and their phases keep finishing, so launches go on all the
// time. The selector never overcommits a host: the workers refuse no launch
// for RAM, no host's live processes ever hold more than it has, the
// reservations settle to what the live processes hold, and every target
// that waits says why.
func TestChaosRAMStarvation(t *testing.T) {
	w := newChaosWorld(t, false)
	const foreign = 16
	hosts := map[string]int64{"r1": 80, "r2": 64, "r3": 72}
	var ws []*workerProc
	for _, h := range sortedKeys(hosts) {
		var f worker.Faults
		if h == "r1" {
			f.ForeignMiB = foreign
		}
		ws = append(ws, w.startAuditedWorker(h, hosts[h], chaosWorkerOpts{faults: f}))
	}
	w.startSelector(serviceConfig(engineConfig()))
	var demand int64
	for i := range 30 {
		// Two short phases, then a last one that repeats every second or
		// so, so that targets keep finishing and others get their turn.
		spec := chaosSpec(2, 0.3)
		spec.Phases[2].WorkS = 1
		w.declare(fmt.Sprintf("r%02d", i), spec)
		demand += chaosFullMiB
	}
	var total int64
	for _, n := range hosts {
		total += n
	}
	t.Logf("demand %d MiB at full size, %d MiB of RAM (%d foreign): %.0fx", demand, total, foreign, float64(demand)/float64(total))

	// Sample the capacity invariant while the selector works.
	stop := make(chan struct{})
	sampled := make(chan []string, 1)
	go func() {
		var bad []string
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				sampled <- bad
				return
			case <-tk.C:
				if v := w.aud.CheckCapacity(hosts); len(v) > 0 && len(bad) < 10 {
					bad = append(bad, v...)
				}
			}
		}
	}()
	start := time.Now()
	w.waitStatus(60*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		return st.Counters.PhasesCompleted >= 30, fmt.Sprintf("%d phases completed", st.Counters.PhasesCompleted)
	})
	elapsed := time.Since(start)
	st := w.settle(chaosSettle, func(st *schemas.SelectorStatus) (bool, string) {
		for _, ts := range st.Targets {
			if ts.State == selector.StatePending && ts.Reason == "next in line" {
				return false, ts.Target + " pending as next in line"
			}
		}
		return true, ""
	})
	close(stop)
	for _, v := range <-sampled {
		t.Errorf("overcommitted: %s", v)
	}
	running, pending := 0, 0
	reasons := map[string]int{}
	for _, ts := range st.Targets {
		switch ts.State {
		case selector.StateActive, selector.StateLaunching:
			running++
		case selector.StatePending:
			pending++
			reasons[ts.Reason]++
		}
	}
	var refusedRAM, helpersFailed uint64
	for _, p := range ws {
		s := p.agent.Stats()
		refusedRAM += s.Refused[schemas.CodeInsufficientRAM]
	}
	helpersFailed = st.Counters.Failures[selector.FailHelpersUnavailable]
	t.Logf("%d phases completed in %v; settled with %d running, %d pending; pending reasons %v",
		st.Counters.PhasesCompleted, elapsed.Round(time.Millisecond), running, pending, reasons)
	t.Logf("worker refusals for RAM: %d; helpers unavailable: %d; launches %d, backoff level %d",
		refusedRAM, helpersFailed, st.Counters.Launches, st.Backoff.Level)
	if refusedRAM != 0 || helpersFailed != 0 {
		t.Errorf("the selector overbooked: %d launches refused for RAM, %d helpers unavailable", refusedRAM, helpersFailed)
	}
	if pending == 0 {
		t.Errorf("no target waits: the starvation did not happen (%s)", describe(&st))
	}
	w.checkCapacity()
	w.checkAudit()
}
