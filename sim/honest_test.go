package sim

import (
	"math"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/workload"
)

// script sends its launches at the first tick and then does nothing.
type script struct {
	launches []selector.Command
	sent     bool
	events   []*schemas.TaskEvent
}

func (s *script) Step(_ time.Time, ev selector.Event) []selector.Command {
	if te, ok := ev.(*selector.TaskEventReceived); ok {
		s.events = append(s.events, te.Event)
	}
	if _, ok := ev.(*selector.Tick); !ok || s.sent {
		return nil
	}
	s.sent = true
	return s.launches
}

func launchCmd(host, target, typ string, epoch uint64, wrapper, helpers int64) selector.Command {
	id := target + "#" + typ + "#" + string(rune('0'+epoch))
	return selector.Command{Kind: selector.CmdLaunch, Host: host, Target: target,
		Launch: &schemas.LaunchRequest{V: schemas.Version, TaskID: id, Epoch: epoch, Target: target, Type: typ,
			RAM: schemas.TaskRAM{WrapperMiB: wrapper, HelpersMiB: helpers}}}
}

// joesguns at the demo level, with the given security and money.
func joesguns(sec, money float64) Target {
	for _, s := range workload.EarlyGame() {
		if s.Name == "joesguns" {
			sp := s.Spec(workload.DemoLevel)
			sp.Metrics.Security, sp.Metrics.Money = sec, money
			return Target{Name: s.Name, Spec: sp}
		}
	}
	panic("no joesguns")
}

func runScript(t *testing.T, w World, d time.Duration, cmds ...selector.Command) (*Result, *script) {
	t.Helper()
	sc := &script{launches: cmds}
	s, err := New(shortCfg(d), w, sc)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Run()
	if err != nil {
		t.Fatal(err)
	}
	return r, sc
}

// A hacking task whose type is not its target's true phase exits at its
// start, as a real task would: a failed launch, no helpers, no income.
func TestWrongPhaseFails(t *testing.T) {
	params := workload.DefaultParams()
	tg := joesguns(15, 2.5e6) // base security: the true phase is till
	if ph := workload.HackingPhase(*tg.Spec.Metrics); ph != workload.PhaseTill {
		t.Fatalf("phase %s, want till", ph)
	}
	w := World{Name: "one", Hosts: []Host{{Name: "h", CapacityMiB: 1 << 30}}, Targets: []Target{tg}}
	est, err := params.Estimate(&tg.Spec, workload.PhaseHarvest)
	if err != nil {
		t.Fatal(err)
	}
	r, sc := runScript(t, w, time.Minute, launchCmd("h", tg.Name, workload.PhaseHarvest, 1, est.WrapperMiB, est.HelpersFullMiB))
	if r.Started != 1 || r.FailedLaunches != 1 || r.FailureCauses[CauseWrongPhase] != 1 {
		t.Errorf("harvest on a till target: %d started, %d failed (%v), want 1 and 1 wrong_phase",
			r.Started, r.FailedLaunches, r.FailureCauses)
	}
	if r.Income != 0 || r.UsefulMiBs != 0 {
		t.Errorf("harvest on a till target earned %v with %v useful MiB·s, want nothing", r.Income, r.UsefulMiBs)
	}
	if len(sc.events) != 1 || sc.events[0].Kind != schemas.EventFailed || sc.events[0].Reason != schemas.ReasonExited {
		t.Errorf("events %+v, want one failed/exited", sc.events)
	}
	// The right phase runs.
	tillEst, _ := params.Estimate(&tg.Spec, workload.PhaseTill)
	r, _ = runScript(t, w, time.Minute, launchCmd("h", tg.Name, workload.PhaseTill, 1, tillEst.WrapperMiB, tillEst.HelpersFullMiB))
	if r.FailedLaunches != 0 || r.UsefulMiBs <= 0 {
		t.Errorf("till on a till target: %d failed (%v), %v useful MiB·s", r.FailedLaunches, r.FailureCauses, r.UsefulMiBs)
	}
}

