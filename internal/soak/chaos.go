package soak

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/taskselector/taskselector/worker"
)

// chaosExec is the outermost executor of a soak worker: the agent calls it,
// it calls the auditor's wrapper, which calls the sim executor. It lets the
// fault loop crash a task mid-phase (with or without a failed event), make
// a running task hang (alive, listed by ps, but silent), and make a launch
// silent (its reply late, no first heartbeat). It reports every process
// start to onStart, for the recovery figures, saying whether it was made
// silent.
//
// It hands the agent its own task values and translates the inner
// executor's exit hooks to them, so that the agent recognises the task that
// ended whatever the inner wrappers pass on.
type chaosExec struct {
	host    string
	inner   worker.Executor
	onStart func(host, target, taskID string, at time.Time, silent bool)
	// silentLaunch, when it returns true for a launch's target, makes the
	// launch silent; delay is then slept first (inside Start, as a hung
	// launch would), so that its reply comes after the selector's reply
	// timeout.
	silentLaunch func(target string) (delay time.Duration, ok bool)

	mu     sync.Mutex
	tasks  map[string]*chaosTask // running, by task id
	closed bool
}

func newChaosExec(host string, inner worker.Executor, onStart func(host, target, taskID string, at time.Time, silent bool),
	silentLaunch func(target string) (time.Duration, bool)) *chaosExec {
	return &chaosExec{host: host, inner: inner, onStart: onStart, silentLaunch: silentLaunch, tasks: make(map[string]*chaosTask)}
}

// chaosTask is a task as the agent sees it.
type chaosTask struct {
	x       *chaosExec
	spec    worker.LaunchSpec
	started time.Time
	inner   worker.Task
	hooks   worker.Hooks
	ended   atomic.Bool // set once, by whichever end comes first
	silent  atomic.Bool
}

// Check implements worker.Executor.
func (x *chaosExec) Check(spec *worker.LaunchSpec) error { return x.inner.Check(spec) }

// UsedMiB implements worker.Executor.
func (x *chaosExec) UsedMiB() int64 { return x.inner.UsedMiB() }

// Start implements worker.Executor.
func (x *chaosExec) Start(spec *worker.LaunchSpec, hooks worker.Hooks) (worker.Task, error) {
	silent := false
	if x.silentLaunch != nil {
		var delay time.Duration
		if delay, silent = x.silentLaunch(spec.Target); silent && delay > 0 {
			time.Sleep(delay)
		}
	}
	t := &chaosTask{x: x, spec: *spec, hooks: hooks}
	t.silent.Store(silent)
	inner, err := x.inner.Start(spec, worker.Hooks{Exited: func(_ worker.Task, ex worker.Exit) {
		// Exited is never called while Start runs, so t.inner is set.
		if t.end() && hooks.Exited != nil {
			hooks.Exited(t, ex)
		}
	}})
	if err != nil {
		return nil, err
	}
	t.inner = inner
	t.started = time.Now()
	x.mu.Lock()
	if !x.closed {
		x.tasks[spec.TaskID] = t
	}
	x.mu.Unlock()
	if x.onStart != nil {
		x.onStart(x.host, spec.Target, spec.TaskID, t.started, silent)
	}
	return t, nil
}

// Close implements worker.Executor: the host's processes die with it.
func (x *chaosExec) Close() error {
	x.mu.Lock()
	x.closed = true
	for _, t := range x.tasks {
		t.ended.Store(true)
	}
	clear(x.tasks)
	x.mu.Unlock()
	return x.inner.Close()
}

// running lists the host's running tasks, oldest first.
func (x *chaosExec) running() []*chaosTask {
	x.mu.Lock()
	out := make([]*chaosTask, 0, len(x.tasks))
	for _, t := range x.tasks {
		out = append(out, t)
	}
	x.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].started.Equal(out[j].started) {
			return out[i].started.Before(out[j].started)
		}
		return out[i].spec.TaskID < out[j].spec.TaskID
	})
	return out
}

// end marks t ended and forgets it; it reports whether this call did.
func (t *chaosTask) end() bool {
	if !t.ended.CompareAndSwap(false, true) {
		return false
	}
	t.x.mu.Lock()
	if t.x.tasks[t.spec.TaskID] == t {
		delete(t.x.tasks, t.spec.TaskID)
	}
	t.x.mu.Unlock()
	return true
}

// PID implements worker.Task.
func (t *chaosTask) PID() int64 { return t.inner.PID() }

// Sample implements worker.Task.
func (t *chaosTask) Sample() worker.Sample {
	s := t.inner.Sample()
	if t.silent.Load() {
		s.Silent = true
	}
	return s
}

// Kill implements worker.Task.
func (t *chaosTask) Kill() error {
	if !t.end() {
		return worker.ErrGone
	}
	return t.inner.Kill()
}

// crash ends the process as if it died: its RAM is freed and the agent is
// told through the exit hook, with a failed event when ex says so (Kind
// empty: it vanishes without a word). It reports whether the task was still
// running.
func (t *chaosTask) crash(ex worker.Exit) bool {
	if !t.end() {
		return false
	}
	_ = t.inner.Kill() // the auditor records the end here
	if t.hooks.Exited != nil {
		t.hooks.Exited(t, ex)
	}
	return true
}

// hang makes the process silent for good: it stays alive, holds its RAM and
// is listed by ps, but sends no heartbeats until it is killed.
func (t *chaosTask) hang() { t.silent.Store(true) }
