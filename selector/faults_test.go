package selector

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// Tests of the fault-tolerance rules: the disruption modes that replace the
// old mass-stale freeze, the ledger's bounds, and the edge events that tell
// the engine what the bus lost.

// loop lets d pass in steps of one second: statuses from the hosts that are
// not silent, heartbeats from the named tasks, a tick; every ps is answered
// by answer (nil: a silent host answers nothing, any other lists nothing
// but the tasks of alive on it). It returns every command.
func (h *harness) loop(d time.Duration, alive []string, answer func(c Command) []Command) []Command {
	h.tb.Helper()
	var out []Command
	for end := h.now.Add(d); h.now.Before(end); {
		h.advance(time.Second)
		out = append(out, h.refresh()...)
		for _, n := range alive {
			out = append(out, h.heartbeat(n)...)
		}
		cmds := h.tick()
		out = append(out, cmds...)
		for _, c := range cmds {
			if c.Kind == CmdPs && answer != nil {
				out = append(out, answer(c)...)
			}
		}
	}
	return out
}

// silentHosts answers a ps to a silent host with "no responders" and one to
// any other host with the named tasks of it that run.
func (h *harness) silentHosts(running ...string) func(c Command) []Command {
	return func(c Command) []Command {
		if h.silent[c.Host] {
			return h.step(&PsUnanswered{Host: c.Host, NoResponders: true})
		}
		var on []string
		for _, n := range running {
			if h.task(n).host == c.Host {
				on = append(on, n)
			}
		}
		return h.psReply(c.Host, on...)
	}
}

// launchesOf returns the stable names of the tasks launched in cmds.
func (h *harness) launchesOf(cmds []Command) []string {
	var names []string
	for _, c := range only(cmds, CmdLaunch) {
		names = append(names, h.byReal[c.Launch.TaskID])
	}
	return names
}

// Issue 7, defect 2: one host that dies holding most of the tasks froze the
// selector for good (degraded, nothing lost, nothing launched).
func TestHostHoldingMostTasksIsLostInBoundedTime(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 4
	h := newHarness(t, cfg)
	for _, n := range []string{"a", "b", "c", "d"} {
		h.declare(n, simple(10, 10, 90))
	}
	h.warm("big=300", "small=500")
	for _, n := range []string{"a#1", "b#1", "c#1", "d#1"} {
		h.reply(n, 0)
		h.heartbeat(n)
	}
	onBig := 0
	var alive []string
	for _, n := range []string{"a#1", "b#1", "c#1", "d#1"} {
		if h.task(n).host == "big" {
			onBig++
		} else {
			alive = append(alive, n)
		}
	}
	if onBig != 3 {
		t.Fatalf("want 3 tasks on big, got %d", onBig)
	}
	lastStatus := h.now
	h.silent["big"] = true
	cmds := h.loop(cfg.HostStale+2*time.Second, alive, h.silentHosts(alive...))
	st := h.e.Status(h.now)
	if st.Counters.HostsLost != 1 || !h.hostLine("big").Lost {
		t.Fatalf("big not lost %v after its last status: %+v", h.now.Sub(lastStatus), st)
	}
	relaunched := h.launchesOf(cmds)
	if len(relaunched) != 3 {
		t.Fatalf("want 3 relaunches on small, got %v", relaunched)
	}
	for _, n := range relaunched {
		if h.task(n).host != "small" {
			t.Fatalf("%s relaunched on %s", n, h.task(n).host)
		}
	}
	if st.Disruption != DisruptionNormal {
		t.Fatalf("one host of two lost: mode %q (%s)", st.Disruption, st.DegradedReason)
	}
}

