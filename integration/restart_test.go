package integration

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

var restartTargets = []string{"t1", "t2", "t3", "t4"}

// liveCluster starts two sim workers and a selector, declares restartTargets
// and waits until all are active. It returns the active task id per target.
func liveCluster(t *testing.T, e *env) (*selectorProc, []*workerProc, map[string]schemas.TargetStatus) {
	t.Helper()
	ws := []*workerProc{
		e.startWorker("h1", 4096, 0, worker.Faults{}),
		e.startWorker("h2", 4096, 0, worker.Faults{}),
	}
	sel := e.startSelector(serviceConfig(engineConfig()))
	for _, name := range restartTargets {
		e.putTarget(name, longSpec())
	}
	lines := map[string]schemas.TargetStatus{}
	for _, name := range restartTargets {
		lines[name] = e.waitActive(20*time.Second, name)
		e.waitStoredTask(10*time.Second, name, lines[name].TaskID, schemas.TaskActive)
	}
	return sel, ws, lines
}

// waitAllActiveAs waits until every target is active with the task it had.
func waitAllActiveAs(e *env, timeout time.Duration, want map[string]schemas.TargetStatus) schemas.SelectorStatus {
	e.t.Helper()
	return e.waitStatus(timeout, func(st *schemas.SelectorStatus) (bool, string) {
		if !st.Ready || st.Recovering || !st.Connected {
			return false, describe(st)
		}
		for _, name := range sortedKeys(want) {
			ts, ok := targetLine(st, name)
			if !ok || ts.State != selector.StateActive || ts.TaskID != want[name].TaskID || ts.PID != want[name].PID || ts.Host != want[name].Host {
				return false, fmt.Sprintf("%s: want task %s active on %s: %s", name, want[name].TaskID, want[name].Host, describe(st))
			}
		}
		return true, ""
	})
}

// waitMoreHeartbeats waits until sel has handled n more heartbeats, so that
// the checks that follow cover some running time after recovery.
func waitMoreHeartbeats(t *testing.T, sel *selectorProc, n uint64) {
	t.Helper()
	h0 := sel.svc.HeartbeatsHandled()
	waitFor(t, 15*time.Second, func() (bool, string) {
		h := sel.svc.HeartbeatsHandled()
		return h >= h0+n, fmt.Sprintf("%d heartbeats handled since, want %d", h-h0, n)
	})
}

// checkOneLaunchEach checks that every target was launched exactly once, by
// the spy's count and the workers' own.
func checkOneLaunchEach(t *testing.T, e *env, sp *spy, ws []*workerProc) {
	t.Helper()
	if err := e.nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	counts := sp.launchCounts()
	for _, name := range restartTargets {
		if counts[name] != 1 {
			t.Errorf("%s was launched %d times, want exactly once", name, counts[name])
		}
	}
	var launched, relaunched uint64
	for _, w := range ws {
		s := w.agent.Stats()
		launched += s.Launches
		relaunched += s.Relaunches
	}
	if launched != uint64(len(restartTargets)) || relaunched != 0 {
		t.Errorf("workers started %d tasks and answered %d repeated launches; want %d and 0", launched, relaunched, len(restartTargets))
	}
}

// TestSelectorRestartWithLiveTasks: a selector restarted while its tasks run
// rebuilds its state from the tasks bucket (the same task ids, before any
// heartbeat is needed), confirms them by their heartbeats, and launches
// nothing twice.
func TestSelectorRestartWithLiveTasks(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	sel1, ws, lines := liveCluster(t, e)
	sel1.stop(t)

	cfg := engineConfig()
	cfg.RecoveryGrace = 3 * time.Second // ends early once every recorded task heartbeats
	sel2 := e.startSelector(serviceConfig(cfg))

	// Rebuilt from the bucket: the very first answer knows every task.
	st := e.mustStatus()
	for _, name := range restartTargets {
		ts, ok := targetLine(&st, name)
		if !ok || ts.TaskID != lines[name].TaskID || ts.Epoch != lines[name].Epoch || ts.Host != lines[name].Host {
			t.Errorf("first status after restart, %s: %s; want task %s epoch %d on %s",
				name, describeLine(ts), lines[name].TaskID, lines[name].Epoch, lines[name].Host)
		}
	}

	st = waitAllActiveAs(e, 15*time.Second, lines)
	waitMoreHeartbeats(t, sel2, 3*uint64(len(restartTargets)))

	st = e.mustStatus()
	if c := st.Counters; c.Launches != 0 || c.Adoptions != 0 || c.FencedHeartbeats != 0 || c.Kills != 0 {
		t.Errorf("restarted selector counters launches=%d adoptions=%d fenced=%d kills=%d, want all 0",
			c.Launches, c.Adoptions, c.FencedHeartbeats, c.Kills)
	}
	checkOneLaunchEach(t, e, sp, ws)
	for _, name := range restartTargets {
		if ts, _ := targetLine(&st, name); ts.TaskID != lines[name].TaskID || ts.State != selector.StateActive {
			t.Errorf("%s: %s after restart", name, describeLine(ts))
		}
	}
}

