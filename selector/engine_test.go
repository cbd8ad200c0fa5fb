package selector

import (
	"encoding/json"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/taskselector/taskselector/schemas"
)

// ----- rule 1: pending launches -----

func TestLaunchWaitsForFirstHeartbeat(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", withValue(simple(10, 10, 90), 2))
	h.declare("b", simple(10, 10, 90))
	h.expect(h.warm("h1=1000"),
		"persist a phase=a epoch=1 task=a#1 state=launching host=h1 pid=0 budget=100",
		"launch h1 a#1 type=a ram=10+90")
	h.advance(time.Second)
	h.expect(h.tick()) // one launch is pending: nothing else starts
	h.expect(h.reply("a#1", 7))
	if st := h.e.Status(h.now); st.PendingLaunches != 1 || h.targetStatus("a").State != StateLaunching {
		t.Fatalf("after the reply: pending %d, a %s", st.PendingLaunches, h.targetStatus("a").State)
	}
	h.expect(h.tick())
	h.expect(h.heartbeat("a#1"),
		"persist a phase=a epoch=1 task=a#1 state=active host=h1 pid=7 budget=100",
		"persist b phase=a epoch=1 task=b#1 state=launching host=h1 pid=0 budget=100",
		"launch h1 b#1 type=a ram=10+90")
	if got := h.e.Status(h.now).Counters; got.Launches != 2 || got.Confirmed != 1 {
		t.Fatalf("counters %+v", got)
	}
}

// TestLaunchCarriesThePhaseArgs: a phase that declares args gets them in its
// launch request (TASK_ARGS for a real program); one that declares none gets
// the spec, as the sim executor reads it.
func TestLaunchCarriesThePhaseArgs(t *testing.T) {
	h := newHarness(t, testConfig())
	first := phase("hash", 10, 10, 90)
	first.Args = map[string]any{"dir": "/srv/data", "helpers": 3.0}
	h.declare("a", declared(first, phase("serve", 10, 10, 90)))
	var launch *schemas.LaunchRequest
	for _, c := range h.warm("h1=1000") {
		if c.Kind == CmdLaunch {
			launch = c.Launch
		}
	}
	if launch == nil || launch.Type != "hash" || !reflect.DeepEqual(launch.Args, first.Args) {
		t.Fatalf("launch %+v, want the hash phase with its args %v", launch, first.Args)
	}
	if got := phaseArgs(&schemas.TargetSpec{Phases: []schemas.Phase{phase("serve", 1, 1, 1)}}, "serve"); got != nil {
		t.Errorf("a phase without args: %v", got)
	}
}

func TestHeartbeatBeforeReplyConfirms(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	h.task("a#1").pid = 42
	h.expect(h.heartbeat("a#1"), "persist a phase=a epoch=1 task=a#1 state=active host=h1 pid=42 budget=100")
	h.expect(h.reply("a#1", 42)) // the late reply changes nothing
	ts := h.targetStatus("a")
	if ts.State != StateActive || ts.PID != 42 || h.e.Status(h.now).PendingLaunches != 0 {
		t.Fatalf("status %+v", ts)
	}
	// An error reply after the task heartbeats is stale too.
	h.expect(h.replyError("a#1", schemas.CodeInsufficientRAM))
	if h.targetStatus("a").State != StateActive || h.e.Status(h.now).Backoff.Level != 0 {
		t.Fatal("a stale error reply changed the task")
	}
}

func TestReplyTimeoutKeepsLaunchPending(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	l := h.task("a#1")
	h.advance(time.Second)
	h.expect(h.step(&LaunchUnanswered{Host: "h1", Target: "a", TaskID: l.id}))
	if st := h.e.Status(h.now); st.PendingLaunches != 1 || st.Hosts[0].ReservedMiB != 100 {
		t.Fatalf("a timed-out reply freed the launch: %+v", st)
	}
	h.advance(2 * time.Second) // launch timeout: the PID is unknown, so ask for every task
	h.expect(h.tick(),
		"ps h1 all",
		"persist a phase=a epoch=1 task=a#1 state=suspect host=h1 pid=0 budget=100")
	h.expect(h.psReply("h1"), "persist a phase=a epoch=1 task=-")
	st := h.e.Status(h.now)
	if st.PendingLaunches != 0 || st.Hosts[0].ReservedMiB != 0 || st.Backoff.Level != 1 ||
		st.Counters.Failures[FailLaunchTimeout] != 1 || st.Counters.Timeouts != 1 {
		t.Fatalf("after ps found nothing: %+v", st)
	}
}

func TestReplyTimeoutThenHeartbeatConfirms(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	h.advance(time.Second)
	h.step(&LaunchUnanswered{Host: "h1", Target: "a", TaskID: h.task("a#1").id})
	h.advance(time.Second)
	// The worker started it and lost only the reply: its heartbeat confirms it.
	h.expectKinds(h.heartbeat("a#1"), CmdPersist)
	if h.targetStatus("a").State != StateActive {
		t.Fatal("not active")
	}
}

func TestPendingLaunchesKeyedByHostAndPID(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 2
	h := newHarness(t, cfg)
	h.declare("a", simple(10, 10, 90))
	h.declare("b", simple(10, 10, 90))
	h.expectKinds(h.warm("h1=100", "h2=100"), CmdPersist, CmdLaunch, CmdPersist, CmdLaunch)
	if h.task("a#1").host == h.task("b#1").host {
		t.Fatal("both on one host")
	}
	h.reply("a#1", 7)
	h.reply("b#1", 7) // the same PID on another host
	if len(h.e.pendingByPID) != 2 {
		t.Fatalf("pending by (host, pid): %v", h.e.pendingByPID)
	}
	h.heartbeat("b#1")
	if len(h.e.pendingByPID) != 1 || h.targetStatus("a").State != StateLaunching || h.targetStatus("b").State != StateActive {
		t.Fatal("b's heartbeat confirmed the wrong launch")
	}
}

func TestPendingWindowAccountsReservations(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 3
	h := newHarness(t, cfg)
	for _, n := range []string{"a", "b", "c", "d"} {
		h.declare(n, simple(10, 40, 90)) // min 50, full 100
	}
	h.expect(h.warm("h1=250"),
		"persist a phase=a epoch=1 task=a#1 state=launching host=h1 pid=0 budget=100",
		"launch h1 a#1 type=a ram=10+90",
		"persist b phase=a epoch=1 task=b#1 state=launching host=h1 pid=0 budget=100",
		"launch h1 b#1 type=a ram=10+90",
		"persist c phase=a epoch=1 task=c#1 state=launching host=h1 pid=0 budget=50",
		"launch h1 c#1 type=a ram=10+40")
	hl := h.hostLine("h1")
	if hl.ReservedMiB != 250 || hl.FreeMiB != 0 || h.e.Status(h.now).PendingLaunches != 3 {
		t.Fatalf("ledger %+v", hl)
	}
	// A slot frees up, but no RAM: d waits.
	h.expect(h.heartbeat("a#1"), "persist a phase=a epoch=1 task=a#1 state=active host=h1 pid=101 budget=100")
	if h.targetStatus("d").State != StatePending {
		t.Fatal("d not pending")
	}
}

// ----- rule 2: launch timeout -----

func TestSilentLaunchIsKilledAndTheNextLaunchProceeds(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", withValue(simple(10, 10, 90), 2))
	h.declare("b", simple(10, 10, 90))
	h.warm("h1=1000")
	h.reply("a#1", 7)
	var all []Command
	all = append(all, h.run(2*time.Second)...)
	h.expect(all) // within the launch timeout nothing happens
	h.advance(time.Second)
	h.refresh()
	h.expect(h.tick(),
		"ps h1 pids=7",
		"persist a phase=a epoch=1 task=a#1 state=suspect host=h1 pid=7 budget=100")
	h.expect(h.psReply("h1", "a#1"), `kill h1 a#1 pid=7 reason="no first heartbeat"`)
	h.advance(500 * time.Millisecond)
	h.expect(h.tick()) // still waiting for the kill: no launch, the reservation holds
	if h.hostLine("h1").ReservedMiB != 100 {
		t.Fatal("reservation freed before the kill was confirmed")
	}
	h.expect(h.killReply("a#1", false),
		"persist a phase=a epoch=1 task=-",
		"persist b phase=a epoch=1 task=b#1 state=launching host=h1 pid=0 budget=100",
		"launch h1 b#1 type=a ram=10+90")
	st := h.e.Status(h.now)
	if st.Backoff.Level != 0 || st.Counters.Failures[FailSilent] != 1 {
		t.Fatalf("status %+v", st)
	}
	// The silent target waits its restart delay, then runs again.
	if ts := h.targetStatus("a"); ts.State != StatePending || !strings.Contains(ts.Reason, "restart delay") {
		t.Fatalf("a: %+v", ts)
	}
}