// Issue 7, defect 3: a restart after the recorded hosts vanished never
// launched anything. Two of three hosts are gone for good: more than 55 %
// of the hosts, so they are lost at the limited rate, but they are lost.
func TestRestartAfterRecordedHostsVanishRelaunches(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 3
	h := newHarness(t, cfg)
	for _, n := range []string{"a", "b", "c"} {
		h.declare(n, simple(10, 10, 90))
	}
	h.warm("h1=100", "h2=100", "h3=400")
	for _, n := range []string{"a#1", "b#1", "c#1"} {
		h.reply(n, 0)
		h.heartbeat(n)
	}
	var survivor string
	for _, n := range []string{"a#1", "b#1", "c#1"} {
		if h.task(n).host == "h3" {
			survivor = n
		}
	}
	// Restart: h1 and h2 never report again.
	h.advance(time.Second)
	h.silent["h1"], h.silent["h2"] = true, true
	start := h.now
	h.start()
	h.expectKinds(h.tick(), CmdPs, CmdPs, CmdPs)
	h.heartbeat(survivor)
	sawPartial := false
	var cmds []Command
	for h.now.Sub(start) < cfg.HostStale+2*time.Minute/time.Duration(cfg.LostHostsPerMin)+2*time.Second {
		cmds = append(cmds, h.loop(time.Second, []string{survivor}, h.silentHosts(survivor))...)
		if h.e.Status(h.now).Disruption == DisruptionPartial {
			sawPartial = true
		}
	}
	relaunched := map[string]bool{}
	for _, n := range h.launchesOf(cmds) {
		if h.task(n).host != "h3" {
			t.Fatalf("%s launched on %s", n, h.task(n).host)
		}
		relaunched[h.task(n).target] = true
	}
	st := h.e.Status(h.now)
	if st.Counters.HostsLost != 2 || len(relaunched) != 2 {
		t.Fatalf("after %v: lost %d, relaunched %v: %+v", h.now.Sub(start), st.Counters.HostsLost, h.launchesOf(cmds), st)
	}
	if !sawPartial {
		t.Fatal("two of three hosts silent: partial disruption never shown")
	}
}

func TestPartialDisruptionLosesHostsAtLimitedRate(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 5
	h := newHarness(t, cfg)
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		h.declare(n, simple(10, 10, 90))
	}
	h.warm("h1=100", "h2=100", "h3=100", "h4=100", "h5=1000")
	var alive []string
	for _, n := range []string{"a#1", "b#1", "c#1", "d#1", "e#1"} {
		h.reply(n, 0)
		h.heartbeat(n)
		if hs := h.task(n).host; hs == "h1" || hs == "h2" || hs == "h3" {
			continue
		}
		alive = append(alive, n)
	}
	// Three of five hosts (60 %) go silent for good.
	h.silent["h1"], h.silent["h2"], h.silent["h3"] = true, true, true
	silentFrom := h.now
	var lostAt []time.Duration
	relaunched := map[string]bool{}
	for h.now.Sub(silentFrom) < time.Minute {
		before := h.e.Status(h.now).Counters.HostsLost
		for _, n := range h.launchesOf(h.loop(time.Second, alive, h.silentHosts(alive...))) {
			if h.task(n).host == "h5" {
				relaunched[h.task(n).target] = true
			}
		}
		st := h.e.Status(h.now)
		for range st.Counters.HostsLost - before {
			lostAt = append(lostAt, h.now.Sub(silentFrom))
			if st.Disruption != DisruptionPartial || !strings.Contains(st.DegradedReason, "per minute") {
				t.Fatalf("host lost outside partial disruption: %q %q", st.Disruption, st.DegradedReason)
			}
		}
	}
	if len(lostAt) != 3 {
		t.Fatalf("lost at %v, want 3 losses", lostAt)
	}
	gap := time.Minute / time.Duration(cfg.LostHostsPerMin)
	if lostAt[0] > cfg.HostStale+time.Second || lostAt[1]-lostAt[0] < gap-time.Second || lostAt[2]-lostAt[1] < gap-time.Second {
		t.Fatalf("losses at %v: want the first at %v, then one per %v", lostAt, cfg.HostStale, gap)
	}
	// Launches went on meanwhile: every target of a lost host was
	// launched again, on h5.
	if len(relaunched) != 3 {
		t.Fatalf("relaunched on h5: %v", relaunched)
	}
	if st := h.e.Status(h.now); st.Disruption != DisruptionNormal {
		t.Fatalf("still %q after every silent host was lost", st.Disruption)
	}
}

