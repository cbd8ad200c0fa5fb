package worker

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// entry is one running task.
type entry struct {
	spec      LaunchSpec
	task      Task
	pid       int64
	seq       uint64
	startedAt time.Time // taken before the executor started it
	hbSubject string
	fleet     *fleetState // fleet helper RAM (fleet.go); nil when the task asks for none
}

// TaskSpan is one task's life on an agent, as the agent saw it: Start is
// taken before the executor starts the task and End once it is gone, so
// that the task ran within [Start, End]. Spans judge, from the workers'
// side, whether two tasks ever overlapped in time.
type TaskSpan struct {
	TaskID string
	Target string
	Epoch  uint64
	PID    int64
	Start  time.Time
	End    time.Time // zero while the task runs
	Kind   string    // how it ended: done or failed; "" while it runs or when it vanished
	Reason string    // the reason of a failed end, such as killed or fenced
}

// Spans lists the running tasks and the last Config.EndedMemory ended ones,
// ordered by start.
func (a *Agent) Spans() []TaskSpan {
	a.mu.Lock()
	out := make([]TaskSpan, 0, len(a.tasks)+len(a.ended.spans))
	for _, e := range a.tasks {
		out = append(out, e.span())
	}
	for _, sp := range a.ended.spans {
		out = append(out, sp)
	}
	a.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Start.Equal(out[j].Start) {
			return out[i].Start.Before(out[j].Start)
		}
		return out[i].TaskID < out[j].TaskID
	})
	return out
}

func (e *entry) span() TaskSpan {
	return TaskSpan{TaskID: e.spec.TaskID, Target: e.spec.Target, Epoch: e.spec.Epoch, PID: e.pid, Start: e.startedAt}
}

// starting is a launch whose executor Start is under way. Start runs
// without the agent's lock, so that a slow one (a process that takes long to
// exec, a memory group that takes long to make) holds up neither the
// heartbeats of the other tasks nor ps, kill or other launches. Its budget
// counts as committed meanwhile.
type starting struct {
	spec LaunchSpec
	done chan struct{} // closed once Start returned and the outcome is recorded
	// exit is the task's end when its Exited hook ran before Start's
	// outcome was recorded; the launch reports it then.
	exit *Exit
	// killed is set when a kill request came during the start: the task is
	// stopped as soon as it is recorded.
	killed bool
}

// waitStartLocked waits, without the lock (which the caller holds, and
// holds again on return), for the start of the task taskID if one is under
// way, and reports whether it waited.
func (a *Agent) waitStartLocked(taskID string) bool {
	s, ok := a.starts[taskID]
	if !ok {
		return false
	}
	a.mu.Unlock()
	<-s.done
	a.mu.Lock()
	return true
}

// waitStarts waits until every start under way when it is called has ended.
func (a *Agent) waitStarts() {
	a.mu.Lock()
	var done []chan struct{}
	for _, s := range a.starts {
		done = append(done, s.done)
	}
	a.mu.Unlock()
	for _, d := range done {
		<-d
	}
}

// exited is the executor's hook for a task that ended on its own.
func (a *Agent) exited(taskID string, t Task, ex Exit) {
	a.mu.Lock()
	e, ok := a.tasks[taskID]
	if !ok || e.task != t {
		if st, ok := a.starts[taskID]; ok && st.exit == nil {
			st.exit = &ex // its launch reports it
		}
		a.mu.Unlock()
		return
	}
	a.removeLocked(e, ex.Kind, ex.Reason)
	a.mu.Unlock()
	if ex.Kind == "" {
		a.log.Warn("task vanished", "task_id", taskID, "pid", e.pid, "target", e.spec.Target)
		return
	}
	a.log.Info("task ended", "task_id", taskID, "pid", e.pid, "target", e.spec.Target, "kind", ex.Kind, "reason", ex.Reason)
	a.emit(e, ex)
}

// removeLocked forgets e, which has ended (how: kind and reason), and
// remembers its span among the ended ones.
func (a *Agent) removeLocked(e *entry, kind, reason string) {
	delete(a.tasks, e.spec.TaskID)
	sp := e.span()
	sp.End, sp.Kind, sp.Reason = a.cfg.Now(), kind, reason
	a.ended.add(sp)
}