func TestSilentLaunchKillRetriedUntilConfirmed(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	h.reply("a#1", 7)
	h.run(3 * time.Second)
	h.psReply("h1", "a#1")
	h.expect(h.killReply("a#1", true)) // still running
	h.advance(time.Second)
	h.expect(h.tick(), `kill h1 a#1 pid=7 reason="no first heartbeat"`)
	h.expect(h.step(&KillUnanswered{Host: "h1", TaskID: h.task("a#1").id}))
	h.advance(time.Second)
	h.expect(h.tick(), `kill h1 a#1 pid=7 reason="no first heartbeat"`)
	// A kill whose answer never comes back at all is sent again too.
	h.advance(2 * time.Second)
	h.expect(h.tick(), `kill h1 a#1 pid=7 reason="no first heartbeat"`)
	h.expectKinds(h.killReply("a#1", false), CmdPersist)
}

func TestLaunchTimeoutHostDoesNotAnswer(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000", "h2=200")
	if h.task("a#1").host != "h2" {
		t.Fatalf("best fit should pick h2, got %s", h.task("a#1").host)
	}
	h.silent["h2"] = true // h2 stops reporting and answering
	launched := h.now
	var cmds []Command
	for range 9 {
		h.advance(time.Second)
		h.refresh()
		for _, c := range h.tick() {
			cmds = append(cmds, c)
			if c.Kind == CmdPs {
				h.step(&PsUnanswered{Host: "h2", NoResponders: true})
			}
		}
		// The reservation holds until h2 is lost (a may run there), but
		// once the launch timed out and the ps went unanswered the launch
		// no longer holds a pending-launch slot, and h2 gets no other.
		wantPending := 1
		if h.now.Sub(launched) >= h.cfg.LaunchTimeout {
			wantPending = 0
		}
		st := h.e.Status(h.now)
		if st.PendingLaunches != wantPending || h.hostLine("h2").ReservedMiB != 100 {
			t.Fatalf("at +%v pending launches %d (want %d), reserved %d: %+v",
				h.now.Sub(t0), st.PendingLaunches, wantPending, h.hostLine("h2").ReservedMiB, st)
		}
		if wantPending == 0 && !h.hostLine("h2").Avoided {
			t.Fatalf("at +%v h2 is not avoided", h.now.Sub(t0))
		}
	}
	if len(only(cmds, CmdPs)) < 3 || len(only(cmds, CmdLaunch)) != 0 {
		t.Fatalf("expected ps retries and no launch, got %q", h.format(cmds))
	}
	// h2's last status was at +5s; at +15s it is lost and a moves to h1.
	h.advance(time.Second)
	h.refresh()
	h.expect(h.tick(),
		"ps h2 all",
		"persist a phase=a epoch=1 task=-",
		"persist a phase=a epoch=2 task=a#2 state=launching host=h1 pid=0 budget=100",
		"launch h1 a#2 type=a ram=10+90")
	st := h.e.Status(h.now)
	if st.Counters.HostsLost != 1 || st.Counters.Failures[FailHostLost] != 1 || !h.hostLine("h2").Lost {
		t.Fatalf("status %+v", st)
	}
}

// ----- rule 4: crash detection -----

func TestTaskHeartbeatsOnceThenGoesSilent(t *testing.T) {
	for _, running := range []bool{false, true} {
		t.Run(map[bool]string{false: "gone", true: "running"}[running], func(t *testing.T) {
			h := newHarness(t, testConfig())
			h.declare("a", simple(10, 10, 90))
			h.warm("h1=1000")
			h.reply("a#1", 7)
			h.heartbeat("a#1")
			h.expect(h.run(4 * time.Second))
			h.advance(time.Second)
			h.refresh()
			h.expect(h.tick(),
				"ps h1 pids=7",
				"persist a phase=a epoch=1 task=a#1 state=suspect host=h1 pid=7 budget=100")
			if ts := h.targetStatus("a"); ts.State != StateSuspect || ts.HeartbeatAgeMS != 5000 {
				t.Fatalf("a: %+v", ts)
			}
			if running {
				h.expect(h.psReply("h1", "a#1"), `kill h1 a#1 pid=7 reason="heartbeat stale"`)
				h.expect(h.killReply("a#1", false), "persist a phase=a epoch=1 task=-")
			} else {
				h.expect(h.psReply("h1"), "persist a phase=a epoch=1 task=-")
			}
			st := h.e.Status(h.now)
			if st.Backoff.Level != 0 || st.Counters.Stale != 1 {
				t.Fatalf("status %+v", st)
			}
			// The crash delay of the target alone: 1 s.
			h.advance(999 * time.Millisecond)
			h.refresh()
			h.expect(h.tick())
			h.advance(time.Millisecond)
			h.expectKinds(h.tick(), CmdPersist, CmdLaunch)
		})
	}
}

func TestLateHeartbeatRevivesSuspect(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	h.reply("a#1", 7)
	h.heartbeat("a#1")
	h.run(5 * time.Second)
	if h.targetStatus("a").State != StateSuspect {
		t.Fatal("not suspect")
	}
	h.expect(h.heartbeat("a#1"), "persist a phase=a epoch=1 task=a#1 state=active host=h1 pid=7 budget=100")
	h.expect(h.psReply("h1", "a#1")) // the answer to the old ps is moot now
	if h.targetStatus("a").State != StateActive {
		t.Fatal("not active")
	}
}

func TestHostLostRequeuesItsTasks(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 5
	h := newHarness(t, cfg)
	h.declare("a", simple(10, 10, 90))
	h.declare("b", simple(10, 10, 40))
	h.warm("h1=100", "h2=100", "h3=1000")
	for _, n := range []string{"a#1", "b#1"} {
		h.heartbeat(n)
	}
	// b (more value per MiB) goes first, to the tightest host; a to h2.
	if h.task("a#1").host != "h2" || h.task("b#1").host != "h1" {
		t.Fatalf("placement: a on %s, b on %s", h.task("a#1").host, h.task("b#1").host)
	}
	h.silent["h2"] = true
	var cmds []Command
	for range 10 {
		h.advance(time.Second)
		h.refresh()
		h.heartbeat("b#1")
		for _, c := range h.tick() {
			cmds = append(cmds, c)
			if c.Kind == CmdPs {
				h.step(&PsUnanswered{Host: c.Host})
			}
		}
	}
	h.expect(only(cmds, CmdLaunch), "launch h3 a#2 type=a ram=10+90")
	if !h.hostLine("h2").Lost || h.hostLine("h1").Lost || h.targetStatus("b").State != StateActive {
		t.Fatal("wrong hosts lost")
	}
}

// ----- rule 4: mass-stale guard -----

// fleet is four hosts, each running one confirmed task.
func fleet(t *testing.T) *harness {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 4
	h := newHarness(t, cfg)
	for _, n := range []string{"a", "b", "c", "d"} {
		h.declare(n, simple(10, 10, 90))
	}
	h.warm("h1=100", "h2=100", "h3=100", "h4=100")
	for _, n := range []string{"a#1", "b#1", "c#1", "d#1"} {
		h.reply(n, 0)
		h.heartbeat(n)
	}
	return h
}

func TestMassStaleStaggeredStatusesLoseNoHost(t *testing.T) {
	// Ten hosts report on their own schedules, spread over one second; at
	// some moment all stop. The first to run out must not be lost before
	// the rest are seen to follow.
	h := newHarness(t, testConfig())
	h.start()
	const n = 10
	names := make([]string, n)
	for i := range names {
		names[i] = "h" + string(rune('a'+i))
	}
	step := 100 * time.Millisecond
	stop := 20 * time.Second
	for now := time.Duration(0); now < 45*time.Second; now += step {
		h.now = t0.Add(now)
		for i, name := range names {
			if now < stop && (now/step)%10 == time.Duration(i) {
				h.hostStatus(name, 100, 0)
			}
		}
		h.tick()
		if st := h.e.Status(h.now); st.Counters.HostsLost != 0 {
			t.Fatalf("at +%v a host was lost: %+v", now, st.Hosts)
		}
	}
	if !h.e.Status(h.now).Degraded {
		t.Fatal("not degraded")
	}
}

func TestSingleHostDeathIsNotMassStale(t *testing.T) {
	h := newHarness(t, testConfig())
	h.start()
	names := []string{"ha", "hb", "hc"}
	step := 100 * time.Millisecond
	for now := time.Duration(0); now < 30*time.Second; now += step {
		h.now = t0.Add(now)
		for i, name := range names {
			if (name != "ha" || now < 5*time.Second) && (now/step)%10 == time.Duration(3*i) {
				h.hostStatus(name, 100, 0)
			}
		}
		h.tick()
	}
	st := h.e.Status(h.now)
	if st.Degraded || st.Counters.HostsLost != 1 || !h.hostLine("ha").Lost {
		t.Fatalf("one dead host of three: %+v", st)
	}
}

// ----- rule 3: backoff -----

