package workload

import "math"

// harvestFor lets s game seconds of harvest pass at the current rate.
func (r *Run) harvestFor(s float64) {
	r.elapsed += s
	r.batches += r.rate * s
	r.earned = math.Min(r.earned+r.rate*s*r.perBatch, math.MaxFloat64)
}

// SetHelpers changes the helper RAM the run has from now on: the memory
// manager granted it more, or some of it was lost or given back. Work
// already done stays done. Below the phase's minimum the run makes no
// progress until it has more again.
//
//   - declared: the rest of the work goes at the new rate (progress is
//     proportional to helper RAM, up to helpers_full_mib).
//   - till and sow: threads of the round under way that no longer fit are
//     lost; more RAM adds threads from the next round on, as a task that
//     launches helpers at each round does (or to a round that has not
//     begun: no time passed in it).
//   - harvest: fewer batch slots at once; more slots add income only once
//     their first batches have run a whole cycle (4T + 2 spacing).
func (r *Run) SetHelpers(helpersMiB int64) {
	helpersMiB = max(helpersMiB, 0)
	if r.done || helpersMiB == r.helpers {
		return
	}
	p := r.p
	r.helpers = helpersMiB
	switch r.kind {
	case kindDeclared:
		if r.full <= 0 {
			return // work_s regardless of helpers
		}
		used := min(helpersMiB, r.full)
		r.used = used
		if used == 0 {
			return // Advance makes no progress while it has none
		}
		share := r.elapsed / r.duration
		r.duration = r.workS * float64(r.full) / float64(used)
		r.elapsed = share * r.duration
	case kindTill:
		r.afford = min(helpersMiB/p.WeakenThreadMiB, p.MaxThreads)
		r.curW = min(r.curW, r.afford)
		if r.roundPos == 0 {
			r.startRound() // the round has not begun: its threads are planned anew
		}
	case kindSow:
		r.afford = 0
		if p.growWeakenMiB(1, 1) <= helpersMiB {
			r.afford = p.sowFit(helpersMiB)
		}
		if r.curG > r.afford {
			r.curG = r.afford
			r.curW = 0
			if r.curG > 0 {
				r.curW = max(p.weakenFor(float64(r.curG)*p.GrowSecPerThread), 1)
			}
		}
		if r.roundPos == 0 {
			r.startRound() // the round has not begun: its threads are planned anew
		}
	case kindHarvest:
		rate, per, slots, b := 0.0, 0.0, int64(0), Batch{}
		if plan, err := p.PlanHarvest(r.m); err == nil {
			switch {
			case helpersMiB >= plan.Batch.MiB:
				b, slots = plan.Batch, min(plan.Overlap, helpersMiB/plan.Batch.MiB)
			case helpersMiB >= plan.MinBatch.MiB:
				if lb, err := p.largestBatch(r.m, plan.MinBatch, plan.Batch.Hack, helpersMiB); err == nil {
					b, slots = lb, 1
				}
			}
			if slots > 0 {
				rate = math.Min(float64(slots)/plan.CycleSeconds, 1/(4*p.Spacing.Seconds()))
				per = b.Steal * r.m.MaxMoney * r.m.HackChance
			}
			if rate*per > r.rate*r.perBatch {
				// The new batches run a cycle before they pay.
				r.batch, r.slots = b, slots
				r.nextRate, r.nextPerBatch, r.nextAt, r.hasNext = rate, per, r.elapsed+plan.CycleSeconds, true
				return
			}
		}
		r.batch, r.slots, r.rate, r.perBatch, r.hasNext = b, slots, rate, per, false
	}
}
