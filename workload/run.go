package workload

import (
	"fmt"
	"math"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// runKind is what a Run simulates.
type runKind uint8

const (
	kindDeclared runKind = iota
	kindTill
	kindSow
	kindHarvest
)

// Run simulates one running task in game time: the worker's sim executor and
// the cluster simulator both drive it with Advance. It is deterministic (hack
// chance is applied as an expectation) and cheap: Advance does O(1) work per
// call however large the step, apart from at most a few round boundaries.
//
// Progress is proportional to helper RAM, so a scaled-down task takes longer:
//   - declared: done after work_s * helpers_full / helpers game seconds
//     (work_s at or above full size); a repeat phase is done per cycle too.
//   - till: rounds of 4T; each round runs the weaken threads the budget
//     affords (no more than reach min_security) and lowers security by 0.05
//     per thread when it ends. Done once security <= min_security + 1.
//   - sow: rounds of 4T (the weaken that cancels the grow lands last); each
//     round runs the most grow threads the budget affords, with the weaken
//     threads that cancel them (12:1), no more than money needs. At the end
//     of a round money becomes (money + g) * e^(k*g), capped at max_money.
//     Done once money >= 0.99 * max_money.
//   - harvest: never done. The budget runs as many full batches as fit (up
//     to the overlap), or one smaller batch (fewer hack threads) when a full
//     one does not fit. Batches complete at min(slots / (4T + 2*spacing),
//     1 / (4*spacing)) per second, each earning h*f*max_money*chance.
//
// Rounds last at least Params.Spacing, so a zero hack time cannot stall a
// caller. A round always runs, even when there is nothing left to do, so no
// task is done before its first round ends (declared phases with work_s 0
// are done at once).
type Run struct {
	p       Params
	kind    runKind
	phase   string
	helpers int64
	m       schemas.HackingMetrics
	elapsed float64 // game seconds, frozen once done
	done    bool

	// declared
	duration float64
	used     int64
	full     int64   // the phase's helpers_full_mib
	workS    float64 // the phase's work_s

	// till and sow
	roundLen  float64
	roundPos  float64
	afford    int64 // weaken (till) or grow (sow) threads the budget affords
	curG      int64 // grow threads of the current round (sow)
	curW      int64 // weaken threads of the current round
	workDone  float64
	workTotal float64

	// harvest
	batch    Batch
	slots    int64
	rate     float64 // batches completed per second
	perBatch float64 // expected money per batch
	batches  float64
	earned   float64
	// A harvest that gained helper RAM (SetHelpers) completes batches at
	// its old rate until its new batches have run one cycle: the rate
	// and per-batch money from nextAt (game seconds) on.
	nextRate, nextPerBatch, nextAt float64
	hasNext                        bool
}

// NewRun starts the simulation of a task of the given phase for a target,
// with helpersMiB of helper RAM (the wrapper is not part of it). A budget
// below the phase's minimum (Estimate.HelpersMinMiB) is ErrBelowMinimum;
// a spec or phase that Estimate rejects is rejected with the same error.
func (p Params) NewRun(spec *schemas.TargetSpec, phase string, helpersMiB int64) (*Run, error) {
	est, err := p.Estimate(spec, phase)
	if err != nil {
		return nil, err
	}
	if helpersMiB < est.HelpersMinMiB {
		return nil, fmt.Errorf("%w: %s task with %d MiB of helpers, minimum is %d MiB",
			ErrBelowMinimum, phase, helpersMiB, est.HelpersMinMiB)
	}
	r := &Run{p: p, phase: phase, helpers: helpersMiB}
	if spec.Profile == schemas.ProfileDeclared {
		ph, err := declaredPhase(spec, phase)
		if err != nil {
			return nil, err
		}
		r.kind = kindDeclared
		r.duration = ph.WorkS
		r.full, r.workS = ph.HelpersFullMiB, ph.WorkS
		if full := ph.HelpersFullMiB; full > 0 {
			r.used = min(helpersMiB, full)
			r.duration = ph.WorkS * float64(full) / float64(r.used)
		}
		r.done = r.duration == 0
		return r, nil
	}

	r.m = *spec.Metrics
	r.roundLen = math.Max(4*hackSeconds(r.m), p.Spacing.Seconds())
	switch phase {
	case PhaseTill:
		r.kind = kindTill
		r.afford = min(helpersMiB/p.WeakenThreadMiB, p.MaxThreads)
		r.workTotal = float64(max(p.weakenFor(r.m.Security-r.m.MinSecurity-1), 1))
		r.startRound()
	case PhaseSow:
		r.kind = kindSow
		r.afford = p.sowFit(helpersMiB)
		g, _, err := p.SowThreads(r.m)
		if err != nil {
			return nil, err
		}
		r.workTotal = float64(max(g, 1))
		r.startRound()
	case PhaseHarvest:
		r.kind = kindHarvest
		plan, err := p.PlanHarvest(r.m)
		if err != nil {
			return nil, err
		}
		if helpersMiB >= plan.Batch.MiB {
			r.batch = plan.Batch
			r.slots = min(plan.Overlap, helpersMiB/plan.Batch.MiB)
		} else {
			b, err := p.largestBatch(r.m, plan.MinBatch, plan.Batch.Hack, helpersMiB)
			if err != nil {
				return nil, err
			}
			r.batch, r.slots = b, 1
		}
		r.rate = math.Min(float64(r.slots)/plan.CycleSeconds, 1/(4*p.Spacing.Seconds()))
		r.perBatch = r.batch.Steal * r.m.MaxMoney * r.m.HackChance
	}
	return r, nil
}

// sowFit is the most grow threads (at least 1) whose sow step, with its
// weaken threads, fits in helpers MiB.
func (p Params) sowFit(helpers int64) int64 {
	cost := func(g int64) int64 {
		return p.growWeakenMiB(g, max(p.weakenFor(float64(g)*p.GrowSecPerThread), 1))
	}
	lo, hi := int64(1), p.MaxThreads
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		if cost(mid) <= helpers {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// lower subtracts by from sec but never below floor (nor raises a sec that
// is already below it).
func lower(sec, by, floor float64) float64 {
	if sec <= floor {
		return sec
	}
	return math.Max(sec-by, floor)
}

// startRound sets the threads of the round that begins now.
func (r *Run) startRound() {
	p := r.p
	switch r.kind {
	case kindTill:
		r.curW = max(min(r.afford, p.TillThreads(r.m)), 1)
		if r.afford == 0 {
			r.curW = 0 // no helper RAM (see SetHelpers): the round does nothing
		}
	case kindSow:
		if r.afford == 0 {
			r.curG, r.curW = 0, 0
			return
		}
		need, err := p.growThreads(growMultiplier(r.m.Money, r.m.MaxMoney), r.m.GrowthLogPerThread)
		if err != nil {
			need = 0 // zero growth: money never changes, nothing to plan
		}
		r.curG = max(min(r.afford, need), 1)
		r.curW = max(p.weakenFor(float64(r.curG)*p.GrowSecPerThread), 1)
	}
}

// endRound applies the round's effect and checks whether the task is done.
func (r *Run) endRound() {
	p := r.p
	m := &r.m
	switch r.kind {
	case kindTill:
		m.Security = lower(m.Security, p.WeakenPerThread*float64(r.curW), m.MinSecurity)
		r.workDone += float64(r.curW)
		r.done = !(m.Security > m.MinSecurity+1)
	case kindSow:
		g := float64(r.curG)
		if m.Money < m.MaxMoney {
			m.Money = math.Min((m.Money+g)*math.Exp(m.GrowthLogPerThread*g), m.MaxMoney)
		}
		m.Security = lower(m.Security, p.WeakenPerThread*float64(r.curW)-p.GrowSecPerThread*g, m.MinSecurity)
		r.workDone += g
		r.done = !(m.Money < 0.99*m.MaxMoney)
	}
}

// skipRounds jumps over whole rounds that are certainly neither the last
// one nor limited by what is left to do, in closed form, so that a long
// Advance costs O(1). It is called at a round boundary, after startRound.
func (r *Run) skipRounds(s *float64) {
	whole := math.Floor(*s / r.roundLen)
	if whole < 1 {
		return
	}
	p := r.p
	m := &r.m
	var n float64
	switch r.kind {
	case kindTill:
		if r.curW != r.afford || r.afford == 0 {
			return
		}
		per := p.WeakenPerThread * float64(r.afford)
		rounds := math.Ceil((m.Security - m.MinSecurity - 1) / per)
		n = math.Min(whole, rounds-2)
		if !(n >= 1) {
			return
		}
		m.Security -= n * per
	case kindSow:
		k := m.GrowthLogPerThread
		if r.curG != r.afford || r.afford == 0 || k == 0 || m.Money >= m.MaxMoney {
			return
		}
		// Money follows x' = a*x + a*g with a = e^(k*g), so
		// x_n + c = a^n (x_0 + c) where c = a*g / (a - 1).
		g := float64(r.curG)
		kg := k * g
		c := g * math.Exp(kg) / math.Expm1(kg)
		x0 := m.Money
		goal := 0.99 * m.MaxMoney
		rounds := math.Ceil(math.Log1p((goal-x0)/(x0+c)) / kg)
		n = math.Min(whole, rounds-2)
		if !(n >= 1) {
			return
		}
		m.Money = math.Min(math.Max(x0+(x0+c)*math.Expm1(n*kg), x0), m.MaxMoney)
		net := p.WeakenPerThread*float64(r.curW) - p.GrowSecPerThread*g
		m.Security = lower(m.Security, n*net, m.MinSecurity)
	default:
		return
	}
	step := float64(r.curW)
	if r.kind == kindSow {
		step = float64(r.curG)
	}
	r.workDone += n * step
	d := n * r.roundLen
	r.elapsed += d
	*s = math.Max(*s-d, 0)
}

// Advance lets dt of game time pass (callers scale wall time by their speed
// factor). It does nothing once the run is done or when dt <= 0.
func (r *Run) Advance(dt time.Duration) {
	if r.done || dt <= 0 {
		return
	}
	s := dt.Seconds()
	switch r.kind {
	case kindDeclared:
		if r.full > 0 && r.used == 0 {
			return // no helper RAM left (see SetHelpers)
		}
		if r.elapsed+s >= r.duration {
			r.elapsed, r.done = r.duration, true
		} else {
			r.elapsed += s
		}
	case kindHarvest:
		if r.hasNext && r.elapsed+s >= r.nextAt {
			// The new batches land from nextAt on.
			d := math.Max(r.nextAt-r.elapsed, 0)
			r.harvestFor(d)
			s -= d
			r.rate, r.perBatch, r.hasNext = r.nextRate, r.nextPerBatch, false
		}
		r.harvestFor(s)
	default:
		for {
			left := r.roundLen - r.roundPos
			if s < left {
				r.roundPos += s
				r.elapsed += s
				return
			}
			s -= left
			r.elapsed += left
			r.roundPos = 0
			r.endRound()
			if r.done {
				return
			}
			r.startRound()
			r.skipRounds(&s)
		}
	}
}

// Done reports whether the task finished its work (never for harvest).
func (r *Run) Done() bool { return r.done }

// Phase is the run's phase (task type).
func (r *Run) Phase() string { return r.phase }

// Elapsed is the game time advanced so far; it stops at the moment the run
// is done.
func (r *Run) Elapsed() time.Duration {
	ns := r.elapsed * 1e9
	if ns >= math.MaxInt64 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(ns)
}

// Progress is in [0, 1]: the share of the work done (1 once done). For
// harvest, which is never done, it is the share of the current batch.
func (r *Run) Progress() float64 {
	if r.done {
		return 1
	}
	var v float64
	switch r.kind {
	case kindDeclared:
		v = r.elapsed / r.duration
	case kindHarvest:
		v = r.batches - math.Floor(r.batches)
	default:
		cur := float64(r.curW)
		if r.kind == kindSow {
			cur = float64(r.curG)
		}
		v = (r.workDone + cur*r.roundPos/r.roundLen) / r.workTotal
		v = math.Min(v, 0.999999)
	}
	if !(v >= 0) {
		return 0
	}
	return math.Min(v, 1)
}

// Metrics is the target's current metrics (hacking); zero for declared.
func (r *Run) Metrics() schemas.HackingMetrics { return r.m }

// Earned is the money stolen so far (harvest), as an expectation.
func (r *Run) Earned() float64 { return r.earned }

// IncomeRate is the harvest's expected income per game second (0 for other
// phases).
func (r *Run) IncomeRate() float64 {
	if r.kind != kindHarvest {
		return 0
	}
	return math.Min(r.rate*r.perBatch, math.MaxFloat64)
}

// Threads is the helper threads running now (0 for declared and once done).
func (r *Run) Threads() int {
	if r.done {
		return 0
	}
	var n int64
	switch r.kind {
	case kindTill:
		n = r.curW
	case kindSow:
		n = r.curG + r.curW
	case kindHarvest:
		n = mulSat(r.slots, r.batch.Threads(), math.MaxInt32)
	}
	return int(n)
}

// UsedMiB is the helper RAM in use now, at most the budget (0 once done).
func (r *Run) UsedMiB() int64 {
	if r.done {
		return 0
	}
	switch r.kind {
	case kindDeclared:
		return r.used
	case kindTill:
		return mulSat(r.curW, r.p.WeakenThreadMiB, r.p.MaxMiB)
	case kindSow:
		return r.p.growWeakenMiB(r.curG, r.curW)
	default:
		return mulSat(r.slots, r.batch.MiB, r.p.MaxMiB)
	}
}
