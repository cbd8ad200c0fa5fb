package integration

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// Helpers of the edge fault tests (edge_*_test.go).

// edgeManualWorker runs a worker agent for host whose sim executor has no
// ticker: its tasks make progress only when the test calls edgeAdvance. The agent
// itself heartbeats and reports as usual.
func (e *env) edgeManualWorker(host string, ramMiB int64, faults worker.Faults) *workerProc {
	e.t.Helper()
	log := testLog()
	nc := e.connect("worker-" + host)
	sim, err := worker.NewSim(worker.SimConfig{Host: host, RAMMiB: ramMiB, Tick: -1, Faults: faults, Log: log})
	if err != nil {
		e.t.Fatalf("sim %s: %v", host, err)
	}
	agent, err := worker.New(nc, worker.Config{
		Host: host, RAMMiB: ramMiB, HeartbeatInterval: hbInterval, Executor: worker.SimExecutor,
		FlushTimeout: time.Second, PublishTimeout: 500 * time.Millisecond,
		RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
	}, sim, log)
	if err != nil {
		e.t.Fatalf("worker %s: %v", host, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &workerProc{host: host, agent: agent, sim: sim, nc: nc, cancel: cancel, done: make(chan error, 1)}
	go func() {
		defer sim.Close()
		p.done <- agent.Run(ctx)
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

// edgeAdvance moves a manual worker's tasks forward by game time d: the first
// call starts the helpers of tasks that have none yet, the second lets d
// pass for them.
func (p *workerProc) edgeAdvance(d time.Duration) {
	p.sim.Advance(time.Millisecond)
	p.sim.Advance(d)
}

// edgeTwoPhaseSpec is a declared target whose first phase ("sow") ends after
// firstS game seconds and whose second ("reap") repeats for good.
func edgeTwoPhaseSpec(firstS float64) schemas.TargetSpec {
	return schemas.TargetSpec{
		V: schemas.Version, Profile: schemas.ProfileDeclared,
		Phases: []schemas.Phase{
			{Type: "sow", WrapperMiB: 8, HelpersMinMiB: 16, HelpersFullMiB: 64, WorkS: firstS},
			{Type: "reap", WrapperMiB: 8, HelpersMinMiB: 16, HelpersFullMiB: 64, WorkS: 1e7, Repeat: true},
		},
	}
}

// edgeLaunchesByType counts the launch requests the spy saw per target and task
// type.
func (s *spy) edgeLaunchesByType() map[string]map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]map[string]int{}
	for _, r := range s.reqs {
		if r.launch == nil {
			continue
		}
		if out[r.launch.Target] == nil {
			out[r.launch.Target] = map[string]int{}
		}
		out[r.launch.Target][r.launch.Type]++
	}
	return out
}

// edgeKills returns every kill request the spy saw.
func (s *spy) edgeKills() []seenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []seenRequest
	for _, r := range s.reqs {
		if r.kill != nil {
			out = append(out, r)
		}
	}
	return out
}

// edgeGate blocks callers of wait while it is closed. The zero value is open.
type edgeGate struct {
	mu sync.Mutex
	ch chan struct{} // non-nil while closed
}

// close makes wait block.
func (g *edgeGate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch == nil {
		g.ch = make(chan struct{})
	}
}

// open releases every waiter.
func (g *edgeGate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch != nil {
		close(g.ch)
		g.ch = nil
	}
}

// wait returns once the gate is open, or ctx's error.
func (g *edgeGate) wait(ctx context.Context) error {
	g.mu.Lock()
	ch := g.ch
	g.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// edgeBlockingWrites returns store faults whose writes wait while g is closed
// (and fail once the selector stops).
func edgeBlockingWrites(g *edgeGate) *bus.ServiceFaults {
	return &bus.ServiceFaults{BeforeWrite: func(ctx context.Context, _ string) error { return g.wait(ctx) }}
}

// edgeGoroutineWatch samples runtime.NumGoroutine until stopped and keeps the
// maximum.
type edgeGoroutineWatch struct {
	maxSeen atomic.Int64
	stop    chan struct{}
	done    chan struct{}
}

// edgeWatchGoroutines starts sampling; it stops at the end of the test at
// the latest.
func edgeWatchGoroutines(t testing.TB) *edgeGoroutineWatch {
	w := &edgeGoroutineWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			if n := int64(runtime.NumGoroutine()); n > w.maxSeen.Load() {
				w.maxSeen.Store(n)
			}
			select {
			case <-w.stop:
				return
			case <-tk.C:
			}
		}
	}()
	t.Cleanup(w.finish)
	return w
}

// finish stops sampling; it is idempotent. maxSeen holds the maximum.
func (w *edgeGoroutineWatch) finish() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// edgeSilentHost subscribes, on the test's connection, to the requests of kinds
// ("launch", "kill", "ps") for host and never answers them, so that each
// one times out. It counts what it received.
func (e *env) edgeSilentHost(host string, kinds ...string) *atomic.Int64 {
	e.t.Helper()
	var n atomic.Int64
	for _, kind := range kinds {
		var subject string
		switch kind {
		case "launch":
			subject = e.subj.Launch(host)
		case "kill":
			subject = e.subj.Kill(host)
		case "ps":
			subject = e.subj.Ps(host)
		default:
			e.t.Fatalf("edgeSilentHost: unknown kind %q", kind)
		}
		sub, err := e.nc.Subscribe(subject, func(*nats.Msg) { n.Add(1) })
		if err != nil {
			e.t.Fatalf("subscribe %s: %v", subject, err)
		}
		e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := e.nc.Flush(); err != nil {
		e.t.Fatalf("flush: %v", err)
	}
	return &n
}

// edgeWaitActiveInPhase waits until every target is active in phase and
// returns the last status.
func (e *env) edgeWaitActiveInPhase(timeout time.Duration, targets []string, phase string) schemas.SelectorStatus {
	e.t.Helper()
	return e.waitStatus(timeout, func(st *schemas.SelectorStatus) (bool, string) {
		for _, name := range targets {
			ts, ok := targetLine(st, name)
			if !ok || ts.State != selector.StateActive || ts.Phase != phase {
				return false, fmt.Sprintf("%s: want active in %s: %s", name, phase, describe(st))
			}
		}
		return true, ""
	})
}

// edgeTargetNames returns prefix1 ... prefixN.
func edgeTargetNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i+1)
	}
	return out
}

// edgeIsFence reports whether a kill's reason marks a fence: a kill of a
// task that is not its target's.
func edgeIsFence(reason string) bool { return strings.HasPrefix(reason, "fenced") }
