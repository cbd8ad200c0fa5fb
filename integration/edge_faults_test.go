package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// Faults at the edge between the engine and NATS (issue 7). Each test drives
// the real selector service with real worker agents on an embedded server.

// TestEdgePsReplyJudgesOnlyTheNamedPIDs (issue 7, defect 1): two tasks on one
// host hang at the same moment and go stale together, so the selector asks
// the host about each PID with its own ps. The worker answers each ps with
// that PID alone; a reply must not be taken to say that the other task is
// gone. Both tasks are killed before their targets are launched again.
func TestEdgePsReplyJudgesOnlyTheNamedPIDs(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	targets := []string{"pa", "pb"}
	w := e.edgeManualWorker("m1", 4096, worker.Faults{HangTargets: []string{"pa:1", "pb:1"}, HangAfter: time.Second})
	cfg := serviceConfig(engineConfig())
	// A slow tick: both tasks go stale within microseconds of each other,
	// so one tick finds both stale and both ps go out together.
	cfg.Tick = 200 * time.Millisecond
	e.startSelector(cfg)
	first := map[string]schemas.TargetStatus{}
	for _, name := range targets {
		e.putTarget(name, longSpec())
		first[name] = e.waitActive(15*time.Second, name)
	}
	// Both hang in the same step: their heartbeats stop together.
	w.edgeAdvance(2 * time.Second)

	// Each target is relaunched once its hung task is gone.
	waitFor(t, 30*time.Second, func() (bool, string) {
		for _, name := range targets {
			if n := len(sp.launches(name)); n < 2 {
				return false, fmt.Sprintf("%s launched %d times, want a relaunch", name, n)
			}
		}
		return true, ""
	})
	for _, name := range targets {
		relaunch := sp.launches(name)[1]
		kills := sp.kills(first[name].TaskID)
		if len(kills) == 0 || kills[0].at.After(relaunch.at) {
			t.Errorf("%s was relaunched (task %s) before its hung task %s was killed (kills: %d): two live tasks for one target",
				name, relaunch.launch.TaskID, first[name].TaskID, len(kills))
			continue
		}
		// Judged by its own ps reply: running but silent, so killed as
		// stale. A task judged gone by the other task's reply would be
		// closed as crashed, and killed only as an impostor afterwards.
		if r := kills[0].kill.Reason; edgeIsFence(r) {
			t.Errorf("%s's hung task %s was first killed as an impostor (%q): it had been judged gone while it ran",
				name, first[name].TaskID, r)
		}
		if len(sp.psOf("m1", first[name].PID)) == 0 {
			t.Errorf("no ps named the PID %d of %s's hung task", first[name].PID, name)
		}
	}
	c := e.mustStatus().Counters
	if c.Failures[selector.FailCrashed] != 0 || c.Failures[selector.FailStale] != uint64(len(targets)) {
		t.Errorf("failures %v: want %d %s (killed for silence) and no %s (judged gone while running)",
			c.Failures, len(targets), selector.FailStale, selector.FailCrashed)
	}
	if got := w.agent.Stats().Kills; got < uint64(len(targets)) {
		t.Errorf("worker killed %d tasks, want both hung ones", got)
	}
}

