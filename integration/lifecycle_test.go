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

// TestLaunchFirstHeartbeatActive: a declared target is launched on a real
// worker, its first heartbeat makes it active, status shows the task with its
// PID and host, and the tasks bucket records it.
func TestLaunchFirstHeartbeatActive(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	w := e.startWorker("w1", 4096, 0, worker.Faults{})
	e.startSelector(serviceConfig(engineConfig()))
	e.putTarget("alpha", longSpec())

	line := e.waitActive(15*time.Second, "alpha")
	if line.PID <= 0 || line.Host != "w1" || line.TaskID == "" || line.Epoch != 1 || line.Phase != "work" {
		t.Fatalf("active line: %s; want a PID, host w1, a task id, epoch 1, phase work", describeLine(line))
	}
	if line.BudgetMiB != 8+64 {
		t.Errorf("budget %d MiB, want the full 72 MiB on an empty host", line.BudgetMiB)
	}

	// The heartbeat that confirmed it came from the worker, with that PID.
	hb, ok := sp.lastHeartbeat(line.TaskID)
	if !ok {
		t.Fatalf("no heartbeat of %s seen on the bus", line.TaskID)
	}
	if hb.hb.PID != line.PID || hb.hb.Host != "w1" || hb.hb.Epoch != 1 {
		t.Errorf("heartbeat pid %d host %q epoch %d; status says pid %d", hb.hb.PID, hb.hb.Host, hb.hb.Epoch, line.PID)
	}

	st := e.waitStoredTask(10*time.Second, "alpha", line.TaskID, schemas.TaskActive)
	if st.Target != "alpha" || st.Epoch != 1 || st.Phase != "work" || st.Task.PID != line.PID ||
		st.Task.Host != "w1" || st.Task.Type != "work" || st.Task.ConfirmedAt == nil || st.Task.BudgetMiB != line.BudgetMiB {
		t.Errorf("stored state %+v task %+v does not match the status line %s", st, *st.Task, describeLine(line))
	}

	if n := sp.launchCounts()["alpha"]; n != 1 {
		t.Errorf("%d launch requests for alpha, want 1", n)
	}
	c := e.mustStatus().Counters
	if c.Launches != 1 || c.Confirmed != 1 {
		t.Errorf("counters launches=%d confirmed=%d, want 1 and 1", c.Launches, c.Confirmed)
	}
	if s := w.agent.Stats(); s.Launches != 1 || s.Running != 1 {
		t.Errorf("worker started %d tasks, runs %d; want 1 and 1", s.Launches, s.Running)
	}
}

// TestLaunchWithoutHeartbeatTimesOutAndIsRequeued: a worker replies with a
// PID but the task never heartbeats. At the launch timeout the selector asks
// the host (ps) whether the PID runs; the host says it is gone, so the target
// is launched again with a higher epoch, and no kill is sent.
func TestLaunchWithoutHeartbeatTimesOutAndIsRequeued(t *testing.T) {
	e := newEnv(t, false)
	fw := startFakeWorker(t, e.connect("fake"), "mute", 4096, false, false)
	cfg := engineConfig()
	cfg.LaunchTimeout = 300 * time.Millisecond
	e.startSelector(serviceConfig(cfg))
	e.putTarget("beta", longSpec())

	waitFor(t, 15*time.Second, func() (bool, string) {
		n := len(fw.launchList())
		return n >= 2, fmt.Sprintf("%d launches seen at the fake worker, want 2", n)
	})
	ls := fw.launchList()
	first, second := ls[0], ls[1]
	if first.req.Target != "beta" || second.req.Target != "beta" {
		t.Fatalf("launches for %q and %q, want beta", first.req.Target, second.req.Target)
	}
	if second.req.Epoch <= first.req.Epoch || second.req.TaskID == first.req.TaskID {
		t.Errorf("relaunch epoch %d task %s after epoch %d task %s: want a higher epoch and a new task",
			second.req.Epoch, second.req.TaskID, first.req.Epoch, first.req.TaskID)
	}

	// The host was asked about the first task's PID, after the launch
	// timeout and before the relaunch.
	var asked *fakePs
	for _, p := range fw.psList() {
		if containsPID(p.req.PIDs, first.pid) {
			asked = &p
			break
		}
	}
	if asked == nil {
		t.Fatalf("no ps naming PID %d reached the worker", first.pid)
	}
	// Launch arrival trails the engine's launch time by the write-ahead
	// store write and the request's transit; allow for both.
	if d := asked.at.Sub(first.at); d < cfg.LaunchTimeout-150*time.Millisecond {
		t.Errorf("ps came %v after the launch, before the %v launch timeout", d, cfg.LaunchTimeout)
	}
	if !asked.at.Before(second.at) {
		t.Errorf("relaunch at %v came before the ps at %v", second.at, asked.at)
	}
	for _, k := range fw.killList() {
		if k.req.TaskID == first.req.TaskID {
			t.Errorf("task %s was killed, but its host said it was gone", first.req.TaskID)
		}
	}
	c := e.mustStatus().Counters
	if c.Timeouts < 1 || c.Failures[selector.FailLaunchTimeout] < 1 || c.Requeues < 1 {
		t.Errorf("counters timeouts=%d failures=%v requeues=%d: want the launch timeout counted", c.Timeouts, c.Failures, c.Requeues)
	}
}