func TestFullDisruptionLosesAndKillsNothing(t *testing.T) {
	h := fleet(t)
	for _, hs := range []string{"h1", "h2", "h3", "h4"} {
		h.silent[hs] = true
	}
	// Every host and every task goes quiet for a minute; ps finds no one.
	cmds := h.loop(time.Minute, nil, func(c Command) []Command {
		return h.step(&PsUnanswered{Host: c.Host})
	})
	st := h.e.Status(h.now)
	if st.Disruption != DisruptionFull || !strings.HasPrefix(st.LaunchesStopped, "full disruption") || !st.Degraded {
		t.Fatalf("not in full disruption: %+v", st)
	}
	if st.Counters.HostsLost != 0 || st.Counters.Requeues != 0 || len(only(cmds, CmdLaunch)) != 0 || len(only(cmds, CmdKill)) != 0 {
		t.Fatalf("full disruption acted: %+v %q", st.Counters, h.format(cmds))
	}
	// The bus comes back: hosts report, ps finds every task running. They
	// are active again, not killed, although no heartbeat came yet.
	for _, hs := range []string{"h1", "h2", "h3", "h4"} {
		delete(h.silent, hs)
	}
	all := []string{"a#1", "b#1", "c#1", "d#1"}
	cmds = h.loop(3*time.Second, nil, h.silentHosts(all...))
	cmds = append(cmds, h.loop(10*time.Second, all, h.silentHosts(all...))...)
	st = h.e.Status(h.now)
	if st.Disruption != DisruptionNormal || st.Counters.HostsLost != 0 || st.Counters.Requeues != 0 || len(only(cmds, CmdKill)) != 0 {
		t.Fatalf("after the bus came back: %+v %q", st, h.format(only(cmds, CmdKill)))
	}
	for _, n := range []string{"a", "b", "c", "d"} {
		if s := h.targetStatus(n).State; s != StateActive {
			t.Fatalf("%s is %s", n, s)
		}
	}
}

// Staleness on hosts that still report is judged per host: three silent
// tasks whose hosts answer no ps no longer freeze launches everywhere (the
// old "tasks went stale" guard), and they hold no pending-launch slot.
func TestStaleTasksOnReportingHostsDoNotFreezeLaunches(t *testing.T) {
	h := fleet(t)
	h.hostRAM["h5"] = [2]int64{1000, 0}
	h.loop(8*time.Second, []string{"a#1"}, func(c Command) []Command {
		return h.step(&PsUnanswered{Host: c.Host})
	})
	for _, n := range []string{"b", "c", "d"} {
		if ts := h.targetStatus(n); ts.State != StateSuspect || !strings.Contains(ts.Reason, "does not answer") {
			t.Fatalf("%s: %+v", n, ts)
		}
	}
	st := h.e.Status(h.now)
	if st.Degraded || st.PendingLaunches != 0 {
		t.Fatalf("frozen: %+v", st)
	}
	h.expect(only(h.declare("e", simple(10, 10, 90)), CmdLaunch), "launch h5 e#1 type=a ram=10+90")
}

// Issue 7: a host that keeps reporting but answers every ps with a reply
// that fails to decode (fed to the engine as PsUnanswered) kept its task
// suspect holding the only pending-launch slot, so nothing else launched.
func TestUnansweredPsReleasesThePendingSlot(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000", "h2=100")
	if h.task("a#1").host != "h2" {
		t.Fatalf("a#1 on %s", h.task("a#1").host)
	}
	h.reply("a#1", 0)
	h.declare("b", simple(10, 10, 90))
	cmds := h.loop(h.cfg.LaunchTimeout+2*time.Second, nil, func(c Command) []Command {
		return h.step(&PsUnanswered{Host: c.Host})
	})
	if got := h.launchesOf(cmds); len(got) != 1 || got[0] != "b#1" {
		t.Fatalf("launches %v; status %+v", got, h.e.Status(h.now))
	}
	// a's RAM stays booked: its task may still run.
	if ts := h.targetStatus("a"); ts.State != StateSuspect || h.hostLine("h2").ReservedMiB != 100 {
		t.Fatalf("a: %+v, h2 %+v", ts, h.hostLine("h2"))
	}
}

