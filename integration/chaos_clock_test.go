package integration

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
)

// Chaos fault 14: a wall-clock jump.
//
// What is and is not testable in process. The selector service takes every
// time it uses from time.Now, which carries a monotonic reading; the
// engine has no clock and judges every timeout by Sub and Before on those
// readings, which use the monotonic one whenever both operands have it. A
// step of the machine's wall clock therefore changes none of its durations.
// Stepping the real wall clock of the selector's own process is not possible
// here: it needs CAP_SYS_TIME and would move the clock of every process on a
// machine shared with others, and Go offers no in-process fake of
// time.Now. That case rests on Go's monotonic-clock guarantee (and on the
// engine's own tests, which drive it on an arbitrary time base).
//
// What is testable, and tested below, is every wall time that reaches the
// selector from outside, where a jump elsewhere would show:
//   - workers whose clocks jump ten years ahead, then ten years back, while
//     their tasks run, finish phases and crash: their heartbeats, host statuses,
//     task events and ps replies carry those times (sent_at, at,
//     started_at) through the real edge. Nothing the selector decides may
//     change: no task killed or judged stale for it, no host lost, the crash
//     found in the usual time;
//   - the wall times the selector writes to the tasks bucket (launched_at,
//     confirmed_at, updated_at), moved ten years back and ahead between a
//     selector's death and its successor's start, as a clock step across a
//     restart would leave them: the new selector confirms every task as
//     usual, launches nothing and kills nothing.

// chaosJumpClock is a wall clock that can be stepped: it drops the
// monotonic reading, as a wall-clock step makes it useless, and adds an
// offset.
type chaosJumpClock struct{ offset atomic.Int64 }

func (c *chaosJumpClock) now() time.Time {
	return time.Now().Round(0).Add(time.Duration(c.offset.Load()))
}
func (c *chaosJumpClock) jump(d time.Duration) { c.offset.Store(int64(d)) }

// TestChaosWallClockJump (fault 14): see the comment above.
func TestChaosWallClockJump(t *testing.T) {
	const decade = 10 * 365 * 24 * time.Hour
	w := newChaosWorld(t, false)
	cfg := engineConfig()
	// Both workers' clocks step together, as an NTP step across a fleet
	// would; the sim executors keep real time.
	clock := &chaosJumpClock{}
	for _, h := range []string{"j", "k"} {
		w.startAuditedWorker(h, 8*chaosFullMiB, chaosWorkerOpts{now: clock.now,
			faults: worker.Faults{CrashTargets: []string{"jc:1"}, CrashAfter: time.Second}})
	}
	sel := w.startSelector(serviceConfig(cfg))
	gaps := w.watchHeartbeatGaps()
	// A task whose heartbeats came this far apart may be judged stale
	// for the machine's load, not for the clock.
	slow := func() map[string]time.Duration { return gaps.over(cfg.HeartbeatStale * 3 / 4) }
	targets := edgeTargetNames("j", 5)
	for _, name := range targets {
		w.declare(name, chaosSpec(2, 0.5))
	}
	w.settle(chaosSettle, w.allActive())

	// Ahead: the phases finish, and a task crashes, under the jumped clock.
	clock.jump(decade)
	w.declare("jc", chaosSpec(1, 30))
	// The auditor sees the relaunch once the new process starts.
	var relaunch []time.Duration
	waitFor(t, 15*time.Second, func() (bool, string) {
		relaunch = w.relaunchGaps("jc")
		return len(relaunch) > 0, fmt.Sprintf("jc: processes %v", w.aud.Procs("jc"))
	})
	if relaunch[0] > cfg.HeartbeatStale+3*time.Second {
		t.Errorf("crash → relaunch under a clock ten years ahead: %s; want about the stale threshold %v", chaosSummary(relaunch), cfg.HeartbeatStale)
	}
	t.Logf("crash → relaunch with the worker's clock ten years ahead: %s (stale threshold %v)", chaosSummary(relaunch), cfg.HeartbeatStale)
	// Long enough for a heartbeat judged by its sent_at to go stale.
	waitMoreHeartbeats(t, sel, 25*uint64(len(targets)))
	// Back.
	clock.jump(-decade)
	waitMoreHeartbeats(t, sel, 25*uint64(len(targets)))
	st := w.settle(chaosSettle, chaosBoth(w.allActive(), w.inPhase("last", targets...)))
	late := slow()
	if c := st.Counters; c.Kills != 0 || c.Stale < 1 || c.Stale > 1+uint64(len(late)) || c.HostsLost != 0 || c.Timeouts != 0 || c.PhasesCompleted != uint64(2*len(targets)) {
		t.Errorf("kills %d, stale %d, hosts lost %d, timeouts %d, phases completed %d; want 0, 1 (the crash) plus at most the %d tasks whose heartbeats came late (%v), 0, 0, %d",
			c.Kills, c.Stale, c.HostsLost, c.Timeouts, c.PhasesCompleted, len(late), late, 2*len(targets))
	}
	w.checkAudit()

	// A clock step across a restart: the recorded times move.
	w.killSelector(sel)
	kv := w.kv(protocol.TasksBucket)
	keys, err := kv.Keys(w.ctx(10 * time.Second))
	if err != nil {
		t.Fatalf("tasks keys: %v", err)
	}
	for i, key := range keys {
		ent, err := kv.Get(w.ctx(10*time.Second), key)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		ts, err := schemas.DecodeTaskState(ent.Value())
		if err != nil || ts.Task == nil {
			t.Fatalf("tasks[%s]: %+v (%v)", key, ts, err)
		}
		shift := decade
		if i%2 == 0 {
			shift = -decade
		}
		ts.UpdatedAt = ts.UpdatedAt.Add(shift)
		ts.Task.LaunchedAt = ts.Task.LaunchedAt.Add(shift)
		if ts.Task.ConfirmedAt != nil {
			c := ts.Task.ConfirmedAt.Add(shift)
			ts.Task.ConfirmedAt = &c
		}
		data, err := schemas.Marshal(&ts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Update(w.ctx(10*time.Second), key, data, ent.Revision()); err != nil {
			t.Fatalf("update %s: %v", key, err)
		}
	}
	sel2 := w.startSelector(serviceConfig(cfg))
	waitMoreHeartbeats(t, sel2, 25*uint64(len(st.Targets)))
	st2 := w.settle(chaosSettle, w.allActive())
	for _, old := range st.Targets {
		if ts, _ := targetLine(&st2, old.Target); ts.TaskID != old.TaskID {
			t.Errorf("%s: %s after the restart, was %s", old.Target, describeLine(ts), old.TaskID)
		}
	}
	if c, late := st2.Counters, slow(); c.Launches != 0 || c.Kills != 0 || c.Stale > uint64(len(late)) {
		t.Errorf("after the restart: launches %d, kills %d, stale %d; want none (stale: at most the %d tasks whose heartbeats came late, %v; %s)",
			c.Launches, c.Kills, c.Stale, len(late), late, fmt.Sprint(c))
	}
	w.checkAudit()
}
