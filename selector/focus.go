package selector

import (
	"math"
	"slices"
	"strings"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

// Focus: with a planning horizon (Config.Horizon), the fleet's RAM goes to
// one hacking target, the one that brings the most income by the horizon:
//
//	value_j = r_j · R · (H_left − prep_j(R))
//
// where r_j is its harvest income per MiB-second, R the RAM of the live
// hosts (less a wrapper), H_left the time left to the horizon, and
// prep_j(R) the time its till and sow take with R of helpers, worked out
// with the task model (workload.Run) from the metrics the engine knows. A
// harvest earns in proportion to its RAM however large, so one target can
// take the whole fleet; the others would only take RAM from it.
//
// Other hacking targets are fillers: they launch only while the focus
// target's task holds its full size (a till that needs less than the fleet),
// and they are preempted (killed, and requeued without penalty) as soon as
// the focus target lacks RAM: it waits to be placed, or its task holds less
// than its full size. The focus is chosen again every focusEvery; it
// changes only for a target worth a fifth more, and never away from a
// target whose harvest runs. Declared targets are not affected.

// focusEvery is how often the focus is chosen again.
const focusEvery = 30 * time.Second

// focusSwitch is how much more a target must be worth to take the focus.
const focusSwitch = 1.2

// fleetRAM is the RAM of the hosts that may take work, less foreign use.
func (e *Engine) fleetRAM(now time.Time) int64 {
	var r int64
	for _, h := range e.hostSeq {
		if e.eligible(now, h) {
			r += max(h.total-e.cfg.HostHeadroomMiB-h.foreign(), 0)
		}
	}
	return r
}

// hackable reports whether t is a hacking target that may run.
func hackable(t *target) bool {
	return t.hasSpec && t.spec.Profile == schemas.ProfileHacking && t.spec.Metrics != nil && t.blocked == "" &&
		!t.complete && !t.deleted
}

// refocus chooses the focus target again when it is due.
func (e *Engine) refocus(now time.Time) {
	if e.cfg.Horizon <= 0 {
		return
	}
	if e.focus != nil && (e.targets[e.focus.name] != e.focus || !hackable(e.focus)) {
		e.focus = nil
	}
	if e.focus != nil && now.Before(e.focusAt) {
		return
	}
	e.focusAt = now.Add(focusEvery)
	ram := e.fleetRAM(now) - e.cfg.Workload.WrapperMiB
	left := e.start.Add(e.cfg.Horizon).Sub(now).Seconds()
	if ram <= 0 {
		return
	}
	names := make([]string, 0, 16)
	for name, t := range e.targets {
		if hackable(t) {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, strings.Compare)
	var best *target
	bestV, focusV := math.Inf(-1), math.Inf(-1)
	for _, name := range names {
		t := e.targets[name]
		v := e.focusValue(t, ram, left)
		if v > bestV {
			best, bestV = t, v
		}
		if t == e.focus {
			focusV = v
		}
	}
	if f := e.focus; f != nil && (f.phase == workload.PhaseHarvest && f.task != nil || focusV*focusSwitch >= bestV) {
		return
	}
	e.focus = best
}

// focusValue is the income t brings by the horizon with ram of helpers,
// left seconds from now.
func (e *Engine) focusValue(t *target, ram int64, left float64) float64 {
	p := e.cfg.Workload
	r, err := p.IncomePerMiBSecond(*t.spec.Metrics)
	if err != nil || !(r > 0) {
		return math.Inf(-1)
	}
	prep := prepSeconds(p, t.spec, ram, left)
	return r * float64(ram) * (left - prep)
}

// prepSeconds is how long bringing a target with spec's metrics to its
// harvest takes with ram of helpers, by the task model: its till, then its
// sow, each run at min(ram, its full size). It is +Inf when that takes
// longer than limit seconds or cannot be done.
func prepSeconds(p workload.Params, spec schemas.TargetSpec, ram int64, limit float64) float64 {
	m := *spec.Metrics
	total := 0.0
	for range 4 {
		phase := workload.HackingPhase(m)
		if phase == workload.PhaseHarvest {
			return total
		}
		sp := spec
		mm := m
		sp.Metrics = &mm
		est, err := p.Estimate(&sp, phase)
		if err != nil || ram < est.HelpersMinMiB || !(limit-total > 0) {
			return math.Inf(1)
		}
		run, err := p.NewRun(&sp, phase, min(ram, est.HelpersFullMiB))
		if err != nil {
			return math.Inf(1)
		}
		run.Advance(time.Duration((limit - total + 1) * float64(time.Second)))
		if !run.Done() {
			return math.Inf(1)
		}
		total += run.Elapsed().Seconds()
		m = run.Metrics()
	}
	return math.Inf(1)
}

// focusLacks reports whether the focus target lacks RAM: it waits for a
// task, or its task holds less than its full size.
func (e *Engine) focusLacks() bool {
	f := e.focus
	if f == nil {
		return false
	}
	k := f.task
	if k == nil {
		return e.queued(f) && f.readyAt.IsZero() || e.pending.contains(f)
	}
	// Short by less than a grant's grain is not short: grants come in
	// whole grains.
	return k.budget+e.held(k)+max(e.cfg.HelperGrainMiB, 1) <= f.est.FullMiB()
}

// heldBack reports whether pending target t waits for the focus target: it
// is another hacking target and the focus lacks RAM.
func (e *Engine) heldBack(t *target) bool {
	return e.focus != nil && t != e.focus && hackable(t) && e.focusLacks()
}

// preempt kills the tasks of hacking targets other than the focus while the
// focus lacks RAM, so that it gets theirs.
func (e *Engine) preempt(now time.Time) {
	if e.focus == nil || !e.focusLacks() {
		return
	}
	for i := 0; i < len(e.tasks); i++ {
		k := e.tasks[i]
		if k.t == e.focus || !hackable(k.t) || k.why != 0 || (k.state != taskActive && k.state != taskLaunched) {
			continue
		}
		k.why = suspectPreempted
		e.kill(now, k, silentReason(k.why))
	}
}
