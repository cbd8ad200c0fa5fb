// Package report runs taskselector's benchmark suite on the cluster
// simulator (package sim) and writes its results: a JSON document of every
// run, a Markdown report and plots drawn with gonum/plot.
package report

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/taskselector/taskselector/sim"
	"github.com/taskselector/taskselector/workload"
)

// Plan says which runs to make.
type Plan struct {
	Seed           uint64
	EarlyGameGiB   []int
	FleetPct       []float64
	EarlyDuration  time.Duration // virtual time of an early-game run
	FleetDuration  time.Duration // virtual time of a fleet run
	FleetCrashRate float64       // crashes per task-hour in the fleet runs
	// Timelines: the early-game and fleet levels whose runs are drawn as
	// timelines (one per policy).
	TimelineGiB int
	TimelinePct float64
	Parallel    int // runs at once [GOMAXPROCS]
	Quick       bool
}

// DefaultPlan is the full suite, or with quick a reduced one that runs in
// well under a minute.
func DefaultPlan(quick bool) Plan {
	p := Plan{
		Seed:           1,
		EarlyGameGiB:   sim.EarlyGameLevels,
		FleetPct:       sim.FleetLevels,
		EarlyDuration:  4 * time.Hour,
		FleetDuration:  2 * time.Hour,
		FleetCrashRate: 1,
		TimelineGiB:    256,
		TimelinePct:    25,
	}
	if quick {
		p.Quick = true
		p.EarlyGameGiB = []int{8, 32, 64, 256, 1024}
		p.FleetPct = []float64{5, 25, 100}
		p.EarlyDuration = time.Hour
		p.FleetDuration = 30 * time.Minute
	}
	return p
}

// Record is one run's measures as the JSON output carries them. Fields that
// do not apply (the bound's failures, for instance) are null.
type Record struct {
	Workload           string   `json:"workload"`
	RAMGiB             float64  `json:"ram_gib"`
	RAMPct             *float64 `json:"ram_pct,omitempty"` // fleet: % of full demand
	Policy             string   `json:"policy"`
	IncomePerS         *float64 `json:"income_per_s,omitempty"`
	IncomeLateHalfPerS *float64 `json:"income_late_half_per_s,omitempty"`
	PhasesPerH         *float64 `json:"phases_per_h,omitempty"`
	// PhasesLateHalfPerH is the rate of completed phases in the run's
	// second half (fleet), to compare with the first half's.
	PhasesLateHalfPerH *float64          `json:"phases_late_half_per_h,omitempty"`
	FailedLaunchesPerH *float64          `json:"failed_launches_per_h"`
	FailureCauses      map[string]uint64 `json:"failure_causes"`
	UsefulRAMFraction  *float64          `json:"useful_ram_fraction"`
	TimeToLastPhaseS   *float64          `json:"time_to_last_phase_s"` // null: not every target got there
	TargetsAtLastPhase *int              `json:"targets_at_last_phase"`
	Targets            int               `json:"targets"`
	Hosts              int               `json:"hosts"`
	StrandedTargets    *int              `json:"stranded_targets"`
	DuplicateTasks     *int              `json:"duplicate_tasks"`
	Launches           *uint64           `json:"launches"`
	Crashes            *uint64           `json:"crashes"`
	DurationS          float64           `json:"duration_s"`
	Seed               uint64            `json:"seed"`
	BoundLoosePerS     *float64          `json:"bound_loose_income_per_s,omitempty"`
	// The runs of policy bound: the earlier bound beside the prep-aware
	// one (both for a run of DurationS).
	BoundOldPerS   *float64 `json:"bound_old_income_per_s,omitempty"`
	BoundOldPhases *float64 `json:"bound_old_phases_per_h,omitempty"`
}

// Feasibility says, for one early-game level, which phases fit at all.
type Feasibility struct {
	RAMGiB         int
	LargestHostMiB int64
	// Smallest task (wrapper + minimum helpers) of each phase over the
	// targets.
	MinTillMiB, MinSowMiB, MinHarvestMiB int64
}