func TestBackoffWaitsGrowToTheCapWithJitter(t *testing.T) {
	for seed := uint64(1); seed <= 300; seed++ {
		c := DefaultConfig()
		c.Seed = seed
		b := newBackoff(c)
		varied := false
		for level := 1; level <= 12; level++ {
			d := b.raise(t0)
			nominal := float64(500*time.Millisecond) * math.Pow(2, float64(level-1))
			lo, hi := 0.8*nominal, math.Min(1.2*nominal, float64(10*time.Second))
			if float64(d) < math.Min(lo, float64(10*time.Second)) || float64(d) > hi || d > 10*time.Second {
				t.Fatalf("seed %d level %d: wait %v outside [%v, %v]", seed, level, d, time.Duration(lo), time.Duration(hi))
			}
			if level >= 6 && d != 10*time.Second { // 0.8 * 16 s > 10 s
				t.Fatalf("seed %d level %d: wait %v, want the 10 s cap", seed, level, d)
			}
			if level <= 4 && float64(d) != nominal {
				varied = true
			}
			if !b.next.Equal(t0.Add(d)) || b.open(t0.Add(d-1)) || !b.open(t0.Add(d)) {
				t.Fatalf("seed %d level %d: gate wrong", seed, level)
			}
		}
		if !varied {
			t.Fatalf("seed %d: no jitter", seed)
		}
		b.reset()
		if b.Level() != 0 || !b.open(t0) {
			t.Fatal("reset did not open the gate")
		}
	}
}

