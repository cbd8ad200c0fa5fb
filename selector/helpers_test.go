package selector

import (
	"slices"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// ----- the memory manager: helper RAM anywhere in the fleet -----

// grantHarness runs target a (wrapper 10, helpers up to 190: 200 MiB at full
// size) on h1 with a 100 MiB budget, the whole of h1, and hosts h2 and h3
// of 100 MiB with the given foreign use. a#1 is active.
func grantHarness(t *testing.T, used2, used3 int64) *harness {
	t.Helper()
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 190))
	h.hostRAM["h2"] = [2]int64{100, used2}
	h.hostRAM["h3"] = [2]int64{100, used3}
	h.expect(only(h.warm("h1=100"), CmdLaunch), "launch h1 a#1 type=a ram=10+90")
	h.reply("a#1", 0)
	h.heartbeat("a#1")
	return h
}

// alloc sends task name's request for mib (at least lo), releasing the
// named helpers.
func (h *harness) alloc(id uint64, name string, mib, lo int64, release ...string) []Command {
	l := h.task(name)
	req := &schemas.AllocRequest{V: schemas.Version, TaskID: l.id, Epoch: l.epoch, Target: l.target, Host: l.host, MiB: mib, MinMiB: lo}
	for _, r := range release {
		req.Release = append(req.Release, h.helperID(r))
	}
	return h.step(&AllocRequested{ID: id, Req: req})
}

// helperReply answers the last request sent for the named helper.
func (h *harness) helperReply(name string, running bool) []Command {
	id := h.helperID(name)
	req := h.helperReqs[id]
	hostName := ""
	if x := h.e.helpers[id]; x != nil {
		hostName = x.host.name
	}
	return h.step(&HelperReplied{Host: hostName, Req: req, Reply: schemas.HelperReply{V: schemas.Version, HelperID: id, Running: running}})
}

// helperTimeout reports the last request for the named helper unanswered.
func (h *harness) helperTimeout(name string, noResponders bool) []Command {
	id := h.helperID(name)
	x := h.e.helpers[id]
	if x == nil {
		h.tb.Fatalf("helper %s not in the ledger", name)
	}
	return h.step(&HelperUnanswered{Host: x.host.name, Req: h.helperReqs[id], NoResponders: noResponders})
}

// grant runs a request of a#1 for mib MiB that one host holds to its reply.
func (h *harness) grant(id uint64, mib int64, host, name string) {
	h.tb.Helper()
	h.expect(h.alloc(id, "a#1", mib, mib), "helper start "+host+" "+name+" task=a#1 epoch=1 mib="+itoa(int(mib)))
	h.expectKinds(h.helperReply(name, true), CmdAllocReply)
}

func TestAllocGrantsOnTheTightestHostThatHoldsIt(t *testing.T) {
	h := grantHarness(t, 30, 0) // h2 has 70 free, h3 100
	h.expect(h.alloc(1, "a#1", 60, 40), "helper start h2 a#1/h1 task=a#1 epoch=1 mib=60")
	if hl := h.hostLine("h2"); hl.HelpersMiB != 60 || hl.FreeMiB != 10 {
		t.Fatalf("h2 books its starting helper: %+v", hl)
	}
	h.expect(h.helperReply("a#1/h1", true), "alloc_reply 1 grants=a#1/h1@h2:60 held=a#1/h1@h2:60")
	ts := h.targetStatus("a")
	if len(ts.Helpers) != 1 || ts.Helpers[0].Host != "h2" || ts.Helpers[0].MiB != 60 {
		t.Fatalf("status lists %+v", ts.Helpers)
	}
	// The task's budget is 200 in all: 100 on h1, 60 granted; 40 are left.
	h.expect(h.alloc(2, "a#1", 100, 50), "alloc_reply 2 error=over_budget grants=- held=a#1/h1@h2:60")
	h.expect(h.alloc(3, "a#1", 100, 40), "helper start h3 a#1/h2 task=a#1 epoch=1 mib=40")
	h.expect(h.helperReply("a#1/h2", true), "alloc_reply 3 grants=a#1/h2@h3:40 held="+h.grants(h.e.Status(h.now).Targets[0].Helpers))
	// A request for nothing lists what the task holds.
	cmds := h.alloc(4, "a#1", 0, 0)
	if len(cmds) != 1 || len(cmds[0].Alloc.Held) != 2 || cmds[0].Alloc.Error != nil {
		t.Fatalf("held: %v", h.format(cmds))
	}
}