// Issue 7, defect 4: used_mib near MaxInt64 overflowed the ledger, which
// then showed negative reservations and placed tasks on a full host.
func TestLedgerBoundsHugeFigures(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 2
	h := newHarness(t, cfg)
	h.declare("a", simple(10, 10, 40))
	h.declare("b", simple(10, 10, 40))
	h.warm("h=200")
	for _, n := range []string{"a#1", "b#1"} {
		h.reply(n, 0)
		h.step(&HeartbeatReceived{Heartbeat: h.heartbeatMsg(h.task(n), math.MaxInt64-1)})
	}
	hl := h.hostLine("h")
	if hl.ReservedMiB < 0 || hl.FreeMiB != 0 || hl.ReservedMiB > 2*schemas.MaxMiB {
		t.Fatalf("ledger: %+v", hl)
	}
	h.declare("c", simple(10, 10, 40))
	if cmds := h.loop(3*time.Second, nil, nil); len(only(cmds, CmdLaunch)) != 0 {
		t.Fatalf("placed on a full host: %q", h.format(only(cmds, CmdLaunch)))
	}
	h.hostStatus("h", math.MaxInt64, math.MaxInt64)
	if hl := h.hostLine("h"); hl.TotalMiB != schemas.MaxMiB || hl.UsedMiB != schemas.MaxMiB {
		t.Fatalf("host figures not bounded: %+v", hl)
	}
}

// Issue 7, defect 7: heartbeats dropped at the edge made the engine kill
// healthy tasks. After InputDropped nothing is stale until HeartbeatStale
// passes from the drop, and a task judged stale before it is not killed.
func TestDroppedHeartbeatsKillNoHealthyTask(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 2
	h := newHarness(t, cfg)
	h.declare("a", simple(10, 10, 90))
	h.declare("b", simple(10, 10, 90))
	h.warm("h1=100", "h2=100")
	for _, n := range []string{"a#1", "b#1"} {
		h.reply(n, 0)
		h.heartbeat(n)
	}
	running := h.silentHosts("a#1", "b#1")
	// a's heartbeats are lost at the edge from now on; b's too for a while.
	h.loop(3*time.Second, nil, running)
	h.step(&InputDropped{Source: InputHeartbeats})
	cmds := h.loop(4*time.Second, nil, running)
	if n := len(only(cmds, CmdPs)); n != 0 {
		t.Fatalf("judged stale within HeartbeatStale of the drop: %q", h.format(cmds))
	}
	// a goes stale (5 s after the drop), then more heartbeats are dropped
	// before its ps is answered: it runs, so it is active again.
	cmds = h.loop(time.Second, nil, nil)
	if len(only(cmds, CmdPs)) != 2 {
		t.Fatalf("want a ps per task once stale: %q", h.format(cmds))
	}
	h.advance(100 * time.Millisecond)
	h.step(&InputDropped{Source: InputHeartbeats})
	cmds = append(running(Command{Kind: CmdPs, Host: "h1"}), running(Command{Kind: CmdPs, Host: "h2"})...)
	if len(only(cmds, CmdKill)) != 0 {
		t.Fatalf("killed after a drop: %q", h.format(cmds))
	}
	for _, n := range []string{"a", "b"} {
		if s := h.targetStatus(n).State; s != StateActive {
			t.Fatalf("%s is %s", n, s)
		}
	}
	if st := h.e.Status(h.now); st.Counters.InputGaps != 2 {
		t.Fatalf("input gaps %d", st.Counters.InputGaps)
	}
	// Without further drops, a task that stays silent is killed as usual.
	cmds = h.loop(7*time.Second, []string{"b#1"}, running)
	kills := only(cmds, CmdKill)
	for _, k := range kills {
		if k.Kill.TaskID != h.task("a#1").id {
			t.Fatalf("killed %s", k.Kill.TaskID)
		}
	}
	if len(kills) == 0 {
		t.Fatalf("a#1 silent past a clean window, not killed: %q", h.format(cmds))
	}
}

