package selector

import (
	"strconv"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// benchFleet builds the inputs of a large engine: targets t0..t(n-1), each
// 10+90 MiB, and hosts h0..h(hosts-1) of total MiB each. With records, every
// target has a recorded active task on host i % hosts.
func benchFleet(n, hosts int, records bool) Snapshot {
	snap := Snapshot{Targets: make(map[string]schemas.TargetSpec, n)}
	for i := range n {
		snap.Targets["t"+strconv.Itoa(i)] = withValue(simple(10, 10, 90), 1+float64(i%97)/97)
	}
	if records {
		snap.Tasks = make([]schemas.TaskState, n)
		for i := range n {
			name := "t" + strconv.Itoa(i)
			snap.Tasks[i] = schemas.TaskState{V: 1, Target: name, Phase: "a", Epoch: 3,
				Task: &schemas.TaskRecord{TaskID: name + "#3.x", PID: int64(1000 + i), Type: "a", Host: "h" + strconv.Itoa(i%hosts),
					State: schemas.TaskActive, BudgetMiB: 100, WrapperMiB: 10, LaunchedAt: t0}, UpdatedAt: t0}
		}
	}
	return snap
}

func hostStatus(name string, total int64) *HostStatusReceived {
	return &HostStatusReceived{Status: &schemas.HostStatus{V: 1, Host: name, RAM: schemas.HostRAM{TotalMiB: total}}}
}

// confirmAll heartbeats every recorded task once, so that the engine is past
// its grace with every task active.
func confirmAll(b *testing.B, e *Engine, snap Snapshot, now time.Time, hosts int, total int64) {
	for i := range hosts {
		e.Step(now, hostStatus("h"+strconv.Itoa(i), total))
	}
	for _, st := range snap.Tasks {
		r := st.Task
		e.Step(now, &HeartbeatReceived{Heartbeat: &schemas.Heartbeat{V: 1, TaskID: r.TaskID, Epoch: st.Epoch, PID: r.PID,
			Host: r.Host, Target: st.Target, Type: r.Type, Seq: 1, RAM: schemas.HeartbeatRAM{BudgetMiB: 100}}})
	}
	e.Step(now, &Tick{})
	if e.recovering || len(e.tasks) != len(snap.Tasks) {
		b.Fatalf("setup: recovering %v, %d tasks", e.recovering, len(e.tasks))
	}
}

func BenchmarkHeartbeatKnownTask(b *testing.B) {
	snap := benchFleet(10000, 100, true)
	e, err := New(DefaultConfig(), t0, snap)
	if err != nil {
		b.Fatal(err)
	}
	now := t0.Add(time.Second)
	confirmAll(b, e, snap, now, 100, 1<<20)
	r := snap.Tasks[4321]
	hb := &schemas.Heartbeat{V: 1, TaskID: r.Task.TaskID, Epoch: r.Epoch, PID: r.Task.PID, Host: r.Task.Host,
		Target: r.Target, Type: "a", Seq: 2, RAM: schemas.HeartbeatRAM{BudgetMiB: 100, UsedMiB: 60}}
	ev := &HeartbeatReceived{Heartbeat: hb}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if out := e.Step(now.Add(time.Duration(i)), ev); len(out) != 0 {
			b.Fatal("a heartbeat of an active task produced commands")
		}
	}
}

// BenchmarkLaunchDecision measures one Step that decides a launch with
// 10,000 targets and 1,000 hosts: the first heartbeat of the pending launch
// confirms it, and the engine picks and places the next pending target. A
// done event (not timed) frees one running task per iteration, so that RAM
// and pending targets never run out.
func BenchmarkLaunchDecision(b *testing.B) {
	const targets, hosts = 10000, 1000
	snap := benchFleet(targets, hosts, false)
	cfg := DefaultConfig()
	e, err := New(cfg, t0, snap)
	if err != nil {
		b.Fatal(err)
	}
	now := t0.Add(cfg.RecoveryGrace)
	// 600 MiB per host: room for 6,000 of the 10,000 targets at full size.
	for i := range hosts {
		e.Step(now, hostStatus("h"+strconv.Itoa(i), 600))
	}
	e.Step(now, &Tick{})
	var running []*task
	confirm := func() *HeartbeatReceived {
		for _, k := range e.tasks {
			if !k.confirmed {
				return &HeartbeatReceived{Heartbeat: &schemas.Heartbeat{V: 1, TaskID: k.id, Epoch: k.epoch, PID: 1,
					Host: k.host.name, Target: k.t.name, Type: k.typ, Seq: 1}}
			}
		}
		return nil
	}
	// Fill the fleet.
	for len(e.tasks) < 6000 {
		hb := confirm()
		if hb == nil {
			b.Fatal("setup: nothing pending")
		}
		e.Step(now, hb)
	}
	for _, k := range e.tasks {
		if k.confirmed {
			running = append(running, k)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		// Free one task, so that its RAM and its target come back.
		k := running[0]
		running = running[1:]
		e.Step(now, &TaskEventReceived{Event: &schemas.TaskEvent{V: 1, TaskID: k.id, Epoch: k.epoch, PID: 1, Host: k.host.name,
			Target: k.t.name, Type: k.typ, Kind: schemas.EventDone}})
		hb := confirm()
		pending := e.byID[hb.Heartbeat.TaskID]
		b.StartTimer()
		out := e.Step(now, hb)
		b.StopTimer()
		running = append(running, pending)
		if len(out) != 3 || out[2].Kind != CmdLaunch {
			b.Fatalf("no launch decided: %d commands", len(out))
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(e.pending.len()), "pending")
}

// BenchmarkLaunchDecisionNothingFits measures the worst decision: the best
// pending targets fit nowhere, MaxSkips of them are passed over, and nothing
// launches (10,000 targets, 1,000 hosts).
func BenchmarkLaunchDecisionNothingFits(b *testing.B) {
	const targets, hosts = 10000, 1000
	snap := benchFleet(targets, hosts, false)
	cfg := DefaultConfig()
	e, err := New(cfg, t0, snap)
	if err != nil {
		b.Fatal(err)
	}
	now := t0.Add(cfg.RecoveryGrace)
	for i := range hosts {
		e.Step(now, hostStatus("h"+strconv.Itoa(i), 19)) // below every minimum (20)
	}
	e.Step(now, &Tick{})
	if len(e.tasks) != 0 {
		b.Fatal("something fit")
	}
	b.ReportAllocs()
	for b.Loop() {
		e.schedule(now)
	}
}

func BenchmarkRebuild100k(b *testing.B) {
	snap := benchFleet(100000, 1000, true)
	b.ReportAllocs()
	for b.Loop() {
		e, err := New(DefaultConfig(), t0, snap)
		if err != nil || len(e.tasks) != 100000 {
			b.Fatal(err)
		}
	}
}

func BenchmarkTick(b *testing.B) {
	for _, n := range []int{10000, 100000} {
		b.Run(strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			snap := benchFleet(n, 1000, true)
			e, err := New(DefaultConfig(), t0, snap)
			if err != nil {
				b.Fatal(err)
			}
			now := t0.Add(time.Second)
			confirmAll(b, e, snap, now, 1000, 1<<20)
			ev := &Tick{}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				if out := e.Step(now.Add(time.Duration(i)), ev); len(out) != 0 {
					b.Fatalf("tick produced %d commands", len(out))
				}
			}
		})
	}
}
