package worker

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

// runUntilGone advances the sim in steps until the task with pid leaves ps,
// and returns the game time that took.
func runUntilGone(t *testing.T, h *harness, pid int64, step time.Duration, limit int) time.Duration {
	t.Helper()
	start := h.sim.GameTime()
	for i := 0; i < limit; i++ {
		h.sim.Advance(step)
		if ps := h.agent.ps(&schemas.PsRequest{PIDs: []int64{pid}}); len(ps.Tasks) == 0 {
			return h.sim.GameTime() - start
		}
	}
	t.Fatalf("task %d still runs after %d steps", pid, limit)
	return 0
}

func TestScaledDownDeclaredTaskTakesProportionallyLonger(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	// work_s 100 at helpers_full 1000 MiB; the second gets half the helpers.
	full := declared("full", "work", 10, 1000, 100, ArgHelpersFullMiB, 1000, ArgHelpersMinMiB, 100)
	half := declared("half", "work", 10, 500, 100, ArgHelpersFullMiB, 1000, ArgHelpersMinMiB, 100)
	pidFull := h.mustLaunch(full)
	tFull := runUntilGone(t, h, pidFull, time.Second, 1000)
	pidHalf := h.mustLaunch(half)
	tHalf := runUntilGone(t, h, pidHalf, time.Second, 1000)
	// One step starts the helpers, then the work runs: 100 s and 200 s.
	if tFull != 101*time.Second || tHalf != 201*time.Second {
		t.Fatalf("game time full %v, half %v; want 101s and 201s", tFull, tHalf)
	}
	for _, want := range []string{full.TaskID, half.TaskID} {
		if ev := h.nextEvent(); ev.TaskID != want || ev.Kind != schemas.EventDone {
			t.Fatalf("event %+v, want done of %s", ev, want)
		}
	}
}

func TestScaledDownHackingTaskTakesLongerAndReportsMetrics(t *testing.T) {
	spec := earlyGame(t, "joesguns")
	spec.Metrics.Security = 15 // its base security: a till target
	params := workload.DefaultParams()
	est, err := params.Estimate(&spec, workload.PhaseTill)
	if err != nil {
		t.Fatal(err)
	}
	if est.HelpersFullMiB < 2*est.HelpersMinMiB {
		t.Fatalf("estimate %+v leaves no room to scale down", est)
	}
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 1 << 20}})
	round := 4 * time.Duration(spec.Metrics.HackTimeMS*float64(time.Millisecond))
	step := round / 50

	full := hacking(t, "joesguns", workload.PhaseTill, spec, est.HelpersFullMiB)
	tFull := runUntilGone(t, h, h.mustLaunch(full), step, 10000)
	half := hacking(t, "joesguns", workload.PhaseTill, spec, est.HelpersFullMiB/2)
	tHalf := runUntilGone(t, h, h.mustLaunch(half), step, 10000)
	ratio := float64(tHalf-step) / float64(tFull-step) // minus the step that starts the helpers
	if ratio < 1.9 || ratio > 2.1 {
		t.Fatalf("till took %v at full size and %v at half size (ratio %.2f), want about 2", tFull, tHalf, ratio)
	}
	for range 2 {
		ev := h.nextEvent()
		if ev.Kind != schemas.EventDone || ev.Metrics == nil {
			t.Fatalf("event %+v", ev)
		}
		m, err := workload.MetricsFromMap(*spec.Metrics, ev.Metrics)
		if err != nil {
			t.Fatal(err)
		}
		if m.Security > m.MinSecurity+1 || workload.HackingPhase(m) == workload.PhaseTill {
			t.Fatalf("done till left metrics %+v", m)
		}
	}
}