func TestAllocPartialGrantOverSeveralHosts(t *testing.T) {
	h := grantHarness(t, 40, 80) // h2 has 60 free, h3 20
	h.expect(h.alloc(1, "a#1", 100, 30),
		"helper start h2 a#1/h1 task=a#1 epoch=1 mib=60",
		"helper start h3 a#1/h2 task=a#1 epoch=1 mib=20")
	h.expect(h.helperReply("a#1/h1", true))
	// The start on h3 fails: refunded, and left out of the reply.
	h.expect(h.helperReply("a#1/h2", false), "alloc_reply 1 grants=a#1/h1@h2:60 held=a#1/h1@h2:60")
	if hl := h.hostLine("h3"); hl.HelpersMiB != 0 || hl.FreeMiB != 20 {
		t.Fatalf("h3 not refunded: %+v", hl)
	}
	if st := h.e.Status(h.now); st.Backoff.Level != 0 {
		t.Fatalf("a grant above the minimum takes no backoff step: %+v", st.Backoff)
	}
}

func TestAllocRefusalBelowMinimumTakesABackoffStep(t *testing.T) {
	h := grantHarness(t, 40, 80) // 80 free in all
	// The phase's minimum grows to 160 MiB (wrapper 10, helpers 150): a#1,
	// with its 100 MiB budget, now needs 60 MiB of fleet helpers to run.
	h.declare("a", simple(10, 150, 190))
	if st := h.e.Status(h.now); st.Backoff.Level != 0 {
		t.Fatalf("backoff before any refusal: %+v", st.Backoff)
	}
	h.expect(h.alloc(1, "a#1", 100, 90), "alloc_reply 1 error=insufficient_ram grants=- held=-")
	st := h.e.Status(h.now)
	if st.Backoff.Level != 1 || !st.Backoff.NextLaunchAt.After(h.now) || st.Counters.Failures[FailAllocRefused] != 1 {
		t.Fatalf("refusal: backoff %+v failures %v", st.Backoff, st.Counters.Failures)
	}
	// Granted, but too little starts: what started is stopped, and the
	// request is refused.
	h.expect(h.alloc(2, "a#1", 80, 70),
		"helper start h2 a#1/h1 task=a#1 epoch=1 mib=60",
		"helper start h3 a#1/h2 task=a#1 epoch=1 mib=20")
	h.expect(h.helperReply("a#1/h2", false))
	h.expect(h.helperReply("a#1/h1", true),
		"helper stop h2 a#1/h1 task=a#1 epoch=1 mib=60",
		"alloc_reply 2 error=insufficient_ram grants=- held=-")
	if st := h.e.Status(h.now); st.Backoff.Level != 2 || st.Counters.Failures[FailAllocRefused] != 2 {
		t.Fatalf("second refusal: %+v %v", st.Backoff, st.Counters.Failures)
	}
	if hl := h.hostLine("h2"); hl.HelpersMiB != 60 {
		t.Fatalf("a helper being stopped stays booked until its stop is confirmed: %+v", hl)
	}
	h.expect(h.helperReply("a#1/h1", false))
	if hl := h.hostLine("h2"); hl.HelpersMiB != 0 {
		t.Fatalf("stopped helper still booked: %+v", hl)
	}
	// 60 MiB granted: a#1 holds its minimum, 100 + 60. Its next refusal
	// is a top-up's: counted, and no step.
	h.grant(3, 60, "h2", "a#1/h3")
	h.expect(h.alloc(4, "a#1", 40, 30), "alloc_reply 4 error=insufficient_ram grants=- held=a#1/h3@h2:60")
	if st := h.e.Status(h.now); st.Backoff.Level != 2 || st.Counters.Failures[FailAllocRefused] != 3 {
		t.Fatalf("a refusal at the minimum: %+v %v", st.Backoff, st.Counters.Failures)
	}
}

