package selector

import (
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

// focusHarness declares three early-game targets and warms hosts of 64 GiB
// each, with a horizon of the given length.
func focusHarness(t *testing.T, hosts int, horizon time.Duration) (*harness, []Command) {
	t.Helper()
	cfg := testConfig()
	cfg.Horizon = horizon
	cfg.HelperGrainMiB = 1792
	cfg.MaxPendingLaunches = 4
	h := newHarness(t, cfg)
	for _, n := range []string{"n00dles", "joesguns", "harakiri-sushi"} {
		h.declare(n, hacking(t, n))
	}
	var names []string
	for i := range hosts {
		names = append(names, "h"+strconv.Itoa(i)+"=65536")
	}
	return h, h.warm(names...)
}

// TestFocusOnTheTargetWorthMostByTheHorizon: with little RAM or little
// time, the cheap target that harvests at once; with much of both, the one
// whose harvest pays most once prepared.
func TestFocusOnTheTargetWorthMostByTheHorizon(t *testing.T) {
	for _, tc := range []struct {
		hosts   int
		horizon time.Duration
		want    string
	}{
		{1, time.Hour, "n00dles"},            // harakiri-sushi's prep does not fit in an hour on 64 GiB
		{16, time.Hour, "harakiri-sushi"},    // on 1 TiB it does, and pays four times as much per MiB
		{16, 5 * time.Minute, "n00dles"},     // but not in five minutes
		{1, 6 * time.Hour, "harakiri-sushi"}, // nor on 64 GiB in six hours
	} {
		h, cmds := focusHarness(t, tc.hosts, tc.horizon)
		if h.e.focus == nil || h.e.focus.name != tc.want {
			t.Errorf("%d hosts, horizon %v: focus %v, want %s", tc.hosts, tc.horizon, h.e.focus, tc.want)
			continue
		}
		// The focus target is launched first.
		if l := only(cmds, CmdLaunch); len(l) == 0 || l[0].Target != tc.want {
			t.Errorf("%d hosts, horizon %v: launches %q", tc.hosts, tc.horizon, h.format(l))
		}
	}
}

// TestFillersRunWhileTheFocusHoldsItsFullSizeAndArePreempted: other hacking
// targets launch once the focus target's task holds its full size, and are
// killed (requeued without penalty) as soon as it lacks RAM again.
func TestFillersRunWhileTheFocusHoldsItsFullSizeAndArePreempted(t *testing.T) {
	h, cmds := focusHarness(t, 16, time.Hour)
	h.expect(only(cmds, CmdLaunch), "launch h0 harakiri-sushi#1 type=till ram=1638+63898")
	h.reply("harakiri-sushi#1", 0)
	h.heartbeat("harakiri-sushi#1")
	l := h.task("harakiri-sushi#1")
	full := h.e.targets["harakiri-sushi"].est.FullMiB()
	lack := full - l.wrapper - l.helpers
	lack -= lack % 1792
	cmds = h.alloc(1, "harakiri-sushi#1", lack, 1792)
	if len(only(cmds, CmdHelper)) == 0 {
		t.Fatalf("no helpers granted: %q", h.format(cmds))
	}
	fill := only(cmds, CmdLaunch) // the starts are booked: it holds its full size already
	for _, c := range only(cmds, CmdHelper) {
		fill = append(fill, h.helperReply(h.helperNames[c.Helper.HelperID], true)...)
	}
	// Holding its full size, the focus lets the fillers in.
	fill = append(fill, h.run(time.Second, "harakiri-sushi#1")...)
	if got := len(only(fill, CmdLaunch)); got != 2 {
		t.Fatalf("%d fillers launched once the focus holds its full size, want 2: %q", got, h.format(fill))
	}
	for _, n := range []string{"n00dles#1", "joesguns#1"} {
		h.reply(n, 0)
		h.heartbeat(n)
	}
	// The till is done: the focus waits for its sow, and the fillers go.
	cmds = h.event("harakiri-sushi#1", schemas.EventDone, "", map[string]any{"security": 6.0})
	kills := only(cmds, CmdKill)
	if len(kills) != 2 {
		t.Fatalf("kills %q, want both fillers", h.format(kills))
	}
	h.killReply("n00dles#1", false)
	h.killReply("joesguns#1", false)
	st := h.e.Status(h.now)
	if st.Counters.Failures[FailStale] != 0 || st.Counters.Failures[FailSilent] != 0 || st.Backoff.Level != 0 {
		t.Fatalf("preemption counted as a failure: %v, backoff %+v", st.Counters.Failures, st.Backoff)
	}
	for _, n := range []string{"n00dles", "joesguns"} {
		if ts := h.targetStatus(n); ts.State != StatePending || ts.Reason != "" && ts.Reason[:7] == "restart" {
			t.Fatalf("%s after preemption: %+v", n, ts)
		}
	}
}

// TestPrepSeconds: the model's preparation time shrinks with RAM, is 0 for a
// target ready to harvest, and is infinite when a phase's smallest task fits
// no host or the limit is too short.
func TestPrepSeconds(t *testing.T) {
	p := workload.DefaultParams()
	sp := hacking(t, "harakiri-sushi")
	small, _ := prepSeconds(p, sp, 64<<10, 64<<10, 1e9)
	big, m := prepSeconds(p, sp, 1<<20, 64<<10, 1e9)
	if !(big > 0 && big < small) || workload.HackingPhase(m) != workload.PhaseHarvest {
		t.Fatalf("prep %v s on 64 GiB, %v s on 1 TiB (then %s)", small, big, workload.HackingPhase(m))
	}
	if s, _ := prepSeconds(p, sp, 1<<20, 64<<10, big/2); !math.IsInf(s, 1) {
		t.Fatalf("prep within half the time it takes: %v", s)
	}
	if s, _ := prepSeconds(p, sp, 1<<20, 1024, 1e9); !math.IsInf(s, 1) {
		t.Fatalf("prep with no host holding a task: %v", s)
	}
	ready := sp
	m.Money = m.MaxMoney
	ready.Metrics = &m
	if s, _ := prepSeconds(p, ready, 1<<20, 64<<10, 1e9); s != 0 {
		t.Fatalf("a target ready to harvest needs %v s of prep", s)
	}
}