// TestEdgeDuplicateEventAckedOnlyAfterWrite (issue 7, defect 5): a task's done
// event is delivered while the store is stuck, so its write waits; JetStream
// redelivers the event after AckWait and the engine calls the redelivery a
// duplicate. Its ack must wait for the first delivery's write. The selector
// then stops with the write abandoned; the restarted one must still see the
// event: the phase counts once and is not run again.
func TestEdgeDuplicateEventAckedOnlyAfterWrite(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	w := e.edgeManualWorker("m1", 4096, worker.Faults{})
	var g edgeGate
	cfg := serviceConfig(engineConfig())
	cfg.Store.AckWait = 500 * time.Millisecond
	cfg.Faults = edgeBlockingWrites(&g)
	sel1 := e.startSelector(cfg)
	t.Cleanup(g.open)
	e.putTarget("d1", edgeTwoPhaseSpec(10))
	line := e.waitActive(15*time.Second, "d1")
	e.waitStoredTask(10*time.Second, "d1", line.TaskID, schemas.TaskActive)

	g.close()
	w.edgeAdvance(20 * time.Second) // the sow phase ends: a done event
	// Redelivered twice: the first redelivery (a duplicate) was not acked.
	e.waitStatus(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		return st.Counters.DuplicateEvents >= 2, fmt.Sprintf("events %d, duplicates %d; want a second redelivery "+
			"(none comes if the first duplicate was acked while the write waited)", st.Counters.Events, st.Counters.DuplicateEvents)
	})
	sel1.stop(t) // the stuck write is abandoned

	cfg2 := serviceConfig(engineConfig())
	cfg2.Store.AckWait = 500 * time.Millisecond
	sel2 := e.startSelector(cfg2)
	st := e.edgeWaitActiveInPhase(20*time.Second, []string{"d1"}, "reap")
	if st.Counters.PhasesCompleted != 1 {
		t.Errorf("restarted selector completed %d phases, want 1", st.Counters.PhasesCompleted)
	}
	if n := sp.edgeLaunchesByType()["d1"]; n["sow"] != 1 || n["reap"] != 1 {
		t.Errorf("launches of d1 by type %v, want sow 1 and reap 1", n)
	}
	if got := sel2.svc.BacklogEvents(); got != 1 {
		t.Errorf("restarted selector read %d backlog events, want 1", got)
	}
	// The durable consumer's redelivery is a duplicate, acked in the end.
	cons, err := e.js.Consumer(e.ctx(10*time.Second), protocol.EventStream, bus.SelectorConsumer)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	waitFor(t, 20*time.Second, func() (bool, string) {
		info, err := cons.Info(e.ctx(5 * time.Second))
		if err != nil {
			return false, err.Error()
		}
		return info.NumAckPending == 0 && info.NumPending == 0,
			fmt.Sprintf("ack pending %d, pending %d", info.NumAckPending, info.NumPending)
	})
}

// TestEdgeRestartStepsEventBacklogFirst (issue 7, defect 6): done events pile
// up while the selector is down: three were delivered to a selector whose
// store was stuck, so they were never acked (the server redelivers them only
// after AckWait, 30 s), and three were published while no selector ran. The
// restarted selector probes every recorded host with ps at once; the hosts
// report the finished tasks gone. Every done event must still count: each
// phase completes exactly once and no finished phase runs again.
func TestEdgeRestartStepsEventBacklogFirst(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	// Each host holds three tasks at their full size (72 MiB).
	w1 := e.edgeManualWorker("m1", 250, worker.Faults{})
	w2 := e.edgeManualWorker("m2", 250, worker.Faults{})
	var g edgeGate
	cfg := serviceConfig(engineConfig())
	cfg.Faults = edgeBlockingWrites(&g)
	sel1 := e.startSelector(cfg)
	t.Cleanup(g.open)
	targets := edgeTargetNames("b", 6)
	for _, name := range targets {
		e.putTarget(name, edgeTwoPhaseSpec(10))
	}
	st := e.edgeWaitActiveInPhase(30*time.Second, targets, "sow")
	for _, name := range targets {
		ts, _ := targetLine(&st, name)
		e.waitStoredTask(10*time.Second, name, ts.TaskID, schemas.TaskActive)
	}
	onHost := map[string]int{}
	for _, ts := range st.Targets {
		onHost[ts.Host]++
	}
	if onHost["m1"] != 3 || onHost["m2"] != 3 {
		t.Fatalf("tasks per host %v, want 3 on each", onHost)
	}

	// m1's tasks finish while the selector's store is stuck: their events
	// are delivered but never acked.
	g.close()
	w1.edgeAdvance(20 * time.Second)
	e.waitStatus(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		return st.Counters.Events >= 3, fmt.Sprintf("%d events handled, want 3", st.Counters.Events)
	})
	sel1.stop(t)
	// m2's tasks finish while no selector runs.
	w2.edgeAdvance(20 * time.Second)
	waitFor(t, 20*time.Second, func() (bool, string) {
		n := w2.agent.Stats().EventsPublished
		return n >= 3, fmt.Sprintf("m2 published %d events, want 3", n)
	})

	sel2 := e.startSelector(serviceConfig(engineConfig()))
	st = e.edgeWaitActiveInPhase(30*time.Second, targets, "reap")
	if got := st.Counters.PhasesCompleted; got != uint64(len(targets)) {
		t.Errorf("restarted selector completed %d phases, want %d (each exactly once)", got, len(targets))
	}
	if got := sel2.svc.BacklogEvents(); got != uint64(len(targets)) {
		t.Errorf("restarted selector read %d backlog events, want %d", got, len(targets))
	}
	byType := sp.edgeLaunchesByType()
	for _, name := range targets {
		if n := byType[name]; n["sow"] != 1 || n["reap"] != 1 {
			t.Errorf("launches of %s by type %v, want sow 1 and reap 1", name, n)
		}
	}
	var started uint64
	for _, w := range []*workerProc{w1, w2} {
		started += w.agent.Stats().Launches
	}
	if started != 2*uint64(len(targets)) {
		t.Errorf("workers started %d tasks, want %d", started, 2*len(targets))
	}
}