func TestHackingTaskRunsToDoneWithTicker(t *testing.T) {
	spec := earlyGame(t, "n00dles") // at min security, money below max: sow
	if workload.HackingPhase(*spec.Metrics) != workload.PhaseSow {
		t.Fatalf("n00dles starts in %s", workload.HackingPhase(*spec.Metrics))
	}
	est, err := workload.DefaultParams().Estimate(&spec, workload.PhaseSow)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, harnessOpts{
		cfg: Config{RAMMiB: est.FullMiB() + 1024},
		sim: SimConfig{Speed: 20000, Tick: 2 * time.Millisecond},
	})
	req := hacking(t, "n00dles", workload.PhaseSow, spec, est.HelpersFullMiB)
	pid := h.mustLaunch(req)
	ev := h.nextEvent()
	if ev.Kind != schemas.EventDone || ev.PID != pid || ev.Type != workload.PhaseSow {
		t.Fatalf("event %+v", ev)
	}
	m, err := workload.MetricsFromMap(*spec.Metrics, ev.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	if m.Money < 0.99*m.MaxMoney {
		t.Fatalf("sow done with money %v of %v", m.Money, m.MaxMoney)
	}
}

// drainHeartbeats discards the heartbeats already queued.
func drainHeartbeats(t *testing.T, h *harness) {
	t.Helper()
	for {
		n, _, err := h.hbs.Pending()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if _, err := h.hbs.NextMsg(time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

// heartbeatsUntil reads heartbeats until steady's has been seen n more times
// and returns how many came from quiet.
func heartbeatsUntil(t *testing.T, h *harness, steady, quiet string, n int) int {
	t.Helper()
	seen, fromQuiet := 0, 0
	for seen < n {
		hb, _ := h.nextHeartbeat()
		switch hb.TaskID {
		case steady:
			seen++
		case quiet:
			fromQuiet++
		}
	}
	return fromQuiet
}

func TestFaultCrash(t *testing.T) {
	h := newHarness(t, harnessOpts{
		cfg: Config{HeartbeatInterval: 5 * time.Millisecond},
		sim: SimConfig{Faults: Faults{CrashTargets: []string{"crashy:1"}}},
	})
	crashy := declared("crashy", "work", 10, 10, 100)
	steady := declared("steady", "work", 10, 10, 100)
	h.mustLaunch(crashy)
	h.mustLaunch(steady)
	if hb, _ := h.nextHeartbeat(); hb.TaskID != crashy.TaskID || hb.Seq != 1 {
		t.Fatalf("first heartbeat %+v", hb)
	}
	h.sim.Advance(time.Second) // crashy dies at its first tick
	ps := h.ps()
	if len(ps.Tasks) != 1 || ps.Tasks[0].TaskID != steady.TaskID {
		t.Fatalf("ps after the crash: %+v", ps.Tasks)
	}
	drainHeartbeats(t, h)
	if n := heartbeatsUntil(t, h, steady.TaskID, crashy.TaskID, 3); n != 0 {
		t.Fatalf("%d heartbeats from the crashed task", n)
	}
	h.hostStatusWhere("the crashed task gone", func(s schemas.HostStatus) bool {
		return len(s.Tasks) == 1 && s.Tasks[0] == steady.TaskID && s.RAM.UsedMiB == 20
	})
	// No event for the crash: the first event in the stream is the kill.
	h.kill(steady.TaskID, 0)
	if ev := h.nextEvent(); ev.TaskID != steady.TaskID || ev.Reason != schemas.ReasonKilled {
		t.Fatalf("first event %+v, want steady's kill", ev)
	}
	// The targeted fault was for one launch only.
	again := declared("crashy", "work", 10, 10, 100)
	pid := h.mustLaunch(again)
	h.sim.Advance(time.Second)
	if ps := h.ps(pid); len(ps.Tasks) != 1 {
		t.Fatal("second crashy launch crashed too")
	}
}

func TestFaultCrashAfter(t *testing.T) {
	h := newHarness(t, harnessOpts{sim: SimConfig{Faults: Faults{CrashTargets: []string{"late"}, CrashAfter: 30 * time.Second}}})
	pid := h.mustLaunch(declared("late", "work", 10, 10, 100))
	if got := runUntilGone(t, h, pid, time.Second, 100); got != 31*time.Second {
		t.Fatalf("crashed after %v of game time, want 31s (1s to start helpers + 30s)", got)
	}
}

func TestFaultHang(t *testing.T) {
	h := newHarness(t, harnessOpts{
		cfg: Config{HeartbeatInterval: 5 * time.Millisecond, RAMMiB: 1000},
		sim: SimConfig{Faults: Faults{HangTargets: []string{"hung"}}},
	})
	hung := declared("hung", "work", 10, 100, 5)
	steady := declared("steady", "work", 10, 10, 100)
	pid := h.mustLaunch(hung)
	if n, _, _ := h.hbs.Pending(); n != 0 {
		t.Fatal("a task hung from the start sent a heartbeat")
	}
	h.mustLaunch(steady)
	h.sim.Advance(time.Second)
	h.sim.Advance(time.Minute) // far past its work_s: a hung task makes no progress
	if n := heartbeatsUntil(t, h, steady.TaskID, hung.TaskID, 3); n != 0 {
		t.Fatalf("%d heartbeats from the hung task", n)
	}
	ps := h.ps(pid)
	if len(ps.Tasks) != 1 || ps.Tasks[0].TaskID != hung.TaskID {
		t.Fatalf("hung task not listed by ps: %+v", ps.Tasks)
	}
	h.hostStatusWhere("the hung task holding its RAM", func(s schemas.HostStatus) bool {
		return len(s.Tasks) == 2 && s.RAM.UsedMiB == 110+20
	})
	// Its RAM still counts against launches: 1000 - 110 - 20 = 870 free.
	if rep := h.launch(declared("big", "work", 10, 861, 5)); rep.Error == nil || rep.Error.Code != schemas.CodeInsufficientRAM {
		t.Fatalf("launch over the hung task's RAM: %+v", rep)
	}
	if rep := h.kill(hung.TaskID, pid); rep.Running {
		t.Fatal("hung task survived a kill")
	}
	if ev := h.nextEvent(); ev.TaskID != hung.TaskID || ev.Reason != schemas.ReasonKilled {
		t.Fatalf("event %+v", ev)
	}
}

func TestFaultHangAfter(t *testing.T) {
	h := newHarness(t, harnessOpts{sim: SimConfig{Faults: Faults{HangTargets: []string{"h"}, HangAfter: 10 * time.Second}}})
	req := declared("h", "work", 10, 10, 30)
	pid := h.mustLaunch(req)
	if hb, _ := h.nextHeartbeat(); hb.TaskID != req.TaskID {
		t.Fatalf("heartbeat %+v", hb)
	}
	for range 100 {
		h.sim.Advance(time.Second)
	}
	var task *entry
	h.agent.mu.Lock()
	task = h.agent.tasks[req.TaskID]
	h.agent.mu.Unlock()
	if task == nil {
		t.Fatal("task hung after 10s ended anyway")
	}
	s := task.task.Sample()
	if !s.Silent || s.Progress < 0.3 || s.Progress > 0.37 {
		t.Fatalf("sample %+v: want silent with progress 10/30", s)
	}
	if ps := h.ps(pid); len(ps.Tasks) != 1 {
		t.Fatal("not listed by ps")
	}
}

func TestFaultHelpersUnavailable(t *testing.T) {
	h := newHarness(t, harnessOpts{
		cfg: Config{HeartbeatInterval: 5 * time.Millisecond},
		sim: SimConfig{Faults: Faults{HelpersFailTargets: []string{"x:1"}}},
	})
	first := declared("x", "work", 10, 100, 100)
	pid := h.mustLaunch(first)
	h.sim.Advance(time.Second)
	ev := h.nextEvent()
	if ev.Kind != schemas.EventFailed || ev.Reason != schemas.ReasonHelpersUnavailable || ev.TaskID != first.TaskID || ev.PID != pid {
		t.Fatalf("event %+v", ev)
	}
	if ps := h.ps(); len(ps.Tasks) != 0 {
		t.Fatalf("ps %+v", ps.Tasks)
	}
	h.hostStatusWhere("the wrapper's RAM freed", func(s schemas.HostStatus) bool { return s.RAM.UsedMiB == 0 && len(s.Tasks) == 0 })
	second := declared("x", "work", 10, 100, 100)
	h.mustLaunch(second)
	h.sim.Advance(time.Second)
	h.hostStatusWhere("the helpers running", func(s schemas.HostStatus) bool { return s.RAM.UsedMiB == 110 })
}

func TestFaultForeignRAM(t *testing.T) {
	h := newHarness(t, harnessOpts{
		cfg: Config{RAMMiB: 1024, HeartbeatInterval: 5 * time.Millisecond},
		sim: SimConfig{Faults: Faults{ForeignMiB: 600}},
	})
	if st := h.nextHostStatus(); st.RAM.UsedMiB != 600 || len(st.Tasks) != 0 {
		t.Fatalf("host status %+v, want 600 MiB used by foreign processes", st)
	}
	if rep := h.launch(declared("a", "work", 100, 400, 60)); rep.Error == nil || rep.Error.Code != schemas.CodeInsufficientRAM {
		t.Fatalf("launch into foreign RAM: %+v", rep)
	}
	ok := declared("b", "work", 100, 300, 60)
	h.mustLaunch(ok)
	// Foreign use grows after the launch was admitted: the helpers find
	// no room and the task fails, as in the scheduler this plan fixes.
	h.sim.SetForeignMiB(1000)
	h.sim.Advance(time.Second)
	ev := h.nextEvent()
	if ev.TaskID != ok.TaskID || ev.Reason != schemas.ReasonHelpersUnavailable {
		t.Fatalf("event %+v", ev)
	}
	if got := h.sim.ForeignMiB(); got != 1000 {
		t.Fatalf("foreign RAM %d after the task freed its wrapper, want 1000", got)
	}
	h.hostStatusWhere("all RAM foreign", func(s schemas.HostStatus) bool { return s.RAM.UsedMiB == 1000 && len(s.Tasks) == 0 })
}

func TestRandomFaultsAreSeeded(t *testing.T) {
	faults := func(seed int64) []string {
		s, err := NewSim(SimConfig{RAMMiB: 1 << 30, Tick: -1, Faults: Faults{Seed: seed, CrashProb: 0.3, HangProb: 0.3, HelpersFailProb: 0.3}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var out []string
		for i := range 64 {
			spec := &LaunchSpec{TaskID: "t", Epoch: 1, Target: "x", Type: "w", RAM: schemas.TaskRAM{WrapperMiB: 1, HelpersMiB: 1},
				Args: map[string]any{ArgWorkS: 1.0}}
			task, err := s.Start(spec, Hooks{})
			if err != nil {
				t.Fatal(i, err)
			}
			st := task.(*simTask)
			out = append(out, strings.Join([]string{boolStr(st.crash), boolStr(st.hang), boolStr(st.helpersFail)}, ""))
		}
		return out
	}
	a, b, c := faults(42), faults(42), faults(43)
	if strings.Join(a, ",") != strings.Join(b, ",") {
		t.Fatal("same seed, different faults")
	}
	if strings.Join(a, ",") == strings.Join(c, ",") {
		t.Fatal("different seeds, same faults")
	}
	var crashes int
	for _, f := range a {
		if f[0] == '1' {
			crashes++
		}
	}
	if crashes < 8 || crashes > 32 {
		t.Fatalf("%d crashes in 64 launches at p=0.3", crashes)
	}
}

func boolStr(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func TestOutboxRetriesUntilTheStreamExists(t *testing.T) {
	h := newHarness(t, harnessOpts{noStream: true})
	req := declared("early", "work", 10, 10, 5)
	h.mustLaunch(req)
	h.sim.Advance(time.Second)
	h.sim.Advance(10 * time.Second)
	eventually(t, "publish attempts failing", func() bool { return h.agent.Stats().PublishFailures >= 3 })
	if st := h.agent.Stats(); st.OutboxLen != 1 || st.EventsPublished != 0 {
		t.Fatalf("stats %+v", st)
	}
	h.stream = createStream(t, h.js, "")
	ev := h.nextEvent()
	if ev.TaskID != req.TaskID || ev.Kind != schemas.EventDone {
		t.Fatalf("event %+v", ev)
	}
	eventually(t, "the outbox empty", func() bool { st := h.agent.Stats(); return st.OutboxLen == 0 && st.EventsPublished == 1 })
}

func TestOutboxFullDropsLoudly(t *testing.T) {
	h := newHarness(t, harnessOpts{noStream: true, cfg: Config{OutboxSize: 1, FlushTimeout: 50 * time.Millisecond}})
	for _, target := range []string{"a", "b", "c"} {
		r := declared(target, "work", 1, 1, 1)
		h.mustLaunch(r)
		h.kill(r.TaskID, 0)
	}
	// One event is in flight or queued, the others could not be queued.
	eventually(t, "drops counted", func() bool { st := h.agent.Stats(); return st.EventsDropped+st.EventsQueued == 3 })
	if st := h.agent.Stats(); st.EventsDropped < 1 || st.EventsQueued > 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSimConfigFromEnv(t *testing.T) {
	env := map[string]string{
		"SIM_SPEED": "50", "SIM_TICK": "10ms", "SIM_SEED": "9", "SIM_FIRST_PID": "7",
		"SIM_CRASH_PROB": "0.25", "SIM_CRASH_AFTER": "3s", "SIM_CRASH_TARGETS": "a, b:2",
		"SIM_HANG_PROB": "0.5", "SIM_HANG_AFTER": "1s", "SIM_HANG_TARGETS": "I.I.I.I",
		"SIM_HELPERS_FAIL_PROB": "1", "SIM_HELPERS_FAIL_TARGETS": "c:1", "SIM_FOREIGN_MIB": "512",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := SimConfigFromEnv("h", 1024, lookup)
	if err != nil {
		t.Fatal(err)
	}
	f := cfg.Faults
	if cfg.Speed != 50 || cfg.Tick != 10*time.Millisecond || cfg.FirstPID != 7 || f.Seed != 9 ||
		f.CrashProb != 0.25 || f.CrashAfter != 3*time.Second || strings.Join(f.CrashTargets, "|") != "a|b:2" ||
		f.HangProb != 0.5 || f.HangAfter != time.Second || strings.Join(f.HangTargets, "|") != "I.I.I.I" ||
		f.HelpersFailProb != 1 || strings.Join(f.HelpersFailTargets, "|") != "c:1" || f.ForeignMiB != 512 {
		t.Fatalf("config %+v", cfg)
	}
	for k, bad := range map[string]string{
		"SIM_SPEED": "0", "SIM_TICK": "fast", "SIM_CRASH_PROB": "1.5", "SIM_HANG_AFTER": "-1s",
		"SIM_FOREIGN_MIB": "lots", "SIM_CRASH_TARGETS": "a:0", "SIM_FIRST_PID": "-3", "SIM_SEED": "x",
	} {
		one := map[string]string{k: bad}
		_, err := SimConfigFromEnv("h", 1024, func(key string) (string, bool) { v, ok := one[key]; return v, ok })
		if err == nil || !strings.HasPrefix(err.Error(), k+": want ") || !strings.Contains(err.Error(), `"`+bad+`"`) {
			t.Errorf("%s=%s: error %v", k, bad, err)
		}
	}
	// Defaults.
	cfg, err = SimConfigFromEnv("h", 1024, func(string) (string, bool) { return "", false })
	if err != nil || cfg.Speed != 1 || cfg.Tick != DefaultSimTick || cfg.FirstPID != DefaultFirstPID {
		t.Fatalf("defaults %+v, %v", cfg, err)
	}
}

func TestExecutorRegistry(t *testing.T) {
	ex, err := NewExecutor(SimExecutor, Env{Host: "h", RAMMiB: 100, Lookup: func(k string) (string, bool) {
		if k == "SIM_FOREIGN_MIB" {
			return "40", true
		}
		return "", false
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	if ex.UsedMiB() != 40 {
		t.Fatalf("used %d, want the 40 MiB of foreign RAM", ex.UsedMiB())
	}
	if _, err := NewExecutor("os", Env{}); err == nil {
		t.Fatal("unknown executor accepted")
	}
	_, err = NewExecutor(SimExecutor, Env{Host: "h", RAMMiB: 100, Lookup: func(k string) (string, bool) { return "nope", k == "SIM_SPEED" }})
	if err == nil || !strings.Contains(err.Error(), "SIM_SPEED") {
		t.Fatalf("bad SIM_SPEED: %v", err)
	}
}

func TestSimKillAndExitRace(t *testing.T) {
	// Whichever comes first wins: a task that ended on its own reports
	// ErrGone to Kill, and a killed task never calls its hook.
	s, err := NewSim(SimConfig{RAMMiB: 100, Tick: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	exits := 0
	hooks := Hooks{Exited: func(Task, Exit) { exits++ }}
	spec := &LaunchSpec{TaskID: "a", Epoch: 1, Target: "x", Type: "w", RAM: schemas.TaskRAM{WrapperMiB: 5, HelpersMiB: 5}, Args: map[string]any{ArgWorkS: 1.0}}
	a, err := s.Start(spec, hooks)
	if err != nil {
		t.Fatal(err)
	}
	s.Advance(time.Second)
	s.Advance(time.Second)
	if exits != 1 || !errors.Is(a.Kill(), ErrGone) {
		t.Fatalf("ended task: exits %d", exits)
	}
	b, err := s.Start(spec, hooks)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Kill(); err != nil {
		t.Fatal(err)
	}
	s.Advance(time.Minute)
	if exits != 1 || s.UsedMiB() != 0 {
		t.Fatalf("killed task: exits %d, used %d", exits, s.UsedMiB())
	}
	// The wrapper must fit at Start.
	spec.RAM.WrapperMiB = 101
	if _, err := s.Start(spec, hooks); !errors.Is(err, ErrInsufficientRAM) {
		t.Fatalf("oversized wrapper: %v", err)
	}
}

// FuzzRequests feeds arbitrary bytes to the launch, kill and ps handlers:
// nothing panics, and a request counts as malformed exactly when the strict
// decoder rejects it.
func FuzzRequests(f *testing.F) {
	srv := natstest.Server(f)
	nc := natstest.Conn(f, srv.ClientURL())
	sim, err := NewSim(SimConfig{RAMMiB: 1 << 40, Tick: -1})
	if err != nil {
		f.Fatal(err)
	}
	a, err := New(nc, Config{Host: "fuzz", RAMMiB: 1 << 40}, sim, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { sim.Close() })
	for _, seed := range []string{
		`{"v":1,"task_id":"t","epoch":1,"target":"a","type":"w","ram":{"wrapper_mib":1,"helpers_mib":1},"args":{"work_s":1}}`,
		`{"v":1,"task_id":"t","pid":3,"reason":"x"}`,
		`{"v":1,"pids":[1,2]}`,
		`{"v":1,"task_id":"t","epoch":1,"target":"a","type":"till","ram":{"wrapper_mib":1,"helpers_mib":1},"args":{"spec":{"v":1,"profile":"hacking"}}}`,
		`{"task_id":5}`, `[]`, `null`, ``, `{"v":1e400}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		before := a.Stats().Malformed
		_, errL := schemas.DecodeLaunchRequest(b)
		_, errK := schemas.DecodeKillRequest(b)
		_, errP := schemas.DecodePsRequest(b)
		a.handleLaunch(&fakeRequest{subject: "l", data: b})
		a.handleKill(&fakeRequest{subject: "k", data: b})
		a.handlePs(&fakeRequest{subject: "p", data: b})
		after := a.Stats().Malformed
		for kind, decodeErr := range map[string]error{"launch": errL, "kill": errK, "ps": errP} {
			want := before[kind]
			if decodeErr != nil {
				want++
			}
			if after[kind] != want {
				t.Fatalf("%s: malformed %d -> %d, decode error %v", kind, before[kind], after[kind], decodeErr)
			}
		}
		if id := bestEffortTaskID(b); len(id) > schemas.MaxNameBytes {
			t.Fatalf("task id of %d bytes", len(id))
		}
	})
}

func TestTruncateKeepsUTF8(t *testing.T) {
	s := strings.Repeat("é", 10) // 2 bytes each
	for n := 0; n <= 21; n++ {
		got := truncate(s, n)
		if !utf8.ValidString(got) || len(strings.TrimSuffix(got, "...")) > n {
			t.Fatalf("truncate(%d) = %q", n, got)
		}
	}
	if got := truncate("a\xffb", 10); got != "a\uFFFDb" {
		t.Fatalf("invalid UTF-8 kept: %q", got)
	}
}