func TestAllocTopUpRefusalIsCountedWithoutABackoffStep(t *testing.T) {
	h := grantHarness(t, 40, 80) // 80 free in all; a#1 holds 100, its minimum is 20
	h.expect(h.alloc(1, "a#1", 100, 90), "alloc_reply 1 error=insufficient_ram grants=- held=-")
	st := h.e.Status(h.now)
	if st.Backoff.Level != 0 || st.Backoff.NextLaunchAt.After(h.now) || st.Counters.Failures[FailAllocRefused] != 1 {
		t.Fatalf("top-up refusal: backoff %+v failures %v", st.Backoff, st.Counters.Failures)
	}
	// Too little starts: also a top-up's refusal.
	h.expect(h.alloc(2, "a#1", 80, 70),
		"helper start h2 a#1/h1 task=a#1 epoch=1 mib=60",
		"helper start h3 a#1/h2 task=a#1 epoch=1 mib=20")
	h.expect(h.helperReply("a#1/h2", false))
	h.expect(h.helperReply("a#1/h1", true),
		"helper stop h2 a#1/h1 task=a#1 epoch=1 mib=60",
		"alloc_reply 2 error=insufficient_ram grants=- held=-")
	if st := h.e.Status(h.now); st.Backoff.Level != 0 || st.Counters.Failures[FailAllocRefused] != 2 {
		t.Fatalf("second top-up refusal: %+v %v", st.Backoff, st.Counters.Failures)
	}
}

// launchesOf reports whether cmds launch a task of target name.
func launchesOf(cmds []Command, name string) bool {
	return slices.ContainsFunc(cmds, func(c Command) bool { return c.Kind == CmdLaunch && c.Launch.Target == name })
}

func TestAllocRefusedTopUpComesBeforeNewLaunches(t *testing.T) {
	h := grantHarness(t, 40, 80) // h2 has 60 free, h3 20
	h.expect(h.alloc(1, "a#1", 90, 90), "alloc_reply 1 error=insufficient_ram grants=- held=-")
	// b needs 20 MiB: it would fit on h2, but a#1 asked for 90 MiB, more
	// than the 80 free. It waits, with no backoff.
	if cmds := append(h.declare("b", simple(10, 10, 50)), h.run(10*time.Second, "a#1")...); launchesOf(cmds, "b") {
		t.Fatalf("b launched into the RAM a#1 asked for: %v", h.format(cmds))
	}
	if st := h.e.Status(h.now); st.Backoff.Level != 0 {
		t.Fatalf("a top-up refusal gates launches through the backoff: %+v", st.Backoff)
	}
	// a#1 asks for less and gets it: its RAM is met, and b launches.
	h.expect(h.alloc(2, "a#1", 60, 60), "helper start h2 a#1/h1 task=a#1 epoch=1 mib=60")
	if cmds := h.helperReply("a#1/h1", true); !launchesOf(cmds, "b") {
		t.Fatalf("b not launched once a#1 was granted: %v", h.format(cmds))
	}
}

func TestAllocUnmetHoldsLaunchesBackOnlyForAWhile(t *testing.T) {
	h := grantHarness(t, 40, 80)
	h.expect(h.alloc(1, "a#1", 90, 90), "alloc_reply 1 error=insufficient_ram grants=- held=-")
	if cmds := append(h.declare("b", simple(10, 10, 50)), h.run(unmetFor-2*time.Second, "a#1")...); launchesOf(cmds, "b") {
		t.Fatalf("b launched within unmetFor: %v", h.format(cmds))
	}
	// a#1 does not ask again: its refused request stops holding RAM back.
	if cmds := h.run(3*time.Second, "a#1"); !launchesOf(cmds, "b") {
		t.Fatalf("b not launched after unmetFor: %v", h.format(cmds))
	}
}

func TestAllocFencedByEpochAndState(t *testing.T) {
	h := grantHarness(t, 0, 0)
	l := h.task("a#1")
	for _, req := range []schemas.AllocRequest{
		{TaskID: l.id, Epoch: 2, Target: "a", Host: "h1", MiB: 10},
		{TaskID: l.id, Epoch: 1, Target: "a", Host: "h2", MiB: 10},
		{TaskID: "other", Epoch: 1, Target: "a", Host: "h1", MiB: 10},
	} {
		req.V = schemas.Version
		h.expect(h.step(&AllocRequested{ID: 9, Req: &req}), "alloc_reply 9 error=unknown_task grants=- held=-")
	}
	// A task being killed gets nothing either.
	h.undeclare("a")
	h.expect(h.alloc(10, "a#1", 10, 10), "alloc_reply 10 error=unknown_task grants=- held=-")
}