// TestSelectorRestartWithWipedTasksBucketAdopts: with the tasks bucket wiped
// between runs, the restarted selector adopts the running tasks from their
// heartbeats during its recovery grace, records them again, and launches
// nothing new.
func TestSelectorRestartWithWipedTasksBucketAdopts(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	sel1, ws, lines := liveCluster(t, e)
	sel1.stop(t)

	kv := e.kv(protocol.TasksBucket)
	keys, err := kv.Keys(e.ctx(10 * time.Second))
	if err != nil || len(keys) != len(restartTargets) {
		t.Fatalf("tasks keys before the wipe: %v (%v)", keys, err)
	}
	for _, k := range keys {
		if err := kv.Purge(e.ctx(10*time.Second), k); err != nil {
			t.Fatalf("purge %s: %v", k, err)
		}
	}
	if keys, err := kv.Keys(e.ctx(10 * time.Second)); !errors.Is(err, jetstream.ErrNoKeysFound) {
		t.Fatalf("tasks bucket not empty after the wipe: %v (%v)", keys, err)
	}

	cfg := engineConfig()
	cfg.RecoveryGrace = 1500 * time.Millisecond // 15 heartbeat intervals to hear every task
	sel2 := e.startSelector(serviceConfig(cfg))
	if st := e.mustStatus(); len(st.Targets) != len(restartTargets) {
		t.Fatalf("restarted selector knows %d targets, want %d", len(st.Targets), len(restartTargets))
	}

	waitAllActiveAs(e, 15*time.Second, lines)
	waitMoreHeartbeats(t, sel2, 3*uint64(len(restartTargets)))

	st := e.mustStatus()
	if c := st.Counters; c.Adoptions != uint64(len(restartTargets)) || c.Launches != 0 || c.Kills != 0 {
		t.Errorf("counters adoptions=%d launches=%d kills=%d; want %d adoptions, no launch, no kill",
			c.Adoptions, c.Launches, c.Kills, len(restartTargets))
	}
	checkOneLaunchEach(t, e, sp, ws)
	// The adopted tasks are recorded again.
	for _, name := range restartTargets {
		st := e.waitStoredTask(10*time.Second, name, lines[name].TaskID, schemas.TaskActive)
		if st.Epoch != lines[name].Epoch || st.Task.PID != lines[name].PID || st.Task.Host != lines[name].Host {
			t.Errorf("re-recorded %s: epoch %d pid %d host %q; want %d %d %q", name, st.Epoch, st.Task.PID, st.Task.Host,
				lines[name].Epoch, lines[name].PID, lines[name].Host)
		}
	}
}

// TestNATSServerRestartUnderSelector: the embedded server (file store, fixed
// port) is restarted under a running selector and workers. The tasks bucket
// survives untouched, the selector reconnects (status answers, connected),
// its tasks stay active, and it still follows the targets bucket.
func TestNATSServerRestartUnderSelector(t *testing.T) {
	e := newEnv(t, true)
	sp := e.startSpy()
	ws := []*workerProc{e.startWorker("h1", 4096, 0, worker.Faults{})}
	cfg := engineConfig()
	// The workers and the selector reconnect with independent backoffs;
	// a staleness threshold well above that spread keeps this test about
	// reconnecting, not about a task going stale in between.
	cfg.HeartbeatStale = 4 * time.Second
	cfg.HostStale = 6 * time.Second
	cfg.RecoveryGrace = time.Second
	sel := e.startSelector(serviceConfig(cfg))
	targets := []string{"a1", "a2"}
	for _, name := range targets {
		e.putTarget(name, longSpec())
	}
	lines := map[string]schemas.TargetStatus{}
	revs := map[string]uint64{}
	kv := e.kv(protocol.TasksBucket)
	for _, name := range targets {
		lines[name] = e.waitActive(20*time.Second, name)
		e.waitStoredTask(10*time.Second, name, lines[name].TaskID, schemas.TaskActive)
		ent, err := kv.Get(e.ctx(10*time.Second), protocol.EncodeName(name))
		if err != nil {
			t.Fatalf("get %s: %v", name, err)
		}
		revs[name] = ent.Revision()
	}

	e.restartServer(func() {
		// The selector notices that it is cut off.
		waitFor(t, 10*time.Second, func() (bool, string) {
			st := sel.svc.Status()
			return !st.Connected, "selector still says connected"
		})
	})

	st := waitAllActiveAs(e, 30*time.Second, lines)
	if !st.Connected || !st.Ready {
		t.Fatalf("after the server restart: %s", describe(&st))
	}
	if !sel.running() {
		t.Fatal("selector Run returned during the server restart")
	}

	// The file-store bucket survived: the same entries, not rewritten.
	kv2 := e.kv(protocol.TasksBucket)
	for _, name := range targets {
		ent, err := kv2.Get(e.ctx(10*time.Second), protocol.EncodeName(name))
		if err != nil {
			t.Fatalf("tasks[%s] after the server restart: %v", name, err)
		}
		ts, err := schemas.DecodeTaskState(ent.Value())
		if err != nil || ts.Task == nil || ts.Task.TaskID != lines[name].TaskID || ts.Task.State != schemas.TaskActive {
			t.Errorf("tasks[%s] after the restart: %+v (%v)", name, ts, err)
		}
		if ent.Revision() != revs[name] {
			t.Errorf("tasks[%s] revision %d, was %d before the restart: rewritten", name, ent.Revision(), revs[name])
		}
	}

	// The selector still follows the targets bucket and launches.
	e.putTarget("a3", longSpec())
	e.waitActive(20*time.Second, "a3")
	counts := sp.launchCounts()
	for _, name := range targets {
		if counts[name] != 1 {
			t.Errorf("%s launched %d times, want once", name, counts[name])
		}
	}
	if got := ws[0].agent.Stats().Relaunches; got != 0 {
		t.Errorf("worker answered %d repeated launches", got)
	}
}
