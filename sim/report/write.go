package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/taskselector/taskselector/sim"
)

// File names written into the output folder.
const (
	ReportFile = "report.md"
	JSONFile   = "results.json"
	ScaleFile  = "scale.md"
)

// WriteJSON writes {"runs": [...]} to w.
func WriteJSON(w io.Writer, res *Results) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(struct {
		Runs []Record `json:"runs"`
	}{res.Runs}); err != nil {
		return fmt.Errorf("report: json: %w", err)
	}
	return nil
}

// Write writes the Markdown report, the JSON results and every plot into
// dir, creating it if needed. It returns the paths written.
func Write(dir string, res *Results) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	plots, err := writePlots(dir, res)
	if err != nil {
		return nil, err
	}
	var js bytes.Buffer
	if err := WriteJSON(&js, res); err != nil {
		return nil, err
	}
	paths := []string{filepath.Join(dir, ReportFile), filepath.Join(dir, JSONFile)}
	if err := os.WriteFile(paths[1], js.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	if err := os.WriteFile(paths[0], []byte(Markdown(res)), 0o644); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	for _, p := range plots {
		paths = append(paths, filepath.Join(dir, p+".png"), filepath.Join(dir, p+".svg"))
	}
	return paths, nil
}

func fmtNum(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "∞"
	case v == 0:
		return "0"
	case math.Abs(v) >= 1e6:
		return fmt.Sprintf("%.3g", v)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 1:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

func val(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
}

func ival(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

func ratio(a, b float64) string {
	switch {
	case a == 0 && b == 0:
		return "— (both 0)"
	case b == 0:
		return "∞"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func goodputOf(r *Record) float64 {
	if r == nil {
		return 0
	}
	if r.IncomePerS != nil {
		return *r.IncomePerS
	}
	return val(r.PhasesPerH)
}

// bdOld is a bound record's old income bound (nil for none).
func bdOld(r *Record) *float64 {
	if r == nil {
		return nil
	}
	return r.BoundOldPerS
}

// pctOf is a as a percentage of b, or "–" when b is 0.
func pctOf(a, b float64) string {
	if b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f %%", 100*a/b)
}

func gibStr(mib int64) string { return fmt.Sprintf("%.1f", float64(mib)/1024) }

// Headline returns the headline tables (Markdown) of res.
func Headline(res *Results) string {
	var b strings.Builder
	levels := func(wl string) []float64 {
		var ls []float64
		for _, r := range res.Runs {
			if r.Workload == wl && !slices.Contains(ls, r.RAMGiB) {
				ls = append(ls, r.RAMGiB)
			}
		}
		sort.Float64s(ls)
		return ls
	}
	feas := map[int]Feasibility{}
	for _, f := range res.Feasible {
		feas[f.RAMGiB] = f
	}
	if ls := levels(sim.WorkloadEarlyGame); len(ls) > 0 {
		fmt.Fprintf(&b, "**early-game** (hacking profile, 12 targets, income in $/s averaged over a run of %v; failed launches per hour; bound: the prep-aware bound for that run length, old bound: the earlier one, which ignores prep and run length)\n\n", res.Plan.EarlyDuration)
		b.WriteString("| RAM GiB | largest host GiB | selector $/s | naive $/s | bound $/s | selector % of bound | old bound $/s | selector % of old bound | selector ÷ naive | failed/h selector | failed/h naive | stranded sel / naive | dup sel | at harvest sel / naive |\n")
		b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, l := range ls {
			s := res.Find(sim.WorkloadEarlyGame, l, sim.PolicySelector)
			n := res.Find(sim.WorkloadEarlyGame, l, sim.PolicyNaive)
			bd := res.Find(sim.WorkloadEarlyGame, l, sim.PolicyBound)
			if s == nil || n == nil {
				continue
			}
			f := feas[int(l)]
			old := 0.0
			if bd != nil {
				old = val(bd.BoundOldPerS)
			}
			fmt.Fprintf(&b, "| %g | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d / %d | %d | %d / %d |\n", l, gibStr(f.LargestHostMiB),
				fmtNum(goodputOf(s)), fmtNum(goodputOf(n)), fmtNum(goodputOf(bd)), pctOf(goodputOf(s), goodputOf(bd)),
				fmtNum(old), pctOf(goodputOf(s), old), ratio(goodputOf(s), goodputOf(n)),
				fmtNum(val(s.FailedLaunchesPerH)), fmtNum(val(n.FailedLaunchesPerH)), ival(s.StrandedTargets), ival(n.StrandedTargets),
				ival(s.DuplicateTasks), ival(s.TargetsAtLastPhase), ival(n.TargetsAtLastPhase))
		}
		b.WriteString("\n")
	}
	if ls := levels(sim.WorkloadFleet); len(ls) > 0 {
		fmt.Fprintf(&b, "**fleet** (declared profile, 96 targets of three sizes, random crashes; phases completed per hour over a run of %v; the declared bound is unchanged, so the old bound equals it)\n\n", res.Plan.FleetDuration)
		b.WriteString("| RAM % of demand | RAM GiB | selector ph/h | naive ph/h | bound ph/h | selector % of bound | selector ÷ naive | failed/h selector | failed/h naive | stranded sel / naive | dup sel |\n")
		b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, l := range ls {
			s := res.Find(sim.WorkloadFleet, l, sim.PolicySelector)
			n := res.Find(sim.WorkloadFleet, l, sim.PolicyNaive)
			bd := res.Find(sim.WorkloadFleet, l, sim.PolicyBound)
			if s == nil || n == nil {
				continue
			}
			fmt.Fprintf(&b, "| %g | %.1f | %s | %s | %s | %.0f %% | %s | %s | %s | %d / %d | %d |\n", val(s.RAMPct), l,
				fmtNum(goodputOf(s)), fmtNum(goodputOf(n)), fmtNum(goodputOf(bd)), 100*goodputOf(s)/math.Max(goodputOf(bd), 1e-300),
				ratio(goodputOf(s), goodputOf(n)), fmtNum(val(s.FailedLaunchesPerH)), fmtNum(val(n.FailedLaunchesPerH)),
				ival(s.StrandedTargets), ival(n.StrandedTargets), ival(s.DuplicateTasks))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// Goals evaluates the goals on res and explains each gap it can
// trace to a cause in the data.
func Goals(res *Results) string {
	var b strings.Builder
	feas := map[int]Feasibility{}
	for _, f := range res.Feasible {
		feas[f.RAMGiB] = f
	}
	mark := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	for _, r := range res.Runs {
		if r.Workload != sim.WorkloadEarlyGame || r.Policy != sim.PolicySelector || r.RAMGiB > 64 {
			continue
		}
		n := res.Find(r.Workload, r.RAMGiB, sim.PolicyNaive)
		if n == nil {
			continue
		}
		si, ni := goodputOf(&r), goodputOf(n)
		sf, nf := val(r.FailedLaunchesPerH), val(n.FailedLaunchesPerH)
		incomeOK := si >= 2*ni && si > 0
		failOK := nf >= 10*sf && nf > 0
		strandOK := ival(r.StrandedTargets) == 0
		fmt.Fprintf(&b, "- early-game %g GiB: income ≥ 2× naive: %s (%s vs %s); ≥ 10× fewer failed launches: %s (%s vs %s per hour); no stranded targets: %s (%d).\n",
			r.RAMGiB, mark(incomeOK), fmtNum(si), fmtNum(ni), mark(failOK), fmtNum(sf), fmtNum(nf), mark(strandOK), ival(r.StrandedTargets))
		if !incomeOK {
			f := feas[int(r.RAMGiB)]
			var why []string
			if f.MinHarvestMiB > f.LargestHostMiB {
				why = append(why, fmt.Sprintf("the smallest harvest task (%s GiB: wrapper + one batch of one hack thread) is larger than the largest host (%s GiB), so no policy can earn anything while a task's helpers must sit on its wrapper's host (the old bound is %s; the prep-aware bound, %s, lets helpers sit anywhere)",
					gibStr(f.MinHarvestMiB), gibStr(f.LargestHostMiB), fmtNum(val(bdOld(res.Find(r.Workload, r.RAMGiB, sim.PolicyBound)))),
					fmtNum(goodputOf(res.Find(r.Workload, r.RAMGiB, sim.PolicyBound)))))
			}
			if f.MinSowMiB > f.LargestHostMiB {
				why = append(why, fmt.Sprintf("the smallest sow task (%s GiB: wrapper + one 12:1 grow/weaken step, the workload model's sow minimum) is larger than the largest host (%s GiB), so no target can ever be sown and reach harvest; every target starts in till or sow",
					gibStr(f.MinSowMiB), gibStr(f.LargestHostMiB)))
			}
			if len(why) > 0 {
				fmt.Fprintf(&b, "  - cause: %s.\n", strings.Join(why, "; and "))
			}
		}
	}
	for _, r := range res.Runs {
		if r.Workload != sim.WorkloadFleet || r.Policy != sim.PolicySelector || val(r.RAMPct) < 25 {
			continue
		}
		bd := res.Find(r.Workload, r.RAMGiB, sim.PolicyBound)
		share := goodputOf(&r) / math.Max(goodputOf(bd), 1e-300)
		fmt.Fprintf(&b, "- fleet %g %%: selector ≥ 70 %% of bound: %s (%.0f %%).\n", val(r.RAMPct), mark(share >= 0.7), 100*share)
	}
	dups := 0
	for _, r := range res.Runs {
		if r.Policy == sim.PolicySelector {
			dups += ival(r.DuplicateTasks)
		}
	}
	fmt.Fprintf(&b, "- selector duplicate tasks over every run: %d (%s).\n", dups, mark(dups == 0))
	return b.String()
}

// Markdown renders the full report.
func Markdown(res *Results) string {
	var b strings.Builder
	p := res.Plan
	mode := "full"
	if p.Quick {
		mode = "quick"
	}
	fmt.Fprintf(&b, "# taskselector benchmark: constrained-RAM goodput\n\n")
	fmt.Fprintf(&b, "Generated by `go run ./cmd/bench` (%s mode, seed %d) in %.1f s of real time. Every run is the deterministic simulator of package `sim` driving the real `selector` engine (default configuration) or the naive policy in virtual time; the same seed gives the same numbers.\n\n",
		mode, p.Seed, res.Elapsed.Seconds())
	c := res.Config
	fmt.Fprintf(&b, "Settings: early-game runs last %v, fleet runs %v with %.3g crashes per task-hour (silent: the task vanishes without an event). Policy tick %v, heartbeats every %v, host status every %v, bus latency %v each way, reply timeout %v, helpers start %v after the wrapper, no lost messages.\n\n",
		p.EarlyDuration, p.FleetDuration, p.FleetCrashRate, c.Tick, c.HeartbeatInterval, c.StatusInterval, c.Latency, c.ReplyTimeout, c.HelperDelay)
	b.WriteString("## Headline\n\n")
	b.WriteString(Headline(res))
	b.WriteString("![income against RAM](" + PlotGoodputEarly + ".png)\n![phases against RAM](" + PlotGoodputFleet + ".png)\n\n")
	b.WriteString("## Goals\n\n")
	b.WriteString(Goals(res))
	b.WriteString("\n## Failed launches\n\n")
	b.WriteString("![failed launches, early-game](" + PlotFailedEarly + ".png)\n![failed launches, fleet](" + PlotFailedFleet + ".png)\n\n")
	b.WriteString("Causes, counted at the workers and the edge over the whole run (`unanswered`: the request or its reply was lost or late):\n\n")
	b.WriteString("| workload | RAM GiB | policy | failed/h | causes (counts over the run) |\n|---|---:|---|---:|---|\n")
	for _, r := range res.Runs {
		if r.Policy == sim.PolicyBound {
			continue
		}
		fmt.Fprintf(&b, "| %s | %.1f | %s | %s | %s |\n", r.Workload, r.RAMGiB, r.Policy, fmtNum(val(r.FailedLaunchesPerH)), causes(r.FailureCauses))
	}
	b.WriteString("\n## Every run\n\n")
	b.WriteString("| workload | RAM GiB | policy | goodput | useful RAM | time to last phase | at last phase | stranded | duplicates | launches | crashes |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range res.Runs {
		unit := "ph/h"
		if r.IncomePerS != nil {
			unit = "$/s"
		}
		if r.Policy == sim.PolicyBound {
			fmt.Fprintf(&b, "| %s | %.1f | bound | %s %s | | | | | | | |\n", r.Workload, r.RAMGiB, fmtNum(goodputOf(&r)), unit)
			continue
		}
		ttl := "not reached"
		if r.TimeToLastPhaseS != nil {
			ttl = fmt.Sprintf("%.0f s", *r.TimeToLastPhaseS)
		}
		fmt.Fprintf(&b, "| %s | %.1f | %s | %s %s | %.1f %% | %s | %d/%d | %d | %d | %d | %d |\n", r.Workload, r.RAMGiB, r.Policy,
			fmtNum(goodputOf(&r)), unit, 100*val(r.UsefulRAMFraction), ttl, ival(r.TargetsAtLastPhase), r.Targets,
			ival(r.StrandedTargets), ival(r.DuplicateTasks), derefU(r.Launches), derefU(r.Crashes))
	}
	b.WriteString("\n## Feasibility of the early-game levels\n\n")
	b.WriteString("The smallest task of each phase over the 12 targets (wrapper + minimum helpers) against the largest host. A phase whose smallest task exceeds the largest host cannot run at that level under any policy.\n\n")
	b.WriteString("| RAM GiB | largest host GiB | smallest till GiB | smallest sow GiB | smallest harvest GiB |\n|---:|---:|---:|---:|---:|\n")
	for _, f := range res.Feasible {
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s |\n", f.RAMGiB, gibStr(f.LargestHostMiB), gibStr(f.MinTillMiB), gibStr(f.MinSowMiB), gibStr(f.MinHarvestMiB))
	}
	b.WriteString("\n## Timelines\n\n")
	for _, tl := range res.Timelines {
		fmt.Fprintf(&b, "![%s %s %s](%s.png)\n", tl.Workload, tl.Level, tl.Policy, TimelineName(tl))
	}
	b.WriteString(`
## How to read this

- **Worlds.** early-game spreads its total RAM the way a fresh game does: home (8 GiB), then the
  world's servers in the order a player roots them (4–64 GiB), then purchased 64 GiB servers; the
  host where the total is reached keeps the rest busy with foreign use. fleet runs 96 declared
  targets (32 each of 0.5, 2 and 6 GiB tasks, a prep phase then a repeating serve phase) on 8 GiB
  hosts, with RAM at the given share of what every task at full size needs at once.
- **naive** books only the wrapper, sends no helper size (the task asks for its full helpers after
  it starts and fails with helpers_unavailable when the host has no room), launches every idle
  target on every tick without waiting for heartbeats, has no backoff and no stale detection.
- **bound** is computed offline for the run's length (package sim's documentation has the
  proof). hacking: the fleet-wide prep-aware bound, max over targets of (best income per
  helper MiB-second) × ((RAM − one wrapper) × run length − the RAM-seconds the target's till and
  sow need at least) / run length; it holds whether or not helpers may sit on other hosts than
  their wrapper. **old bound** (bound_old_income_per_s in the JSON): the usable helper RAM times
  the best income per MiB-second, each target capped at its full-harvest income, counting only
  hosts and targets where a harvest fits; it ignores till, sow and the run length. declared: the
  RAM-seconds of the run spent on the cheapest phase completions, with one task per target at a
  time (unchanged; bound_old_phases_per_h equals it). bound_loose_income_per_s in the JSON is the
  plain "total RAM × best rate". Every run in the JSON carries its length, duration_s.
- **useful RAM** is helper MiB-seconds of work that counted over the MiB-seconds the hosts offer.
  **stranded**: a target with no task while some host had room for its smallest task for over a
  minute. **duplicates**: tasks started while their target had a live task.
`)
	return b.String()
}

func causes(m map[string]uint64) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func derefU(p *uint64) uint64 {
	if p == nil {
		return 0
	}
	return *p
}
