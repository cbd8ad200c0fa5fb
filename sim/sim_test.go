package sim

import (
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/workload"
)

func shortCfg(d time.Duration) Config {
	c := DefaultConfig()
	c.Duration = d
	return c
}

func run(t *testing.T, policy string, cfg Config, w World) *Result {
	t.Helper()
	r, err := RunPolicy(policy, cfg, w)
	if err != nil {
		t.Fatalf("%s on %s: %v", policy, w.Name, err)
	}
	return r
}

// A fault-heavy configuration: crashes, lost messages and jittery latency.
func faultyCfg(d time.Duration, seed uint64) Config {
	c := shortCfg(d)
	c.Seed = seed
	c.CrashRate = 20
	c.CrashEventProb = 0.3
	c.LossProb = 0.05
	c.Latency = 5 * time.Millisecond
	c.Jitter = 4 * time.Millisecond
	return c
}

func TestDeterministic(t *testing.T) {
	t.Parallel()
	worlds := []World{EarlyGame(256), Fleet(25)}
	for _, w := range worlds {
		for _, p := range []string{PolicySelector, PolicyNaive} {
			a := run(t, p, faultyCfg(4*time.Minute, 7), w)
			b := run(t, p, faultyCfg(4*time.Minute, 7), w)
			if !reflect.DeepEqual(a, b) {
				t.Errorf("%s on %s: two runs with seed 7 differ:\n%+v\n%+v", p, w.Name, a, b)
			}
			if a.Launches == 0 || a.Started == 0 {
				t.Errorf("%s on %s: nothing launched (%d) or started (%d)", p, w.Name, a.Launches, a.Started)
			}
		}
	}
	// The seed matters: crashes and losses are drawn from it.
	a := run(t, PolicySelector, faultyCfg(4*time.Minute, 7), Fleet(25))
	b := run(t, PolicySelector, faultyCfg(4*time.Minute, 8), Fleet(25))
	if a.Crashes == b.Crashes && a.PhasesCompleted == b.PhasesCompleted && a.UsefulMiBs == b.UsefulMiBs {
		t.Errorf("seeds 7 and 8 gave the same run: %d crashes, %d phases", a.Crashes, a.PhasesCompleted)
	}
}

// The naive policy fails the way the plan describes: its tasks start (the
// worker admits the wrapper) and then cannot get their helpers.
func TestNaiveFailsOnHelpers(t *testing.T) {
	w := EarlyGame(16)
	cfg := shortCfg(5 * time.Minute)
	n := run(t, PolicyNaive, cfg, w)
	hu := n.FailureCauses[schemas.ReasonHelpersUnavailable]
	if hu < 100 {
		t.Fatalf("naive at 16 GiB: %d helpers_unavailable failures in 5 min, want many: %+v", hu, n.FailureCauses)
	}
	if hu*10 < n.FailedLaunches*9 {
		t.Errorf("naive: helpers_unavailable is %d of %d failures, want nearly all: %v", hu, n.FailedLaunches, n.FailureCauses)
	}
	if n.Started < hu {
		t.Errorf("naive: %d tasks started but %d failed on helpers: those must have started", n.Started, hu)
	}
	if n.UsefulMiBs != 0 || n.Income != 0 {
		t.Errorf("naive at 16 GiB: useful %v MiB·s and income %v, want none (no full-size task fits)", n.UsefulMiBs, n.Income)
	}
	s := run(t, PolicySelector, cfg, w)
	if s.FailedLaunches != 0 {
		t.Errorf("selector at 16 GiB: %d failed launches (%v), want 0", s.FailedLaunches, s.FailureCauses)
	}
	if s.UsefulMiBs <= 0 {
		t.Errorf("selector at 16 GiB did no useful work")
	}
}