// TestSilentLiveTaskIsKilledAndRequeued: a task that runs but does not
// heartbeat (never, or no longer) is found alive by ps, killed, and its
// target launched again; it does not block other launches.
func TestSilentLiveTaskIsKilledAndRequeued(t *testing.T) {
	t.Run("never_heartbeats", func(t *testing.T) {
		e := newEnv(t, false)
		sp := e.startSpy()
		w := e.startWorker("w1", 4096, 0, worker.Faults{HangTargets: []string{"gamma:1"}})
		cfg := engineConfig()
		cfg.LaunchTimeout = 400 * time.Millisecond
		e.startSelector(serviceConfig(cfg))
		e.putTarget("gamma", longSpec())
		e.putTarget("delta", longSpec())

		line := e.waitTarget(20*time.Second, "gamma", func(ts schemas.TargetStatus) bool {
			return ts.State == selector.StateActive && ts.Epoch >= 2
		})
		e.waitActive(10*time.Second, "delta")

		ls := sp.launches("gamma")
		if len(ls) < 2 {
			t.Fatalf("%d launches of gamma, want 2", len(ls))
		}
		hung := ls[0].launch
		if n := sp.heartbeatsOf(hung.TaskID); n != 0 {
			t.Errorf("the hung task %s sent %d heartbeats, want none", hung.TaskID, n)
		}
		kills := sp.kills(hung.TaskID)
		if len(kills) == 0 {
			t.Fatalf("the hung task %s was never killed", hung.TaskID)
		}
		if kills[0].host != "w1" || kills[0].kill.PID <= 0 {
			t.Errorf("kill sent to %q with pid %d", kills[0].host, kills[0].kill.PID)
		}
		if len(sp.psOf("w1", kills[0].kill.PID)) == 0 {
			t.Errorf("the task was killed without a ps of its PID first")
		}
		if !kills[0].at.Before(ls[1].at) {
			t.Errorf("relaunch at %v before the kill at %v", ls[1].at, kills[0].at)
		}
		if line.TaskID == hung.TaskID {
			t.Errorf("the active task is still the hung one")
		}
		if s := w.agent.Stats(); s.Kills < 1 || s.Running != 2 {
			t.Errorf("worker kills=%d running=%d, want >=1 and 2", s.Kills, s.Running)
		}
		// The failure is counted as silent when the kill reply comes first,
		// as killed when the worker's killed event does (see the report).
		if c := e.mustStatus().Counters; c.Failures[selector.FailSilent]+c.Failures[selector.FailKilled] < 1 {
			t.Errorf("failures %v: want the silent launch counted", c.Failures)
		}
	})

	t.Run("goes_silent", func(t *testing.T) {
		e := newEnv(t, false)
		sp := e.startSpy()
		// Speed 1: it hangs 300 ms after its helpers start.
		e.startWorker("w1", 4096, 1, worker.Faults{HangTargets: []string{"gamma:1"}, HangAfter: 300 * time.Millisecond})
		cfg := engineConfig()
		cfg.HeartbeatStale = 500 * time.Millisecond
		e.startSelector(serviceConfig(cfg))
		e.putTarget("gamma", longSpec())

		first := e.waitActive(15*time.Second, "gamma")
		if first.Epoch != 1 {
			t.Fatalf("first active task at epoch %d", first.Epoch)
		}
		line := e.waitTarget(20*time.Second, "gamma", func(ts schemas.TargetStatus) bool {
			return ts.State == selector.StateActive && ts.Epoch >= 2
		})
		if line.TaskID == first.TaskID {
			t.Fatalf("still the hung task")
		}
		kills := sp.kills(first.TaskID)
		if len(kills) == 0 {
			t.Fatalf("the silent task %s was never killed", first.TaskID)
		}
		last, ok := sp.lastHeartbeat(first.TaskID)
		if !ok {
			t.Fatalf("the task never heartbeated before it hung")
		}
		if d := kills[0].at.Sub(last.at); d < cfg.HeartbeatStale-100*time.Millisecond {
			t.Errorf("killed %v after its last heartbeat, before the %v stale threshold", d, cfg.HeartbeatStale)
		}
		ls := sp.launches("gamma")
		if len(ls) < 2 || !kills[0].at.Before(ls[1].at) {
			t.Errorf("relaunch not after the kill (%d launches)", len(ls))
		}
		c := e.mustStatus().Counters
		if c.Stale < 1 || c.Failures[selector.FailStale]+c.Failures[selector.FailKilled] < 1 {
			t.Errorf("counters stale=%d failures=%v: want the stale task counted", c.Stale, c.Failures)
		}
	})
}