// Host statuses dropped at the edge: host silence is measured afresh.
func TestDroppedHostStatusesLoseNoHost(t *testing.T) {
	h := newHarness(t, testConfig())
	h.warm("h1=100", "h2=100", "h3=100")
	h.silent["h3"] = true
	h.loop(8*time.Second, nil, nil)
	h.step(&InputDropped{Source: InputHostStatuses})
	h.loop(8*time.Second, nil, nil)
	if st := h.e.Status(h.now); st.Counters.HostsLost != 0 {
		t.Fatalf("lost within HostStale of a drop: %+v", st.Hosts)
	}
	h.loop(3*time.Second, nil, nil)
	if !h.hostLine("h3").Lost {
		t.Fatal("h3 silent past a clean window, not lost")
	}
}

// Issue 7, defect 8: the launch timeout started when the engine emitted the
// launch, while the edge held it until its state was stored.
func TestLaunchTimeoutCountsFromLaunchSent(t *testing.T) {
	cfg := testConfig()
	cfg.LaunchSentReported = true
	h := newHarness(t, cfg)
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	cmds := h.loop(2*cfg.LaunchTimeout, nil, nil)
	if len(only(cmds, CmdPs)) != 0 {
		t.Fatalf("an unsent launch timed out: %q", h.format(cmds))
	}
	h.step(&LaunchSent{TaskID: h.task("a#1").id})
	cmds = h.loop(cfg.LaunchTimeout-time.Second, nil, nil)
	if len(only(cmds, CmdPs)) != 0 {
		t.Fatalf("timed out before LaunchTimeout from the send: %q", h.format(cmds))
	}
	if cmds = h.loop(time.Second, nil, nil); len(only(cmds, CmdPs)) != 1 {
		t.Fatalf("no timeout LaunchTimeout after the send: %q", h.format(cmds))
	}
}

func TestLaunchNotSentIsRequeued(t *testing.T) {
	cfg := testConfig()
	cfg.LaunchSentReported = true
	h := newHarness(t, cfg)
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	l := h.task("a#1")
	cmds := h.step(&LaunchUnanswered{Host: "h1", TaskID: l.id, NotSent: true})
	h.expect(cmds,
		"persist a phase=a epoch=1 task=-",
		"persist a phase=a epoch=2 task=a#2 state=launching host=h1 pid=0 budget=100",
		"launch h1 a#2 type=a ram=10+90")
	if st := h.e.Status(h.now); st.Counters.Failures[FailNotSent] != 1 || st.Backoff.Level != 0 {
		t.Fatalf("%+v", st.Counters)
	}
}

// Issue 7: a refusal that blocks a target was not persisted, so every
// restart tried the refused spec once more.
func TestBlockedSurvivesRestartUntilTheSpecChanges(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	h.replyError("a#1", schemas.CodeUnknownType)
	if h.targetStatus("a").State != StateBlocked || h.kv["a"].Blocked == "" {
		t.Fatalf("not blocked, or not persisted: %+v %+v", h.targetStatus("a"), h.kv["a"])
	}
	h.advance(time.Second)
	h.start()
	cmds := append(h.tick(), h.loop(10*time.Second, nil, nil)...)
	if len(only(cmds, CmdLaunch)) != 0 || h.targetStatus("a").State != StateBlocked {
		t.Fatalf("restart retried a refused spec: %q %+v", h.format(cmds), h.targetStatus("a"))
	}
	// A changed spec, found at the next restart, is tried again.
	h.specs["a"] = simple(10, 10, 80)
	h.start()
	cmds = append(h.tick(), h.loop(10*time.Second, nil, nil)...)
	if len(only(cmds, CmdLaunch)) != 1 {
		t.Fatalf("changed spec not launched: %q %+v", h.format(cmds), h.targetStatus("a"))
	}
}