// Naive has no stale detection: a task that dies silently strands its target.
func TestNaiveStrandsCrashedTargets(t *testing.T) {
	t.Parallel()
	cfg := shortCfg(10 * time.Minute)
	cfg.CrashRate = 30
	n := run(t, PolicyNaive, cfg, Fleet(100))
	if n.Crashes == 0 || n.StrandedTargets == 0 {
		t.Fatalf("naive with crashes: %d crashes, %d stranded targets; want both > 0", n.Crashes, n.StrandedTargets)
	}
	s := run(t, PolicySelector, cfg, Fleet(100))
	if s.Crashes == 0 {
		t.Fatalf("selector run saw no crashes")
	}
	if s.PolicyCounters == nil || s.PolicyCounters.Stale == 0 {
		t.Errorf("selector did not detect stale tasks: %+v", s.PolicyCounters)
	}
	if s.PhasesCompleted <= n.PhasesCompleted {
		t.Errorf("with crashes, selector completed %d phases, naive %d: want selector ahead", s.PhasesCompleted, n.PhasesCompleted)
	}
}

// checker watches every step of a run for two live tasks of one target, by
// the simulator's ground truth (not the policy's belief).
func TestSelectorNoDuplicates(t *testing.T) {
	t.Parallel()
	cases := []struct {
		w   World
		cfg Config
	}{
		{EarlyGame(64), faultyCfg(10*time.Minute, 3)},
		{EarlyGame(1024), faultyCfg(10*time.Minute, 4)},
		{Fleet(10), faultyCfg(10*time.Minute, 5)},
		{Fleet(100), faultyCfg(10*time.Minute, 6)},
	}
	for _, c := range cases {
		p, err := NewPolicy(PolicySelector, c.cfg, c.w)
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(c.cfg, c.w, p)
		if err != nil {
			t.Fatal(err)
		}
		worst := 0
		s.Hook = func(time.Time, selector.Event, []selector.Command) {
			for _, ts := range s.targets {
				worst = max(worst, ts.live)
			}
		}
		r, err := s.Run()
		if err != nil {
			t.Fatal(err)
		}
		if r.DuplicateTasks != 0 || worst > 1 {
			t.Errorf("%s: %d duplicate tasks, at most %d live tasks of one target", c.w.Name, r.DuplicateTasks, worst)
		}
		if r.Crashes == 0 || r.Started == 0 {
			t.Errorf("%s: the faults did not happen (%d crashes, %d started)", c.w.Name, r.Crashes, r.Started)
		}
	}
}

// doubler launches every target twice at the first tick: the simulator must
// count the second task as a duplicate.
type doubler struct {
	targets []Target
	hosts   []string
	done    bool
	out     []selector.Command
}

func (d *doubler) Step(now time.Time, ev selector.Event) []selector.Command {
	d.out = d.out[:0]
	if _, ok := ev.(*selector.Tick); !ok || d.done {
		return d.out
	}
	d.done = true
	for _, t := range d.targets[:2] {
		for i := 1; i <= 2; i++ {
			d.out = append(d.out, selector.Command{Kind: selector.CmdLaunch, Host: d.hosts[i%len(d.hosts)], Target: t.Name,
				Launch: &schemas.LaunchRequest{V: 1, TaskID: t.Name + "#" + string(rune('0'+i)), Epoch: uint64(i),
					Target: t.Name, Type: t.Spec.Phases[0].Type, RAM: schemas.TaskRAM{WrapperMiB: 64, HelpersMiB: 128}}})
		}
	}
	return d.out
}

func TestDuplicatesCounted(t *testing.T) {
	w := Fleet(100)
	d := &doubler{targets: w.Targets, hosts: []string{w.Hosts[0].Name, w.Hosts[1].Name}}
	s, err := New(shortCfg(time.Minute), w, d)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := s.Run()
	if r.DuplicateTasks != 2 || r.Started != 4 {
		t.Fatalf("doubler: %d duplicates of %d started, want 2 of 4", r.DuplicateTasks, r.Started)
	}
}

func goodput(r *Result, hacking bool) float64 {
	if hacking {
		return r.IncomePerSecond()
	}
	return r.PhasesPerHour()
}