// emit queues e's task event for JetStream.
func (a *Agent) emit(e *entry, ex Exit) {
	ev := schemas.TaskEvent{
		V:        schemas.Version,
		TaskID:   e.spec.TaskID,
		Epoch:    e.spec.Epoch,
		PID:      e.pid,
		Host:     a.cfg.Host,
		Target:   e.spec.Target,
		Type:     e.spec.Type,
		Kind:     ex.Kind,
		Reason:   ex.Reason,
		ExitCode: ex.ExitCode,
		Metrics:  ex.Metrics,
		At:       a.cfg.Now().UTC(),
	}
	b, err := schemas.Marshal(&ev)
	if err != nil {
		a.log.Error("encoding task event; dropped", "task_id", ev.TaskID, "kind", ev.Kind, "err", err)
		return
	}
	it := outItem{subject: a.subj.TaskEvent(a.cfg.Host, e.spec.Target), msgID: ev.TaskID + ":" + ev.Kind, data: b}
	if !a.out.put(it) {
		a.log.Error("EVENT OUTBOX FULL: task event dropped; the selector will find the task by staleness",
			"task_id", ev.TaskID, "target", ev.Target, "kind", ev.Kind, "reason", ev.Reason, "outbox_size", a.cfg.OutboxSize)
		return
	}
	a.queued.Add(1)
}

// stop kills e's task; once it is gone, it forgets the task and queues its
// failed event with reason. stopped is false when the task had ended on its
// own already (its Exited hook reports it); err is set when the executor
// could not stop it, and the task is kept.
func (a *Agent) stop(e *entry, reason string) (stopped bool, err error) {
	switch err := e.task.Kill(); {
	case errors.Is(err, ErrGone):
		return false, nil
	case err != nil:
		a.log.Error("stopping task failed", "task_id", e.spec.TaskID, "pid", e.pid, "target", e.spec.Target, "reason", reason, "err", err)
		return false, fmt.Errorf("stop task %s (pid %d): %w", e.spec.TaskID, e.pid, err)
	}
	a.mu.Lock()
	if cur, ok := a.tasks[e.spec.TaskID]; ok && cur == e {
		a.removeLocked(e, schemas.EventFailed, reason)
	}
	a.mu.Unlock()
	a.emit(e, Exit{Kind: schemas.EventFailed, Reason: reason})
	return true, nil
}

// entries returns the running tasks, ordered by task_id.
func (a *Agent) entries() []*entry {
	a.mu.Lock()
	out := make([]*entry, 0, len(a.tasks))
	for _, e := range a.tasks {
		out = append(out, e)
	}
	a.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].spec.TaskID < out[j].spec.TaskID })
	return out
}

// killAll kills every task (shutdown with KillOnShutdown), those being
// started included.
func (a *Agent) killAll() {
	a.waitStarts()
	for _, e := range a.entries() {
		a.kill(&schemas.KillRequest{TaskID: e.spec.TaskID, PID: e.pid, Reason: "worker shutdown"})
	}
}

// killStarted stops e, whose kill came while it was being started.
func (a *Agent) killStarted(e *entry) {
	stopped, err := a.stop(e, schemas.ReasonKilled)
	if err != nil || !stopped {
		return // a retried kill tries again, or it ended on its own
	}
	a.kills.Add(1)
	a.log.Info("task killed as it started", "task_id", e.spec.TaskID, "pid", e.pid, "target", e.spec.Target)
}

// endedCache remembers the spans of the last n ended task_ids, oldest out
// first.
type endedCache struct {
	ring  []string
	next  int
	spans map[string]TaskSpan
}

func newEndedCache(n int) endedCache {
	return endedCache{ring: make([]string, n), spans: make(map[string]TaskSpan, n)}
}

func (c *endedCache) add(sp TaskSpan) {
	if _, ok := c.spans[sp.TaskID]; ok {
		return
	}
	if old := c.ring[c.next]; old != "" {
		delete(c.spans, old)
	}
	c.ring[c.next] = sp.TaskID
	c.next = (c.next + 1) % len(c.ring)
	c.spans[sp.TaskID] = sp
}

// recent calls f with the ended spans, the most recent first, until f
// returns false.
func (c *endedCache) recent(f func(TaskSpan) bool) {
	for i := range len(c.ring) {
		id := c.ring[(c.next-1-i+2*len(c.ring))%len(c.ring)]
		if id == "" {
			return
		}
		if !f(c.spans[id]) {
			return
		}
	}
}

// get returns the PID of an ended task_id.
func (c *endedCache) get(id string) (int64, bool) {
	sp, ok := c.spans[id]
	return sp.PID, ok
}
