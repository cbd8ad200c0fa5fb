package selector

import (
	"slices"
	"testing"
	"time"
)

// The edge's own queue lags: heartbeats or host statuses that reached the
// selector wait to be handled, and Tick says up to when they are handled
// (Tick.HeartbeatsAsOf, Tick.HostStatusesAsOf). What waits there is no
// silence of the workers.

// lagTick is a Tick whose heartbeats and host statuses are handled up to hb
// and hosts (zero: up to now).
func (h *harness) lagTick(hb, hosts time.Time) []Command {
	return h.step(&Tick{HeartbeatsAsOf: hb, HostStatusesAsOf: hosts})
}

// psOf returns the ps requests among cmds that ask about host's tasks.
func psOf(cmds []Command, host string) []Command {
	return slices.DeleteFunc(only(cmds, CmdPs), func(c Command) bool { return c.Host != host })
}

func TestHeardAsOf(t *testing.T) {
	now := t0.Add(time.Minute)
	for _, tc := range []struct {
		asOf, want time.Time
	}{
		{time.Time{}, now},
		{now.Add(time.Second), now},
		{now, now},
		{now.Add(-time.Second), now.Add(-time.Second)},
	} {
		if got := heardAsOf(now, tc.asOf); !got.Equal(tc.want) {
			t.Errorf("heardAsOf(now, %v) = %v, want %v", tc.asOf, got, tc.want)
		}
	}
}

// Heartbeats stop reaching the engine while Tick says that heartbeats are
// handled only up to the moment the lag began: nothing is stale, however long
// the lag. As the queue drains (the as-of time advances, the queued
// heartbeats are handled in order), the task whose heartbeats were queued is
// refreshed, and only the one that really went silent is judged stale, once
// the as-of time is HeartbeatStale past its last heartbeat.
func TestQueuedHeartbeatsAreNoSilence(t *testing.T) {
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
	h.run(2*time.Second, "a#1", "b#1")
	hostA, hostB := h.task("a#1").host, h.task("b#1").host
	if hostA == hostB {
		t.Fatalf("want a and b on different hosts, both on %s", hostA)
	}

	// From now on heartbeats wait in the edge's queue: b's task sends one
	// every second, a's task has died. Host statuses flow.
	lagFrom := h.now
	var queued []time.Time // arrivals of b's heartbeats
	for range 3 * int(cfg.HeartbeatStale/time.Second) {
		h.advance(time.Second)
		queued = append(queued, h.now)
		h.refresh()
		if cmds := h.lagTick(lagFrom, time.Time{}); len(only(cmds, CmdPs))+len(only(cmds, CmdKill)) != 0 {
			t.Fatalf("at +%v into the lag: judged silent for what waits in the queue: %q", h.now.Sub(lagFrom), h.format(cmds))
		}
	}
	if st := h.e.Status(h.now); st.Counters.Stale != 0 || st.Counters.Kills != 0 {
		t.Fatalf("stale %d, kills %d during the lag", st.Counters.Stale, st.Counters.Kills)
	}
	for _, n := range []string{"a", "b"} {
		if s := h.targetStatus(n).State; s != StateActive {
			t.Fatalf("%s is %s during the lag", n, s)
		}
	}

	// The lag ends: the queue drains, 10 ms per message, and each tick says
	// the input is handled up to the arrival of the next queued heartbeat.
	var staleAt time.Time // as-of time at which a was judged stale
	for i := range queued {
		h.advance(10 * time.Millisecond)
		h.heartbeat("b#1")
		asOf := time.Time{} // drained
		if i+1 < len(queued) {
			asOf = queued[i+1]
		}
		cmds := h.lagTick(asOf, time.Time{})
		if ps := psOf(cmds, hostB); len(ps) != 0 {
			t.Fatalf("b's host asked about its tasks while its queued heartbeats drain: %q", h.format(cmds))
		}
		if ps := psOf(cmds, hostA); len(ps) != 0 && staleAt.IsZero() {
			staleAt = heardAsOf(h.now, asOf)
		}
	}
	if staleAt.IsZero() {
		t.Fatal("a, silent since before the lag, was never judged stale")
	}
	if want := lagFrom.Add(cfg.HeartbeatStale); staleAt.Before(want) || staleAt.After(want.Add(time.Second)) {
		t.Fatalf("a judged stale as of +%v after its last heartbeat; want +%v (to the next queued message)",
			staleAt.Sub(lagFrom), cfg.HeartbeatStale)
	}
	if st := h.e.Status(h.now); st.Counters.Stale != 1 {
		t.Fatalf("stale %d, want 1 (a only)", st.Counters.Stale)
	}
	if s := h.targetStatus("b").State; s != StateActive {
		t.Fatalf("b is %s after the drain", s)
	}
}