func TestBackoffGrowsOnRAMPressureAndResetsOnConfirm(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	var waits []time.Duration
	for epoch := 1; epoch <= 8; epoch++ {
		name := "a#" + itoa(epoch)
		h.expectKinds(h.replyError(name, schemas.CodeInsufficientRAM), CmdPersist)
		st := h.e.Status(h.now)
		wait := st.Backoff.NextLaunchAt.Sub(h.now)
		if st.Backoff.Level != epoch || wait <= 0 {
			t.Fatalf("level %d wait %v", st.Backoff.Level, wait)
		}
		waits = append(waits, wait)
		h.advance(wait - time.Millisecond)
		h.refresh()
		h.expect(h.tick()) // gated
		h.advance(time.Millisecond)
		h.expectKinds(h.tick(), CmdPersist, CmdLaunch)
	}
	for i, w := range waits {
		nominal := 500 * time.Millisecond << i
		if w > 10*time.Second || float64(w) < math.Min(0.8*float64(nominal), float64(10*time.Second)) ||
			float64(w) > 1.2*float64(nominal) {
			t.Fatalf("wait %d = %v (nominal %v)", i+1, w, nominal)
		}
	}
	if waits[7] != 10*time.Second {
		t.Fatalf("waits %v do not reach the cap", waits)
	}
	h.heartbeat("a#9")
	if st := h.e.Status(h.now); st.Backoff.Level != 0 || !st.Backoff.NextLaunchAt.IsZero() {
		t.Fatalf("confirmed launch did not reset: %+v", st.Backoff)
	}
	if st := h.e.Status(h.now); st.Counters.Failures[FailInsufficientRAM] != 8 {
		t.Fatalf("failures %v", st.Counters.Failures)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestBackoffGatesOnlyLaunches(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 3
	h := newHarness(t, cfg)
	h.declare("a", withValue(simple(10, 10, 90), 3))
	h.declare("b", withValue(simple(10, 10, 90), 2))
	h.declare("c", withValue(simple(10, 10, 90), 1))
	h.declare("d", simple(10, 990, 990)) // fits nowhere while the others run
	h.warm("h1=400")
	h.heartbeat("c#1")
	h.reply("a#1", 0)
	// b and then a are refused for lack of RAM: backed off, level 2.
	h.replyError("b#1", schemas.CodeInsufficientRAM)
	h.replyError("a#1", schemas.CodeInsufficientRAM) // a had a PID but no heartbeat: the refusal stands
	st := h.e.Status(h.now)
	if st.Backoff.Level != 2 {
		t.Fatalf("level %d", st.Backoff.Level)
	}
	// Heartbeats, events, replies and status are handled while backed off.
	h.advance(100 * time.Millisecond)
	if got := h.heartbeat("c#1"); len(got) != 0 {
		t.Fatalf("heartbeat of an active task: %q", h.format(got))
	}
	if h.targetStatus("c").HeartbeatAgeMS != 0 {
		t.Fatal("heartbeat not recorded")
	}
	h.expectKinds(h.event("c#1", schemas.EventDone, "", nil), CmdPersist) // requeued, but gated
	if h.targetStatus("c").State != StatePending || h.e.Status(h.now).Counters.PhasesCompleted != 1 {
		t.Fatal("done event not handled")
	}
	h.expect(h.tick())
	if st := h.e.Status(h.now); st.Backoff.Level != 2 || st.PendingLaunches != 0 {
		t.Fatalf("status while backed off: %+v", st)
	}
}

// TestRAMPressureFromFailedTasks: a task that could not get its helpers,
// or that its memory limit stopped (oom), raises the global backoff one
// step, and its target gets no crash delay.
func TestRAMPressureFromFailedTasks(t *testing.T) {
	for _, reason := range []string{schemas.ReasonHelpersUnavailable, schemas.ReasonOOM} {
		t.Run(reason, func(t *testing.T) {
			h := newHarness(t, testConfig())
			h.declare("a", simple(10, 10, 90))
			h.warm("h1=1000")
			h.heartbeat("a#1")
			h.expect(h.event("a#1", schemas.EventFailed, reason, nil), "persist a phase=a epoch=1 task=-")
			st := h.e.Status(h.now)
			if st.Backoff.Level != 1 || st.Counters.Failures[reason] != 1 {
				t.Fatalf("%+v", st)
			}
			if ts := h.targetStatus("a"); strings.Contains(ts.Reason, "restart delay") {
				t.Fatal("RAM pressure gave a crash delay")
			}
		})
	}
}

func TestRefusedLaunchBlocksUntilTheSpecChanges(t *testing.T) {
	for _, code := range []string{schemas.CodeUnknownType, schemas.CodeInvalid} {
		t.Run(code, func(t *testing.T) {
			h := newHarness(t, testConfig())
			spec := simple(10, 10, 90)
			h.declare("a", spec)
			h.declare("b", simple(10, 10, 990))
			h.warm("h1=2000")
			h.expect(h.replyError("a#1", code),
				"persist a phase=a epoch=1 task=-",
				"persist b phase=a epoch=1 task=b#1 state=launching host=h1 pid=0 budget=1000",
				"launch h1 b#1 type=a ram=10+990")
			ts := h.targetStatus("a")
			if ts.State != StateBlocked || !strings.Contains(ts.Reason, code) {
				t.Fatalf("a: %+v", ts)
			}
			if st := h.e.Status(h.now); st.Backoff.Level != 0 || st.Counters.Failures[code] != 1 {
				t.Fatalf("%+v", st)
			}
			h.heartbeat("b#1")
			h.expect(h.declare("a", spec)) // the same spec again: still blocked
			h.expect(h.run(3*time.Second, "b#1"))
			h.expect(h.declare("a", simple(10, 10, 80)),
				"persist a phase=a epoch=2 task=a#2 state=launching host=h1 pid=0 budget=90",
				"launch h1 a#2 type=a ram=10+80")
		})
	}
}

func TestNoRespondersAvoidsTheHostUntilItsNextStatus(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.declare("b", simple(10, 10, 90))
	h.warm("h1=100", "h2=1000")
	if h.task("a#1").host != "h1" {
		t.Fatal("best fit should pick h1")
	}
	h.expect(h.step(&LaunchUnanswered{Host: "h1", Target: "a", TaskID: h.task("a#1").id, NoResponders: true}),
		"persist a phase=a epoch=1 task=-",
		"persist a phase=a epoch=2 task=a#2 state=launching host=h2 pid=0 budget=100",
		"launch h2 a#2 type=a ram=10+90")
	if st := h.e.Status(h.now); st.Backoff.Level != 0 || !h.hostLine("h1").Avoided || st.Counters.Failures[FailNoResponders] != 1 {
		t.Fatalf("%+v", st)
	}
	h.heartbeat("a#2")
	// b would fit h1 best, but h1 is avoided until it reports.
	if h.task("b#1").host != "h2" {
		t.Fatal("b placed on the avoided host")
	}
	h.heartbeat("b#1")
	h.hostStatus("h1", 100, 0)
	if h.hostLine("h1").Avoided {
		t.Fatal("still avoided after a status")
	}
}

func TestCrashDelayPerTargetDoublesToCapAndResets(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", withValue(simple(10, 10, 90), 5))
	h.declare("b", simple(10, 10, 90))
	h.warm("h1=1000")
	h.heartbeat("a#1")
	h.heartbeat("b#1") // b runs throughout; only a waits
	epoch := 1
	var delays []time.Duration
	for range 12 {
		h.event("a#"+itoa(epoch), schemas.EventFailed, schemas.ReasonCrashed, nil)
		epoch++
		ready := h.e.targets["a"].readyAt
		delays = append(delays, ready.Sub(h.now))
		if h.e.Status(h.now).Backoff.Level != 0 {
			t.Fatal("a crash raised the global backoff")
		}
		h.now = ready.Add(-time.Millisecond)
		h.refresh()
		h.heartbeat("b#1")
		h.expect(h.tick())
		h.advance(time.Millisecond)
		h.refresh()
		h.heartbeat("b#1")
		h.expectKinds(h.tick(), CmdPersist, CmdLaunch)
		h.heartbeat("a#" + itoa(epoch))
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300}
	for i := range want {
		if delays[i] != want[i]*time.Second {
			t.Fatalf("delays %v, want %v s", delays, want)
		}
	}
	// Ten minutes of healthy running reset the delay.
	h.run(10*time.Minute, "a#"+itoa(epoch), "b#1")
	h.event("a#"+itoa(epoch), schemas.EventFailed, schemas.ReasonCrashed, nil)
	if d := h.e.targets["a"].readyAt.Sub(h.now); d != time.Second {
		t.Fatalf("after 10 min healthy: delay %v", d)
	}
}

// ----- rule 5: fencing -----

func TestFencing(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.declare("b", simple(10, 10, 90))
	h.warm("h1=1000")
	h.reply("a#1", 7)
	h.heartbeat("a#1")
	h.heartbeat("b#1")
	h.event("a#1", schemas.EventFailed, schemas.ReasonCrashed, nil)
	// a waits its crash delay: a heartbeat from epoch 1 is stale.
	h.expect(h.heartbeat("a#1"), `kill h1 a#1 pid=7 reason="fenced: stale epoch"`)
	h.advance(500 * time.Millisecond)
	h.expect(h.heartbeat("a#1")) // at most one kill per reply timeout
	h.advance(500 * time.Millisecond)
	h.refresh()
	h.expect(h.heartbeat("a#1"), `kill h1 a#1 pid=7 reason="fenced: stale epoch"`)
	h.expectKinds(h.tick(), CmdPersist, CmdLaunch)
	h.heartbeat("a#2")
	h.advance(time.Second)
	// The current task is a#2: a#1 is not the target's task.
	h.expect(h.heartbeat("a#1"), `kill h1 a#1 pid=7 reason="fenced: not the target's task"`)
	// Right id, wrong host; a task id the engine never issued.
	hb := h.heartbeatMsg(h.task("a#2"), 0)
	hb.Host = "h9"
	h.expect(h.step(&HeartbeatReceived{Heartbeat: hb}), `kill h9 a#2 pid=102 reason="fenced: not the target's task"`)
	s := h.stray("a#2-impostor", "a", 2, "h1", 55)
	h.expect(h.step(&HeartbeatReceived{Heartbeat: h.heartbeatMsg(s, 0)}), `kill h1 a#2-impostor pid=55 reason="fenced: not the target's task"`)
	// A deleted target: its task is killed, and later heartbeats fenced.
	h.expect(h.undeclare("b"), `kill h1 b#1 pid=101 reason="target deleted"`)
	h.expect(h.heartbeat("b#1")) // being killed: nothing new
	h.expect(h.killReply("b#1", false), "delete b")
	h.advance(time.Second)
	h.expect(h.heartbeat("b#1"), `kill h1 b#1 pid=101 reason="fenced: target not declared"`)
	if got := h.e.Status(h.now).Counters.FencedHeartbeats; got != 7 {
		t.Fatalf("fenced heartbeats %d", got)
	}
	if h.targetStatus("a").State != StateActive {
		t.Fatal("fencing disturbed the current task")
	}
}

func TestEpochsContinueAfterATargetIsDeclaredAgain(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	h.heartbeat("a#1")
	h.undeclare("a")
	h.expect(h.killReply("a#1", false), "delete a")
	h.expect(h.declare("a", simple(10, 10, 90)),
		"persist a phase=a epoch=2 task=a#2 state=launching host=h1 pid=0 budget=100",
		"launch h1 a#2 type=a ram=10+90")
	h.expect(h.heartbeat("a#1"), `kill h1 a#1 pid=101 reason="fenced: not the target's task"`)
}

// ----- rule 6: estimates and admission -----

func TestPlacementBestFitThenScaledDown(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 10
	h := newHarness(t, cfg)
	h.declare("a", withValue(simple(10, 10, 90), 100)) // 100 MiB, the best value per MiB
	h.declare("b", withValue(simple(20, 10, 480), 10)) // 500 MiB, min 30
	h.declare("c", withValue(simple(10, 50, 50), 0.1)) // 60 MiB, fixed size
	h.start()
	h.hostStatus("h1", 100, 50)  // 50 free: 50 used by something else
	h.hostStatus("h2", 200, 0)   // 200 free
	h.hostStatus("h3", 300, 180) // 120 free
	h.advance(5 * time.Second)
	h.hostStatus("h1", 100, 50)
	h.hostStatus("h2", 200, 0)
	h.hostStatus("h3", 300, 180)
	h.expect(h.tick(),
		"persist a phase=a epoch=1 task=a#1 state=launching host=h3 pid=0 budget=100",
		"launch h3 a#1 type=a ram=10+90",
		"persist b phase=a epoch=1 task=b#1 state=launching host=h2 pid=0 budget=200",
		"launch h2 b#1 type=a ram=20+180")
	if ts := h.targetStatus("c"); ts.State != StatePending {
		t.Fatalf("c: %+v", ts)
	}
	for _, n := range []string{"h1", "h2", "h3"} {
		if hl := h.hostLine(n); hl.FreeMiB < 0 || hl.ReservedMiB+hl.UsedMiB > hl.TotalMiB {
			t.Fatalf("%+v", hl)
		}
	}
}

func TestHeadroomAndForeignUseShrinkBudgets(t *testing.T) {
	cfg := testConfig()
	cfg.HostHeadroomMiB = 10
	h := newHarness(t, cfg)
	h.declare("a", simple(10, 10, 190))
	h.start()
	h.hostStatus("h1", 100, 30)
	h.advance(5 * time.Second)
	h.hostStatus("h1", 100, 30)
	h.expect(h.tick(),
		"persist a phase=a epoch=1 task=a#1 state=launching host=h1 pid=0 budget=60",
		"launch h1 a#1 type=a ram=10+50")
	// The task reports using more than its budget: it counts at its use, and
	// the host's use includes it (not foreign).
	hb := h.heartbeatMsg(h.task("a#1"), 70)
	h.step(&HeartbeatReceived{Heartbeat: hb})
	h.hostStatus("h1", 100, 100, h.task("a#1").id)
	if hl := h.hostLine("h1"); hl.ReservedMiB != 70 || hl.FreeMiB != 0 {
		t.Fatalf("%+v", hl)
	}
}

// TestForeignUseIsNotErodedByLaterTasks: foreign use is what a status
// reports beyond the tasks it lists. A task started after that status, whose
// heartbeats report use, must not make the host look freer than it is.
func TestForeignUseIsNotErodedByLaterTasks(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 10
	h := newHarness(t, cfg)
	h.declare("a", simple(10, 10, 90))
	h.declare("b", simple(10, 10, 90))
	h.start()
	h.hostStatus("h1", 400, 150) // 150 MiB used by something else
	h.advance(5 * time.Second)
	h.hostStatus("h1", 400, 150)
	h.expectKinds(h.tick(), CmdPersist, CmdLaunch, CmdPersist, CmdLaunch)
	for _, name := range []string{"a#1", "b#1"} {
		h.step(&HeartbeatReceived{Heartbeat: h.heartbeatMsg(h.task(name), 90)})
	}
	// No status since the launches: 400 - 150 foreign - 2×100 reserved.
	if hl := h.hostLine("h1"); hl.FreeMiB != 50 {
		t.Fatalf("free %d MiB before the next status, want 50: %+v", hl.FreeMiB, hl)
	}
	// The next status lists both tasks and counts their use: still 50.
	h.hostStatus("h1", 400, 150+180, h.task("a#1").id, h.task("b#1").id)
	if hl := h.hostLine("h1"); hl.FreeMiB != 50 {
		t.Fatalf("free %d MiB after the status, want 50: %+v", hl.FreeMiB, hl)
	}
}

func TestScaledDownBudgetsNeverExceedFreeRAM(t *testing.T) {
	rng := newRand(11)
	for round := range 200 {
		cfg := testConfig()
		cfg.MaxPendingLaunches = 1000
		cfg.HostHeadroomMiB = int64(rng.IntN(3)) * 16
		cfg.MaxSkips = rng.IntN(5)
		h := newHarness(t, cfg)
		for i := range 1 + rng.IntN(30) {
			w, mn := int64(rng.IntN(20)), int64(1+rng.IntN(100))
			h.declare("t"+itoa(i), withValue(simple(w, mn, mn+int64(rng.IntN(400))), 0.1+rng.Float64()))
		}
		h.start()
		hosts := 1 + rng.IntN(6)
		send := func() {
			for i := range hosts {
				total := int64(64 + 64*i)
				h.hostStatus("h"+itoa(i), total, int64(i*7)%total)
			}
		}
		send()
		h.advance(5 * time.Second)
		send()
		before := map[string]int64{}
		for _, hs := range h.e.hostSeq {
			before[hs.name] = hs.free(cfg.HostHeadroomMiB)
		}
		for _, c := range only(h.tick(), CmdLaunch) {
			l := c.Launch
			budget := l.RAM.WrapperMiB + l.RAM.HelpersMiB
			est := h.e.targets[c.Target].est
			if budget > before[c.Host] || budget < est.MinMiB() || budget > est.FullMiB() {
				t.Fatalf("round %d: %s on %s: budget %d, free %d, est %+v", round, c.Target, c.Host, budget, before[c.Host], est)
			}
			before[c.Host] -= budget
		}
		for _, hs := range h.e.hostSeq {
			if hs.free(cfg.HostHeadroomMiB) < 0 {
				t.Fatalf("round %d: host %s over-committed", round, hs.name)
			}
		}
	}
}

func TestPendingOrderIsValuePerMiB(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 10
	h := newHarness(t, cfg)
	h.declare("big", withValue(simple(10, 10, 90), 1))  // 0.01 per MiB
	h.declare("small", withValue(simple(5, 5, 40), 1))  // 0.02 per MiB
	h.declare("rich", withValue(simple(10, 10, 90), 3)) // 0.03 per MiB
	var order []string
	for _, c := range only(h.warm("h1=1000"), CmdLaunch) {
		order = append(order, c.Target)
	}
	if strings.Join(order, ",") != "rich,small,big" {
		t.Fatalf("order %v", order)
	}
}

func TestLargeTargetDoesNotHoldBackSmallOnes(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("huge", withValue(simple(10, 500, 900), 1000))
	h.declare("small", simple(10, 10, 40))
	h.expect(h.warm("h1=100"),
		"persist small phase=a epoch=1 task=small#1 state=launching host=h1 pid=0 budget=50",
		"launch h1 small#1 type=a ram=10+40")
	if h.targetStatus("huge").State != StatePending {
		t.Fatal("huge not waiting")
	}
}

func TestZeroSizedPhaseLaunches(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("z", declared(phase("noop", 0, 0, 0)))
	h.expect(h.warm("h1=0"),
		"persist z phase=noop epoch=1 task=z#1 state=launching host=h1 pid=0 budget=0",
		"launch h1 z#1 type=noop ram=0+0")
}

func TestDegenerateEstimatesNeverReachACommand(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	cases := map[string]func(m *schemas.HackingMetrics){
		"zero money":            func(m *schemas.HackingMetrics) { m.Money = 0 },
		"zero growth":           func(m *schemas.HackingMetrics) { m.GrowthLogPerThread = 0; m.Money = 1 },
		"zero growth at max":    func(m *schemas.HackingMetrics) { m.GrowthLogPerThread = 0; m.Money = m.MaxMoney },
		"security at minimum":   func(m *schemas.HackingMetrics) { m.Security = m.MinSecurity },
		"security below min":    func(m *schemas.HackingMetrics) { m.Security = 0; m.MinSecurity = 5 },
		"zero max money":        func(m *schemas.HackingMetrics) { m.MaxMoney = 0; m.Money = 0 },
		"no hack fraction":      func(m *schemas.HackingMetrics) { m.HackFractionPerThread = 0; m.Money = m.MaxMoney },
		"no hack chance":        func(m *schemas.HackingMetrics) { m.HackChance = 0; m.Money = m.MaxMoney },
		"zero hack time":        func(m *schemas.HackingMetrics) { m.HackTimeMS = 0; m.Money = m.MaxMoney },
		"huge money":            func(m *schemas.HackingMetrics) { m.MaxMoney = 1e308; m.Money = 1 },
		"huge security":         func(m *schemas.HackingMetrics) { m.Security = 1e308 },
		"tiny growth":           func(m *schemas.HackingMetrics) { m.GrowthLogPerThread = 5e-324; m.Money = 1 },
		"NaN security":          func(m *schemas.HackingMetrics) { m.Security = nan },
		"NaN money":             func(m *schemas.HackingMetrics) { m.Money = nan },
		"infinite max money":    func(m *schemas.HackingMetrics) { m.MaxMoney = inf },
		"negative growth":       func(m *schemas.HackingMetrics) { m.GrowthLogPerThread = -1 },
		"hack chance above one": func(m *schemas.HackingMetrics) { m.HackChance = 2 },
		"infinite hack time":    func(m *schemas.HackingMetrics) { m.HackTimeMS = inf },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig()
			h := newHarness(t, cfg)
			spec := hacking(t, "n00dles")
			m := *spec.Metrics
			mutate(&m)
			spec.Metrics = &m
			h.declare("x", spec)
			cmds := h.warm("h1=100000000")
			ts := h.targetStatus("x")
			switch ts.State {
			case StateBlocked:
				if ts.Reason == "" {
					t.Fatal("blocked without a reason")
				}
				if len(cmds) != 0 {
					t.Fatalf("blocked target launched: %q", h.format(cmds))
				}
			case StateLaunching, StatePending:
				est := h.e.targets["x"].est
				if est.WrapperMiB < 0 || est.HelpersMinMiB < 0 || est.HelpersFullMiB < est.HelpersMinMiB ||
					math.IsNaN(est.Value) || math.IsInf(est.Value, 0) || est.Value <= 0 {
					t.Fatalf("estimate %+v", est)
				}
			default:
				t.Fatalf("state %s", ts.State)
			}
			if _, err := json.Marshal(h.e.Status(h.now)); err != nil {
				t.Fatalf("status does not encode: %v", err)
			}
		})
	}
}

