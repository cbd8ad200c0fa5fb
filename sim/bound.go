package sim

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

// BoundResult is the offline upper bound of one world (see the package doc).
type BoundResult struct {
	// Duration is the run length the bound is for.
	Duration time.Duration
	// IncomePerSecond bounds a hacking world's income over a run of
	// Duration: the fleet-wide, prep-aware bound.
	IncomePerSecond float64
	// IncomeOld is the earlier bound: it ignores prep and the run length
	// and filters hosts by the smallest harvest, which holds only while a
	// task's helpers share its wrapper's host.
	IncomeOld float64
	// IncomeLoose is the brief's looser form: total RAM × the best income
	// per MiB-second over the targets.
	IncomeLoose float64
	// PhasesPerHour bounds a declared world's completed phases per hour
	// over a run of Duration.
	PhasesPerHour float64
	// PhasesPerHourOld is the declared bound the earlier reports printed;
	// the declared bound has not changed, so it equals PhasesPerHour.
	PhasesPerHourOld float64
	// Hacking reports which of the two applies.
	Hacking bool
}

// Bound computes the upper bound of world for runs of length d.
func Bound(params workload.Params, world World, d time.Duration) (BoundResult, error) {
	if len(world.Targets) == 0 {
		return BoundResult{}, nil
	}
	hacking := world.Targets[0].Spec.Profile == schemas.ProfileHacking
	for _, t := range world.Targets {
		if (t.Spec.Profile == schemas.ProfileHacking) != hacking {
			return BoundResult{}, fmt.Errorf("sim: bound: world %s mixes profiles", world.Name)
		}
	}
	if hacking {
		b, err := hackingBound(params, world)
		if err != nil {
			return BoundResult{}, err
		}
		b.IncomePerSecond, err = PrepAwareBound(params, world, d)
		b.Duration = d
		return b, err
	}
	b, err := declaredBound(params, world, d)
	b.Duration = d
	b.PhasesPerHourOld = b.PhasesPerHour
	return b, err
}

// PrepMiBSeconds is P_j of the package doc: a lower bound on the helper
// MiB-seconds that bringing a hacking target from metrics m to its harvest
// phase takes. Till: ceil((sec - min - 1) / 0.05) weaken thread-rounds.
// Sow: ln(0.99 max / money) / (k + 1/money) grow thread-rounds, each with
// at least 0.004/0.05 of a weaken thread. Every thread-round holds its
// thread's RAM for a round, max(4T, spacing).
func PrepMiBSeconds(params workload.Params, m schemas.HackingMetrics) float64 {
	round := math.Max(4*m.HackTimeMS/1000, params.Spacing.Seconds())
	var p float64
	if excess := m.Security - m.MinSecurity - 1; excess > 0 {
		w := math.Ceil(excess/params.WeakenPerThread - 1e-9)
		p += w * float64(params.WeakenThreadMiB) * round
	}
	goal := 0.99 * m.MaxMoney
	if k := m.GrowthLogPerThread; m.Money >= 1 && m.Money < goal && k > 0 {
		g := math.Log(goal/m.Money) / (k + 1/m.Money)
		// Weaken per grow thread, rounded down a hair for float noise.
		wPerG := params.GrowSecPerThread / params.WeakenPerThread * (1 - 1e-9)
		p += g * (float64(params.GrowThreadMiB) + wPerG*float64(params.WeakenThreadMiB)) * round
	}
	return p
}

// PrepAwareBound is the fleet-wide, prep-aware income bound of the package
// doc for a run of length d: max_j r_j · ((R - w)·H - P_j)⁺ / H.
func PrepAwareBound(params workload.Params, world World, d time.Duration) (float64, error) {
	H := d.Seconds()
	if H <= 0 {
		return 0, nil
	}
	usable := float64(world.AvailableMiB()-params.WrapperMiB) * H
	best := 0.0
	for _, t := range world.Targets {
		m := *t.Spec.Metrics
		r, err := params.IncomePerMiBSecond(m)
		if err != nil {
			return 0, fmt.Errorf("sim: bound: %s: %w", t.Name, err)
		}
		if left := usable - PrepMiBSeconds(params, m); r > 0 && left > 0 {
			best = max(best, r*left/H)
		}
	}
	return best, nil
}

type knapItem struct {
	rate float64 // value per unit of resource (hacking: income per MiB-s)
	cost float64 // resource per unit of value (declared: MiB-s per phase)
	cap  float64 // most value the item can give
}

func hackingBound(params workload.Params, world World) (BoundResult, error) {
	var items []knapItem
	best := 0.0
	smallest := int64(math.MaxInt64)
	var largestHost int64
	for _, h := range world.Hosts {
		largestHost = max(largestHost, h.CapacityMiB-h.ForeignMiB)
	}
	for _, t := range world.Targets {
		m := *t.Spec.Metrics
		r, err := params.IncomePerMiBSecond(m)
		if err != nil {
			return BoundResult{}, fmt.Errorf("sim: bound: %s: %w", t.Name, err)
		}
		if r <= 0 {
			continue
		}
		best = max(best, r)
		plan, err := params.PlanHarvest(m)
		if err != nil {
			continue
		}
		minMiB := params.WrapperMiB + plan.MinBatch.MiB
		if minMiB > largestHost {
			continue // its smallest harvest fits no host
		}
		smallest = min(smallest, minMiB)
		items = append(items, knapItem{rate: r, cap: plan.IncomePerSecond})
	}
	b := BoundResult{Hacking: true, IncomeLoose: float64(world.AvailableMiB()) * best}
	var usable float64
	for _, h := range world.Hosts {
		if avail := h.CapacityMiB - h.ForeignMiB; avail >= smallest {
			usable += float64(avail - params.WrapperMiB)
		}
	}
	slices.SortFunc(items, func(a, b knapItem) int {
		switch {
		case a.rate > b.rate:
			return -1
		case a.rate < b.rate:
			return 1
		}
		return 0
	})
	for _, it := range items {
		if usable <= 0 {
			break
		}
		ram := math.Min(usable, it.cap/it.rate)
		b.IncomeOld += ram * it.rate
		usable -= ram
	}
	return b, nil
}

func declaredBound(params workload.Params, world World, d time.Duration) (BoundResult, error) {
	H := d.Seconds()
	var items []knapItem
	for _, t := range world.Targets {
		spent := 0.0
		for i, ph := range t.Spec.Phases {
			est, err := params.Estimate(&t.Spec, ph.Type)
			if err != nil {
				return BoundResult{}, fmt.Errorf("sim: bound: %s: %w", t.Name, err)
			}
			cost := float64(est.FullMiB()) * ph.WorkS
			var n float64
			switch {
			case ph.WorkS <= 0:
				continue // free and instant: no bound from RAM; not in our workloads
			case i == len(t.Spec.Phases)-1 && ph.Repeat:
				n = math.Floor(math.Max(H-spent, 0) / ph.WorkS)
			case spent+ph.WorkS <= H:
				n = 1
			}
			spent += ph.WorkS
			if n > 0 {
				items = append(items, knapItem{cost: cost, cap: n})
			}
		}
	}
	slices.SortFunc(items, func(a, b knapItem) int {
		switch {
		case a.cost < b.cost:
			return -1
		case a.cost > b.cost:
			return 1
		}
		return 0
	})
	budget := float64(world.AvailableMiB()) * H
	phases := 0.0
	for _, it := range items {
		if budget <= 0 {
			break
		}
		n := math.Min(it.cap, budget/it.cost)
		phases += n
		budget -= n * it.cost
	}
	return BoundResult{PhasesPerHour: phases / d.Hours()}, nil
}
