package worker

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/schemas"
)

// fencedHarness runs an agent that connects through a proxy, with a short
// fence time.
func fencedHarness(t *testing.T, fenceAfter time.Duration) *harness {
	return newHarness(t, harnessOpts{proxy: true, cfg: Config{
		HeartbeatInterval: 50 * time.Millisecond, FenceAfter: fenceAfter, FlushTimeout: 2 * time.Second,
	}})
}

// waitFenced polls until the agent's fenced state is want and returns when
// it saw it.
func waitFenced(t *testing.T, a *Agent, want bool) time.Time {
	t.Helper()
	eventually(t, "fenced = "+map[bool]string{true: "true", false: "false"}[want], func() bool { return a.Fenced() == want })
	return time.Now()
}

// TestFenceStopsTasksWhenTheConnectionStalls: a connection that stalls (open,
// but nothing flows: the client notices nothing) makes the agent fence itself
// after FenceAfter: it stops its tasks, refuses launches with draining and,
// once the connection flows again, delivers a failed event with reason fenced
// for each task and lifts the fence.
func TestFenceStopsTasksWhenTheConnectionStalls(t *testing.T) {
	const fenceAfter = time.Second
	h := fencedHarness(t, fenceAfter)
	a := h.mustLaunch(declared("n00dles", "work", 10, 100, 1e6))
	b := h.mustLaunch(declared("joesguns", "work", 10, 100, 1e6))
	h.sim.Advance(time.Second) // the helpers start

	// A healthy connection never fences, however long it lasts.
	time.Sleep(3 * fenceAfter)
	if st := h.agent.Stats(); st.Fenced || st.Fences != 0 || st.Running != 2 {
		t.Fatalf("fenced on a healthy connection: %+v", st)
	}

	stalledAt := time.Now()
	h.proxy.Stall()
	fencedAt := waitFenced(t, h.agent, true)
	// It waited for the fence time (less the probe period and scheduling),
	// not for the client to notice anything.
	if d := fencedAt.Sub(stalledAt); d < fenceAfter/4 || d > fenceAfter+3*time.Second {
		t.Errorf("fenced %v after the stall, want about %v", d, fenceAfter)
	}
	if !h.agent.nc.IsConnected() {
		t.Error("the client noticed the stall; the test wants a connection that hangs")
	}
	eventually(t, "both tasks stopped", func() bool { return h.agent.Stats().FencedTasks == 2 })
	if st := h.agent.Stats(); st.Running != 0 || st.Fences != 1 || st.Kills != 0 || !st.Fenced {
		t.Errorf("stats while fenced: %+v", st)
	}
	if used := h.sim.UsedMiB(); used != 0 {
		t.Errorf("sim holds %d MiB after the fence", used)
	}
	for _, pid := range []int64{a, b} {
		if _, running := h.sim.TaskAge(pid); running {
			t.Errorf("task %d still runs in the executor", pid)
		}
	}
	for _, sp := range h.agent.Spans() {
		if sp.End.IsZero() || sp.Kind != schemas.EventFailed || sp.Reason != schemas.ReasonFenced || sp.End.Before(stalledAt) {
			t.Errorf("span %+v, want ended after the stall by the fence", sp)
		}
	}

	// A launch that reaches it now (one delivered just before the stall) is
	// refused with draining: a code the selector does not take for a
	// permanent refusal of the target.
	rep, _ := h.agent.launch(ptr(declared("foodnstuff", "work", 10, 10, 1e6)))
	if rep.Error == nil || rep.Error.Code != schemas.CodeDraining || !strings.Contains(rep.Error.Message, "fenced") {
		t.Errorf("launch while fenced: %+v (error %+v)", rep, rep.Error)
	}
	// Nothing crossed the stalled connection: the events wait in the outbox.
	if n := h.streamCount(); n != 0 {
		t.Errorf("%d events in the stream while stalled", n)
	}

	h.proxy.Resume()
	waitFenced(t, h.agent, false)
	got := map[int64]string{}
	for range 2 {
		ev := h.nextEvent()
		got[ev.PID] = ev.Kind + "/" + ev.Reason
	}
	if got[a] != "failed/fenced" || got[b] != "failed/fenced" {
		t.Errorf("events %v, want failed/fenced for pids %d and %d", got, a, b)
	}
	// The statuses sent while fenced said draining with no tasks; the fence
	// lifted, they say not draining again.
	h.hostStatusWhere("draining and no tasks", func(s schemas.HostStatus) bool { return s.Draining && len(s.Tasks) == 0 })
	h.hostStatusWhere("not draining", func(s schemas.HostStatus) bool { return !s.Draining })
	h.mustLaunch(declared("sigma", "work", 10, 10, 1e6))
	// Fences may be more than 1: while the backlog of the stall drains, a
	// loaded machine can take longer than the fence time for a round trip,
	// and the agent then rightly fences again for a moment.
	if st := h.agent.Stats(); st.Fenced || st.Fences < 1 || st.Running != 1 {
		t.Errorf("stats after the fence: %+v", st)
	}
}