func TestDoneMetricsThatAreInvalidBlockTheTarget(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("x", hacking(t, "foodnstuff"))
	h.warm("h1=100000000")
	h.heartbeat("x#1")
	h.expect(h.event("x#1", schemas.EventDone, "", map[string]any{"security": -3.0}), "persist x phase=till epoch=1 task=-")
	if ts := h.targetStatus("x"); ts.State != StateBlocked || !strings.Contains(ts.Reason, "security") {
		t.Fatalf("%+v", ts)
	}
}

// ----- rule 7: lifecycle -----

func TestHackingPhaseFollowsDoneMetrics(t *testing.T) {
	h := newHarness(t, testConfig())
	spec := hacking(t, "foodnstuff")
	m := *spec.Metrics
	h.declare("f", spec)
	h.expectKinds(h.warm("h1=100000000"), CmdPersist, CmdLaunch)
	if h.task("f#1").typ != "till" {
		t.Fatalf("first phase %s", h.task("f#1").typ)
	}
	h.heartbeat("f#1")
	h.event("f#1", schemas.EventDone, "", map[string]any{"security": m.MinSecurity})
	if h.task("f#2").typ != "sow" {
		t.Fatalf("after till: %s", h.task("f#2").typ)
	}
	h.heartbeat("f#2")
	h.event("f#2", schemas.EventDone, "", map[string]any{"money": m.MaxMoney})
	if h.task("f#3").typ != "harvest" {
		t.Fatalf("after sow: %s", h.task("f#3").typ)
	}
	h.heartbeat("f#3")
	// The replayed declared spec does not undo what the events taught.
	h.expect(h.declare("f", spec))
	if h.targetStatus("f").Phase != "harvest" {
		t.Fatal("the same spec reset the phase")
	}
	// A harvest that leaves security high goes back to till.
	h.event("f#3", schemas.EventDone, "", map[string]any{"security": m.MinSecurity + 5})
	if h.task("f#4").typ != "till" {
		t.Fatalf("after a drifting harvest: %s", h.task("f#4").typ)
	}
}