// TestCrashedTaskIsRequeuedAfterStaleThreshold: a task that crashes silently
// (no event, ps no longer lists it) is requeued once it has been stale for
// the threshold and its host confirmed it gone; no kill is needed.
func TestCrashedTaskIsRequeuedAfterStaleThreshold(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	e.startWorker("w1", 4096, 1, worker.Faults{CrashTargets: []string{"eps:1"}, CrashAfter: 300 * time.Millisecond})
	cfg := engineConfig()
	cfg.HeartbeatStale = 500 * time.Millisecond
	e.startSelector(serviceConfig(cfg))
	e.putTarget("eps", longSpec())

	first := e.waitActive(15*time.Second, "eps")
	line := e.waitTarget(20*time.Second, "eps", func(ts schemas.TargetStatus) bool {
		return ts.State == selector.StateActive && ts.Epoch > first.Epoch
	})
	if line.TaskID == first.TaskID {
		t.Fatalf("still the crashed task")
	}
	last, ok := sp.lastHeartbeat(first.TaskID)
	if !ok {
		t.Fatalf("no heartbeat of the crashed task seen")
	}
	ls := sp.launches("eps")
	if len(ls) != 2 {
		t.Fatalf("%d launches of eps, want 2", len(ls))
	}
	// The selector saw the last heartbeat at about the time the spy did;
	// allow for the two subscribers' delivery skew.
	if d := ls[1].at.Sub(last.at); d < cfg.HeartbeatStale-100*time.Millisecond {
		t.Errorf("relaunched %v after the last heartbeat, before the %v stale threshold", d, cfg.HeartbeatStale)
	}
	if len(sp.psOf("w1", first.PID)) == 0 {
		t.Errorf("the crashed task's host was not asked about PID %d", first.PID)
	}
	if k := sp.kills(first.TaskID); len(k) != 0 {
		t.Errorf("the crashed task was killed %d times; its host had said it was gone", len(k))
	}
	c := e.mustStatus().Counters
	if c.Stale < 1 || c.Failures[selector.FailCrashed] < 1 {
		t.Errorf("counters stale=%d failures=%v: want the crash counted", c.Stale, c.Failures)
	}
}

