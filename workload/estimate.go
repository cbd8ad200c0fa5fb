package workload

import (
	"fmt"
	"math"

	"github.com/taskselector/taskselector/schemas"
)

// Estimate returns the RAM and value of a task of the given phase (task
// type) for a target.
//
// declared: wrapper, helpers-min and helpers-full come from the spec's phase
// of that type; Value is spec.Value, or 1 when absent.
//
// hacking: the wrapper is Params.WrapperMiB and the helpers follow the
// hacking model (see TillThreads, SowThreads and PlanHarvest):
//   - till: full = the weaken threads that take security to its minimum
//     (at least 1), min = 1 weaken thread;
//   - sow: full = the grow threads that take money to its maximum plus the
//     weaken threads that cancel their security (at least 1 + 1), min = one
//     grow and one weaken thread;
//   - harvest: full = overlap * batch RAM, min = one batch with one hack
//     thread.
//
// Value is the target's full-harvest income per second,
// h*f*max_money*chance/(4*spacing), for every phase (till and sow lead to
// harvest), times spec.Value when that is set, kept in [MinValue, MaxValue].
//
// Errors (wrapping ErrInvalidSpec, ErrUnknownPhase, ErrCannotGrow,
// ErrCannotHarvest or ErrInvalidParams) name the offending field; a returned
// Estimate is always finite, non-negative and bounded.
func (p Params) Estimate(spec *schemas.TargetSpec, phase string) (Estimate, error) {
	if err := p.Validate(); err != nil {
		return Estimate{}, err
	}
	if spec == nil {
		return Estimate{}, fmt.Errorf("%w: no spec", ErrInvalidSpec)
	}
	weight, err := specWeight(spec)
	if err != nil {
		return Estimate{}, err
	}
	switch spec.Profile {
	case schemas.ProfileDeclared:
		ph, err := declaredPhase(spec, phase)
		if err != nil {
			return Estimate{}, err
		}
		if err := checkPhase(ph); err != nil {
			return Estimate{}, err
		}
		e := Estimate{
			WrapperMiB:     min(ph.WrapperMiB, p.MaxMiB),
			HelpersMinMiB:  min(ph.HelpersMinMiB, p.MaxMiB),
			HelpersFullMiB: min(ph.HelpersFullMiB, p.MaxMiB),
			Value:          p.clampValue(weight),
		}
		e.Priority = e.Value / float64(max(e.FullMiB(), 1))
		return e, nil
	case schemas.ProfileHacking:
		if spec.Metrics == nil {
			return Estimate{}, fmt.Errorf("%w: hacking profile without metrics", ErrInvalidSpec)
		}
		m := *spec.Metrics
		if err := CheckMetrics(m); err != nil {
			return Estimate{}, err
		}
		minH, fullH, err := p.hackingHelpers(m, phase)
		if err != nil {
			return Estimate{}, err
		}
		perMiB, err := p.IncomePerMiBSecond(m)
		if err != nil {
			perMiB = 0
		}
		return Estimate{
			WrapperMiB:     p.WrapperMiB,
			HelpersMinMiB:  minH,
			HelpersFullMiB: fullH,
			Value:          p.clampValue(weight * p.income(m)),
			Priority:       hackingPriority(p.clampValue(weight*perMiB), phase, fullH+p.WrapperMiB),
		}, nil
	default:
		return Estimate{}, fmt.Errorf("%w: unknown profile %q", ErrInvalidSpec, spec.Profile)
	}
}

// specWeight returns spec.Value, or 1 when it is absent.
func specWeight(spec *schemas.TargetSpec) (float64, error) {
	if spec.Value == nil {
		return 1, nil
	}
	v := *spec.Value
	if !finite(v) || v < 0 {
		return 0, fmt.Errorf("%w: value is %v, want a finite number >= 0", ErrInvalidSpec, v)
	}
	return v, nil
}

// declaredPhase finds the phase of the given type.
func declaredPhase(spec *schemas.TargetSpec, phase string) (*schemas.Phase, error) {
	for i := range spec.Phases {
		if spec.Phases[i].Type == phase {
			return &spec.Phases[i], nil
		}
	}
	return nil, fmt.Errorf("%w: %q is not a phase of this declared target", ErrUnknownPhase, phase)
}