// TestFenceRefusesLaunchesSentWhileCutOff: a launch request sent while the
// agent's connection stalls waits in the connection and reaches the agent
// only after the stall, long after the selector gave it up (and perhaps
// relaunched its target elsewhere). It must not start: the agent refuses
// every launch that comes before the barrier it sends itself when the fence
// lifts, and takes launches again after it.
func TestFenceRefusesLaunchesSentWhileCutOff(t *testing.T) {
	h := fencedHarness(t, 300*time.Millisecond)
	h.proxy.Stall()
	waitFenced(t, h.agent, true)
	inbox := nats.NewInbox()
	replies, err := h.cli.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	// Garbage ahead of it keeps the agent busy while the stalled bytes
	// come in, so that the fence has lifted when the launch is handled.
	for range 5000 {
		if err := h.cli.Publish(h.subj.Launch(h.cfg.Host), []byte("not a launch")); err != nil {
			t.Fatal(err)
		}
	}
	late := declared("n00dles", "work", 10, 10, 1e6)
	data, err := json.Marshal(&late)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cli.PublishRequest(h.subj.Launch(h.cfg.Host), inbox, data); err != nil {
		t.Fatal(err)
	}
	if err := h.cli.Flush(); err != nil { // the server holds it for the stalled agent
		t.Fatal(err)
	}
	h.proxy.Resume()
	waitFenced(t, h.agent, false)
	m, err := replies.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no reply to the late launch: %v", err)
	}
	rep, err := schemas.DecodeLaunchReply(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Error == nil || rep.Error.Code != schemas.CodeDraining || rep.PID != 0 ||
		!strings.Contains(rep.Error.Message, "before the host's fence lifted") {
		t.Errorf("late launch: %+v (error %+v), want refused with draining", rep, rep.Error)
	}
	if st := h.agent.Stats(); st.Running != 0 || st.Launches != 0 {
		t.Errorf("the late launch ran: %+v", st)
	}
	eventually(t, "the barrier back", func() bool { return h.agent.fence.barrier.Load() == 0 })
	h.mustLaunch(declared("joesguns", "work", 10, 10, 1e6))
}

// TestFenceWhenTheClientSeesTheDisconnect: a connection that is closed, and
// whose reconnects hang, fences the agent just the same; the fence lifts
// once the client has reconnected.
func TestFenceWhenTheClientSeesTheDisconnect(t *testing.T) {
	h := fencedHarness(t, 300*time.Millisecond)
	pid := h.mustLaunch(declared("n00dles", "work", 10, 100, 1e6))
	h.proxy.Stall()
	h.proxy.Cut()
	waitFenced(t, h.agent, true)
	eventually(t, "the task stopped", func() bool { return h.agent.Stats().FencedTasks == 1 })
	h.proxy.Resume()
	waitFenced(t, h.agent, false)
	if ev := h.nextEvent(); ev.PID != pid || ev.Reason != schemas.ReasonFenced {
		t.Errorf("event %+v", ev)
	}
	h.mustLaunch(declared("joesguns", "work", 10, 10, 1e6))
}

// TestNoFenceWhenFenceAfterIsZero: with fencing off, a stalled connection
// leaves the tasks running (the risk: a duplicate once the selector
// relaunches them elsewhere).
func TestNoFenceWhenFenceAfterIsZero(t *testing.T) {
	h := fencedHarness(t, 0)
	h.mustLaunch(declared("n00dles", "work", 10, 100, 1e6))
	h.proxy.Stall()
	time.Sleep(time.Second)
	if st := h.agent.Stats(); st.Fenced || st.Fences != 0 || st.Running != 1 {
		t.Errorf("stats with fencing off: %+v", st)
	}
	h.proxy.Resume()
}

func TestFenceAfterMustNotBeNegative(t *testing.T) {
	sim, err := NewSim(SimConfig{RAMMiB: 1024, Tick: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	h := newHarness(t, harnessOpts{})
	if _, err := New(h.cli, Config{Host: "h", RAMMiB: 1024, FenceAfter: -time.Second}, sim, nil); err == nil ||
		!strings.Contains(err.Error(), "fence time") {
		t.Fatalf("negative fence time: %v", err)
	}
}

func TestCheckFenceMargin(t *testing.T) {
	cases := []struct {
		hostStale, fenceAfter, hb time.Duration
		ok                        bool
	}{
		{10 * time.Second, 8 * time.Second, time.Second, true}, // the defaults, exactly
		{10*time.Second - time.Millisecond, 8 * time.Second, time.Second, false},
		{10 * time.Second, 8 * time.Second, 1100 * time.Millisecond, false},
		{11 * time.Second, 8 * time.Second, time.Second, true},
		{3 * time.Second, time.Second, 100 * time.Millisecond, true}, // the integration test's
		{time.Second, time.Second, 100 * time.Millisecond, false},
		{time.Second, 0, time.Second, true}, // fencing off: nothing to keep
		{time.Second, -time.Second, time.Second, false},
		{time.Second, time.Second, 0, false},
		{0, time.Second, time.Second, false},
	}
	for _, c := range cases {
		err := CheckFenceMargin(c.hostStale, c.fenceAfter, c.hb)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrFenceMargin)) {
			t.Errorf("CheckFenceMargin(%v, %v, %v) = %v, want ok=%v", c.hostStale, c.fenceAfter, c.hb, err, c.ok)
		}
	}
	if err := CheckFenceMargin(9*time.Second, 8*time.Second, time.Second); err == nil ||
		!strings.Contains(err.Error(), "host stale 9s must be at least fence after 8s + 2 × heartbeat interval 1s = 10s") {
		t.Errorf("message: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }
