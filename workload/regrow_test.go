package workload

import (
	"math"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// TestSetHelpersDeclared: the rest of a declared phase's work goes at the
// rate of its new helper RAM.
func TestSetHelpersDeclared(t *testing.T) {
	p := DefaultParams()
	spec := schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared,
		Phases: []schemas.Phase{{Type: "a", WrapperMiB: 10, HelpersMinMiB: 10, HelpersFullMiB: 100, WorkS: 100}}}
	r := newRun(t, p, &spec, "a", 50) // 200 s at half size
	r.Advance(100 * time.Second)      // half done
	r.SetHelpers(100)                 // the other half at full size: 50 s
	r.Advance(49 * time.Second)
	if r.Done() {
		t.Fatal("done early")
	}
	r.Advance(time.Second)
	if !r.Done() {
		t.Fatalf("not done after 150 s (progress %v)", r.Progress())
	}
	// No helpers: no progress.
	s := newRun(t, p, &spec, "a", 100)
	s.Advance(10 * time.Second)
	s.SetHelpers(0)
	s.Advance(time.Hour)
	if s.Done() || math.Abs(s.Progress()-0.1) > 1e-9 {
		t.Fatalf("progress %v without helpers", s.Progress())
	}
}

// TestSetHelpersTill: more RAM adds weaken threads from the next round;
// RAM lost takes threads of the round under way with it.
func TestSetHelpersTill(t *testing.T) {
	p := DefaultParams()
	spec := server(t, "joesguns").Spec(DemoLevel) // security 15, min 5: 200 threads to the minimum
	round := time.Duration(4*spec.Metrics.HackTimeMS*float64(time.Millisecond)) + time.Millisecond
	// A round that has not begun is planned anew.
	f := newRun(t, p, &spec, PhaseTill, 20*p.WeakenThreadMiB)
	f.SetHelpers(200 * p.WeakenThreadMiB)
	if f.Threads() != 200 {
		t.Fatalf("a round not begun runs %d threads after growing, want 200", f.Threads())
	}
	r := newRun(t, p, &spec, PhaseTill, 20*p.WeakenThreadMiB) // 1 per round
	r.Advance(time.Millisecond)
	r.SetHelpers(200 * p.WeakenThreadMiB)
	if r.Threads() != 20 {
		t.Fatalf("the round under way runs %d threads, want its 20", r.Threads())
	}
	r.Advance(round) // 15 -> 14
	if r.Threads() != 180 {
		t.Fatalf("next round runs %d threads, want 180 (what is left to the minimum)", r.Threads())
	}
	r.Advance(round) // 14 -> 5
	if !r.Done() || r.Metrics().Security != 5 {
		t.Fatalf("done %v security %v", r.Done(), r.Metrics().Security)
	}
	// Lost RAM: the round under way keeps only what still fits.
	l := newRun(t, p, &spec, PhaseTill, 200*p.WeakenThreadMiB)
	l.SetHelpers(10 * p.WeakenThreadMiB)
	l.Advance(round)
	if l.Metrics().Security != 14.5 {
		t.Fatalf("security %v after a round of 10 threads, want 14.5", l.Metrics().Security)
	}
	l.SetHelpers(0)
	l.Advance(10 * round)
	if l.Metrics().Security != 14.5 || l.Threads() != 0 {
		t.Fatalf("without helpers: security %v, %d threads", l.Metrics().Security, l.Threads())
	}
}

// TestSetHelpersHarvest: a harvest that gains batch slots earns at its old
// rate for one cycle, then at the new one; one that loses them earns less at
// once.
func TestSetHelpersHarvest(t *testing.T) {
	p := DefaultParams()
	spec := server(t, "n00dles").Spec(DemoLevel)
	spec.Metrics.Money = spec.Metrics.MaxMoney
	plan, err := p.PlanHarvest(*spec.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	cycle := time.Duration(plan.CycleSeconds * float64(time.Second))
	half := newRun(t, p, &spec, PhaseHarvest, plan.Overlap/2*plan.Batch.MiB)
	full := newRun(t, p, &spec, PhaseHarvest, plan.FullMiB)
	grow := newRun(t, p, &spec, PhaseHarvest, plan.Overlap/2*plan.Batch.MiB)
	grow.SetHelpers(plan.FullMiB)
	grow.Advance(cycle)
	half.Advance(cycle)
	if !near(grow.Earned(), half.Earned(), 1e-9) {
		t.Fatalf("first cycle after growing earns %v, at the old rate %v", grow.Earned(), half.Earned())
	}
	before := grow.Earned()
	grow.Advance(time.Hour)
	full.Advance(time.Hour)
	if !near(grow.Earned()-before, full.IncomeRate()*3600, 1e-9) {
		t.Fatalf("then earns %v an hour, full size %v", grow.Earned()-before, full.IncomeRate()*3600)
	}
	// Losing RAM below the smallest batch stops the income.
	grow.SetHelpers(plan.MinBatch.MiB - 1)
	e := grow.Earned()
	grow.Advance(time.Hour)
	if grow.Earned() != e || grow.UsedMiB() != 0 {
		t.Fatalf("earned %v without a batch, uses %d MiB", grow.Earned()-e, grow.UsedMiB())
	}
}