// A task's heartbeats stop reaching the engine. With the as-of time keeping
// up with now, that is silence, as before; with the as-of time behind, it is
// not, until the as-of time itself is HeartbeatStale past the last heartbeat.
func TestHeartbeatStaleJudgedAsOfTheQueue(t *testing.T) {
	for _, lag := range []bool{false, true} {
		h := newHarness(t, testConfig())
		h.declare("a", simple(10, 10, 90))
		h.warm("h1=100")
		h.reply("a#1", 0)
		h.heartbeat("a#1")
		stale := h.now.Add(h.cfg.HeartbeatStale)
		asOf := time.Time{}
		if lag {
			asOf = stale.Add(-time.Millisecond)
		}
		var ps []Command
		for range 20 {
			h.advance(time.Second)
			h.refresh()
			ps = append(ps, only(h.lagTick(asOf, time.Time{}), CmdPs)...)
		}
		switch {
		case !lag && len(ps) == 0:
			t.Fatal("without a lag: a task silent for 20 s is not stale")
		case lag && len(ps) != 0:
			t.Fatalf("stale with heartbeats handled only up to just before HeartbeatStale: %q", h.format(ps))
		}
		if !lag {
			continue
		}
		if cmds := h.lagTick(stale, time.Time{}); len(only(cmds, CmdPs)) != 1 {
			t.Fatalf("not stale with heartbeats handled up to HeartbeatStale after the last: %q", h.format(cmds))
		}
	}
}

// A launch's first heartbeat may wait in the queue: the launch timeout is
// judged as of the heartbeats' as-of time.
func TestLaunchTimeoutJudgedAsOfTheQueue(t *testing.T) {
	h := newHarness(t, testConfig())
	h.declare("a", simple(10, 10, 90))
	if cmds := h.warm("h1=100"); len(only(cmds, CmdLaunch)) != 1 {
		t.Fatalf("want a launch: %q", h.format(cmds))
	}
	launched := h.now
	h.reply("a#1", 0)
	for range 10 {
		h.advance(time.Second)
		h.refresh()
		if cmds := h.lagTick(launched, time.Time{}); len(only(cmds, CmdPs)) != 0 {
			t.Fatalf("launch timed out at +%v while heartbeats are handled only up to its launch: %q",
				h.now.Sub(launched), h.format(cmds))
		}
	}
	timeout := launched.Add(h.cfg.LaunchTimeout)
	if cmds := h.lagTick(timeout.Add(-time.Millisecond), time.Time{}); len(only(cmds, CmdPs)) != 0 {
		t.Fatalf("timed out before LaunchTimeout as of the queue: %q", h.format(cmds))
	}
	if cmds := h.lagTick(timeout, time.Time{}); len(only(cmds, CmdPs)) != 1 {
		t.Fatalf("no timeout LaunchTimeout after the launch as of the queue: %q", h.format(cmds))
	}
	if st := h.e.Status(h.now); st.Counters.Timeouts != 1 {
		t.Fatalf("timeouts %d, want 1", st.Counters.Timeouts)
	}
}

// Host statuses stop reaching the engine while Tick says they are handled
// only up to the moment the lag began: no host is stale or lost and the
// engine does not enter full disruption. As the queue drains, the host that
// really went silent is lost once the as-of time is HostStale past its last
// status, and the others are not.
func TestQueuedHostStatusesAreNoSilence(t *testing.T) {
	h := newHarness(t, testConfig())
	h.warm("h1=100", "h2=100", "h3=100")
	h.loop(2*time.Second, nil, nil)
	lagFrom := h.now
	for range 3 * int(h.cfg.HostStale/time.Second) {
		h.advance(time.Second)
		h.lagTick(time.Time{}, lagFrom)
	}
	st := h.e.Status(h.now)
	if st.Counters.HostsLost != 0 || st.Disruption != DisruptionNormal {
		t.Fatalf("during the lag: hosts lost %d, disruption %q", st.Counters.HostsLost, st.Disruption)
	}
	for _, hl := range st.Hosts {
		if hl.Stale {
			t.Fatalf("host %s shown stale during the lag", hl.Host)
		}
	}

	// The lag ends: the statuses of h1 and h2 queued every second are
	// handled in order; h3 sent none since the lag began.
	h.silent["h3"] = true
	lost := lagFrom.Add(h.cfg.HostStale)
	for asOf := lagFrom.Add(time.Second); asOf.Before(h.now); asOf = asOf.Add(time.Second) {
		h.refresh()
		h.advance(10 * time.Millisecond)
		h.lagTick(time.Time{}, asOf)
		st := h.e.Status(h.now)
		if got, want := h.hostLine("h3").Lost, !asOf.Before(lost); got != want {
			t.Fatalf("as of +%v since h3's last status: h3 lost %v, want %v", asOf.Sub(lagFrom), got, want)
		}
		if st.Counters.HostsLost > 1 || h.hostLine("h1").Lost || h.hostLine("h2").Lost {
			t.Fatalf("as of +%v: a host whose statuses were queued is lost: %+v", asOf.Sub(lagFrom), st.Hosts)
		}
	}
	if !h.hostLine("h3").Lost {
		t.Fatal("h3, silent since before the lag, was never lost")
	}
}