// Harvest income follows the target's true money and security: a harvest
// of a target at 99 % of max money and one point above minimum security
// earns 0.99 × ((100 - sec) / (100 - min))² of what the plan says.
func TestHarvestIncomeFollowsTarget(t *testing.T) {
	params := workload.DefaultParams()
	tg := joesguns(0, 0)
	m := tg.Spec.Metrics
	m.Security, m.Money = m.MinSecurity+1, 0.99*m.MaxMoney
	if ph := workload.HackingPhase(*m); ph != workload.PhaseHarvest {
		t.Fatalf("phase %s, want harvest", ph)
	}
	plan, err := params.PlanHarvest(*m)
	if err != nil {
		t.Fatal(err)
	}
	w := World{Name: "one", Hosts: []Host{{Name: "h", CapacityMiB: 1 << 30}}, Targets: []Target{tg}}
	d := 10 * time.Minute
	r, _ := runScript(t, w, d, launchCmd("h", tg.Name, workload.PhaseHarvest, 1, params.WrapperMiB, plan.FullMiB))
	if r.FailedLaunches != 0 {
		t.Fatalf("harvest failed: %v", r.FailureCauses)
	}
	phi := (100 - m.Security) / (100 - m.MinSecurity)
	scale := 0.99 * phi * phi
	if got := HarvestScale(*m); math.Abs(got-scale) > 1e-12 {
		t.Fatalf("HarvestScale %v, want %v", got, scale)
	}
	// The helpers run from HelperDelay (plus the launch's latency) on; the
	// rate is the full plan's, scaled.
	ran := (d - shortCfg(d).HelperDelay).Seconds()
	want := plan.IncomePerSecond * scale
	if got := r.Income / ran; math.Abs(got-want) > 1e-3*want {
		t.Errorf("income %v $/s, want %v (the plan's %v × %v)", got, want, plan.IncomePerSecond, scale)
	}
}

// Two live tasks of one target: the second earns nothing and completes
// nothing, on both profiles.
func TestDuplicatesEarnAndCompleteNothing(t *testing.T) {
	params := workload.DefaultParams()
	tg := joesguns(0, 0)
	m := tg.Spec.Metrics
	m.Security, m.Money = m.MinSecurity, m.MaxMoney
	plan, err := params.PlanHarvest(*m)
	if err != nil {
		t.Fatal(err)
	}
	w := World{Name: "one", Hosts: []Host{{Name: "a", CapacityMiB: 1 << 30}, {Name: "b", CapacityMiB: 1 << 30}},
		Targets: []Target{tg}}
	one, _ := runScript(t, w, 5*time.Minute, launchCmd("a", tg.Name, workload.PhaseHarvest, 1, params.WrapperMiB, plan.FullMiB))
	two, _ := runScript(t, w, 5*time.Minute, launchCmd("a", tg.Name, workload.PhaseHarvest, 1, params.WrapperMiB, plan.FullMiB),
		launchCmd("b", tg.Name, workload.PhaseHarvest, 2, params.WrapperMiB, plan.FullMiB))
	if two.DuplicateTasks != 1 || one.Income <= 0 {
		t.Fatalf("%d duplicates, single income %v", two.DuplicateTasks, one.Income)
	}
	if math.Abs(two.Income-one.Income) > 1e-6*one.Income {
		t.Errorf("with a duplicate, income %v; alone %v: the duplicate earned", two.Income, one.Income)
	}

	// declared: two prep tasks of one target both finish; one phase.
	fw := Fleet(100)
	sp := fw.Targets[0].Spec.Phases[0]
	r, _ := runScript(t, fw, time.Minute,
		launchCmd(fw.Hosts[0].Name, fw.Targets[0].Name, sp.Type, 1, sp.WrapperMiB, sp.HelpersFullMiB),
		launchCmd(fw.Hosts[1].Name, fw.Targets[0].Name, sp.Type, 2, sp.WrapperMiB, sp.HelpersFullMiB))
	if r.DuplicateTasks != 1 || r.PhasesCompleted != 1 {
		t.Errorf("two prep tasks of one target: %d duplicates, %d phases completed; want 1 and 1",
			r.DuplicateTasks, r.PhasesCompleted)
	}
}

// A launch that asks for a smaller wrapper than the task's true one still
// holds the true wrapper RAM.
func TestWrapperHoldsItsTrueSize(t *testing.T) {
	params := workload.DefaultParams()
	tg := joesguns(15, 2.5e6)
	w := World{Name: "one", Hosts: []Host{{Name: "h", CapacityMiB: 64 << 10}}, Targets: []Target{tg}}
	sc := &script{launches: []selector.Command{launchCmd("h", tg.Name, workload.PhaseTill, 1, 0, params.WeakenThreadMiB)}}
	s, err := New(shortCfg(10*time.Second), w, sc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(); err != nil {
		t.Fatal(err)
	}
	if got, want := s.hosts[0].used, params.WrapperMiB+params.WeakenThreadMiB; got != want {
		t.Errorf("host holds %d MiB, want the true wrapper + one weaken thread = %d", got, want)
	}
}