// TestEdgeDroppedInputIsNotSilence (issue 7, defect 7 and the host-status
// variant): the selector stops reading heartbeats and host statuses for
// longer than both stale thresholds (as a pause of its process would), and
// its subscriptions, with small pending limits, drop what comes meanwhile.
// The selector must not take the gap for silence: none of the 20 healthy
// tasks is killed or relaunched, and no host is declared lost.
func TestEdgeDroppedInputIsNotSilence(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	ws := []*workerProc{
		e.startWorker("h1", 4096, 0, worker.Faults{}),
		e.startWorker("h2", 4096, 0, worker.Faults{}),
	}
	var g edgeGate
	cfg := serviceConfig(engineConfig())
	cfg.HeartbeatPending = bus.PendingLimits{Msgs: 8}
	cfg.HostStatusPending = bus.PendingLimits{Msgs: 2}
	cfg.Faults = &bus.ServiceFaults{BeforeInput: func(string) { _ = g.wait(context.Background()) }}
	sel := e.startSelector(cfg)
	t.Cleanup(g.open)
	targets := edgeTargetNames("k", 20)
	for _, name := range targets {
		e.putTarget(name, longSpec())
	}
	st := e.edgeWaitActiveInPhase(60*time.Second, targets, "work")
	ids := map[string]string{}
	for _, name := range targets {
		ts, _ := targetLine(&st, name)
		ids[name] = ts.TaskID
	}

	g.close()
	waitFor(t, 10*time.Second, func() (bool, string) {
		n := sel.svc.Status().Counters.SlowConsumerDrops
		return n > 0, "no input dropped yet"
	})
	// Hold the pause past both stale thresholds (heartbeats 2 s, hosts
	// 3 s), with the input dropping all along.
	pause := time.NewTimer(4 * time.Second)
	<-pause.C
	g.open()
	waitMoreHeartbeats(t, sel, 3*uint64(len(targets)))
	// Long enough for any kill decided during the pause to be seen.
	waitMoreHeartbeats(t, sel, 3*uint64(len(targets)))

	st = e.edgeWaitActiveInPhase(15*time.Second, targets, "work")
	for _, name := range targets {
		if ts, _ := targetLine(&st, name); ts.TaskID != ids[name] {
			t.Errorf("%s runs task %s, want its first task %s", name, ts.TaskID, ids[name])
		}
		if k := sp.kills(ids[name]); len(k) > 0 {
			t.Errorf("healthy task %s of %s was killed (%d kill requests)", ids[name], name, len(k))
		}
	}
	for name, n := range sp.launchCounts() {
		if n != 1 {
			t.Errorf("%s launched %d times, want once", name, n)
		}
	}
	c := st.Counters
	if c.HostsLost != 0 || c.Kills != 0 {
		t.Errorf("counters hosts_lost=%d kills=%d, want 0 and 0", c.HostsLost, c.Kills)
	}
	if c.InputGaps == 0 {
		t.Errorf("the engine was never told of the dropped input (input_gaps 0; drops %d)", c.SlowConsumerDrops)
	}
	var started, killed uint64
	for _, w := range ws {
		s := w.agent.Stats()
		started += s.Launches
		killed += s.Kills
	}
	if started != uint64(len(targets)) || killed != 0 {
		t.Errorf("workers started %d tasks and killed %d; want %d and 0", started, killed, len(targets))
	}
}