// Issue 7: replies were not checked against the task's host.
func TestRepliesFromAnotherHostAreIgnored(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000", "h2=1000")
	l := h.task("a#1")
	other := "h2"
	if l.host == "h2" {
		other = "h1"
	}
	h.step(&LaunchReplied{Host: other, Reply: schemas.LaunchReply{V: schemas.Version, TaskID: l.id, Error: &schemas.ReplyError{Code: schemas.CodeUnknownType}}})
	if ts := h.targetStatus("a"); ts.State != StateLaunching {
		t.Fatalf("a launch reply from %s counted: %+v", other, ts)
	}
	h.reply("a#1", 0)
	h.heartbeat("a#1")
	h.undeclare("a")
	h.step(&KillReplied{Host: other, Reply: schemas.KillReply{V: schemas.Version, TaskID: l.id, PID: l.pid}})
	if _, ok := h.e.targets["a"]; !ok {
		t.Fatal("a kill reply from another host closed the task")
	}
	h.killReply("a#1", false)
	if _, ok := h.e.targets["a"]; ok {
		t.Fatal("the real kill reply did not close the task")
	}
}

// Issue 7: a heartbeat that reuses another target's task id must not be
// adopted over that task's index entry.
func TestAdoptionNeverTakesAnotherTargetsTaskID(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 2
	h := newHarness(t, cfg)
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	h.reply("a#1", 0)
	h.heartbeat("a#1")
	h.declare("b", simple(10, 10, 90))
	b := h.task("b#1")
	h.reply("b#1", 0)
	h.heartbeat("b#1")
	h.step(&KillReplied{Host: b.host, Reply: schemas.KillReply{V: schemas.Version, TaskID: b.id}}) // nothing: not killing
	// b's task ends; a heartbeat for b with a newer epoch but a's task id.
	h.event("b#1", schemas.EventFailed, schemas.ReasonExited, nil)
	a := h.task("a#1")
	hb := &schemas.Heartbeat{V: schemas.Version, TaskID: a.id, Epoch: 9, PID: 999, Host: "h1", Target: "b", Type: "a", Seq: 1, SentAt: h.now}
	cmds := h.step(&HeartbeatReceived{Heartbeat: hb})
	if kills := only(cmds, CmdKill); len(kills) != 1 || h.e.byID[a.id] == nil || h.e.byID[a.id].t.name != "a" {
		t.Fatalf("adopted over a's id: %q", h.format(cmds))
	}
	if st := h.e.Status(h.now); st.Counters.Adoptions != 0 {
		t.Fatalf("adoptions %d", st.Counters.Adoptions)
	}
}

// Issue 7: the fenced-heartbeat counter also counted fences caused by ps
// replies and late launch replies.
func TestFencedHeartbeatsCountOnlyHeartbeats(t *testing.T) {
	h := newHarness(t, testConfig())
	h.warm("h1=1000")
	stray := h.stray("x#1.z", "x", 1, "h1", 500)
	h.step(&HeartbeatReceived{Heartbeat: h.heartbeatMsg(stray, 0)})
	h.step(&LaunchReplied{Host: "h1", Reply: schemas.LaunchReply{V: schemas.Version, TaskID: "y#1.z", PID: 501}})
	st := h.e.Status(h.now)
	if st.Counters.FencedHeartbeats != 1 || st.Counters.Fences != 2 {
		t.Fatalf("fenced heartbeats %d, fences %d", st.Counters.FencedHeartbeats, st.Counters.Fences)
	}
}

// Issue 7: hostSeq and tombs never shrank, so name churn grew memory.
func TestLostHostsAndTombsAreForgotten(t *testing.T) {
	h := newHarness(t, testConfig())
	h.warm("keep=1000")
	for i := range 50 {
		name := "churn" + string(rune('A'+i))
		h.hostStatus(name, 100, 0)
		h.silent[name] = true
		h.declare(name, simple(10, 10, 90))
		h.undeclare(name)
	}
	h.loop(tombTTL+forgetHostAfter+2*pruneEvery, nil, nil)
	if n := len(h.e.hostSeq); n != 1 || len(h.e.hosts) != 1 {
		t.Fatalf("%d hosts remembered, want 1", n)
	}
	if n := len(h.e.tombs); n != 0 {
		t.Fatalf("%d tombs remembered", n)
	}
}

// A task its worker stopped because the worker lost the bus (reason fenced)
// is requeued at once, with no crash delay.
func TestFencedEventRequeuesWithoutDelay(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	h.reply("a#1", 0)
	h.heartbeat("a#1")
	cmds := h.event("a#1", schemas.EventFailed, schemas.ReasonFenced, nil)
	if got := h.launchesOf(cmds); len(got) != 1 {
		t.Fatalf("not relaunched at once: %q", h.format(cmds))
	}
	if st := h.e.Status(h.now); st.Counters.Failures[FailFenced] != 1 {
		t.Fatalf("%+v", st.Counters.Failures)
	}
}