func TestAllocReleaseRefundsAtOnce(t *testing.T) {
	h := grantHarness(t, 0, 0)
	h.grant(1, 100, "h2", "a#1/h1")
	h.expect(h.alloc(2, "a#1", 0, 0, "a#1/h1"),
		"helper stop h2 a#1/h1 task=a#1 epoch=1 mib=100",
		"alloc_reply 2 grants=- held=-")
	// Out of the task's budget at once: it may ask again right away.
	h.expect(h.alloc(3, "a#1", 100, 100), "helper start h3 a#1/h2 task=a#1 epoch=1 mib=100")
	// The stop is sent again until confirmed.
	h.advance(h.e.cfg.ReplyTimeout)
	h.step(&HelperUnanswered{Host: "h2", Req: h.helperReqs[h.helperID("a#1/h1")]})
	h.refresh()
	h.expect(only(h.tick(), CmdHelper), "helper stop h2 a#1/h1 task=a#1 epoch=1 mib=100")
	h.expect(h.helperReply("a#1/h1", false))
	if hl := h.hostLine("h2"); hl.HelpersMiB != 0 || hl.FreeMiB != 100 {
		t.Fatalf("h2 after the stop: %+v", hl)
	}
}

// TestHelpersStopWithTheirTask: however the task closes, its helpers are
// stopped, and the stop is repeated until confirmed.
func TestHelpersStopWithTheirTask(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(h *harness)
	}{
		{"done", func(h *harness) { h.event("a#1", schemas.EventDone, "", nil) }},
		{"failed", func(h *harness) { h.event("a#1", schemas.EventFailed, schemas.ReasonCrashed, nil) }},
		{"killed", func(h *harness) {
			h.undeclare("a")
			h.killReply("a#1", false)
		}},
		{"wrapper host lost", func(h *harness) {
			h.silent["h1"] = true
			for range 12 {
				h.advance(time.Second)
				h.refresh()
				h.tick()
			}
			if !h.hostLine("h1").Lost {
				h.tb.Fatal("h1 not lost")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := grantHarness(t, 30, 0)
			h.grant(1, 60, "h2", "a#1/h1")
			h.grant(2, 40, "h3", "a#1/h2")
			var stops []string
			h.e.cfg.ReplyTimeout = time.Hour // the retries are checked below
			tc.end(h)
			h.e.cfg.ReplyTimeout = testConfig().WithDefaults().ReplyTimeout
			for _, x := range h.e.hostSeq {
				for _, hp := range x.helpers {
					if hp.state != helperStopping || hp.owner != nil {
						t.Fatalf("helper %s: %s, owner %v", h.helperNames[hp.id], helperStateNames[hp.state], hp.owner)
					}
					stops = append(stops, h.helperNames[hp.id])
				}
			}
			slices.Sort(stops)
			if !slices.Equal(stops, []string{"a#1/h1", "a#1/h2"}) {
				t.Fatalf("stopping: %v", stops)
			}
			// Unconfirmed stops are sent again every ReplyTimeout.
			h.advance(3 * time.Second)
			h.refresh()
			got := h.format(only(h.tick(), CmdHelper))
			slices.Sort(got)
			if !slices.Equal(got, []string{
				"helper stop h2 a#1/h1 task=a#1 epoch=1 mib=60",
				"helper stop h3 a#1/h2 task=a#1 epoch=1 mib=40",
			}) {
				t.Fatalf("retries: %q", got)
			}
			h.helperReply("a#1/h1", false)
			h.helperReply("a#1/h2", false)
			if len(h.e.helpers) != 0 || h.hostLine("h2").HelpersMiB != 0 || h.hostLine("h3").HelpersMiB != 0 {
				t.Fatalf("helpers left: %d", len(h.e.helpers))
			}
		})
	}
}

func TestHelperHostLost(t *testing.T) {
	h := grantHarness(t, 30, 0)
	h.grant(1, 60, "h2", "a#1/h1")
	h.grant(2, 40, "h3", "a#1/h2")
	h.silent["h2"] = true
	for range 12 {
		h.advance(time.Second)
		h.refresh()
		h.heartbeat("a#1")
		h.tick()
	}
	if !h.hostLine("h2").Lost || h.targetStatus("a").State != StateActive {
		t.Fatal("h2 should be lost, a still active")
	}
	h.expect(h.alloc(3, "a#1", 0, 0), "alloc_reply 3 grants=- held=a#1/h2@h3:40")
	// h2 comes back running the helper: an orphan now, stopped.
	delete(h.silent, "h2")
	l := h.task("a#1")
	cmds := h.step(&HostStatusReceived{Status: &schemas.HostStatus{V: schemas.Version, Host: "h2",
		RAM: schemas.HostRAM{TotalMiB: 100, UsedMiB: 90}, SentAt: h.now,
		Helpers: []schemas.HelperStatus{{HelperID: h.helperID("a#1/h1"), TaskID: l.id, Epoch: 1, Target: "a", MiB: 60}}}})
	h.expect(cmds, "helper stop h2 a#1/h1 task=a#1 epoch=1 mib=60")
	if hl := h.hostLine("h2"); hl.HelpersMiB != 60 || hl.FreeMiB != 10 {
		t.Fatalf("the orphan is booked until it stops: %+v", hl)
	}
	// The task's budget no longer counts the lost helper: 60 more may be
	// asked for, and h3 holds them.
	h.expect(h.alloc(4, "a#1", 100, 60), "helper start h3 a#1/h3 task=a#1 epoch=1 mib=60")
}

