package selector

import (
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

func failReason(r string) string {
	switch r {
	case schemas.ReasonHelpersUnavailable, schemas.ReasonExited, schemas.ReasonKilled, schemas.ReasonCrashed, schemas.ReasonFenced,
		schemas.ReasonOOM:
		return r
	}
	return FailOther
}

// ramPressure reports whether a task that failed for reason r failed for
// lack of RAM: it could not get its helpers, or its memory limit stopped it.
// Either raises the global backoff.
func ramPressure(r string) bool {
	return r == schemas.ReasonHelpersUnavailable || r == schemas.ReasonOOM
}

func (e *Engine) taskEvent(now time.Time, ev *schemas.TaskEvent) {
	e.counters.Events++
	t := e.targets[ev.Target]
	if t != nil && ev.Epoch <= t.closedEpoch && ev.Kind == schemas.EventDone && e.lateDone(now, t, ev) {
		return
	}
	if t == nil || ev.Epoch <= t.closedEpoch {
		e.counters.DuplicateEvents++
		return
	}
	k := t.task
	if k == nil || k.id != ev.TaskID || k.epoch != ev.Epoch {
		if k == nil && ev.Epoch > t.epoch {
			// A task no record names ended: close its epoch and learn
			// from it, so that a replay of it changes nothing.
			t.epoch = ev.Epoch
			t.closedEpoch = ev.Epoch
			if ev.Kind == schemas.EventDone && ev.Type == t.phase && t.blocked == "" && !t.complete {
				e.advance(t, ev)
			}
			if t.phase == "" {
				t.phase = ev.Type // as attach does: a state names a phase
			}
			e.persist(now, t)
			e.pending.remove(t)
			e.delayed.remove(t)
			e.requeue(now, t)
		}
		return
	}
	if ev.Kind == schemas.EventDone {
		if k.why != suspectSuperseded && k.typ == t.phase {
			e.advance(t, ev)
		}
		// Otherwise the phase it ran was completed already (see
		// lateDone), or the target has left it: the target is where it
		// should be.
		e.close(now, k, closeDone, "")
		return
	}
	reason := failReason(ev.Reason)
	switch {
	case k.why == suspectSuperseded && !ramPressure(reason):
		// Stopped, or ended, after its phase was done: nothing to
		// penalize.
		e.close(now, k, closeRequeue, reason)
	case ramPressure(reason):
		e.close(now, k, closeRAM, reason)
	case k.state == taskKilling:
		// The engine's own kill: count it as the kill reply would, so
		// that the cause does not depend on which message comes first.
		cause, fail := killedCause(k)
		e.close(now, k, cause, fail)
	case reason == schemas.ReasonKilled:
		cause, _ := killedCause(k)
		e.close(now, k, cause, reason)
	case reason == schemas.ReasonFenced:
		// Its worker lost the bus and stopped it: not the task's fault.
		e.close(now, k, closeRequeue, reason)
	default:
		// A crash, whether or not the task had heartbeated: the target
		// alone waits before its next launch.
		e.close(now, k, closeCrash, reason)
	}
}

// lateDone applies the done event ev of an epoch of t that is closed
// already, and reports whether it did. A task closed without its done event
// (its host was lost, it was killed or found gone, the done event was
// awaited too long) may have finished its phase all the same, its event
// held up in its worker's outbox: dropping the event would run the phase
// again. So a done event of a closed epoch completes t's phase if t has
// neither completed a phase nor changed phase since that epoch was issued
// (the epoch is above t.doneFloor), and it names t's phase.
//
// If t has no task, it moves on to its next phase. If t runs a later epoch
// of the same phase, that task is superseded: it is stopped (at once, or as
// soon as its launch is answered or times out) and t's next phase is
// launched only once it is closed, so that t never has two live tasks. A
// repeating phase whose next run is the one the live task already runs
// keeps that task.
func (e *Engine) lateDone(now time.Time, t *target, ev *schemas.TaskEvent) bool {
	if ev.Epoch <= t.doneFloor || ev.Type != t.phase || !t.hasSpec || t.blocked != "" || t.complete || t.deleted {
		return false
	}
	k := t.task
	if k != nil && (k.epoch <= ev.Epoch || k.typ != t.phase || k.why == suspectDeleted || k.why == suspectSuperseded) {
		return false
	}
	e.advance(t, ev)
	e.persist(now, t)
	if k == nil {
		// Its priority, readiness or completion changed: back in line.
		e.pending.remove(t)
		e.delayed.remove(t)
		e.requeue(now, t)
		return true
	}
	if !t.complete && t.blocked == "" && k.typ == t.phase {
		return true // the live task runs the next repetition
	}
	k.why = suspectSuperseded
	switch k.state {
	case taskLaunching:
		// No PID yet: its reply, heartbeat or launch timeout brings one.
	case taskKilling:
	default:
		e.kill(now, k, silentReason(k.why))
	}
	return true
}

// advance moves t to the phase after the one its task finished.
func (e *Engine) advance(t *target, ev *schemas.TaskEvent) {
	e.counters.PhasesCompleted++
	t.doneFloor = t.epoch // no earlier epoch's done completes what comes next
	next, complete, updated, err := workload.AfterDone(&t.spec, t.phase, ev.Metrics)
	if err != nil {
		t.blocked = "lifecycle: " + err.Error()
		return
	}
	if updated != nil {
		t.spec = *updated
	}
	t.restartDelay = 0
	t.readyAt = time.Time{}
	if complete {
		t.complete = true
		return
	}
	t.phase = next
	e.estimate(t)
}
