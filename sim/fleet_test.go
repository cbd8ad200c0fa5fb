package sim

import (
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/workload"
)

// policyFunc is a Policy made of a function (tests).
type policyFunc func(now time.Time, ev selector.Event) []selector.Command

func (f policyFunc) Step(now time.Time, ev selector.Event) []selector.Command { return f(now, ev) }

// tillWorld is joesguns at base security (till needs 200 weaken threads)
// with a host that holds its wrapper and one thread, and a host with room
// for many more.
func tillWorld(bigMiB int64) (World, workload.Estimate) {
	tg := joesguns(15, 2.5e6)
	p := workload.DefaultParams()
	est, err := p.Estimate(&tg.Spec, workload.PhaseTill)
	if err != nil {
		panic(err)
	}
	return World{Name: "till", Targets: []Target{tg}, Hosts: []Host{
		{Name: "small", CapacityMiB: est.MinMiB()},
		{Name: "big", CapacityMiB: bigMiB},
	}}, est
}

// TestFleetHelpersDoTheWork: a till task placed at its minimum asks for the
// rest of its threads; the selector grants them on another host, its worker
// runs them on real RAM there, and the target is tilled far sooner than by
// the same task alone.
func TestFleetHelpersDoTheWork(t *testing.T) {
	w, est := tillWorld(1 << 20)
	sc := selector.DefaultConfig()
	sc.Seed = 1
	sc.LaunchAtMinimum = true
	sc.HelperGrainMiB = 1792
	eng, err := NewSelector(sc, w)
	if err != nil {
		t.Fatal(err)
	}
	var grants []schemas.HelperGrant
	s, err := New(shortCfg(3*time.Minute), w, eng)
	if err != nil {
		t.Fatal(err)
	}
	s.Hook = func(_ time.Time, _ selector.Event, cmds []selector.Command) {
		for _, c := range cmds {
			if c.Kind == selector.CmdAllocReply && c.Alloc.Error == nil {
				grants = append(grants, c.Alloc.Grants...)
			}
		}
	}
	r, err := s.Run()
	if err != nil {
		t.Fatal(err)
	}
	if len(grants) == 0 || grants[0].Host != "big" {
		t.Fatalf("grants %+v, want helpers on big", grants)
	}
	if r.PhasesCompleted < 1 {
		t.Fatalf("till not done in 3 minutes with fleet helpers (%d phases)", r.PhasesCompleted)
	}
	// Alone (no room elsewhere), the task runs one thread: 0.05 of
	// security per 83 s round, far from done.
	w2, _ := tillWorld(0)
	eng2, err := NewSelector(sc, w2)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := New(shortCfg(3*time.Minute), w2, eng2)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s2.Run()
	if err != nil {
		t.Fatal(err)
	}
	if r2.PhasesCompleted != 0 || r2.Started != 1 {
		t.Fatalf("alone: %d phases, %d started", r2.PhasesCompleted, r2.Started)
	}
	if sec := s2.tgtByNm["joesguns"].spec.Metrics.Security; sec < 14.8 {
		t.Fatalf("alone the target reached security %v", sec)
	}
	_ = est
}