// TestHelpersLearnedAfterRestart: a restarted engine books the helpers its
// hosts list for their target's current task and stops the others.
func TestHelpersLearnedAfterRestart(t *testing.T) {
	h := grantHarness(t, 0, 0)
	h.grant(1, 60, "h2", "a#1/h1")
	l := h.task("a#1")
	old := h.helperID("a#1/h1")
	// The selector restarts from the bucket.
	h.start()
	st := func(helpers ...schemas.HelperStatus) []Command {
		return h.step(&HostStatusReceived{Status: &schemas.HostStatus{V: schemas.Version, Host: "h2",
			RAM: schemas.HostRAM{TotalMiB: 100, UsedMiB: 60 + 30}, SentAt: h.now, Helpers: helpers}})
	}
	h.helperNames["stray"] = "stray"
	cmds := st(schemas.HelperStatus{HelperID: old, TaskID: l.id, Epoch: 1, Target: "a", MiB: 60},
		schemas.HelperStatus{HelperID: "stray", TaskID: "a#0.x", Epoch: 0, Target: "a", MiB: 30})
	h.expect(only(cmds, CmdHelper), "helper stop h2 stray task=a#0.x epoch=0 mib=30")
	if hl := h.hostLine("h2"); hl.HelpersMiB != 90 || hl.FreeMiB != 10 {
		t.Fatalf("h2 after its first status: %+v", hl)
	}
	if ts := h.targetStatus("a"); len(ts.Helpers) != 1 || ts.Helpers[0].HelperID != old {
		t.Fatalf("a holds %+v", ts.Helpers)
	}
	// A helper that appears later, unknown, is an orphan even if its
	// task is current.
	h.helperNames["late"] = "late"
	cmds = st(schemas.HelperStatus{HelperID: old, TaskID: l.id, Epoch: 1, Target: "a", MiB: 60},
		schemas.HelperStatus{HelperID: "late", TaskID: l.id, Epoch: 1, Target: "a", MiB: 10})
	h.expect(only(cmds, CmdHelper), "helper stop h2 late task=a#1 epoch=1 mib=10")
	// The task, once confirmed, may be refused as over budget: it holds 160
	// of 200, and 10 are booked for the orphan.
	h.heartbeat("a#1")
	h.expect(h.alloc(2, "a#1", 50, 50), "alloc_reply 2 error=over_budget grants=- held=a#1/h1@h2:60")
	// When the task closes, the learned helper stops with it.
	h.expect(only(h.event("a#1", schemas.EventFailed, schemas.ReasonCrashed, nil), CmdHelper),
		"helper stop h2 a#1/h1 task=a#1 epoch=1 mib=60")
}

// TestV1HostGetsNoHelpers: a host with no responders on its helper subject
// runs no fleet helpers; nothing is granted there until it comes back.
func TestV1HostGetsNoHelpers(t *testing.T) {
	h := grantHarness(t, 50, 0) // h2 has 50 free, h3 100
	h.expect(h.alloc(1, "a#1", 100, 10), "helper start h3 a#1/h1 task=a#1 epoch=1 mib=100")
	h.expect(h.helperTimeout("a#1/h1", true), "alloc_reply 1 error=insufficient_ram grants=- held=-")
	if !h.hostLine("h3").NoHelpers || h.hostLine("h3").HelpersMiB != 0 {
		t.Fatalf("h3: %+v", h.hostLine("h3"))
	}
	h.advance(20 * time.Second) // past the backoff
	h.refresh()
	h.expect(h.alloc(2, "a#1", 100, 10), "helper start h2 a#1/h2 task=a#1 epoch=1 mib=50")
	h.expectKinds(h.helperReply("a#1/h2", true), CmdAllocReply)
	// h3 is lost and comes back (a new worker): it may run helpers again.
	h.silent["h3"] = true
	for range 12 {
		h.advance(time.Second)
		h.refresh()
		h.heartbeat("a#1")
		h.tick()
	}
	delete(h.silent, "h3")
	h.refresh()
	if h.hostLine("h3").NoHelpers {
		t.Fatal("h3 came back and is still taken for a v1 worker")
	}
	h.expect(h.alloc(3, "a#1", 50, 10), "helper start h3 a#1/h3 task=a#1 epoch=1 mib=50")
}

