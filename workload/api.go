// Package workload models the work tasks do: the RAM estimates of each task
// type (wrapper, minimum and full helpers) and the progress of a running task,
// for the declared and hacking profiles. It is pure (no I/O, no clock) and is
// shared by the selector's estimators, the worker's sim executor and the
// cluster simulator.
//
// The hacking profile follows the Bitburner batch-hacking model described in
// the hacking model reference: a target goes through the phases till (weaken
// security to its minimum), sow (grow money to its maximum) and harvest
// (hack/weaken/grow/weaken batches forever). Its thread counts are integers
// rounded up; its RAM figures are MiB, with the game's "GB" read as GiB.
//
// Invalid input is rejected, never clamped: a NaN, infinite or negative metric
// is an error that names the metric. Every Estimate that is returned is
// finite, non-negative and bounded by Params.MaxThreads and Params.MaxMiB.
package workload

import "errors"

// Estimate is the RAM a task of one type needs for one target, in MiB, and
// the value of running it. All fields are finite, non-negative and bounded.
type Estimate struct {
	WrapperMiB     int64
	HelpersMinMiB  int64
	HelpersFullMiB int64
	// Value is the worth of the target's work per second at full size
	// (income per second for hacking, the spec's value for declared); > 0.
	Value float64
	// Priority ranks pending targets: value per MiB of RAM, higher first.
	// declared: Value / FullMiB. hacking: the best income per MiB-second a
	// harvest of the target reaches (times spec.Value when set), weighted by
	// PhaseWeight, so that a phase that earns now outranks one that only
	// prepares to earn later; till and sow are further divided by their
	// full size in GiB, so that the cheapest preparation goes first.
	Priority float64
}

// PhaseWeight discounts a hacking phase's priority: harvest earns now, sow
// and till only lead to it. The steps are wide enough that any harvest
// outranks any till or sow among early-game targets; between a till and a
// sow, the size of each decides as well.
var PhaseWeight = map[string]float64{PhaseHarvest: 1, PhaseSow: 1e-3, PhaseTill: 1e-6}

// MinMiB is the smallest useful budget: wrapper plus minimum helpers.
func (e Estimate) MinMiB() int64 { return e.WrapperMiB + e.HelpersMinMiB }

// FullMiB is the budget that runs everything at once.
func (e Estimate) FullMiB() int64 { return e.WrapperMiB + e.HelpersFullMiB }

// Phase (task type) names of the hacking profile.
const (
	PhaseTill    = "till"
	PhaseSow     = "sow"
	PhaseHarvest = "harvest"
)

// Errors returned by this package, always wrapped with a message that says
// what is wrong (the selector shows it as a target's "blocked" reason). Test
// for them with errors.Is.
var (
	// ErrInvalidSpec: the target spec is malformed (unknown profile, missing
	// or non-finite metrics, bad phases, ...).
	ErrInvalidSpec = errors.New("workload: invalid target spec")
	// ErrUnknownPhase: the phase is not one of the target's task types.
	ErrUnknownPhase = errors.New("workload: unknown phase")
	// ErrCannotGrow: the target needs money grown but its growth is zero.
	ErrCannotGrow = errors.New("workload: cannot grow")
	// ErrCannotHarvest: the target has nothing to steal (no max money, or a
	// hack fraction of zero, e.g. a hacking level below the target's).
	ErrCannotHarvest = errors.New("workload: cannot harvest")
	// ErrBelowMinimum: a run was asked for with fewer helper MiB than the
	// phase's minimum.
	ErrBelowMinimum = errors.New("workload: helpers below minimum")
	// ErrInvalidParams: a Params field is out of range.
	ErrInvalidParams = errors.New("workload: invalid params")
)