// TestInsufficientRAMBacksOffExponentiallyWhileStatusAnswers: a worker that
// refuses every launch with insufficient_ram sees the launches spaced out
// base·2^(n-1) (±20 % jitter) up to the cap, while status requests keep
// answering fast.
func TestInsufficientRAMBacksOffExponentiallyWhileStatusAnswers(t *testing.T) {
	e := newEnv(t, false)
	fw := startFakeWorker(t, e.connect("fake"), "tight", 64<<10, true, false)
	cfg := engineConfig()
	sc := serviceConfig(cfg)
	e.startSelector(sc)
	e.putTarget("theta", longSpec())

	const wantLaunches = 8 // waits 50, 100, 200, 400, 800 (capped), 800, 800 ms
	const wantSamples = 50
	var lat []time.Duration
	failures := 0
	deadline := time.Now().Add(30 * time.Second)
	for len(fw.launchList()) < wantLaunches || len(lat) < wantSamples {
		if time.Now().After(deadline) {
			t.Fatalf("after 30s: %d launches, %d status samples", len(fw.launchList()), len(lat))
		}
		start := time.Now()
		st, err := e.status()
		d := time.Since(start)
		switch {
		case err != nil:
			failures++
			t.Logf("status failed after %v: %v", d, err)
		case st.Backoff.Level > 0 && len(lat) < wantSamples:
			lat = append(lat, d) // a sample taken while backed off
		}
		time.Sleep(20 * time.Millisecond) // pacing of the samples, not a wait on a condition
	}

	ls := fw.launchList()[:wantLaunches]
	slack := sc.Tick + 300*time.Millisecond // store write before each launch, transit, a loaded machine
	var gaps []time.Duration
	for i := 1; i < len(ls); i++ {
		if ls[i].req.Epoch != ls[i-1].req.Epoch+1 {
			t.Errorf("launch %d epoch %d after %d: every refused launch takes one epoch", i+1, ls[i].req.Epoch, ls[i-1].req.Epoch)
		}
		gap := ls[i].at.Sub(ls[i-1].at)
		gaps = append(gaps, gap)
		nominal := float64(cfg.BackoffBase) * float64(int(1)<<(i-1))
		lo := time.Duration(min(0.8*nominal, float64(cfg.BackoffMax)))
		hi := time.Duration(min(1.2*nominal, float64(cfg.BackoffMax))) + slack
		if gap < lo || gap > hi {
			t.Errorf("gap %d (backoff level %d): %v, want within [%v, %v]", i, i, gap, lo, hi)
		}
		if gap > cfg.BackoffMax+slack {
			t.Errorf("gap %d: %v exceeds the %v cap", i, gap, cfg.BackoffMax)
		}
	}
	t.Logf("gaps between refused launches: %v", gaps)

	st := e.mustStatus()
	if st.Backoff.Level < wantLaunches-1 || st.Counters.Failures[selector.FailInsufficientRAM] < wantLaunches-1 || st.Counters.Confirmed != 0 {
		t.Errorf("backoff level %d, failures %v, confirmed %d", st.Backoff.Level, st.Counters.Failures, st.Counters.Confirmed)
	}

	p50, p90, p99, worst := percentile(lat, 0.5), percentile(lat, 0.9), percentile(lat, 0.99), percentile(lat, 1)
	t.Logf("status round trips while backed off (%d samples): p50 %v p90 %v p99 %v max %v", len(lat), p50, p90, p99, worst)
	if failures > 0 {
		t.Errorf("%d status requests failed while backed off", failures)
	}
	if p90 >= 50*time.Millisecond {
		t.Errorf("status p90 %v while backed off, want under 50ms", p90)
	}
}

// TestDeletedTargetGetsItsTaskKilled: deleting a target's key kills its task
// on the worker, drops it from status and deletes its tasks entry.
func TestDeletedTargetGetsItsTaskKilled(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	w := e.startWorker("w1", 4096, 0, worker.Faults{})
	e.startSelector(serviceConfig(engineConfig()))
	e.putTarget("zeta", longSpec())
	e.putTarget("eta", longSpec())
	line := e.waitActive(15*time.Second, "zeta")
	other := e.waitActive(15*time.Second, "eta")
	e.waitStoredTask(10*time.Second, "zeta", line.TaskID, schemas.TaskActive)

	if err := e.client.DeleteTarget(e.ctx(10*time.Second), "zeta"); err != nil {
		t.Fatalf("delete target: %v", err)
	}
	waitFor(t, 15*time.Second, func() (bool, string) {
		st, err := e.status()
		if err != nil {
			return false, err.Error()
		}
		if ts, ok := targetLine(&st, "zeta"); ok {
			return false, "zeta still in status: " + describeLine(ts)
		}
		return true, ""
	})
	waitFor(t, 10*time.Second, func() (bool, string) {
		_, err := e.taskState("zeta")
		return isNotFound(err), fmt.Sprintf("tasks[zeta]: %v", err)
	})

	kills := sp.kills(line.TaskID)
	if len(kills) == 0 || kills[0].host != "w1" || kills[0].kill.PID != line.PID {
		t.Fatalf("kills of %s: %+v; want one to w1 with pid %d", line.TaskID, kills, line.PID)
	}
	if s := w.agent.Stats(); s.Kills != 1 || s.Running != 1 {
		t.Errorf("worker kills=%d running=%d, want 1 and 1", s.Kills, s.Running)
	}
	if n := sp.launchCounts()["zeta"]; n != 1 {
		t.Errorf("%d launches of zeta, want 1 (no relaunch after delete)", n)
	}
	// The other target is untouched.
	st := e.mustStatus()
	if ts, ok := targetLine(&st, "eta"); !ok || ts.TaskID != other.TaskID || ts.State != selector.StateActive {
		t.Errorf("eta: %s, want still active as %s", describeLine(ts), other.TaskID)
	}
}