func TestBoundAboveEveryPolicy(t *testing.T) {
	t.Parallel()
	params := workload.DefaultParams()
	cases := []struct {
		w       World
		hacking bool
		d       time.Duration
	}{
		{EarlyGame(256), true, 20 * time.Minute},
		{EarlyGame(1024), true, 20 * time.Minute},
		{Fleet(5), false, 5 * time.Minute},
		{Fleet(50), false, 5 * time.Minute},
		{Fleet(100), false, 5 * time.Minute},
	}
	for _, c := range cases {
		b, err := Bound(params, c.w, c.d)
		if err != nil {
			t.Fatal(err)
		}
		bound, old := b.PhasesPerHour, b.PhasesPerHourOld
		if c.hacking {
			bound, old = b.IncomePerSecond, b.IncomeOld
			if b.IncomeLoose < b.IncomeOld {
				t.Errorf("%s: loose bound %v below the old one %v", c.w.Name, b.IncomeLoose, b.IncomeOld)
			}
		}
		if b.Duration != c.d {
			t.Errorf("%s: bound for %v, want %v", c.w.Name, b.Duration, c.d)
		}
		for _, p := range []string{PolicySelector, PolicyNaive} {
			r := run(t, p, shortCfg(c.d), c.w)
			g := goodput(r, c.hacking)
			if g > bound*(1+1e-9) || g > old*(1+1e-9) {
				t.Errorf("%s on %s: goodput %v above the bound %v or the old one %v", p, c.w.Name, g, bound, old)
			}
			if p == PolicySelector && g <= 0 {
				t.Errorf("selector on %s: no goodput", c.w.Name)
			}
		}
	}
}

// The declared bound by hand: one target, prep 10 s of 100+0 MiB once, then
// serve 20 s of 100+100 MiB repeating, on 150 MiB for 100 s.
func TestDeclaredBoundByHand(t *testing.T) {
	spec := schemas.TargetSpec{V: 1, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
		{Type: "prep", WrapperMiB: 100, WorkS: 10},
		{Type: "serve", WrapperMiB: 100, HelpersMinMiB: 10, HelpersFullMiB: 100, WorkS: 20, Repeat: true},
	}}
	w := World{Name: "hand", Hosts: []Host{{Name: "h", CapacityMiB: 200, ForeignMiB: 50}},
		Targets: []Target{{Name: "a", Spec: spec}}}
	b, err := Bound(workload.DefaultParams(), w, 100*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Budget 150 MiB × 100 s = 15000 MiB·s. Prep costs 1000 (once); serve
	// costs 200 × 20 = 4000 each, at most floor(90/20) = 4 times: 14000 more
	// buys 3.5 of them. 4.5 phases in 100 s = 162 per hour.
	if want := 4.5 * 36; math.Abs(b.PhasesPerHour-want) > 1e-9 {
		t.Fatalf("bound %v phases/h, want %v", b.PhasesPerHour, want)
	}
}

