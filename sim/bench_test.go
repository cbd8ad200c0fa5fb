package sim

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// liveTask is what a benchmark needs to speak for a running task.
type liveTask struct {
	id, host, target, typ string
	epoch                 uint64
	pid                   int64
}

// steady builds an engine over ScaleWorld(targets, hosts) with every target
// launched and confirmed, at a fixed instant after the recovery grace. It
// plays the edge itself (no simulator) so that a benchmark loop measures the
// engine alone.
func steady(b *testing.B, targets, hosts int) (*selector.Engine, []liveTask, time.Time) {
	b.Helper()
	w := ScaleWorld(targets, hosts)
	e, err := NewSelector(selector.DefaultConfig(), w)
	if err != nil {
		b.Fatal(err)
	}
	now := Epoch.Add(6 * time.Second)
	for _, h := range w.Hosts {
		e.Step(now, &selector.HostStatusReceived{Status: &schemas.HostStatus{V: 1, Host: h.Name,
			RAM: schemas.HostRAM{TotalMiB: h.CapacityMiB}, SentAt: now}})
	}
	var live []liveTask
	pid := int64(100)
	cmds := e.Step(now, &selector.Tick{})
	for len(live) < targets {
		l := launchOf(cmds)
		if l == nil {
			b.Fatalf("after %d launches no launch came", len(live))
		}
		pid++
		t := liveTask{id: l.Launch.TaskID, host: l.Host, target: l.Target, typ: l.Launch.Type, epoch: l.Launch.Epoch, pid: pid}
		live = append(live, t)
		cmds = e.Step(now, hb(t, now, 1))
	}
	return e, live, now
}

func launchOf(cmds []selector.Command) *selector.Command {
	for i := range cmds {
		if cmds[i].Kind == selector.CmdLaunch {
			c := cmds[i]
			return &c
		}
	}
	return nil
}

func hb(t liveTask, now time.Time, seq uint64) *selector.HeartbeatReceived {
	return &selector.HeartbeatReceived{Heartbeat: &schemas.Heartbeat{V: 1, TaskID: t.id, Epoch: t.epoch, PID: t.pid,
		Host: t.host, Target: t.target, Type: t.typ, Seq: seq, RAM: schemas.HeartbeatRAM{BudgetMiB: 288, UsedMiB: 288}, SentAt: now}}
}

var scaleCases = [][2]int{{1000, 100}, {10000, 1000}}

// BenchmarkLaunchDecision: one op is a task's done event (its target is
// requeued: its phase repeats) and the launch decision that places it again
// on a host, confirmed by its first heartbeat.
func BenchmarkLaunchDecision(b *testing.B) {
	for _, c := range scaleCases {
		b.Run(fmt.Sprintf("targets=%d/hosts=%d", c[0], c[1]), func(b *testing.B) {
			e, live, now := steady(b, c[0], c[1])
			pid := int64(1 << 20)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k := i % len(live)
				t := live[k]
				cmds := e.Step(now, &selector.TaskEventReceived{Event: &schemas.TaskEvent{V: 1, TaskID: t.id, Epoch: t.epoch,
					PID: t.pid, Host: t.host, Target: t.target, Type: t.typ, Kind: schemas.EventDone, At: now}})
				l := launchOf(cmds)
				if l == nil {
					b.Fatal("done event led to no launch")
				}
				pid++
				t = liveTask{id: l.Launch.TaskID, host: l.Host, target: l.Target, typ: l.Launch.Type, epoch: l.Launch.Epoch, pid: pid}
				live[k] = t
				e.Step(now, hb(t, now, 1))
			}
		})
	}
}

// BenchmarkHeartbeat: one op is a heartbeat of a known, active task.
func BenchmarkHeartbeat(b *testing.B) {
	for _, c := range scaleCases {
		b.Run(fmt.Sprintf("targets=%d", c[0]), func(b *testing.B) {
			e, live, now := steady(b, c[0], c[1])
			evs := make([]*selector.HeartbeatReceived, len(live))
			for i, t := range live {
				evs[i] = hb(t, now, 2)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				e.Step(now, evs[i%len(evs)])
			}
		})
	}
}

// BenchmarkTick: one op is a tick with every task active and fresh.
func BenchmarkTick(b *testing.B) {
	for _, c := range scaleCases {
		b.Run(fmt.Sprintf("targets=%d/hosts=%d", c[0], c[1]), func(b *testing.B) {
			e, _, now := steady(b, c[0], c[1])
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				e.Step(now, &selector.Tick{})
			}
		})
	}
}

// BenchmarkRebuild: one op is selector.New from n persisted records, one
// active task per target.
func BenchmarkRebuild(b *testing.B) {
	for _, n := range []int{10000, 100000} {
		b.Run("records="+strconv.Itoa(n), func(b *testing.B) {
			w := ScaleWorld(n, n/10)
			snap := selector.Snapshot{Targets: make(map[string]schemas.TargetSpec, n)}
			for i, t := range w.Targets {
				snap.Targets[t.Name] = t.Spec
				at := Epoch
				snap.Tasks = append(snap.Tasks, schemas.TaskState{V: 1, Target: t.Name, Phase: "serve", Epoch: 2, UpdatedAt: at,
					Task: &schemas.TaskRecord{TaskID: t.Name + "#2.x", PID: int64(100 + i), Type: "serve",
						Host: w.Hosts[i%len(w.Hosts)].Name, State: schemas.TaskActive, BudgetMiB: 288, WrapperMiB: 32,
						LaunchedAt: at, ConfirmedAt: &at}})
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := selector.New(selector.DefaultConfig(), Epoch, snap); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSimEarlyGame: one op simulates one hour of the early-game world
// at 64 GiB with the selector (the simulator's own speed).
func BenchmarkSimEarlyGame(b *testing.B) {
	w := EarlyGame(64)
	cfg := shortCfg(time.Hour)
	for i := 0; i < b.N; i++ {
		if _, err := RunPolicy(PolicySelector, cfg, w); err != nil {
			b.Fatal(err)
		}
	}
}