// TestFleetHelperRAMIsReal: a helper holds RAM on its host (in the host's
// status, against launches and other helpers) until it is stopped, even
// after its task is gone, and does no work for anyone then.
func TestFleetHelperRAMIsReal(t *testing.T) {
	w, est := tillWorld(4 * 1792)
	launch := launchCmd("small", "joesguns", workload.PhaseTill, 1, est.WrapperMiB, est.HelpersMinMiB)
	var statuses []*schemas.HostStatus
	var replies []schemas.HelperReply
	var asks int
	step := 0
	pol := policyFunc(func(now time.Time, ev selector.Event) []selector.Command {
		switch ev := ev.(type) {
		case *selector.HostStatusReceived:
			if ev.Status.Host == "big" {
				statuses = append(statuses, ev.Status)
			}
		case *selector.HelperReplied:
			replies = append(replies, ev.Reply)
		case *selector.AllocRequested:
			asks++
			if asks > 1 {
				return nil
			}
			if ev.Req.MiB != est.HelpersFullMiB-est.HelpersMinMiB || ev.Req.MinMiB != 1792 {
				t.Errorf("the task asks %d MiB (at least %d), want what it lacks in whole threads", ev.Req.MiB, ev.Req.MinMiB)
			}
			start := func(id string, mib int64) selector.Command {
				return selector.Command{Kind: selector.CmdHelper, Host: "big", Helper: &schemas.HelperRequest{V: schemas.Version,
					Op: schemas.HelperStart, HelperID: id, TaskID: ev.Req.TaskID, Epoch: 1, Target: "joesguns", MiB: mib}}
			}
			// Three threads fit, then a fourth that does not.
			return []selector.Command{start("x1", 3*1792), start("x2", 2*1792),
				{Kind: selector.CmdAllocReply, AllocID: ev.ID, Alloc: &schemas.AllocReply{V: schemas.Version, TaskID: ev.Req.TaskID,
					Held: []schemas.HelperGrant{{HelperID: "x1", Host: "big", MiB: 3 * 1792}}}}}
		case *selector.Tick:
			step++
			switch step {
			case 1:
				return []selector.Command{launch}
			case 600: // one minute in: the task is killed, its helper is not
				return []selector.Command{{Kind: selector.CmdKill, Host: "small", Target: "joesguns",
					Kill: &schemas.KillRequest{V: schemas.Version, TaskID: launch.Launch.TaskID, Reason: "test"}}}
			case 1200: // two minutes in: the helper is stopped
				return []selector.Command{{Kind: selector.CmdHelper, Host: "big", Helper: &schemas.HelperRequest{V: schemas.Version,
					Op: schemas.HelperStop, HelperID: "x1", TaskID: launch.Launch.TaskID, Epoch: 1, Target: "joesguns", MiB: 3 * 1792}}}
			}
		}
		return nil
	})
	s, err := New(shortCfg(3*time.Minute), w, pol)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(); err != nil {
		t.Fatal(err)
	}
	if len(replies) != 3 || !replies[0].Running || replies[1].Running || replies[2].Running {
		t.Fatalf("helper replies %+v: want x1 running, x2 without room, then x1 stopped", replies)
	}
	at := func(sec int) *schemas.HostStatus { return statuses[sec] }
	if st := at(90); st.RAM.UsedMiB != 3*1792 || len(st.Helpers) != 1 || st.Helpers[0].HelperID != "x1" {
		t.Fatalf("after its task was killed, big reports %+v", st)
	}
	if st := at(170); st.RAM.UsedMiB != 0 || len(st.Helpers) != 0 {
		t.Fatalf("after the stop, big reports %+v", st)
	}
}

// TestPhasesLateHalf: a target that repeats a phase at a steady rate
// completes as many in each half of the run.
func TestPhasesLateHalf(t *testing.T) {
	w := World{Name: "steady", Hosts: []Host{{Name: "h", CapacityMiB: 1024}}, Targets: []Target{{Name: "a",
		Spec: schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
			{Type: "serve", WrapperMiB: 10, HelpersMinMiB: 10, HelpersFullMiB: 100, WorkS: 10, Repeat: true}}}}}}
	r := run(t, PolicySelector, shortCfg(20*time.Minute), w)
	early := r.PhasesCompleted - r.PhasesLateHalf
	if r.PhasesCompleted < 50 || r.PhasesLateHalf+2 < early || early+2 < r.PhasesLateHalf {
		t.Fatalf("%d phases, %d in the second half", r.PhasesCompleted, r.PhasesLateHalf)
	}
}

// TestFleetAsksBackOffAsTheWorkerDoes: a task that lacks helper RAM asks
// again allocRetry after a grant, and after refusals in a row waits twice as
// long each time, up to allocRetryMax, as the real worker's agent does. Big
// has room for one thread: the first request is granted, every later one is
// refused.
func TestFleetAsksBackOffAsTheWorkerDoes(t *testing.T) {
	const grain = 1792
	w, _ := tillWorld(grain)
	sc := selector.DefaultConfig()
	sc.Seed = 1
	sc.LaunchAtMinimum = true
	sc.HelperGrainMiB = grain
	eng, err := NewSelector(sc, w)
	if err != nil {
		t.Fatal(err)
	}
	cfg := shortCfg(4 * time.Minute)
	s, err := New(cfg, w, eng)
	if err != nil {
		t.Fatal(err)
	}
	var asked []time.Time
	var replies []string
	s.Hook = func(now time.Time, ev selector.Event, cmds []selector.Command) {
		if _, ok := ev.(*selector.AllocRequested); ok {
			asked = append(asked, now)
		}
		for _, c := range cmds {
			if c.Kind == selector.CmdAllocReply {
				code := "granted"
				if c.Alloc.Error != nil {
					code = c.Alloc.Error.Code
				}
				replies = append(replies, code)
			}
		}
	}
	if _, err := s.Run(); err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{2, 2, 4, 8, 16, 32, 32, 32}
	if len(asked) < len(want)+1 || len(replies) < len(want)+1 {
		t.Fatalf("%d requests, replies %v", len(asked), replies)
	}
	if replies[0] != "granted" || replies[1] != schemas.CodeInsufficientRAM {
		t.Fatalf("replies %v", replies)
	}
	slack := cfg.HeartbeatInterval + time.Second // it asks at its heartbeats
	for i, w := range want {
		w *= time.Second
		if gap := asked[i+1].Sub(asked[i]); gap < w || gap > w+slack {
			t.Fatalf("request %d came %v after the one before, want %v (+ up to %v); requests at %v", i+1, gap, w, slack, asked)
		}
	}
}