// A ps or kill reply that carries an error says nothing about the tasks:
// its empty task list must not read as "every task is gone".
func TestErrorRepliesSayNothingOfTheTasks(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	h.warm("h1=1000")
	h.reply("a#1", 0)
	h.heartbeat("a#1")
	h.loop(6*time.Second, nil, func(c Command) []Command {
		return h.step(&PsReplied{Host: c.Host, PIDs: c.Ps.PIDs, Reply: schemas.PsReply{V: schemas.Version, Host: c.Host,
			Tasks: []schemas.PsTask{}, Error: &schemas.ReplyError{Code: schemas.CodeInvalid, Message: "bad request"}}})
	})
	if ts := h.targetStatus("a"); ts.State != StateSuspect || ts.TaskID != h.task("a#1").id {
		t.Fatalf("a ps error closed the task: %+v", ts)
	}
	// Found running and killed; a kill reply with an error leaves it killing.
	if kills := only(h.loop(time.Second, nil, h.silentHosts("a#1")), CmdKill); len(kills) != 1 {
		t.Fatalf("found running and silent: want one kill, got %q", h.format(kills))
	}
	l := h.task("a#1")
	h.step(&KillReplied{Host: "h1", Reply: schemas.KillReply{V: schemas.Version, TaskID: l.id, PID: l.pid,
		Error: &schemas.ReplyError{Code: schemas.CodeInvalid, Message: "bad request"}}})
	if ts := h.targetStatus("a"); ts.TaskID != l.id || !strings.Contains(ts.Reason, "killing") {
		t.Fatalf("a kill error closed the task: %+v", ts)
	}
	h.killReply("a#1", false)
	if ts := h.targetStatus("a"); ts.TaskID == l.id {
		t.Fatalf("the real kill reply did not close it: %+v", ts)
	}
}

// A task found gone whose host says it finished done is not closed as gone
// (which would run its phase again): its done event, on its way, closes it.
// Should the event never come, it is taken as gone after HostStale.
func TestGoneButDoneWaitsForItsEvent(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPendingLaunches = 2
	h := newHarness(t, cfg)
	two := declared(phase("build", 10, 10, 40), phase("serve", 10, 10, 40))
	two.Phases[1].Repeat = true
	h.declare("a", two)
	h.declare("b", two)
	h.warm("h1=1000")
	for _, n := range []string{"a#1", "b#1"} {
		h.reply(n, 0)
		h.heartbeat(n)
	}
	endedDone := func(c Command) []Command {
		var ended []schemas.PsEnded
		for _, n := range []string{"a#1", "b#1"} {
			l := h.task(n)
			ended = append(ended, schemas.PsEnded{TaskID: l.id, Epoch: l.epoch, Kind: schemas.EventDone})
		}
		return h.step(&PsReplied{Host: c.Host, PIDs: c.Ps.PIDs, Reply: schemas.PsReply{V: schemas.Version, Host: c.Host,
			Tasks: []schemas.PsTask{}, Ended: ended}})
	}
	// Both finish, but their done events are held up: stale, then ps.
	cmds := h.loop(7*time.Second, nil, endedDone)
	if n := len(only(cmds, CmdLaunch)); n != 0 {
		t.Fatalf("relaunched a finished phase: %q", h.format(only(cmds, CmdLaunch)))
	}
	if ts := h.targetStatus("a"); ts.State != StateSuspect || !strings.Contains(ts.Reason, "waiting for its done event") {
		t.Fatalf("a: %+v", ts)
	}
	// a's event arrives: its next phase is launched.
	cmds = h.event("a#1", schemas.EventDone, "", nil)
	if got := only(cmds, CmdLaunch); len(got) != 1 || got[0].Launch.Type != "serve" {
		t.Fatalf("after a's done event: %q", h.format(cmds))
	}
	// b's never does: after HostStale it is taken as gone, and its phase
	// runs again (nothing acknowledged it as done).
	h.reply("a#2", 0)
	h.heartbeat("a#2")
	cmds = h.loop(cfg.HostStale, []string{"a#2"}, endedDone)
	var bLaunches []Command
	for _, c := range only(cmds, CmdLaunch) {
		if c.Launch.Target == "b" {
			bLaunches = append(bLaunches, c)
		}
	}
	if len(bLaunches) != 1 || bLaunches[0].Launch.Type != "build" {
		t.Fatalf("b after HostStale: %q", h.format(cmds))
	}
}

