package workload

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// runToDone advances r in steps of dt until done, failing after limit steps.
func runToDone(t *testing.T, r *Run, dt time.Duration, limit int) {
	t.Helper()
	for i := 0; i < limit && !r.Done(); i++ {
		r.Advance(dt)
	}
	if !r.Done() {
		t.Fatalf("%s run not done after %d steps of %v (progress %v, metrics %+v)", r.Phase(), limit, dt, r.Progress(), r.Metrics())
	}
}

func newRun(t *testing.T, p Params, spec *schemas.TargetSpec, phase string, helpers int64) *Run {
	t.Helper()
	r, err := p.NewRun(spec, phase, helpers)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTillRounds(t *testing.T) {
	p := DefaultParams()
	spec := server(t, "joesguns").Spec(DemoLevel) // security 15, min 5, T = 20.833 s
	round := 4 * spec.Metrics.HackTimeMS / 1000
	for _, tc := range []struct {
		threads int64
		rounds  float64 // to bring security to <= 6
		sec     float64
	}{
		{200, 1, 5},    // full size: straight to the minimum
		{400, 1, 5},    // more than needed changes nothing
		{100, 2, 5},    // 15 -> 10 -> 5
		{20, 9, 6},     // 1 per round
		{1, 180, 6},    // 0.05 per round
		{30, 6, 6},     // 1.5 per round: 15 -> 13.5 -> ... -> 6
		{150, 2, 5},    // 15 -> 7.5 -> 5
		{181, 1, 5.95}, // 181 threads bring 15 down to 5.95
		{179, 2, 5},    // 15 -> 6.05 -> 5
		{60, 3, 6},     // 15 -> 12 -> 9 -> 6
		{59, 4, 5},     // 15 -> 12.05 -> 9.1 -> 6.15 -> 5
		{2, 90, 6},     // 0.1 per round
		{3, 60, 6},     // 0.15 per round
		{7, 26, 5.9},   // 0.35 per round: 15 - 26*0.35
	} {
		r := newRun(t, p, &spec, PhaseTill, tc.threads*p.WeakenThreadMiB)
		if r.Threads() != int(min(tc.threads, 200)) {
			t.Errorf("%d threads: run uses %d", tc.threads, r.Threads())
		}
		r.Advance(1000 * time.Hour)
		if !r.Done() {
			t.Fatalf("%d threads: not done", tc.threads)
		}
		if got := r.Elapsed().Seconds() / round; math.Abs(got-tc.rounds) > 1e-6 {
			t.Errorf("%d threads: took %v rounds, want %v", tc.threads, got, tc.rounds)
		}
		if sec := r.Metrics().Security; math.Abs(sec-tc.sec) > 1e-9 {
			t.Errorf("%d threads: security %v, want %v", tc.threads, sec, tc.sec)
		}
		if next := HackingPhase(r.Metrics()); next != PhaseSow {
			t.Errorf("%d threads: next phase %s, want sow", tc.threads, next)
		}
		if r.Progress() != 1 || r.UsedMiB() != 0 || r.Threads() != 0 {
			t.Errorf("%d threads: done run reports progress %v, %d MiB, %d threads", tc.threads, r.Progress(), r.UsedMiB(), r.Threads())
		}
	}
	// A till with nothing to do still takes one round.
	m := *spec.Metrics
	m.Security = m.MinSecurity + 0.5
	r := newRun(t, p, hackingSpec(m), PhaseTill, p.WeakenThreadMiB)
	if r.Done() {
		t.Fatal("done before running")
	}
	r.Advance(time.Duration(round*1e9) - time.Millisecond)
	if r.Done() {
		t.Fatal("done before the round ended")
	}
	r.Advance(2 * time.Millisecond)
	if !r.Done() || !near(r.Metrics().Security, m.MinSecurity+0.45, 1e-12) {
		t.Fatalf("after one round: done %v, security %v", r.Done(), r.Metrics().Security)
	}
}

func TestSowScalesWithBudget(t *testing.T) {
	p := DefaultParams()
	spec := server(t, "joesguns").Spec(DemoLevel)
	spec.Metrics.Security = spec.Metrics.MinSecurity // after till
	est, err := p.Estimate(&spec, PhaseSow)
	if err != nil {
		t.Fatal(err)
	}
	full := newRun(t, p, &spec, PhaseSow, est.HelpersFullMiB)
	full.Advance(time.Hour)
	round := 4 * spec.Metrics.HackTimeMS / 1000
	if !full.Done() || math.Abs(full.Elapsed().Seconds()-round) > 1e-6 {
		t.Fatalf("full sow: done %v after %v, want one round of %v s", full.Done(), full.Elapsed(), round)
	}
	if HackingPhase(full.Metrics()) != PhaseHarvest || full.Metrics().Security != spec.Metrics.MinSecurity {
		t.Fatalf("full sow left %+v", full.Metrics())
	}
	for _, frac := range []float64{0.5, 0.25, 0.1, 0.02} {
		budget := int64(float64(est.HelpersFullMiB) * frac)
		r := newRun(t, p, &spec, PhaseSow, budget)
		if r.UsedMiB() > budget {
			t.Errorf("frac %v: uses %d MiB of %d", frac, r.UsedMiB(), budget)
		}
		r.Advance(10000 * time.Hour)
		if !r.Done() {
			t.Fatalf("frac %v: not done", frac)
		}
		// Growth is multiplicative, so rounds scale with 1/budget (a little
		// faster thanks to the $1 per thread grow adds first).
		ratio := r.Elapsed().Seconds() / full.Elapsed().Seconds()
		if ratio < 0.9/frac || ratio > 1/frac+1.5 {
			t.Errorf("frac %v: took %.2fx the full-size time, want about %.2fx", frac, ratio, 1/frac)
		}
		if got := HackingPhase(r.Metrics()); got != PhaseHarvest {
			t.Errorf("frac %v: next phase %s (metrics %+v)", frac, got, r.Metrics())
		}
		if sec := r.Metrics().Security; sec != spec.Metrics.MinSecurity {
			t.Errorf("frac %v: security drifted to %v", frac, sec)
		}
	}
}

func TestSowNoodlesMinStep(t *testing.T) {
	p := DefaultParams()
	spec := server(t, "n00dles").Spec(DemoLevel)
	r := newRun(t, p, &spec, PhaseSow, 13*p.GrowThreadMiB) // one 12:1 step
	if r.Threads() != 13 {
		t.Fatalf("threads %d, want 12 grow + 1 weaken", r.Threads())
	}
	// $70k -> (70k+12)*e^(12k) = $246k -> $866k -> capped at $1.75m: 3 rounds.
	round := time.Duration(4 * spec.Metrics.HackTimeMS * float64(time.Millisecond))
	r.Advance(round)
	if m := r.Metrics().Money; !near(m, (70e3+12)*math.Exp(12*spec.Metrics.GrowthLogPerThread), 1e-12) {
		t.Fatalf("money after one round %v", m)
	}
	runToDone(t, r, time.Second, 1000)
	if got := r.Elapsed(); got != 3*round {
		t.Errorf("took %v, want 3 rounds (%v)", got, 3*round)
	}
	if r.Metrics().Money != spec.Metrics.MaxMoney {
		t.Errorf("money %v, want max", r.Metrics().Money)
	}
}

func TestLifecycleThroughRuns(t *testing.T) {
	p := DefaultParams()
	for _, s := range EarlyGame() {
		if !s.Hackable(DemoLevel) {
			continue
		}
		spec := s.Spec(DemoLevel)
		phase, err := InitialPhase(&spec)
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		for len(seen) < 5 && phase != PhaseHarvest {
			seen = append(seen, phase)
			est, err := p.Estimate(&spec, phase)
			if err != nil {
				t.Fatalf("%s %s: %v", s.Name, phase, err)
			}
			// A scaled-down budget, as a small host would grant.
			budget := max(est.HelpersMinMiB, min(est.HelpersFullMiB, 30*MiBPerGiB))
			r := newRun(t, p, &spec, phase, budget)
			r.Advance(100000 * time.Hour)
			if !r.Done() {
				t.Fatalf("%s %s: not done", s.Name, phase)
			}
			next, complete, updated, err := AfterDone(&spec, phase, MetricsMap(r.Metrics()))
			if err != nil || complete || updated == nil {
				t.Fatalf("%s %s: AfterDone %q %v %v %v", s.Name, phase, next, complete, updated, err)
			}
			if next == phase {
				t.Fatalf("%s: %s done but the phase did not advance (metrics %+v)", s.Name, phase, r.Metrics())
			}
			spec, phase = *updated, next
		}
		if phase != PhaseHarvest {
			t.Fatalf("%s: phases %v never reached harvest", s.Name, seen)
		}
		est, err := p.Estimate(&spec, PhaseHarvest)
		if err != nil {
			t.Fatal(err)
		}
		r := newRun(t, p, &spec, PhaseHarvest, max(est.HelpersMinMiB, 30*MiBPerGiB))
		r.Advance(time.Hour)
		if r.Done() || !(r.Earned() > 0) {
			t.Errorf("%s harvest: done %v, earned %v", s.Name, r.Done(), r.Earned())
		}
	}
}

func TestHarvestIncome(t *testing.T) {
	p := DefaultParams()
	spec := server(t, "n00dles").Spec(DemoLevel)
	spec.Metrics.Money = spec.Metrics.MaxMoney
	est, err := p.Estimate(&spec, PhaseHarvest)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := p.PlanHarvest(*spec.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	full := newRun(t, p, &spec, PhaseHarvest, est.HelpersFullMiB)
	if full.UsedMiB() != est.HelpersFullMiB || full.Threads() != int(plan.Overlap*plan.Batch.Threads()) {
		t.Errorf("full harvest uses %d MiB, %d threads", full.UsedMiB(), full.Threads())
	}
	full.Advance(time.Hour)
	if full.Done() {
		t.Fatal("harvest finished")
	}
	if !near(full.Earned(), est.Value*3600, 1e-9) {
		t.Errorf("earned %v in an hour, want %v", full.Earned(), est.Value*3600)
	}
	// Half the batches in flight: half the income.
	half := newRun(t, p, &spec, PhaseHarvest, plan.Overlap/2*plan.Batch.MiB)
	half.Advance(time.Hour)
	if ratio := half.Earned() / full.Earned(); math.Abs(ratio-0.5) > 0.01 {
		t.Errorf("half the batches earn %.4f of full", ratio)
	}
	// Less than one full batch: one smaller batch, less income still.
	small := newRun(t, p, &spec, PhaseHarvest, plan.Batch.MiB/2)
	if small.UsedMiB() > plan.Batch.MiB/2 || small.UsedMiB() < plan.MinBatch.MiB {
		t.Errorf("small harvest uses %d MiB", small.UsedMiB())
	}
	small.Advance(time.Hour)
	one := newRun(t, p, &spec, PhaseHarvest, plan.Batch.MiB)
	one.Advance(time.Hour)
	if !(small.Earned() > 0 && small.Earned() < one.Earned() && one.Earned() < half.Earned()) {
		t.Errorf("earned: small %v, one batch %v, half %v", small.Earned(), one.Earned(), half.Earned())
	}
	// Metrics stay put while harvesting.
	if full.Metrics() != *spec.Metrics {
		t.Errorf("harvest changed metrics: %+v", full.Metrics())
	}
	// Progress is the share of the current batch.
	r := newRun(t, p, &spec, PhaseHarvest, est.HelpersFullMiB)
	r.Advance(p.Spacing) // a quarter of the 4*spacing between batches
	if pr := r.Progress(); math.Abs(pr-0.25) > 1e-9 {
		t.Errorf("progress %v after one spacing, want 0.25", pr)
	}
}

func TestDeclaredRun(t *testing.T) {
	p := DefaultParams()
	spec := declaredSpec(
		schemas.Phase{Type: "build", WrapperMiB: 64, HelpersMinMiB: 256, HelpersFullMiB: 4096, WorkS: 30},
		schemas.Phase{Type: "serve", WrapperMiB: 32, WorkS: 10, Repeat: true},
		schemas.Phase{Type: "noop"},
	)
	for _, tc := range []struct {
		phase   string
		helpers int64
		want    time.Duration
	}{
		{"build", 4096, 30 * time.Second},
		{"build", 8192, 30 * time.Second}, // more than full is no faster
		{"build", 1024, 120 * time.Second},
		{"build", 256, 480 * time.Second},
		{"serve", 0, 10 * time.Second},
		{"serve", 100, 10 * time.Second},
	} {
		r := newRun(t, p, spec, tc.phase, tc.helpers)
		r.Advance(tc.want - time.Millisecond)
		if r.Done() {
			t.Errorf("%s with %d MiB: done early", tc.phase, tc.helpers)
		}
		if pr := r.Progress(); !(pr > 0.99 && pr < 1) {
			t.Errorf("%s with %d MiB: progress %v just before the end", tc.phase, tc.helpers, pr)
		}
		r.Advance(time.Hour)
		if !r.Done() || r.Elapsed() != tc.want {
			t.Errorf("%s with %d MiB: done %v after %v, want %v", tc.phase, tc.helpers, r.Done(), r.Elapsed(), tc.want)
		}
	}
	r := newRun(t, p, spec, "build", 1024)
	if r.UsedMiB() != 1024 || r.Threads() != 0 || r.Metrics() != (schemas.HackingMetrics{}) {
		t.Errorf("declared run: %d MiB, %d threads, %+v", r.UsedMiB(), r.Threads(), r.Metrics())
	}
	if r := newRun(t, p, spec, "noop", 0); !r.Done() {
		t.Error("work_s 0 is not done at once")
	}
	if _, err := p.NewRun(spec, "build", 255); !errors.Is(err, ErrBelowMinimum) {
		t.Errorf("below minimum: %v", err)
	}
	if _, err := p.NewRun(spec, "deploy", 1000); !errors.Is(err, ErrUnknownPhase) {
		t.Errorf("unknown phase: %v", err)
	}
}

func TestRunBelowMinimum(t *testing.T) {
	p := DefaultParams()
	spec := server(t, "joesguns").Spec(DemoLevel)
	for _, phase := range []string{PhaseTill, PhaseSow, PhaseHarvest} {
		est, err := p.Estimate(&spec, phase)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.NewRun(&spec, phase, est.HelpersMinMiB-1); !errors.Is(err, ErrBelowMinimum) {
			t.Errorf("%s: %v", phase, err)
		}
		r, err := p.NewRun(&spec, phase, est.HelpersMinMiB)
		if err != nil {
			t.Fatalf("%s at minimum: %v", phase, err)
		}
		if r.UsedMiB() > est.HelpersMinMiB || r.UsedMiB() <= 0 {
			t.Errorf("%s at minimum uses %d MiB", phase, r.UsedMiB())
		}
	}
	zeroGrowth := *spec.Metrics
	zeroGrowth.GrowthLogPerThread = 0
	if _, err := p.NewRun(hackingSpec(zeroGrowth), PhaseSow, 1<<30); !errors.Is(err, ErrCannotGrow) {
		t.Errorf("sow without growth: %v", err)
	}
}

// Advancing in one step or many small ones reaches the same state: the
// closed-form skip over whole rounds agrees with round-by-round stepping.
func TestStepSizeIndependence(t *testing.T) {
	p := DefaultParams()
	spec := server(t, "joesguns").Spec(DemoLevel)
	sow := *spec.Metrics
	sow.Security = sow.MinSecurity
	tiny := sow
	tiny.Money = 0
	for _, tc := range []struct {
		name    string
		m       schemas.HackingMetrics
		phase   string
		helpers int64
	}{
		{"till 1 thread", *spec.Metrics, PhaseTill, p.WeakenThreadMiB},
		{"till 7 threads", *spec.Metrics, PhaseTill, 7 * p.WeakenThreadMiB},
		{"sow min step", sow, PhaseSow, 13 * p.GrowThreadMiB},
		{"sow 100 threads", sow, PhaseSow, 108 * p.GrowThreadMiB},
		{"sow from zero", tiny, PhaseSow, 40 * p.GrowThreadMiB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			one := newRun(t, p, hackingSpec(tc.m), tc.phase, tc.helpers)
			one.Advance(1 << 62)
			many := newRun(t, p, hackingSpec(tc.m), tc.phase, tc.helpers)
			runToDone(t, many, 7*time.Second, 10_000_000)
			if !one.Done() {
				t.Fatal("one step: not done")
			}
			a, b := one.Metrics(), many.Metrics()
			if !near(one.Elapsed().Seconds(), many.Elapsed().Seconds(), 1e-9) {
				t.Errorf("elapsed %v vs %v", one.Elapsed(), many.Elapsed())
			}
			if !near(a.Money, b.Money, 1e-6) || !near(a.Security, b.Security, 1e-9) {
				t.Errorf("metrics %+v vs %+v", a, b)
			}
			// A part-way stop agrees too.
			half := many.Elapsed() / 2
			x := newRun(t, p, hackingSpec(tc.m), tc.phase, tc.helpers)
			x.Advance(half)
			y := newRun(t, p, hackingSpec(tc.m), tc.phase, tc.helpers)
			for y.Elapsed()+7*time.Second <= half {
				y.Advance(7 * time.Second)
			}
			y.Advance(half - y.Elapsed())
			if !near(x.Metrics().Money, y.Metrics().Money, 1e-6) || !near(x.Metrics().Security, y.Metrics().Security, 1e-9) ||
				!near(x.Progress(), y.Progress(), 1e-6) {
				t.Errorf("half-way: %+v %v vs %+v %v", x.Metrics(), x.Progress(), y.Metrics(), y.Progress())
			}
		})
	}
}

// Absurd but valid metrics never stall Advance.
func TestHugeWorkDoesNotStall(t *testing.T) {
	p := DefaultParams()
	m := server(t, "joesguns").Metrics(DemoLevel)
	m.Security = 1e12
	till := newRun(t, p, hackingSpec(m), PhaseTill, p.WeakenThreadMiB)
	start := time.Now()
	till.Advance(1 << 62)
	if till.Done() || !(till.Metrics().Security < 1e12) || CheckMetrics(till.Metrics()) != nil {
		t.Errorf("till: done %v metrics %+v", till.Done(), till.Metrics())
	}
	m = server(t, "joesguns").Metrics(DemoLevel)
	m.Security = m.MinSecurity
	m.GrowthLogPerThread = 1e-300
	sow := newRun(t, p, hackingSpec(m), PhaseSow, 13*p.GrowThreadMiB)
	sow.Advance(1 << 62)
	// Growth is nil, but grow adds $1 per thread: $12 a round.
	rounds := math.Ceil((0.99*m.MaxMoney - m.Money) / 12)
	if got := sow.Elapsed().Seconds() / (4 * m.HackTimeMS / 1000); !sow.Done() || !near(got, rounds, 1e-6) {
		t.Errorf("sow: done %v after %v rounds, want %v", sow.Done(), got, rounds)
	}
	slow := newRun(t, p, hackingSpec(m), PhaseSow, 13*p.GrowThreadMiB)
	slow.Advance(1000 * time.Hour)
	if slow.Done() || !(slow.Metrics().Money > m.Money) || CheckMetrics(slow.Metrics()) != nil {
		t.Errorf("sow: done %v metrics %+v", slow.Done(), slow.Metrics())
	}
	m.HackTimeMS = 0
	zero := newRun(t, p, hackingSpec(m), PhaseSow, 13*p.GrowThreadMiB)
	zero.Advance(1 << 62)
	if CheckMetrics(zero.Metrics()) != nil {
		t.Errorf("zero hack time: %+v", zero.Metrics())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

// Random valid metrics, budgets and steps: the run's figures stay finite and
// in range, progress never goes back, and a smaller budget is never faster.
func TestRunProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	p := DefaultParams()
	runs := 0
	for i := 0; i < 3000; i++ {
		m := randomMetrics(rng)
		if CheckMetrics(m) != nil {
			continue
		}
		phase := []string{PhaseTill, PhaseSow, PhaseHarvest}[rng.IntN(3)]
		est, err := p.Estimate(hackingSpec(m), phase)
		if err != nil {
			continue
		}
		span := est.HelpersFullMiB - est.HelpersMinMiB
		budget := est.HelpersMinMiB + rng.Int64N(span+1)
		r, err := p.NewRun(hackingSpec(m), phase, budget)
		if err != nil {
			t.Fatalf("%+v %s %d: %v", m, phase, budget, err)
		}
		runs++
		prev := 0.0
		for step := 0; step < 20 && !r.Done(); step++ {
			r.Advance(time.Duration(rng.Int64N(int64(time.Hour))))
			pr := r.Progress()
			if !(pr >= prev && pr <= 1) && phase != PhaseHarvest {
				t.Fatalf("%+v %s: progress %v after %v", m, phase, pr, prev)
			}
			if !(pr >= 0 && pr <= 1) {
				t.Fatalf("%+v %s: progress %v", m, phase, pr)
			}
			prev = pr
			if err := CheckMetrics(r.Metrics()); err != nil {
				t.Fatalf("%+v %s: %v", m, phase, err)
			}
			if u := r.UsedMiB(); u < 0 || u > budget {
				t.Fatalf("%+v %s: uses %d MiB of %d", m, phase, u, budget)
			}
			if e := r.Earned(); !finite(e) || e < 0 {
				t.Fatalf("%+v %s: earned %v", m, phase, e)
			}
		}
	}
	if runs < 200 {
		t.Fatalf("only %d runs", runs)
	}
}

func TestSmallerBudgetNeverFaster(t *testing.T) {
	p := DefaultParams()
	rng := rand.New(rand.NewPCG(5, 6))
	for _, s := range EarlyGame() {
		if !s.Hackable(DemoLevel) {
			continue
		}
		spec := s.Spec(DemoLevel)
		for _, phase := range []string{PhaseTill, PhaseSow} {
			m := *spec.Metrics
			if phase == PhaseSow {
				m.Security = m.MinSecurity
			}
			est, err := p.Estimate(hackingSpec(m), phase)
			if err != nil {
				t.Fatal(err)
			}
			last := time.Duration(0)
			// Budgets from full down to the minimum.
			b := est.HelpersFullMiB
			for b >= est.HelpersMinMiB {
				r := newRun(t, p, hackingSpec(m), phase, b)
				r.Advance(1 << 62)
				if !r.Done() {
					t.Fatalf("%s %s %d MiB: not done", s.Name, phase, b)
				}
				if r.Elapsed() < last {
					t.Errorf("%s %s: %d MiB took %v, less than a bigger budget's %v", s.Name, phase, b, r.Elapsed(), last)
				}
				last = r.Elapsed()
				b = b * int64(50+rng.IntN(40)) / 100
			}
		}
	}
}