// checkPhase checks one declared phase's figures.
func checkPhase(ph *schemas.Phase) error {
	switch {
	case ph.WrapperMiB < 0:
		return fmt.Errorf("%w: phase %q: wrapper_mib is %d, want >= 0", ErrInvalidSpec, ph.Type, ph.WrapperMiB)
	case ph.HelpersMinMiB < 0:
		return fmt.Errorf("%w: phase %q: helpers_min_mib is %d, want >= 0", ErrInvalidSpec, ph.Type, ph.HelpersMinMiB)
	case ph.HelpersFullMiB < ph.HelpersMinMiB:
		return fmt.Errorf("%w: phase %q: helpers_full_mib %d is below helpers_min_mib %d",
			ErrInvalidSpec, ph.Type, ph.HelpersFullMiB, ph.HelpersMinMiB)
	case ph.HelpersFullMiB > 0 && ph.HelpersMinMiB == 0:
		return fmt.Errorf("%w: phase %q: helpers_min_mib is 0 but helpers_full_mib is %d: a phase with helpers needs at least 1 MiB",
			ErrInvalidSpec, ph.Type, ph.HelpersFullMiB)
	case !finite(ph.WorkS) || ph.WorkS < 0:
		return fmt.Errorf("%w: phase %q: work_s is %v, want a finite number >= 0", ErrInvalidSpec, ph.Type, ph.WorkS)
	}
	return nil
}

// CheckMetrics reports the first hacking metric that is NaN, infinite,
// negative, or (for hack_chance and hack_fraction_per_thread) above 1. The
// error names the metric by its JSON name.
func CheckMetrics(m schemas.HackingMetrics) error {
	fields := [...]struct {
		name string
		v    float64
		one  bool
	}{
		{keySecurity, m.Security, false},
		{keyMinSecurity, m.MinSecurity, false},
		{keyMoney, m.Money, false},
		{keyMaxMoney, m.MaxMoney, false},
		{keyGrowth, m.GrowthLogPerThread, false},
		{keyHackFraction, m.HackFractionPerThread, true},
		{keyHackChance, m.HackChance, true},
		{keyHackTime, m.HackTimeMS, false},
	}
	for _, f := range fields {
		switch {
		case math.IsNaN(f.v):
			return fmt.Errorf("%w: metrics.%s is NaN", ErrInvalidSpec, f.name)
		case math.IsInf(f.v, 0):
			return fmt.Errorf("%w: metrics.%s is infinite", ErrInvalidSpec, f.name)
		case f.v < 0:
			return fmt.Errorf("%w: metrics.%s is %v, want >= 0", ErrInvalidSpec, f.name, f.v)
		case f.one && f.v > 1:
			return fmt.Errorf("%w: metrics.%s is %v, want <= 1", ErrInvalidSpec, f.name, f.v)
		}
	}
	return nil
}

// hackingHelpers returns the min and full helper MiB of a hacking phase.
func (p Params) hackingHelpers(m schemas.HackingMetrics, phase string) (minMiB, fullMiB int64, err error) {
	switch phase {
	case PhaseTill:
		w := max(p.TillThreads(m), 1)
		return min(p.WeakenThreadMiB, p.MaxMiB), mulSat(w, p.WeakenThreadMiB, p.MaxMiB), nil
	case PhaseSow:
		g, w, err := p.SowThreads(m)
		if err != nil {
			return 0, 0, err
		}
		g = max(g, 1)
		w = max(w, 1)
		full := p.growWeakenMiB(g, w)
		// The reference calls one 12:1 grow/weaken step the smallest
		// useful sow, and it is the most grow per weaken. But that is
		// 22.75 GiB of helpers, more than any early-game host holds; one
		// grow and one weaken thread still grow money without raising
		// security, only slower, so that is the minimum here.
		step := p.growWeakenMiB(1, 1)
		return min(step, full), full, nil
	case PhaseHarvest:
		h, err := p.PlanHarvest(m)
		if err != nil {
			return 0, 0, err
		}
		return h.MinBatch.MiB, h.FullMiB, nil
	default:
		return 0, 0, fmt.Errorf("%w: %q is not a hacking phase (till, sow, harvest)", ErrUnknownPhase, phase)
	}
}

// growWeakenMiB is the RAM of g grow and w weaken threads.
func (p Params) growWeakenMiB(g, w int64) int64 {
	return addSat(mulSat(g, p.GrowThreadMiB, p.MaxMiB), mulSat(w, p.WeakenThreadMiB, p.MaxMiB), p.MaxMiB)
}

// weakenFor is the weaken threads that cancel the given security.
func (p Params) weakenFor(sec float64) int64 {
	return ceilCount(sec/p.WeakenPerThread, p.MaxThreads)
}