func TestHackingBoundNeedsAHostForTheSmallestHarvest(t *testing.T) {
	params := workload.DefaultParams()
	// 8 GiB: the smallest harvest (n00dles, one hack thread + wrapper) is
	// larger than home, so nothing can ever be earned.
	b, err := Bound(params, EarlyGame(8), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if b.IncomeOld != 0 || b.IncomeLoose <= 0 {
		t.Fatalf("8 GiB: old bound %v (want 0), loose %v (want > 0)", b.IncomeOld, b.IncomeLoose)
	}
	// One big host: the bound is its helper RAM times the best rate.
	w := World{Name: "one", Hosts: []Host{{Name: "h", CapacityMiB: 64 << 10}}, Targets: EarlyGameTargets()}
	b, err = Bound(params, w, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	best := 0.0
	for _, tg := range w.Targets {
		r, _ := params.IncomePerMiBSecond(*tg.Spec.Metrics)
		best = max(best, r)
	}
	if want := float64(64<<10-params.WrapperMiB) * best; math.Abs(b.IncomeOld-want) > 1e-6*want {
		t.Fatalf("one 64 GiB host: old bound %v, want %v", b.IncomeOld, want)
	}
}

func TestWorlds(t *testing.T) {
	for _, g := range EarlyGameLevels {
		w := EarlyGame(g)
		if got := w.AvailableMiB(); got != int64(g)*workload.MiBPerGiB {
			t.Errorf("early-game %d GiB offers %d MiB", g, got)
		}
		if w.Hosts[0].Name != "home" || w.Hosts[0].CapacityMiB != HomeGiB*workload.MiBPerGiB {
			t.Errorf("early-game %d GiB: first host %+v, want home of 8 GiB", g, w.Hosts[0])
		}
		if len(w.Targets) != 12 {
			t.Errorf("early-game: %d targets, want the 12 a level-%d player can harvest", len(w.Targets), workload.DemoLevel)
		}
	}
	demand := FullDemandMiB(workload.DefaultParams(), FleetTargets())
	for _, pct := range FleetLevels {
		w := Fleet(pct)
		want := int64(math.Round(float64(demand) * pct / 100))
		if got := w.AvailableMiB(); got != want {
			t.Errorf("fleet %g%%: %d MiB, want %d", pct, got, want)
		}
	}
}

// A reply that comes after the edge's timeout is dropped: the policy hears
// "unanswered" once and never the late reply.
func TestLateReplyDropped(t *testing.T) {
	w := Fleet(100)
	cfg := shortCfg(20 * time.Second)
	cfg.Latency = 600 * time.Millisecond // a round trip of 1.2 s > 1 s timeout
	var replies, unanswered int
	p, _ := NewPolicy(PolicySelector, cfg, w)
	s, _ := New(cfg, w, p)
	s.Hook = func(_ time.Time, ev selector.Event, _ []selector.Command) {
		switch ev.(type) {
		case *selector.LaunchReplied:
			replies++
		case *selector.LaunchUnanswered:
			unanswered++
		}
	}
	r, _ := s.Run()
	if replies != 0 || unanswered == 0 || r.FailureCauses["unanswered"] != uint64(unanswered) {
		t.Fatalf("latency 600 ms: %d replies, %d unanswered (%v); want only unanswered", replies, unanswered, r.FailureCauses)
	}
	if r.Started == 0 || r.DuplicateTasks != 0 {
		t.Fatalf("started %d, duplicates %d", r.Started, r.DuplicateTasks)
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []func(*Config){
		func(c *Config) { c.LossProb = 1 },
		func(c *Config) { c.CrashRate = math.Inf(1) },
		func(c *Config) { c.Jitter = 2 * c.Latency },
		func(c *Config) { c.Tick = -1 },
	}
	for i, f := range bad {
		c := DefaultConfig()
		f(&c)
		if _, err := New(c, Fleet(5), NewNaive(c.Params, nil)); err == nil {
			t.Errorf("case %d: bad config accepted", i)
		}
	}
	if _, err := NewPolicy("nope", DefaultConfig(), Fleet(5)); err == nil {
		t.Error("unknown policy accepted")
	}
}

// Without foreign use the selector's ledger matches the workers' exactly:
// no launch is ever refused or fails on helpers, even at 5 % of demand.
// (With foreign use on a host, see the package report: the engine derives
// foreign use from a stale HostStatus and overbooks by the RAM of tasks
// started since.)
func TestSelectorNoFailedLaunchesWithoutForeignUse(t *testing.T) {
	for _, pct := range []float64{5, 25} {
		w := Fleet(pct)
		for i := range w.Hosts {
			w.Hosts[i].CapacityMiB -= w.Hosts[i].ForeignMiB
			w.Hosts[i].ForeignMiB = 0
		}
		cfg := shortCfg(10 * time.Minute)
		cfg.CrashRate = 2
		r := run(t, PolicySelector, cfg, w)
		if r.FailedLaunches != 0 || r.StrandedTargets != 0 {
			t.Errorf("fleet %g%% without foreign use: %d failed launches (%v), %d stranded", pct, r.FailedLaunches, r.FailureCauses, r.StrandedTargets)
		}
		if r.PhasesCompleted == 0 {
			t.Errorf("fleet %g%%: nothing completed", pct)
		}
	}
}
