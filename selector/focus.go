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
//	value_j = income_j(R) · (H_left − 1.15·prep_j(R) − cycle_j)
//
// where R is the RAM of the live hosts (less a wrapper), H_left the time
// left to the horizon, prep_j(R) the time its till and sow take with R of
// helpers, and income_j(R) its harvest's income with R of helpers then,
// all worked out with the task model (workload.Run) from the metrics the
// engine knows; the margin on the prep and one harvest cycle (before the
// first batches pay) make up for what the model's best case leaves out. A harvest's income grows with its RAM however large (up to
// its full size, far above any fleet here), so one target can take the
// whole fleet; the others would only take RAM from it.
//
// Other hacking targets are fillers: they launch only while the focus
// target's task holds its full size (a till that needs less than the fleet),
// and they are preempted (killed, and requeued without penalty) as soon as
// the focus target lacks RAM: it waits to be placed, or its task holds less
// than its full size. The focus is chosen again every focusEvery while it
// has no task (between its phases, when a done event has just taught the
// engine its metrics); it changes only for a target worth a fifth more.
// Declared targets are not affected.

// focusEvery is how often the focus is chosen again.
const focusEvery = 30 * time.Second

// focusIdleEvery is how often the focus is looked for while there is none.
const focusIdleEvery = 5 * time.Minute

// focusSwitch is how much more a target must be worth to take the focus.
const focusSwitch = 1.2

// fleetRAM is the RAM of the hosts that may take work, less foreign use, and
// the most of it on one host.
func (e *Engine) fleetRAM(now time.Time) (sum, most int64) {
	for _, h := range e.hostSeq {
		if e.eligible(now, h) {
			r := max(h.total-e.cfg.HostHeadroomMiB-h.foreign(), 0)
			sum += r
			most = max(most, r)
		}
	}
	return sum, most
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
	if e.recovering || now.Before(e.graceUntil) {
		return // the fleet is not known yet
	}
	if e.focus != nil && (now.Before(e.focusAt) || e.focus.task != nil) {
		// Due later; or its task runs: the metrics the engine knows of
		// it are those from before that task, so its progress would be
		// counted as still to do. It is chosen again between phases.
		return
	}
	ram, most := e.fleetRAM(now)
	ram -= e.cfg.Workload.WrapperMiB
	e.focusAt = now.Add(focusEvery)
	defer func() {
		if e.focus == nil {
			e.focusAt = now.Add(focusIdleEvery) // nothing to focus on: look again later
		}
	}()
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
		v := e.focusValue(t, ram, most, left)
		if v > bestV {
			best, bestV = t, v
		}
		if t == e.focus {
			focusV = v
		}
	}
	if f := e.focus; f != nil && focusV*focusSwitch >= bestV && !math.IsInf(focusV, -1) {
		return
	}
	if math.IsInf(bestV, -1) {
		best = nil // no target can be brought to a harvest by the horizon: no focus
	}
	e.focus = best
}

// focusValue is the income t brings by the horizon with ram of helpers,
// left seconds from now: its harvest's income with ram, by the task model,
// over what is left once its till and sow are done.
func (e *Engine) focusValue(t *target, ram, most int64, left float64) float64 {
	p := e.cfg.Workload
	prep, m := prepSeconds(p, t.spec, ram, most, left)
	if math.IsInf(prep, 1) {
		return math.Inf(-1)
	}
	sp := t.spec
	sp.Metrics = &m
	est, err := p.Estimate(&sp, workload.PhaseHarvest)
	if err != nil || ram < est.HelpersMinMiB || most < est.MinMiB() {
		return math.Inf(-1)
	}
	run, err := p.NewRun(&sp, workload.PhaseHarvest, min(ram, est.HelpersFullMiB))
	if err != nil {
		return math.Inf(-1)
	}
	plan, err := p.PlanHarvest(m)
	if err != nil {
		return math.Inf(-1)
	}
	// The plan is the model's best case: grants in whole threads per host,
	// the task's own host and the launches between phases make the prep
	// longer, and a harvest's batches pay after one cycle.
	return run.IncomeRate() * (left - prepMargin*prep - plan.CycleSeconds)
}

// prepMargin is how much longer than the model's best case a preparation
// is planned to take.
const prepMargin = 1.15

// prepSeconds is how long bringing a target with spec's metrics to its
// harvest takes with ram of helpers, by the task model: its till, then its
// sow, each run at min(ram, its full size); and the metrics it then has. It
// is +Inf when that takes longer than limit seconds or cannot be done (a
// phase's smallest task is larger than most, the most RAM on one host).
func prepSeconds(p workload.Params, spec schemas.TargetSpec, ram, most int64, limit float64) (float64, schemas.HackingMetrics) {
	m := *spec.Metrics
	total := 0.0
	for range 4 {
		phase := workload.HackingPhase(m)
		if phase == workload.PhaseHarvest {
			return total, m
		}
		sp := spec
		mm := m
		sp.Metrics = &mm
		est, err := p.Estimate(&sp, phase)
		if err != nil || ram < est.HelpersMinMiB || most < est.MinMiB() || !(limit-total > 0) {
			return math.Inf(1), m
		}
		run, err := p.NewRun(&sp, phase, min(ram, est.HelpersFullMiB))
		if err != nil {
			return math.Inf(1), m
		}
		run.Advance(time.Duration((limit - total + 1) * float64(time.Second)))
		if !run.Done() {
			return math.Inf(1), m
		}
		total += run.Elapsed().Seconds()
		m = run.Metrics()
	}
	return math.Inf(1), m
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
		return true // it waits for a task
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