// TestEdgeSlowStoreWriteDoesNotTimeOutUnsentLaunch (issue 7, defect 8): every
// store write takes 1.5 s, longer than the 1 s launch timeout. A launch waits
// for its state to be stored before it is sent; its timeout must count from
// the sending. Exactly one task is started per target and none is killed.
func TestEdgeSlowStoreWriteDoesNotTimeOutUnsentLaunch(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	w := e.startWorker("w1", 4096, 0, worker.Faults{})
	eng := engineConfig()
	eng.LaunchTimeout = time.Second
	cfg := serviceConfig(eng)
	cfg.WriteTimeout = 5 * time.Second
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Faults = &bus.ServiceFaults{BeforeWrite: func(ctx context.Context, _ string) error {
		t := time.NewTimer(1500 * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	e.startSelector(cfg)
	targets := edgeTargetNames("s", 3)
	for _, name := range targets {
		e.putTarget(name, longSpec())
	}
	st := e.edgeWaitActiveInPhase(60*time.Second, targets, "work")
	for _, name := range targets {
		ts, _ := targetLine(&st, name)
		e.waitStoredTask(30*time.Second, name, ts.TaskID, schemas.TaskActive)
	}
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for name, n := range sp.launchCounts() {
		if n != 1 {
			t.Errorf("%s: %d launch requests, want 1", name, n)
		}
	}
	if s := w.agent.Stats(); s.Launches != uint64(len(targets)) || s.Kills != 0 {
		t.Errorf("worker started %d tasks and killed %d; want %d and 0", s.Launches, s.Kills, len(targets))
	}
	if k := sp.edgeKills(); len(k) != 0 {
		t.Errorf("%d kill requests, want none (first: %+v)", len(k), *k[0].kill)
	}
	if c := e.mustStatus().Counters; c.Timeouts != 0 {
		t.Errorf("%d launch timeouts, want 0", c.Timeouts)
	}
}

// TestEdgeSilentHostDoesNotStarveRequests (issue 7, defect 9): 30,000
// heartbeats of tasks of undeclared targets arrive from a host that never
// answers a kill, so the selector wants to fence each of them. The work must
// stay bounded (goroutines well under 2,000) and a target declared meanwhile
// on a healthy host must be launched promptly.
func TestEdgeSilentHostDoesNotStarveRequests(t *testing.T) {
	e := newEnv(t, false)
	killsSeen := e.edgeSilentHost("silent", "kill")
	e.startWorker("good", 4096, 0, worker.Faults{})
	sel := e.startSelector(serviceConfig(engineConfig()))
	gw := edgeWatchGoroutines(t)

	const flood = 30000
	now := time.Now().UTC()
	for i := range flood {
		target := fmt.Sprintf("ghost-%d", i)
		hb := schemas.Heartbeat{V: schemas.Version, TaskID: target + "#1", Epoch: 1, PID: int64(1000 + i), Host: "silent",
			Target: target, Type: "work", Seq: 1, RAM: schemas.HeartbeatRAM{BudgetMiB: 10, UsedMiB: 5}, SentAt: now}
		if err := e.nc.Publish(e.subj.Heartbeat("silent", target), schemas.AppendHeartbeat(nil, &hb)); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() (bool, string) {
		n := sel.svc.HeartbeatsHandled()
		return n >= flood, fmt.Sprintf("%d of %d heartbeats handled", n, flood)
	})

	start := time.Now()
	e.putTarget("healthy", longSpec())
	line := e.waitActive(15*time.Second, "healthy")
	t.Logf("healthy target active on %s after %v; %d kills reached the silent host, %d requests dropped, %d merged",
		line.Host, time.Since(start).Round(time.Millisecond), killsSeen.Load(), sel.svc.RequestsDropped(), sel.svc.RequestsMerged())
	gw.finish()
	if n := gw.maxSeen.Load(); n >= 2000 {
		t.Errorf("up to %d goroutines, want well under 2000", n)
	}
	if sel.svc.RequestsDropped() == 0 {
		t.Errorf("no surplus fence kill was dropped")
	}
}