// A ps reply that lists a silent launch as still being started: the task
// is not taken for gone (that would run its phase twice once the start
// completes) but killed, which the worker carries out once it runs; a reply
// that lists it nowhere closes it, and the target waits to run again.
func TestStartingTaskIsKilledNotTakenForGone(t *testing.T) {
	for _, listed := range []bool{true, false} {
		h := newHarness(t, testConfig())
		h.declare("a", simple(10, 10, 90))
		h.warm("h1=1000")
		l := h.task("a#1")
		cmds := h.loop(h.e.cfg.LaunchTimeout+time.Second, nil, nil)
		ps := only(cmds, CmdPs)
		if len(ps) != 1 || len(ps[0].Ps.PIDs) != 0 {
			t.Fatalf("no ps of every task after the launch timeout: %q", h.format(cmds))
		}
		rep := schemas.PsReply{V: schemas.Version, Host: "h1", Tasks: []schemas.PsTask{}}
		if listed {
			rep.Starting = []schemas.PsStarting{{TaskID: l.id, Epoch: l.epoch, Target: "a"}}
		}
		cmds = h.step(&PsReplied{Host: "h1", Reply: rep})
		if listed {
			h.expect(cmds, `kill h1 a#1 pid=0 reason="no first heartbeat"`)
		} else {
			h.expect(cmds, "persist a phase=a epoch=1 task=-")
		}
	}
}

// A restarted engine finds a recorded launch still being started on its
// host: it waits for its first heartbeat for the launch timeout, counted
// from the restart, even once the recovery grace is over, and kills it only
// then; a heartbeat in time confirms it.
func TestRecoveredLaunchStillStartingIsAwaited(t *testing.T) {
	for _, beats := range []bool{true, false} {
		cfg := testConfig()
		cfg.RecoveryGrace = time.Second
		cfg.LaunchTimeout = 3 * time.Second
		h := newHarness(t, cfg)
		h.declare("a", simple(10, 10, 90))
		h.warm("h1=1000")
		l := h.task("a#1") // sent; its reply never comes
		h.advance(time.Second)
		h.start()
		starting := func() []Command {
			var cmds []Command
			for _, c := range append(h.refresh(), h.tick()...) {
				if c.Kind == CmdPs {
					cmds = append(cmds, h.step(&PsReplied{Host: "h1", Reply: schemas.PsReply{V: schemas.Version, Host: "h1",
						Tasks: []schemas.PsTask{}, Starting: []schemas.PsStarting{{TaskID: l.id, Epoch: l.epoch, Target: "a"}}}})...)
					continue
				}
				cmds = append(cmds, c)
			}
			return cmds
		}
		var cmds []Command
		for range 5 { // 2.5 s: past the grace, within the launch timeout
			cmds = append(cmds, starting()...)
			h.advance(500 * time.Millisecond)
		}
		if len(only(cmds, CmdKill))+len(only(cmds, CmdLaunch)) != 0 {
			t.Fatalf("a launch still being started was not awaited: %q", h.format(cmds))
		}
		if beats {
			h.reply("a#1", 0)
			if cmds := h.heartbeat("a#1"); len(only(cmds, CmdPersist)) != 1 || h.targetStatus("a").State != StateActive {
				t.Fatalf("first heartbeat: %q, %+v", h.format(cmds), h.targetStatus("a"))
			}
			continue
		}
		for range 2 {
			h.advance(500 * time.Millisecond)
			cmds = append(cmds, starting()...)
		}
		h.expect(only(cmds, CmdKill), `kill h1 a#1 pid=0 reason="no heartbeat since restart"`)
	}
}