// TestHelperStartTimeoutStopsIt: a start with no reply may have run: it is
// stopped, and the request answered without it.
func TestHelperStartTimeoutStopsIt(t *testing.T) {
	h := grantHarness(t, 0, 0)
	h.expect(h.alloc(1, "a#1", 50, 50), "helper start h2 a#1/h1 task=a#1 epoch=1 mib=50")
	h.expect(h.helperTimeout("a#1/h1", false),
		"alloc_reply 1 error=insufficient_ram grants=- held=-",
		"helper stop h2 a#1/h1 task=a#1 epoch=1 mib=50")
	// The late reply of the start says nothing any more.
	h.step(&HelperReplied{Host: "h2", Req: &schemas.HelperRequest{Op: schemas.HelperStart, HelperID: h.helperID("a#1/h1")},
		Reply: schemas.HelperReply{HelperID: h.helperID("a#1/h1"), Running: true}})
	h.expect(h.helperReply("a#1/h1", false))
	if len(h.e.helpers) != 0 {
		t.Fatal("helper left after its stop")
	}
}

// TestTaskClosingWhileStartsAreOut: the request is answered unknown_task,
// and the helper whose start is out is stopped once the start is answered.
func TestTaskClosingWhileStartsAreOut(t *testing.T) {
	h := grantHarness(t, 0, 0)
	h.expect(h.alloc(1, "a#1", 50, 50), "helper start h2 a#1/h1 task=a#1 epoch=1 mib=50")
	cmds := h.event("a#1", schemas.EventFailed, schemas.ReasonCrashed, nil)
	h.expect(only(cmds, CmdAllocReply), "alloc_reply 1 error=unknown_task grants=- held=-")
	if len(only(cmds, CmdHelper)) != 0 {
		t.Fatalf("a stop sent before the start was answered: %q", h.format(cmds))
	}
	h.expect(h.helperReply("a#1/h1", true), "helper stop h2 a#1/h1 task=a#1 epoch=1 mib=50")
	h.expect(h.helperReply("a#1/h1", false))
	if len(h.e.helpers) != 0 {
		t.Fatal("helper left")
	}
}

// TestGrantedHelpersHoldBackPlacement: a launch sees the RAM helpers hold.
func TestGrantedHelpersHoldBackPlacement(t *testing.T) {
	h := grantHarness(t, 0, 0)
	h.grant(1, 60, "h2", "a#1/h1")
	// b needs 50 at least: h2 has 40 left, h3 100.
	h.expect(only(h.declare("b", simple(10, 40, 90)), CmdLaunch), "launch h3 b#1 type=a ram=10+90")
}

// TestAllocGrantsWholeGrains: with a grain, every piece is a whole number
// of grains, and a host with less than one grain free gets none.
func TestAllocGrantsWholeGrains(t *testing.T) {
	cfg := testConfig()
	cfg.HelperGrainMiB = 15
	h := newHarness(t, cfg)
	h.declare("a", simple(10, 10, 190))
	h.hostRAM["h2"] = [2]int64{100, 30} // 70 free: 4 grains
	h.hostRAM["h3"] = [2]int64{100, 90} // 10 free: none
	h.hostRAM["h4"] = [2]int64{100, 80} // 20 free: 1 grain
	h.warm("h1=100")
	h.reply("a#1", 0)
	h.heartbeat("a#1")
	h.expect(h.alloc(1, "a#1", 100, 10),
		"helper start h2 a#1/h1 task=a#1 epoch=1 mib=60",
		"helper start h4 a#1/h2 task=a#1 epoch=1 mib=15")
	// Less than a grain asked: over budget (the starts still out are held).
	if cmds := h.alloc(2, "a#1", 14, 14); len(cmds) != 1 || cmds[0].Alloc.Error == nil || cmds[0].Alloc.Error.Code != codeOverBudget ||
		len(cmds[0].Alloc.Held) != 2 {
		t.Fatalf("below a grain: %q", h.format(cmds))
	}
}