// Results is everything one suite produced.
type Results struct {
	Plan      Plan
	Runs      []Record
	Timelines []Timeline
	Feasible  []Feasibility
	Config    sim.Config // the simulator settings shared by the runs
	Elapsed   time.Duration
}

// Timeline is one run drawn over time.
type Timeline struct {
	Workload string
	Level    string
	Policy   string
	Samples  []sim.Sample
	Hacking  bool
}

type job struct {
	workload string
	giB      int
	pct      float64
	policy   string
	world    sim.World
	cfg      sim.Config
	timeline bool
}

// Run executes the plan. Runs are independent and deterministic, so running
// several at once changes nothing but the time taken.
func Run(ctx context.Context, plan Plan) (*Results, error) {
	start := time.Now()
	base := sim.DefaultConfig()
	base.Seed = plan.Seed
	res := &Results{Plan: plan, Config: base}
	params := base.Params
	var jobs []job
	var bounds []Record
	for _, g := range plan.EarlyGameGiB {
		w := sim.EarlyGame(g)
		cfg := base
		cfg.Duration = plan.EarlyDuration
		for _, p := range []string{sim.PolicySelector, sim.PolicyNaive} {
			jobs = append(jobs, job{workload: sim.WorkloadEarlyGame, giB: g, policy: p, world: w, cfg: cfg, timeline: g == plan.TimelineGiB})
		}
		b, err := sim.Bound(params, w, cfg.Duration)
		if err != nil {
			return nil, err
		}
		bounds = append(bounds, boundRecord(sim.WorkloadEarlyGame, float64(g), nil, w, cfg, b))
		res.Feasible = append(res.Feasible, feasibility(params, g, w))
	}
	for _, pct := range plan.FleetPct {
		w := sim.Fleet(pct)
		cfg := base
		cfg.Duration = plan.FleetDuration
		cfg.CrashRate = plan.FleetCrashRate
		for _, p := range []string{sim.PolicySelector, sim.PolicyNaive} {
			jobs = append(jobs, job{workload: sim.WorkloadFleet, pct: pct, policy: p, world: w, cfg: cfg, timeline: pct == plan.TimelinePct})
		}
		b, err := sim.Bound(params, w, cfg.Duration)
		if err != nil {
			return nil, err
		}
		pc := pct
		bounds = append(bounds, boundRecord(sim.WorkloadFleet, gib(w.AvailableMiB()), &pc, w, cfg, b))
	}
	out := make([]*sim.Result, len(jobs))
	errs := make([]error, len(jobs))
	par := plan.Parallel
	if par <= 0 {
		par = runtime.GOMAXPROCS(0)
	}
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i := range jobs {
		if err := ctx.Err(); err != nil {
			break
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			if ctx.Err() != nil {
				errs[i] = ctx.Err()
				return
			}
			j := jobs[i]
			out[i], errs[i] = sim.RunPolicy(j.policy, j.cfg, j.world)
		}(i)
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	for i, j := range jobs {
		if errs[i] != nil {
			return nil, fmt.Errorf("report: %s %s: %w", j.world.Name, j.policy, errs[i])
		}
		r := out[i]
		var pct *float64
		if j.workload == sim.WorkloadFleet {
			p := j.pct
			pct = &p
		}
		res.Runs = append(res.Runs, record(j.workload, gib(j.world.AvailableMiB()), pct, j.policy, j.cfg, r))
		if j.timeline {
			lvl := fmt.Sprintf("%d GiB", j.giB)
			if j.workload == sim.WorkloadFleet {
				lvl = fmt.Sprintf("%g %%", j.pct)
			}
			res.Timelines = append(res.Timelines, Timeline{Workload: j.workload, Level: lvl, Policy: j.policy,
				Samples: r.Timeline, Hacking: j.workload == sim.WorkloadEarlyGame})
		}
	}
	res.Runs = append(res.Runs, bounds...)
	sort.SliceStable(res.Runs, func(a, b int) bool {
		ra, rb := res.Runs[a], res.Runs[b]
		if ra.Workload != rb.Workload {
			return ra.Workload < rb.Workload
		}
		if ra.RAMGiB != rb.RAMGiB {
			return ra.RAMGiB < rb.RAMGiB
		}
		return policyOrder(ra.Policy) < policyOrder(rb.Policy)
	})
	res.Elapsed = time.Since(start)
	return res, nil
}

func policyOrder(p string) int {
	switch p {
	case sim.PolicySelector:
		return 0
	case sim.PolicyNaive:
		return 1
	}
	return 2
}

func gib(mib int64) float64 { return float64(mib) / workload.MiBPerGiB }

func f64(v float64) *float64 { return &v }
func intp(v int) *int        { return &v }
func u64(v uint64) *uint64   { return &v }

func record(wl string, ram float64, pct *float64, policy string, cfg sim.Config, r *sim.Result) Record {
	rec := Record{
		Workload: wl, RAMGiB: ram, RAMPct: pct, Policy: policy,
		FailedLaunchesPerH: f64(r.FailedPerHour()), FailureCauses: r.FailureCauses,
		UsefulRAMFraction: f64(r.UsefulFraction()), TargetsAtLastPhase: intp(r.TargetsAtLast),
		Targets: r.Targets, Hosts: r.Hosts, StrandedTargets: intp(r.StrandedTargets),
		DuplicateTasks: intp(r.DuplicateTasks), Launches: u64(r.Launches), Crashes: u64(r.Crashes),
		DurationS: r.Duration.Seconds(), Seed: cfg.Seed,
	}
	if wl == sim.WorkloadEarlyGame {
		rec.IncomePerS = f64(r.IncomePerSecond())
		rec.IncomeLateHalfPerS = f64(r.IncomeLateHalf / (r.Duration.Seconds() / 2))
	} else {
		rec.PhasesPerH = f64(r.PhasesPerHour())
		rec.PhasesLateHalfPerH = f64(float64(r.PhasesLateHalf) / (r.Duration.Hours() / 2))
	}
	if r.TimeToLast >= 0 {
		rec.TimeToLastPhaseS = f64(r.TimeToLast.Seconds())
	}
	return rec
}

func boundRecord(wl string, ram float64, pct *float64, w sim.World, cfg sim.Config, b sim.BoundResult) Record {
	rec := Record{Workload: wl, RAMGiB: ram, RAMPct: pct, Policy: sim.PolicyBound, Targets: len(w.Targets),
		Hosts: len(w.Hosts), DurationS: b.Duration.Seconds(), Seed: cfg.Seed}
	if b.Hacking {
		rec.IncomePerS = f64(b.IncomePerSecond)
		rec.BoundOldPerS = f64(b.IncomeOld)
		rec.BoundLoosePerS = f64(b.IncomeLoose)
	} else {
		rec.PhasesPerH = f64(b.PhasesPerHour)
		rec.BoundOldPhases = f64(b.PhasesPerHourOld)
	}
	return rec
}

func feasibility(params workload.Params, g int, w sim.World) Feasibility {
	f := Feasibility{RAMGiB: g, MinTillMiB: -1, MinSowMiB: -1, MinHarvestMiB: -1}
	for _, h := range w.Hosts {
		f.LargestHostMiB = max(f.LargestHostMiB, h.CapacityMiB-h.ForeignMiB)
	}
	least := func(cur *int64, v int64) {
		if *cur < 0 || v < *cur {
			*cur = v
		}
	}
	for _, t := range w.Targets {
		for _, ph := range []struct {
			name string
			dst  *int64
		}{{workload.PhaseTill, &f.MinTillMiB}, {workload.PhaseSow, &f.MinSowMiB}, {workload.PhaseHarvest, &f.MinHarvestMiB}} {
			if est, err := params.Estimate(&t.Spec, ph.name); err == nil {
				least(ph.dst, est.MinMiB())
			}
		}
	}
	return f
}

// Find returns the record of one workload, level and policy.
func (r *Results) Find(wl string, ramGiB float64, policy string) *Record {
	for i := range r.Runs {
		x := &r.Runs[i]
		if x.Workload == wl && x.RAMGiB == ramGiB && x.Policy == policy {
			return x
		}
	}
	return nil
}