// TillThreads is the weaken threads that take security down to its minimum:
// ceil((security - min_security) / 0.05), 0 when already there. Metrics are
// assumed checked (CheckMetrics).
func (p Params) TillThreads(m schemas.HackingMetrics) int64 {
	return p.weakenFor(m.Security - m.MinSecurity)
}

// growMultiplier is the factor that takes money from `from` to `to`, with
// money below $1 counted as $1 (grow adds $1 per thread before multiplying).
func growMultiplier(from, to float64) float64 {
	return to / math.Max(from, 1)
}

// growThreads is ceil(ln(mult) / k), 0 when mult <= 1, saturated at
// MaxThreads; a growth of zero with mult > 1 is ErrCannotGrow.
func (p Params) growThreads(mult, k float64) (int64, error) {
	if !(mult > 1) {
		return 0, nil
	}
	if k == 0 {
		return 0, fmt.Errorf("%w: metrics.growth_log_per_thread is 0 and money must grow by %.4gx", ErrCannotGrow, mult)
	}
	return ceilCount(math.Log(mult)/k, p.MaxThreads), nil
}

// SowThreads is the grow threads that take money from its current value to
// its maximum, and the weaken threads that cancel the security they add:
// g = ceil(ln(max/money)/k) (from $0, ln(max)/k), w = ceil(g*0.004/0.05).
// Both are 0 when money is already at its maximum.
func (p Params) SowThreads(m schemas.HackingMetrics) (grow, weaken int64, err error) {
	g, err := p.growThreads(growMultiplier(m.Money, m.MaxMoney), m.GrowthLogPerThread)
	if err != nil {
		return 0, 0, err
	}
	return g, p.weakenFor(float64(g) * p.GrowSecPerThread), nil
}

// Batch is one harvest batch: hack, weaken, grow, weaken.
type Batch struct {
	// Thread counts of the four steps, in landing order H, W1, G, W2.
	Hack, Weaken1, Grow, Weaken2 int64
	// MiB is the batch's helper RAM.
	MiB int64
	// Steal is the share of max money the batch's hack takes (h*f, at most 1).
	Steal float64
}

// Threads is the batch's helper thread count.
func (b Batch) Threads() int64 { return b.Hack + b.Weaken1 + b.Grow + b.Weaken2 }

// Harvest is the plan of a full-size harvest.
type Harvest struct {
	// Batch is the batch a full harvest runs: h = ceil(p/f), reduced until
	// the batch fits MaxBatchMiB (at least one hack thread).
	Batch Batch
	// MinBatch is the smallest batch, with one hack thread.
	MinBatch Batch
	// Overlap is the batches in flight at once:
	// ceil((4T + 2*spacing) / (4*spacing)).
	Overlap int64
	// FullMiB is Overlap * Batch.MiB (bounded by MaxMiB).
	FullMiB int64
	// CycleSeconds is how long one batch holds its RAM: 4T + 2*spacing.
	CycleSeconds float64
	// IncomePerSecond is the full harvest's expected income:
	// Steal * max_money * chance / (4 * spacing).
	IncomePerSecond float64
}

// batch plans a batch of h hack threads. The grow threads regrow the share
// min(h*f, p) as the reference does (p itself once h = ceil(p/f)).
func (p Params) batch(m schemas.HackingMetrics, h int64) (Batch, error) {
	f := m.HackFractionPerThread
	steal := math.Min(float64(h)*f, 1)
	regrow := math.Min(steal, p.HackFraction)
	left := m.MaxMoney * (1 - regrow)
	g, err := p.growThreads(growMultiplier(left, m.MaxMoney), m.GrowthLogPerThread)
	if err != nil {
		return Batch{}, err
	}
	b := Batch{
		Hack:    h,
		Weaken1: p.weakenFor(float64(h) * p.HackSecPerThread),
		Grow:    g,
		Weaken2: p.weakenFor(float64(g) * p.GrowSecPerThread),
		Steal:   steal,
	}
	b.MiB = addSat(mulSat(h, p.HackThreadMiB, p.MaxMiB),
		mulSat(b.Weaken1+b.Grow+b.Weaken2, p.WeakenThreadMiB, p.MaxMiB), p.MaxMiB)
	return b, nil
}

// largestBatch returns the batch with the most hack threads in [1, hMax]
// whose RAM is at most limit, or the one-thread batch b1 if none fits. Batch
// RAM grows with h, so a binary search finds it.
func (p Params) largestBatch(m schemas.HackingMetrics, b1 Batch, hMax, limit int64) (Batch, error) {
	if hMax <= 1 || b1.MiB > limit {
		return b1, nil
	}
	top, err := p.batch(m, hMax)
	if err != nil || top.MiB <= limit {
		return top, err
	}
	best := b1
	lo, hi := int64(1), hMax-1 // lo fits, hMax does not
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		b, err := p.batch(m, mid)
		if err != nil {
			return Batch{}, err
		}
		if b.MiB <= limit {
			lo, best = mid, b
		} else {
			hi = mid - 1
		}
	}
	return best, nil
}

