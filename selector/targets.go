package selector

import (
	"encoding/json"
	"hash/fnv"
	"reflect"
	"strconv"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

func (e *Engine) newTarget(name string) *target {
	t := &target{name: name, qidx: -1, didx: -1}
	if tb, ok := e.tombs[name]; ok {
		// Declared again after a deletion: its epochs continue, so that a
		// late message from a task of its earlier life is still fenced.
		t.epoch, t.closedEpoch, t.doneFloor = tb.epoch, tb.epoch, tb.epoch
		delete(e.tombs, name)
	}
	e.targets[name] = t
	return t
}

// forget removes a deleted target whose task is gone and deletes its state.
func (e *Engine) forget(t *target) {
	e.pending.remove(t)
	e.delayed.remove(t)
	delete(e.targets, t.name)
	e.tombs[t.name] = tomb{epoch: max(t.epoch, t.closedEpoch), at: e.lastNow}
	e.emit(Command{Kind: CmdDelete, Target: t.name})
}

// setPhase moves t to phase if its spec has an estimate for it, and reports
// whether it did.
func (e *Engine) setPhase(t *target, phase string) bool {
	est, err := e.cfg.Workload.Estimate(&t.spec, phase)
	if err != nil {
		return false
	}
	if phase != t.phase {
		t.doneFloor = t.epoch
	}
	t.phase = phase
	t.est = est
	t.priority = priorityOf(est)
	return true
}

// setSpec records a target's spec, its phase and its estimate. A spec equal
// to the one declared before changes nothing (the targets bucket may replay
// it), so a hacking target keeps the metrics its done events taught it.
func (e *Engine) setSpec(t *target, spec schemas.TargetSpec) {
	if t.hasSpec && specEqual(t.declared, spec) {
		return
	}
	wasComplete := t.complete
	t.declared = spec
	t.spec = spec // shared: the engine changes neither in place, it only replaces them
	t.hasSpec = true
	t.blocked = ""
	t.complete = false
	phase, err := workload.InitialPhase(&t.spec) // validates the spec too
	if err != nil {
		t.blocked = "invalid spec: " + err.Error()
		return
	}
	if t.spec.Profile == schemas.ProfileDeclared && !wasComplete && t.phase != "" && hasPhase(&t.spec, t.phase) {
		phase = t.phase // a declared target keeps its place in the lifecycle
	}
	if phase != t.phase {
		t.doneFloor = t.epoch
	}
	t.phase = phase
	e.estimate(t)
}

// specHash is a short digest of a declared spec, persisted with a target's
// blocked reason so that a restart can tell whether the spec it finds is the
// one that was refused.
func specHash(spec *schemas.TargetSpec) string {
	b, err := json.Marshal(spec)
	if err != nil {
		return ""
	}
	h := fnv.New64a()
	h.Write(b)
	return strconv.FormatUint(h.Sum64(), 36)
}

// specEqual reports whether two specs declare the same thing.
func specEqual(a, b schemas.TargetSpec) bool { return reflect.DeepEqual(a, b) }

func hasPhase(spec *schemas.TargetSpec, typ string) bool {
	for _, p := range spec.Phases {
		if p.Type == typ {
			return true
		}
	}
	return false
}

const blockedNoEstimate = "no estimate: "

// estimate refreshes a target's estimate and priority for its phase.
func (e *Engine) estimate(t *target) {
	est, err := e.cfg.Workload.Estimate(&t.spec, t.phase)
	t.est = est
	if err != nil {
		t.blocked = blockedNoEstimate + err.Error()
		t.priority = 0
		return
	}
	t.priority = priorityOf(t.est)
}

// priorityOf is a target's value per MiB: the estimate's Priority (see
// workload.Estimate), or its value per MiB at full size when that is unset.
func priorityOf(est workload.Estimate) float64 {
	if est.Priority > 0 {
		return est.Priority
	}
	if full := est.FullMiB(); full > 0 {
		return est.Value / float64(full)
	}
	return est.Value
}

func (e *Engine) upsertTarget(now time.Time, ev *TargetUpserted) {
	t := e.targets[ev.Target]
	if t == nil {
		t = e.newTarget(ev.Target)
	}
	wasDeleted := t.deleted
	t.deleted = false
	e.setSpec(t, ev.Spec)
	if k := t.task; k != nil && wasDeleted && k.why == suspectDeleted && (k.state == taskLaunching || k.state == taskLaunched) {
		// Declared again before its kill was sent: keep the task.
		k.why = 0
	}
	// Take it out of line and put it back: its priority may have changed,
	// or it may now be blocked or complete.
	e.pending.remove(t)
	e.delayed.remove(t)
	e.requeue(now, t)
}

func (e *Engine) queued(t *target) bool { return e.pending.contains(t) || e.delayed.contains(t) }

func (e *Engine) deleteTarget(now time.Time, name string) {
	t := e.targets[name]
	if t == nil {
		return
	}
	e.pending.remove(t)
	e.delayed.remove(t)
	t.deleted = true
	k := t.task
	if k == nil {
		e.forget(t)
		return
	}
	switch k.state {
	case taskLaunching:
		// No PID yet: the reply, a heartbeat or the launch timeout brings it.
		k.why = suspectDeleted
	case taskKilling:
	default:
		k.why = suspectDeleted
		e.kill(now, k, "target deleted")
	}
}

// requeue puts a target without a task back in line, unless it waits for a
// spec change or has been deleted.
func (e *Engine) requeue(now time.Time, t *target) {
	if t.task != nil || !t.hasSpec || t.blocked != "" || t.complete || t.deleted || e.queued(t) {
		return
	}
	if t.readyAt.After(now) {
		e.delayed.push(t)
		return
	}
	e.pending.push(t)
}