func TestDeclaredLifecycle(t *testing.T) {
	h := newHarness(t, testConfig())
	last := phase("c", 1, 1, 8)
	last.Repeat = true
	h.declare("r", declared(phase("a", 1, 1, 8), phase("b", 1, 1, 8), last))
	h.declare("o", declared(phase("a", 1, 1, 8), phase("b", 1, 1, 8)))
	h.warm("h1=1000")
	// r first (name order breaks the tie? no: equal value per MiB, so by name: o, then r)
	names := []string{"o#1", "r#1"}
	for _, n := range names {
		h.heartbeat(n)
	}
	h.expect(h.event("o#1", schemas.EventDone, "", nil),
		"persist o phase=b epoch=1 task=-",
		"persist o phase=b epoch=2 task=o#2 state=launching host=h1 pid=0 budget=9",
		"launch h1 o#2 type=b ram=1+8")
	h.heartbeat("o#2")
	h.expect(h.event("o#2", schemas.EventDone, "", nil), "persist o phase=b epoch=2 task=-")
	if ts := h.targetStatus("o"); ts.State != StateComplete {
		t.Fatalf("o: %+v", ts)
	}
	h.expect(h.run(5*time.Second, "r#1"))
	h.event("r#1", schemas.EventDone, "", nil)
	h.heartbeat("r#2")
	h.event("r#2", schemas.EventDone, "", nil)
	h.heartbeat("r#3")
	if h.task("r#3").typ != "c" {
		t.Fatal("not in c")
	}
	h.expect(h.event("r#3", schemas.EventDone, "", nil),
		"persist r phase=c epoch=3 task=-",
		"persist r phase=c epoch=4 task=r#4 state=launching host=h1 pid=0 budget=9",
		"launch h1 r#4 type=c ram=1+8")
	// A complete target stays complete for the same spec, and starts over
	// when its spec changes.
	h.heartbeat("r#4")
	h.expect(h.declare("o", declared(phase("a", 1, 1, 8), phase("b", 1, 1, 8))))
	h.expect(h.declare("o", declared(phase("a", 1, 1, 8), phase("b", 1, 1, 9))),
		"persist o phase=a epoch=3 task=o#3 state=launching host=h1 pid=0 budget=9",
		"launch h1 o#3 type=a ram=1+8")
	// A repeat on another phase than the last is a validation error.
	bad := declared(last, phase("z", 1, 1, 1))
	h.heartbeat("o#3")
	h.expect(h.declare("bad", bad))
	if ts := h.targetStatus("bad"); ts.State != StateBlocked || !strings.Contains(ts.Reason, "repeat") {
		t.Fatalf("bad: %+v", ts)
	}
}

func TestFailedEventRequeuesTheSamePhase(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("o", declared(phase("a", 1, 1, 8), phase("b", 1, 1, 8)))
	h.warm("h1=1000")
	h.heartbeat("o#1")
	h.event("o#1", schemas.EventDone, "", nil)
	h.heartbeat("o#2")
	h.expect(h.event("o#2", schemas.EventFailed, schemas.ReasonExited, nil), "persist o phase=b epoch=2 task=-")
	h.advance(time.Second)
	h.refresh()
	h.expect(h.tick(),
		"persist o phase=b epoch=3 task=o#3 state=launching host=h1 pid=0 budget=9",
		"launch h1 o#3 type=b ram=1+8")
}

func TestEventsAreHandledOnce(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("o", declared(phase("a", 1, 1, 8), phase("b", 1, 1, 8), phase("c", 1, 1, 8)))
	h.warm("h1=1000")
	h.heartbeat("o#1")
	h.expectKinds(h.event("o#1", schemas.EventDone, "", nil), CmdPersist, CmdPersist, CmdLaunch)
	before := h.e.Status(h.now)
	h.expect(h.event("o#1", schemas.EventDone, "", nil))
	h.expect(h.event("o#1", schemas.EventFailed, schemas.ReasonCrashed, nil))
	after := h.e.Status(h.now)
	if after.Counters.DuplicateEvents != 2 || after.Counters.PhasesCompleted != before.Counters.PhasesCompleted ||
		h.targetStatus("o").Phase != "b" {
		t.Fatalf("a replay changed something: %+v", after.Counters)
	}
	// Also after a restart from the store.
	h.start()
	h.expect(h.event("o#1", schemas.EventDone, "", nil), "ps h1 all")
	if h.targetStatus("o").Phase != "b" {
		t.Fatal("a replay after restart advanced the target")
	}
}

// ----- rule 8: restart recovery -----

func TestRestartWithLiveDeadAndUnknownTasks(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 10
	h := newHarness(t, cfg)
	for _, n := range []string{"live", "dead", "silent", "orphan"} {
		h.declare(n, simple(10, 10, 90))
	}
	h.warm("h1=200", "h2=400") // dead and live on h1, orphan and silent on h2
	for _, n := range []string{"live#1", "dead#1", "silent#1"} {
		h.reply(n, 0)
		h.heartbeat(n)
	}
	// orphan's launch was sent, but its record was never written (say the
	// store lost it): to the new engine it is unknown.
	h.reply("orphan#1", 0)
	h.heartbeat("orphan#1")
	delete(h.kv, "orphan")
	h.specs["late"] = simple(10, 10, 90) // declared while the old engine was down
	h.advance(3 * time.Second)

	h.start() // the new engine
	cmds := h.refresh()
	h.expect(cmds[:2], "ps h1 all", "ps h2 all")
	cmds = cmds[2:]
	// live heartbeats: confirmed.
	h.expect(h.heartbeat("live#1"), "persist live phase=a epoch=1 task=live#1 state=active host="+h.task("live#1").host+" pid="+
		i64(h.task("live#1").pid)+" budget=100")
	// dead is gone from its host's ps: requeued, but not launched in the grace.
	for _, host := range []string{"h1", "h2"} {
		var running []string
		for _, n := range []string{"live#1", "silent#1", "orphan#1"} {
			if h.task(n).host == host {
				running = append(running, n)
			}
		}
		for _, c := range h.psReply(host, running...) {
			if c.Kind == CmdLaunch {
				t.Fatal("launch during the grace")
			}
		}
	}
	if h.kv["dead"].Task != nil || h.targetStatus("dead").State != StatePending {
		t.Fatal("dead task not requeued")
	}
	// orphan's heartbeat carries an epoch above any recorded: adopted.
	h.expect(h.heartbeat("orphan#1"), "persist orphan phase=a epoch=1 task=orphan#1 state=active host="+h.task("orphan#1").host+
		" pid="+i64(h.task("orphan#1").pid)+" budget=100")
	// A heartbeat from an epoch at or below the record's is fenced.
	old := h.stray("live#1-old", "live", 1, "h1", 99)
	h.expectKinds(h.step(&HeartbeatReceived{Heartbeat: h.heartbeatMsg(old, 0)}), CmdKill)
	// No launch while the grace runs (silent is unconfirmed).
	for range 4 {
		h.advance(time.Second)
		cmds = append(cmds, h.refresh()...)
		cmds = append(cmds, h.heartbeat("live#1")...)
		cmds = append(cmds, h.heartbeat("orphan#1")...)
		cmds = append(cmds, h.tick()...)
	}
	if len(only(cmds, CmdLaunch)) != 0 || h.e.Ready(h.now) {
		t.Fatalf("launched during the grace: %q", h.format(cmds))
	}
	// After the grace: dead and late launch; silent is handled like a stale task.
	h.advance(time.Second)
	h.refresh()
	h.heartbeat("live#1")
	h.heartbeat("orphan#1")
	cmds = h.tick()
	launches := only(cmds, CmdLaunch)
	if len(launches) != 2 || launches[0].Target != "dead" || launches[1].Target != "late" {
		t.Fatalf("after the grace: %q", h.format(cmds))
	}
	ps := only(cmds, CmdPs)
	if len(ps) != 1 || ps[0].Host != h.task("silent#1").host {
		t.Fatalf("silent not probed: %q", h.format(cmds))
	}
	h.expect(h.psReply(ps[0].Host, "silent#1"), `kill `+ps[0].Host+` silent#1 pid=`+i64(h.task("silent#1").pid)+` reason="no heartbeat since restart"`)
	if !h.e.Ready(h.now) || h.e.Status(h.now).Counters.Adoptions != 1 {
		t.Fatal("not ready after the grace")
	}
}

func i64(v int64) string { return itoa64(v) }

