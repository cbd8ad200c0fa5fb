package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// Self-fencing over a real connection cut: worker A reaches the server
// through a proxy that the test stalls, worker B directly; the real selector
// service runs on the engine timers of engineConfig (HostStale 3s).

const fenceTestFenceAfter = time.Second

// startFenceWorker runs a worker agent with the sim executor that connects
// to url (the server, or a proxy in front of it) and fences itself after
// fenceAfter (0: never).
func (e *env) startFenceWorker(host string, ramMiB int64, url string, fenceAfter time.Duration) *workerProc {
	e.t.Helper()
	log := testLog()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	nc, err := natsconn.Connect(ctx, url, "worker-"+host, log, nil, nil)
	cancel()
	if err != nil {
		e.t.Fatalf("connect %s: %v", host, err)
	}
	e.t.Cleanup(nc.Close)
	sim, err := worker.NewSim(worker.SimConfig{Host: host, RAMMiB: ramMiB, Speed: 1, Tick: 20 * time.Millisecond, Log: log})
	if err != nil {
		e.t.Fatalf("sim %s: %v", host, err)
	}
	agent, err := worker.New(nc, worker.Config{
		Host: host, RAMMiB: ramMiB, HeartbeatInterval: hbInterval, Executor: worker.SimExecutor,
		FlushTimeout: time.Second, PublishTimeout: 500 * time.Millisecond,
		RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		FenceAfter: fenceAfter,
	}, sim, log)
	if err != nil {
		e.t.Fatalf("worker %s: %v", host, err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	p := &workerProc{host: host, agent: agent, sim: sim, nc: nc, cancel: stop, done: make(chan error, 1)}
	go func() {
		defer sim.Close()
		p.done <- agent.Run(runCtx)
	}()
	e.t.Cleanup(func() { p.stop(e.t) })
	select {
	case <-agent.Ready():
	case err := <-p.done:
		e.t.Fatalf("worker %s stopped before it was ready: %v", host, err)
	case <-time.After(20 * time.Second):
		e.t.Fatalf("worker %s not ready within 20s", host)
	}
	return p
}

// spansOf returns a worker's task spans for target.
func spansOf(p *workerProc, target string) []worker.TaskSpan {
	var out []worker.TaskSpan
	for _, sp := range p.agent.Spans() {
		if sp.Target == target {
			out = append(out, sp)
		}
	}
	return out
}

// partition is the state of a fence test once the selector has relaunched
// A's target on B.
type partition struct {
	e       *env
	proxy   *natstest.Proxy
	a, b    *workerProc
	target  string
	oldTask schemas.TargetStatus // the target's task on A, before the stall
	newTask schemas.TargetStatus // its relaunch on B
	aSpans  []worker.TaskSpan    // A's record of the target's tasks, at the relaunch
	bSpans  []worker.TaskSpan    // B's
	stallAt time.Time
}

// partitionA runs a target on A, stalls A's connection for good and waits
// until the selector has declared A lost and the target runs on B. A and B
// fence after fenceAfter.
func partitionA(t *testing.T, fenceAfter time.Duration) *partition {
	eng := engineConfig()
	if fenceAfter > 0 {
		if err := worker.CheckFenceMargin(eng.HostStale, fenceAfter, hbInterval); err != nil {
			t.Fatalf("test timers: %v", err)
		}
	}
	e := newEnv(t, false)
	e.startSelector(serviceConfig(eng))
	p := &partition{e: e, proxy: natstest.NewProxy(t, e.url), target: "fenced"}

	// A alone first, so that the target runs there; it holds one task only.
	p.a = e.startFenceWorker("host-a", 100, p.proxy.URL(), fenceAfter)
	e.putTarget(p.target, longSpec())
	p.oldTask = e.waitActive(20*time.Second, p.target)
	if p.oldTask.Host != "host-a" {
		t.Fatalf("target on %q, want host-a", p.oldTask.Host)
	}
	// B, with a task of its own: the stall then leaves one stale task of
	// two, one silent host of two.
	p.b = e.startFenceWorker("host-b", 1024, e.url, fenceAfter)
	// Declare steady only once the selector knows B's RAM: before that it
	// would go to A, scaled down to what is left there.
	e.waitStatus(10*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		for _, h := range st.Hosts {
			if h.Host == "host-b" && h.TotalMiB > 0 {
				return true, ""
			}
		}
		return false, describe(st)
	})
	e.putTarget("steady", longSpec())
	if ts := e.waitActive(20*time.Second, "steady"); ts.Host != "host-b" {
		t.Fatalf("steady on %q, want host-b", ts.Host)
	}

	p.stallAt = time.Now()
	p.proxy.Stall()
	p.newTask = e.waitTarget(30*time.Second, p.target, func(ts schemas.TargetStatus) bool {
		return ts.State == selector.StateActive && ts.Host == "host-b"
	})
	if p.newTask.Epoch <= p.oldTask.Epoch || p.newTask.TaskID == p.oldTask.TaskID {
		t.Fatalf("relaunch %s, old task %s", describeLine(p.newTask), describeLine(p.oldTask))
	}
	p.aSpans, p.bSpans = spansOf(p.a, p.target), spansOf(p.b, p.target)
	return p
}

// overlap reports, from the workers' own records, whether A's task of the
// target still ran when B's started.
func (p *partition) overlap(t *testing.T) (bool, string) {
	t.Helper()
	var old, relaunched *worker.TaskSpan
	for i := range p.aSpans {
		if p.aSpans[i].TaskID == p.oldTask.TaskID {
			old = &p.aSpans[i]
		}
	}
	for i := range p.bSpans {
		if p.bSpans[i].TaskID == p.newTask.TaskID {
			relaunched = &p.bSpans[i]
		}
	}
	if old == nil || relaunched == nil {
		t.Fatalf("spans missing: A %+v, B %+v", p.aSpans, p.bSpans)
	}
	desc := fmt.Sprintf("A's task %s ran %v..%v (%s/%s); B's task %s started %v (stall at %v)",
		old.TaskID, old.Start.Format(time.StampMicro), old.End.Format(time.StampMicro), old.Kind, old.Reason,
		relaunched.TaskID, relaunched.Start.Format(time.StampMicro), p.stallAt.Format(time.StampMicro))
	return old.End.IsZero() || !old.End.Before(relaunched.Start), desc
}

// TestFenceStopsPartitionedWorkerBeforeRelaunch: a worker whose connection
// stalls stops its task itself, before the selector declares it lost and
// relaunches the target elsewhere, so that the two tasks never overlap as the
// workers see them. Once the connection flows again, the worker delivers its
// fenced event (a duplicate of a closed epoch for the selector) and accepts
// launches again.
func TestFenceStopsPartitionedWorkerBeforeRelaunch(t *testing.T) {
	p := partitionA(t, fenceTestFenceAfter)
	e := p.e
	if dup, desc := p.overlap(t); dup {
		t.Fatalf("two tasks of one target overlapped: %s", desc)
	}
	// A stopped it itself (it could not hear a kill), about FenceAfter after
	// the stall.
	st := p.a.agent.Stats()
	if st.FencedTasks != 1 || st.Fences != 1 || st.Kills != 0 || !st.Fenced || st.Running != 0 {
		t.Errorf("A's stats: %+v", st)
	}
	for _, sp := range p.aSpans {
		if sp.Reason != schemas.ReasonFenced {
			t.Errorf("A's span %+v: not ended by the fence", sp)
		}
		if d := sp.End.Sub(p.stallAt); d > fenceTestFenceAfter+2*time.Second {
			t.Errorf("A stopped its task %v after the stall, fence time %v", d, fenceTestFenceAfter)
		}
	}
	status := e.mustStatus()
	if status.Counters.HostsLost < 1 {
		t.Errorf("A was not declared lost: %s", describe(&status))
	}
	dupsBefore := status.Counters.DuplicateEvents

	// The connection flows again: A lifts its fence, its fenced event
	// reaches the selector, which knows the epoch is closed.
	p.proxy.Resume()
	waitFor(t, 15*time.Second, func() (bool, string) {
		st := p.a.agent.Stats()
		return !st.Fenced && st.OutboxLen == 0 && st.EventsPublished >= 1, fmt.Sprintf("A's stats %+v", st)
	})
	e.waitStatus(15*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		return st.Counters.DuplicateEvents > dupsBefore, fmt.Sprintf("duplicate events %d (before %d)", st.Counters.DuplicateEvents, dupsBefore)
	})
	// The relaunch on B is untouched.
	if ts := e.waitActive(5*time.Second, p.target); ts.TaskID != p.newTask.TaskID || ts.Host != "host-b" {
		t.Errorf("after A came back: %s, want %s", describeLine(ts), describeLine(p.newTask))
	}
	// A reports again, not draining, and takes launches.
	e.waitStatus(15*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		for _, h := range st.Hosts {
			if h.Host == "host-a" {
				return !h.Lost && !h.Stale && !h.Draining, fmt.Sprintf("host-a: %+v", h)
			}
		}
		return false, "host-a not in status"
	})
	req := schemas.LaunchRequest{V: schemas.Version, TaskID: "after-fence-1", Epoch: 1, Target: "not-declared", Type: "work",
		RAM: schemas.TaskRAM{WrapperMiB: 1, HelpersMiB: 1}, Args: map[string]any{worker.ArgWorkS: 1e6}}
	b, err := schemas.Marshal(&req)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := e.nc.Request(e.subj.Launch("host-a"), b, 5*time.Second)
	if err != nil {
		t.Fatalf("launch on A after the fence: %v", err)
	}
	if rep, err := schemas.DecodeLaunchReply(msg.Data); err != nil || rep.Error != nil || rep.PID <= 0 {
		t.Fatalf("launch on A after the fence: %s (%v)", msg.Data, err)
	}
}

// TestFenceOffPartitionRunsTargetTwice is the control of the test above:
// with fencing off, the same partition leaves A's task running while the
// selector relaunches the target on B. It shows that the test above fails
// without the fence.
func TestFenceOffPartitionRunsTargetTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("control experiment; -short")
	}
	p := partitionA(t, 0)
	dup, desc := p.overlap(t)
	if !dup {
		t.Fatalf("without fencing the tasks did not overlap: %s", desc)
	}
	if st := p.a.agent.Stats(); st.Fences != 0 || st.Running != 1 {
		t.Errorf("A's stats: %+v", st)
	}
	p.proxy.Resume() // let A shut down cleanly
}