// TestEncodedNamesEndToEnd: a Bitburner target called I.I.I.I and a host
// whose name holds a space and non-ASCII letters go from launch to active,
// and their subjects and keys use the reversible encoding.
func TestEncodedNamesEndToEnd(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	const host = "wörker 1 ☃"
	e.startWorker(host, 4096, 0, worker.Faults{})
	e.startSelector(serviceConfig(engineConfig()))
	targets := []string{"I.I.I.I", "the café > 2"}
	for _, name := range targets {
		e.putTarget(name, longSpec())
	}
	for _, name := range targets {
		line := e.waitActive(15*time.Second, name)
		if line.Host != host || line.PID <= 0 {
			t.Errorf("%s: %s, want host %q and a PID", name, describeLine(line), host)
		}
		st := e.waitStoredTask(10*time.Second, name, line.TaskID, schemas.TaskActive)
		if st.Target != name || st.Task.Host != host {
			t.Errorf("stored %q on %q, want %q on %q", st.Target, st.Task.Host, name, host)
		}
		ls := sp.launches(name)
		if len(ls) != 1 || ls[0].host != host {
			t.Errorf("%s: %d launches; want one, to %q", name, len(ls), host)
		}
	}
	// The documented encoding, seen from outside the bus package.
	ent, err := e.kv(protocol.TasksBucket).Get(e.ctx(10*time.Second), "=SS5JLkkuSQ")
	if err != nil {
		t.Fatalf("tasks key =SS5JLkkuSQ for I.I.I.I: %v", err)
	}
	if st, err := schemas.DecodeTaskState(ent.Value()); err != nil || st.Target != "I.I.I.I" {
		t.Errorf("tasks[=SS5JLkkuSQ] = %q (%v), want target I.I.I.I", st.Target, err)
	}
	if _, err := e.kv(protocol.TargetsBucket).Get(e.ctx(10*time.Second), "=SS5JLkkuSQ"); err != nil {
		t.Errorf("targets key =SS5JLkkuSQ: %v", err)
	}
}

// TestBackoffJitterSpreadsRefusedLaunches: with the backoff factor set to 1
// every wait is BackoffBase ±20 % (the default jitter), so over 30 refused
// launches some gaps come in clearly under BackoffBase, which the
// overhead of a launch (only ever added) cannot explain; none falls outside
// the jitter band.
func TestBackoffJitterSpreadsRefusedLaunches(t *testing.T) {
	e := newEnv(t, false)
	fw := startFakeWorker(t, e.connect("fake"), "tight", 64<<10, true, false)
	cfg := engineConfig()
	cfg.BackoffBase = 100 * time.Millisecond
	cfg.BackoffMax = time.Second
	cfg.BackoffFactor = 1
	// BackoffJitter left zero: the documented default is ±20 %.
	sc := serviceConfig(cfg)
	e.startSelector(sc)
	e.putTarget("iota", longSpec())

	const n = 30
	waitFor(t, 30*time.Second, func() (bool, string) {
		got := len(fw.launchList())
		return got >= n, fmt.Sprintf("%d refused launches, want %d", got, n)
	})
	ls := fw.launchList()[:n]
	lo, hi := 80*time.Millisecond, 120*time.Millisecond+sc.Tick+300*time.Millisecond
	var gaps []time.Duration
	below := 0
	for i := 1; i < n; i++ {
		gap := ls[i].at.Sub(ls[i-1].at)
		gaps = append(gaps, gap)
		if gap < lo-time.Millisecond || gap > hi {
			t.Errorf("gap %d: %v, want within [%v, %v]", i, gap, lo, hi)
		}
		if gap < cfg.BackoffBase {
			below++
		}
	}
	spread := percentile(gaps, 0.9) - percentile(gaps, 0.1)
	t.Logf("%d gaps: min %v p10 %v p50 %v p90 %v max %v; %d under %v", len(gaps), percentile(gaps, 0),
		percentile(gaps, 0.1), percentile(gaps, 0.5), percentile(gaps, 0.9), percentile(gaps, 1), below, cfg.BackoffBase)
	// The overhead of a launch (a tick, a store write, the transit) only
	// ever lengthens a gap, so a gap under BackoffBase shows a negative
	// jitter draw; and ±20 % of 100 ms spreads the middle 80 % of the
	// gaps over about 32 ms, where the overhead alone varies by a tick.
	// Either sign is enough; both missing means no jitter.
	if below == 0 && spread < 20*time.Millisecond {
		t.Errorf("no gap under %v and p90-p10 spread %v: the backoff wait is not jittered", cfg.BackoffBase, spread)
	}
}