// checkHarvestable reports why a target cannot be harvested, if it cannot.
func checkHarvestable(m schemas.HackingMetrics) error {
	switch {
	case m.MaxMoney == 0:
		return fmt.Errorf("%w: metrics.max_money is 0, nothing to steal", ErrCannotHarvest)
	case m.HackFractionPerThread == 0:
		return fmt.Errorf("%w: metrics.hack_fraction_per_thread is 0 (hacking level below the target's?)", ErrCannotHarvest)
	}
	return nil
}

// hackSeconds is the hack time T in seconds.
func hackSeconds(m schemas.HackingMetrics) float64 { return m.HackTimeMS / 1000 }

// PlanHarvest plans a full harvest of the target (metrics assumed checked).
// It fails with ErrCannotHarvest when there is nothing to steal and with
// ErrCannotGrow when stolen money cannot be grown back.
func (p Params) PlanHarvest(m schemas.HackingMetrics) (Harvest, error) {
	if err := checkHarvestable(m); err != nil {
		return Harvest{}, err
	}
	b1, err := p.batch(m, 1)
	if err != nil {
		return Harvest{}, err
	}
	hMax := max(ceilCount(p.HackFraction/m.HackFractionPerThread, p.MaxThreads), 1)
	b, err := p.largestBatch(m, b1, hMax, p.MaxBatchMiB)
	if err != nil {
		return Harvest{}, err
	}
	sp := p.Spacing.Seconds()
	cycle := 4*hackSeconds(m) + 2*sp
	overlap := max(ceilCount(cycle/(4*sp), p.MaxThreads), 1)
	return Harvest{
		Batch:           b,
		MinBatch:        b1,
		Overlap:         overlap,
		FullMiB:         mulSat(overlap, b.MiB, p.MaxMiB),
		CycleSeconds:    cycle,
		IncomePerSecond: b.Steal * m.MaxMoney * m.HackChance / (4 * sp),
	}, nil
}

// income is the target's full-harvest income per second, or 0 when it
// cannot be harvested.
func (p Params) income(m schemas.HackingMetrics) float64 {
	h, err := p.PlanHarvest(m)
	if err != nil {
		return 0
	}
	return h.IncomePerSecond
}

// IncomePerMiBSecond is the best expected income per helper MiB-second any
// harvest of this target can reach: the maximum over batch sizes h (1 up to
// the full batch's) of h*f*max_money*chance / (cycle * batch MiB), with the
// batch rate capped at one per 4*spacing. Wrappers are not counted, so
// total RAM times the best of this over the targets bounds any policy's
// income. It returns 0 for a target that cannot be harvested.
func (p Params) IncomePerMiBSecond(m schemas.HackingMetrics) (float64, error) {
	if err := p.Validate(); err != nil {
		return 0, err
	}
	if err := CheckMetrics(m); err != nil {
		return 0, err
	}
	h, err := p.PlanHarvest(m)
	if err != nil {
		if isCannot(err) {
			return 0, nil
		}
		return 0, err
	}
	sp := p.Spacing.Seconds()
	best := 0.0
	for n := int64(1); n <= h.Batch.Hack; n++ {
		b, err := p.batch(m, n)
		if err != nil {
			return 0, err
		}
		// One batch slot completes a batch every cycle; slots beyond the
		// overlap add nothing, which only lowers the per-MiB figure.
		rate := 1 / math.Max(h.CycleSeconds, 4*sp)
		v := b.Steal * m.MaxMoney * m.HackChance * rate / float64(max(b.MiB, 1))
		if v > best {
			best = v
		}
	}
	return best, nil
}

// hackingPriority ranks a hacking task: harvest by the income per MiB-second
// it earns; till and sow, which only lead to a harvest, by the same figure
// divided by their full size in GiB (the cheaper preparation first), and
// scaled down by PhaseWeight so that they rank below every harvest.
func hackingPriority(perMiB float64, phase string, fullMiB int64) float64 {
	w := PhaseWeight[phase]
	if phase == PhaseHarvest {
		return perMiB * w
	}
	gib := max(float64(fullMiB)/MiBPerGiB, 1)
	return perMiB * w / gib
}