func itoa64(v int64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestGraceEndsEarlyOnlyWhenEveryRecordIsConfirmed(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.declare("b", simple(10, 10, 90))
	h.declare("c", simple(10, 90, 90)) // does not fit beside a and b
	h.warm("h1=250")
	h.heartbeat("a#1")
	h.heartbeat("b#1")
	h.advance(time.Second)
	h.start()
	h.hostRAM["h1"] = [2]int64{300, 0} // the host grew while the engine was down
	h.refresh()
	h.heartbeat("a#1")
	h.advance(100 * time.Millisecond)
	h.expect(h.tick())
	if h.e.Ready(h.now) {
		t.Fatal("ready with b unconfirmed")
	}
	h.heartbeat("b#1")
	h.expect(h.tick(),
		"persist c phase=a epoch=1 task=c#1 state=launching host=h1 pid=0 budget=100",
		"launch h1 c#1 type=a ram=10+90")
	if !h.e.Ready(h.now) {
		t.Fatal("not ready")
	}

	// With no records the grace runs its full length: unknown tasks may
	// still announce themselves.
	h2 := newHarness(t, testConfig())
	h2.declare("a", simple(10, 10, 90))
	h2.start()
	h2.hostStatus("h1", 1000, 0)
	h2.advance(4900 * time.Millisecond)
	h2.hostStatus("h1", 1000, 0)
	h2.expect(h2.tick())
	h2.advance(100 * time.Millisecond)
	h2.expectKinds(h2.tick(), CmdPersist, CmdLaunch)
}

func TestNoDuplicateLaunchAfterRestart(t *testing.T) {
	// The old engine wrote the launch (write-ahead) and died before any
	// reply: the new one must not launch the target again.
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	h.start()
	var cmds []Command
	cmds = append(cmds, h.refresh()...)
	h.advance(500 * time.Millisecond)
	cmds = append(cmds, h.heartbeat("a#1")...) // the worker did start it
	for range 10 {
		h.advance(time.Second)
		cmds = append(cmds, h.refresh()...)
		cmds = append(cmds, h.heartbeat("a#1")...)
		cmds = append(cmds, h.tick()...)
	}
	h.expect(cmds, "ps h1 all", "persist a phase=a epoch=1 task=a#1 state=active host=h1 pid=101 budget=100")

	// And when it did not start, it is launched once, after the grace.
	h = newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	h.start()
	h.expect(h.refresh(), "ps h1 all")
	h.expect(h.psReply("h1"), "persist a phase=a epoch=1 task=-")
	h.advance(4 * time.Second)
	h.refresh()
	h.expect(h.tick())
	h.advance(time.Second)
	h.refresh()
	h.expect(h.tick(),
		"persist a phase=a epoch=2 task=a#2 state=launching host=h1 pid=0 budget=100",
		"launch h1 a#2 type=a ram=10+90")
}

func TestRestartWithRecordsOfUndeclaredTargets(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.declare("b", simple(10, 10, 90))
	h.warm("h1=1000")
	h.heartbeat("a#1")
	h.heartbeat("b#1")
	h.event("b#1", schemas.EventFailed, schemas.ReasonCrashed, nil)
	delete(h.specs, "a")
	delete(h.specs, "b")
	h.start()
	// b has no task: its record goes at once. a's task must be stopped first.
	h.expect(h.refresh(), "delete b", "ps h1 all")
	h.expect(h.heartbeat("a#1"), `kill h1 a#1 pid=101 reason="target deleted"`)
	h.expect(h.killReply("a#1", false), "delete a")
	if len(h.kv) != 0 {
		t.Fatalf("store still holds %v", h.kv)
	}
}

// ----- a target deleted mid-launch -----

func TestTargetDeletedMidLaunch(t *testing.T) {
	t.Run("before the reply", func(t *testing.T) {
		h := newHarness(t, testConfig())
		h.declare("a", simple(10, 10, 90))
		h.warm("h1=1000")
		h.expect(h.undeclare("a")) // no PID yet
		h.expect(h.reply("a#1", 7), `kill h1 a#1 pid=7 reason="target deleted"`)
		h.expect(h.killReply("a#1", false), "delete a")
		if _, ok := h.kv["a"]; ok || h.e.Status(h.now).PendingLaunches != 0 {
			t.Fatal("left behind")
		}
	})
	t.Run("before the reply, heartbeat first", func(t *testing.T) {
		h := newHarness(t, testConfig())
		h.declare("a", simple(10, 10, 90))
		h.warm("h1=1000")
		h.undeclare("a")
		h.expect(h.heartbeat("a#1"), `kill h1 a#1 pid=101 reason="target deleted"`)
		h.expect(h.reply("a#1", 0))
		h.expect(h.killReply("a#1", false), "delete a")
	})
	t.Run("before the reply, no answer ever", func(t *testing.T) {
		h := newHarness(t, testConfig())
		h.declare("a", simple(10, 10, 90))
		h.warm("h1=1000")
		h.undeclare("a")
		h.advance(3 * time.Second)
		h.refresh()
		h.expect(h.tick(), "ps h1 all", "persist a phase=a epoch=1 task=a#1 state=suspect host=h1 pid=0 budget=100")
		h.expect(h.psReply("h1"), "delete a")
		if h.e.Status(h.now).Backoff.Level != 0 {
			t.Fatal("a deletion raised the backoff")
		}
	})
	t.Run("after the reply", func(t *testing.T) {
		h := newHarness(t, testConfig())
		h.declare("a", simple(10, 10, 90))
		h.warm("h1=1000")
		h.reply("a#1", 7)
		h.expect(h.undeclare("a"), `kill h1 a#1 pid=7 reason="target deleted"`)
		h.expect(h.heartbeat("a#1")) // the kill stands
		h.expect(h.killReply("a#1", false), "delete a")
	})
	t.Run("after confirmation", func(t *testing.T) {
		h := newHarness(t, testConfig())
		h.declare("a", simple(10, 10, 90))
		h.declare("b", simple(10, 10, 90))
		h.warm("h1=1000")
		h.heartbeat("a#1")
		h.heartbeat("b#1")
		h.expect(h.undeclare("a"), `kill h1 a#1 pid=101 reason="target deleted"`)
		h.expect(h.killReply("a#1", false), "delete a")
		if hl := h.hostLine("h1"); hl.ReservedMiB != 100 {
			t.Fatalf("%+v", hl)
		}
	})
	t.Run("declared again before the reply", func(t *testing.T) {
		h := newHarness(t, testConfig())
		h.declare("a", simple(10, 10, 90))
		h.warm("h1=1000")
		h.undeclare("a")
		h.expect(h.declare("a", simple(10, 10, 90)))
		h.expect(h.reply("a#1", 7))
		h.expectKinds(h.heartbeat("a#1"), CmdPersist)
		if h.targetStatus("a").State != StateActive {
			t.Fatal("not active")
		}
	})
	t.Run("refused after deletion", func(t *testing.T) {
		h := newHarness(t, testConfig())
		h.declare("a", simple(10, 10, 90))
		h.warm("h1=1000")
		h.undeclare("a")
		h.expect(h.replyError("a#1", schemas.CodeUnknownType), "delete a")
	})
}

// ----- connection, store, shutdown -----

func TestDisconnectedDeclaresNothingStale(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	h.heartbeat("a#1")
	h.step(&Disconnected{})
	h.expect(h.declare("b", simple(10, 10, 90))) // no launch while disconnected
	var cmds []Command
	for range 30 {
		h.advance(time.Second)
		cmds = append(cmds, h.tick()...)
	}
	h.expect(cmds)
	if st := h.e.Status(h.now); st.Ready || st.Connected || st.LaunchesStopped != "disconnected" || st.Counters.HostsLost != 0 {
		t.Fatalf("%+v", st)
	}
	h.step(&Reconnected{})
	// A grace follows: nothing is stale and nothing launches.
	for range 4 {
		h.advance(time.Second)
		cmds = append(cmds, h.refresh()...)
		cmds = append(cmds, h.tick()...)
	}
	h.expect(cmds)
	if h.e.Ready(h.now) {
		t.Fatal("ready during the grace")
	}
	h.advance(time.Second)
	// The grace is over: b launches on the next event; a never heartbeated
	// after the reconnect, so the tick finds it stale.
	h.expect(h.refresh(),
		"persist b phase=a epoch=1 task=b#1 state=launching host=h1 pid=0 budget=100",
		"launch h1 b#1 type=a ram=10+90")
	h.expect(h.tick(),
		"ps h1 pids=101",
		"persist a phase=a epoch=1 task=a#1 state=suspect host=h1 pid=101 budget=100")
}

func TestStoreConflictStopsLaunches(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.declare("b", simple(10, 10, 90))
	h.warm("h1=1000")
	h.step(&StoreConflict{Target: "a", Err: "wrong last sequence"})
	h.expectKinds(h.heartbeat("a#1"), CmdPersist) // handled, but b does not launch
	h.expect(h.run(5*time.Second, "a#1"))
	if st := h.e.Status(h.now); !strings.Contains(st.LaunchesStopped, "another writer") {
		t.Fatalf("%+v", st)
	}
}

func TestShutdownStopsLaunches(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.declare("b", simple(10, 10, 90))
	h.warm("h1=1000")
	h.step(&ShutdownRequested{})
	h.expectKinds(h.heartbeat("a#1"), CmdPersist)
	h.expect(h.run(3*time.Second, "a#1"))
}

// ----- status -----

func TestStatusShowsTheEngine(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.declare("bad", schemas.TargetSpec{V: 1, Profile: "nope"})
	h.warm("h1=1000")
	h.reply("a#1", 7)
	h.advance(250 * time.Millisecond)
	h.heartbeat("a#1")
	h.advance(250 * time.Millisecond)
	h.step(&Malformed{Source: "heartbeat"})
	st := h.e.Status(h.now)
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back schemas.SelectorStatus
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !st.Ready || st.Degraded || st.PendingLaunches != 0 || len(st.Targets) != 2 || len(st.Hosts) != 1 {
		t.Fatalf("%s", b)
	}
	a := st.Targets[0]
	if a.Target != "a" || a.State != StateActive || a.PID != 7 || a.Host != "h1" || a.BudgetMiB != 100 || a.HeartbeatAgeMS != 250 {
		t.Fatalf("a: %+v", a)
	}
	if bad := st.Targets[1]; bad.State != StateBlocked || !strings.Contains(bad.Reason, "unknown profile") {
		t.Fatalf("bad: %+v", bad)
	}
	if hl := st.Hosts[0]; hl.TotalMiB != 1000 || hl.ReservedMiB != 100 || hl.FreeMiB != 900 || hl.Stale {
		t.Fatalf("host: %+v", hl)
	}
	if st.Counters.MalformedMessages["heartbeat"] != 1 || st.Counters.Launches != 1 || st.Counters.Heartbeats != 1 {
		t.Fatalf("counters: %+v", st.Counters)
	}
	// The counters are a copy: a later step does not change a snapshot.
	h.step(&Malformed{Source: "heartbeat"})
	if st.Counters.MalformedMessages["heartbeat"] != 1 {
		t.Fatal("status shares its maps with the engine")
	}
}

func TestTaskIDsStayWithinTheNameLimit(t *testing.T) {
	long := strings.Repeat("é", 128) // 256 bytes
	other := long[:254] + "xy"
	h := newHarness(t, testConfig())
	h.declare(long, simple(1, 1, 1))
	h.declare(other, simple(1, 1, 1))
	cfg := h.cfg
	cfg.MaxPendingLaunches = 2
	h.cfg = cfg
	ids := map[string]bool{}
	for _, c := range only(h.warm("h1=10"), CmdLaunch) {
		id := c.Launch.TaskID
		if len(id) > schemas.MaxNameBytes || !utf8.ValidString(id) || ids[id] {
			t.Fatalf("task id %q (%d bytes)", id, len(id))
		}
		ids[id] = true
	}
	if len(ids) != 2 {
		t.Fatalf("ids %v", ids)
	}
}

func TestStrayTaskOnAReturningHostIsFenced(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000", "h2=100")
	h.heartbeat("a#1")
	if h.task("a#1").host != "h2" {
		t.Fatal("placement")
	}
	// h2 drops off the bus; a silent task of it keeps running there.
	h.silent["h2"] = true
	var cmds []Command
	for range 11 {
		h.advance(time.Second)
		h.refresh()
		for _, c := range h.tick() {
			cmds = append(cmds, c)
			if c.Kind == CmdPs {
				h.step(&PsUnanswered{Host: c.Host})
			}
		}
	}
	if !h.hostLine("h2").Lost || len(only(cmds, CmdLaunch)) != 1 {
		t.Fatalf("%q", h.format(cmds))
	}
	h.heartbeat("a#2")
	// h2 comes back and lists a#1: the engine asks, and fences it.
	delete(h.silent, "h2")
	h.expect(h.hostStatus("h2", 100, 100, h.task("a#1").id), "ps h2 all")
	h.expect(h.psReply("h2", "a#1"), `kill h2 a#1 pid=101 reason="fenced: not the target's task"`)
}

func TestNextDeadline(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	if d := h.e.NextDeadline(); !d.Equal(h.now.Add(3 * time.Second)) {
		t.Fatalf("launch timeout deadline %v", d.Sub(h.now))
	}
	h.heartbeat("a#1")
	if d := h.e.NextDeadline(); !d.Equal(h.now.Add(5 * time.Second)) {
		t.Fatalf("stale deadline %v", d.Sub(h.now))
	}
	// Ticking just before the deadline changes nothing; at it, something.
	h.now = h.e.NextDeadline().Add(-time.Millisecond)
	h.hostStatus("h1", 1000, 0)
	h.expect(h.tick())
	h.now = h.e.NextDeadline()
	h.expectKinds(h.tick(), CmdPs, CmdPersist)
}

func TestTaskIDsDifferAcrossRestarts(t *testing.T) {
	// A restarted engine with the same seed, reading a store that lags
	// behind (no record of a#1), issues epoch 1 again: its task id must not
	// be the earlier one, or a heartbeat of the old task would pass for it.
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	first := h.task("a#1").id
	h.kv = map[string]schemas.TaskState{}
	h.advance(time.Second)
	h.start()
	h.refresh()
	h.advance(5 * time.Second)
	h.refresh()
	launches := only(h.tick(), CmdLaunch)
	if len(launches) != 1 || launches[0].Launch.Epoch != 1 || launches[0].Launch.TaskID == first {
		t.Fatalf("first id %s, after restart %+v", first, launches)
	}
}

func TestRebuildToleratesOddRecords(t *testing.T) {
	rec := func(target, id, host string, epoch uint64, phase string) schemas.TaskState {
		st := schemas.TaskState{V: 1, Target: target, Phase: phase, Epoch: epoch, UpdatedAt: t0}
		if id != "" || host != "" {
			st.Task = &schemas.TaskRecord{TaskID: id, PID: 5, Type: phase, Host: host, State: schemas.TaskActive, BudgetMiB: 10, LaunchedAt: t0}
		}
		return st
	}
	specs := map[string]schemas.TargetSpec{
		"a": declared(phase("p", 1, 1, 8), phase("q", 1, 1, 8)),
		"b": simple(1, 1, 8),
		"d": simple(1, 1, 8),
	}
	recs := []schemas.TaskState{
		rec("a", "", "", 4, "nonexistent"), // no task; a phase the spec does not have
		rec("b", "b#2", "hz", 2, "a"),
		rec("d", "d#0", "ha", 0, "a"), // epoch 0: unusable
		rec("gone", "", "", 7, "a"),   // an undeclared target without a task: deleted
		rec("", "x#1", "ha", 1, "a"),  // no target at all
		rec("e", "e#1", "", 1, "a"),   // no host (and undeclared)
		rec("f", "f#1", "hb", 1, "a"), // undeclared, with a task: it must be stopped
	}
	for _, reverse := range []bool{false, true} {
		snap := Snapshot{Targets: specs, Tasks: slices.Clone(recs)}
		if reverse {
			slices.Reverse(snap.Tasks)
		}
		e, err := New(testConfig(), t0, snap)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.checkInvariants(); err != nil {
			t.Fatalf("reverse %v: %v", reverse, err)
		}
		var got []string
		for _, c := range e.Step(t0, &Tick{}) {
			got = append(got, c.Kind.String()+" "+c.Target+c.Host)
		}
		// The start-up commands do not depend on the order of the records.
		want := []string{"delete e", "delete gone", "ps hb", "ps hz"}
		if !slices.Equal(got, want) {
			t.Fatalf("reverse %v: start-up commands %v, want %v", reverse, got, want)
		}
		byName := map[string]schemas.TargetStatus{}
		for _, ts := range e.Status(t0).Targets {
			byName[ts.Target] = ts
		}
		if a := byName["a"]; a.Phase != "p" || a.Epoch != 4 || a.State != StatePending {
			t.Fatalf("a: %+v", a)
		}
		if b := byName["b"]; b.TaskID != "b#2" || b.State != StateSuspect {
			t.Fatalf("b: %+v", b)
		}
		if d := byName["d"]; d.TaskID != "" || d.State != StatePending {
			t.Fatalf("d: %+v", d)
		}
		if f := byName["f"]; f.TaskID != "f#1" || !strings.Contains(f.Reason, "deleted") {
			t.Fatalf("f: %+v", f)
		}
	}
	// Records that contradict each other (the store holds one per target,
	// so only a bug elsewhere makes them): the first one stands.
	snap := Snapshot{Targets: map[string]schemas.TargetSpec{"b": simple(1, 1, 8), "c": simple(1, 1, 8)}, Tasks: []schemas.TaskState{
		rec("b", "b#2", "hz", 2, "a"),
		rec("b", "b#3", "hz", 3, "a"), // a second record for b
		rec("c", "b#2", "ha", 2, "a"), // another target's task id
	}}
	e, err := New(testConfig(), t0, snap)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.checkInvariants(); err != nil {
		t.Fatal(err)
	}
	if e.targets["b"].task.id != "b#2" || e.targets["b"].epoch != 3 || e.targets["c"].task != nil || !e.pending.contains(e.targets["c"]) {
		t.Fatal("contradicting records not resolved")
	}
}

// TestCompleteSurvivesRestart: a declared target whose last phase finished
// stays complete after a restart instead of running its last phase again.
func TestCompleteSurvivesRestart(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("o", declared(phase("a", 1, 1, 8)))
	h.warm("h1=1000")
	h.heartbeat("o#1")
	h.event("o#1", schemas.EventDone, "", nil)
	if st := h.kv["o"]; !st.Complete || st.Task != nil {
		t.Fatalf("persisted %+v, want complete with no task", st)
	}
	h.expect(h.warm("h1=1000"))
	if ts := h.targetStatus("o"); ts.State != StateComplete {
		t.Fatalf("after restart: %+v", ts)
	}
}
