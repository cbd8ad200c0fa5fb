package worker

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/schemas"
)

func (h *harness) helper(req schemas.HelperRequest) schemas.HelperReply {
	h.t.Helper()
	data := h.request(h.subj.Helper(h.cfg.Host), &req)
	rep, err := schemas.DecodeHelperReply(data)
	if err != nil {
		h.t.Fatalf("helper reply %s: %v", data, err)
	}
	return rep
}

func helperStart(id, target string, epoch uint64, mib int64) schemas.HelperRequest {
	return schemas.HelperRequest{V: schemas.Version, Op: schemas.HelperStart, HelperID: id, TaskID: target + "-task",
		Epoch: epoch, Target: target, Type: "work", TaskHost: "elsewhere", MiB: mib}
}

func helperStop(id, target string, epoch uint64) schemas.HelperRequest {
	r := helperStart(id, target, epoch, 0)
	r.Op = schemas.HelperStop
	return r
}

func errCode(re *schemas.ReplyError) string {
	if re == nil {
		return ""
	}
	return re.Code
}

// TestHelperStartStop: a start holds the helper's RAM on the host and lists
// it in HostStatus; a retried start is answered from the running helper; a
// stop frees the RAM, and a stop of an unknown helper answers not running.
func TestHelperStartStop(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 1000}})
	for range 2 { // the second start is a retry
		if rep := h.helper(helperStart("x.h1", "x", 1, 300)); !rep.Running || rep.Error != nil || rep.HelperID != "x.h1" {
			t.Fatalf("start: %+v", rep)
		}
	}
	if used := h.sim.UsedMiB(); used != 300 {
		t.Fatalf("sim holds %d MiB, want 300", used)
	}
	h.agent.tick()
	st := h.hostStatusWhere("the helper", func(s schemas.HostStatus) bool { return len(s.Helpers) == 1 })
	if hs := st.Helpers[0]; hs.HelperID != "x.h1" || hs.TaskID != "x-task" || hs.Epoch != 1 || hs.Target != "x" || hs.MiB != 300 || st.RAM.UsedMiB != 300 {
		t.Fatalf("host status %+v", st)
	}
	// The same helper_id with other terms is refused.
	if rep := h.helper(helperStart("x.h1", "x", 1, 400)); errCode(rep.Error) != schemas.CodeInvalid {
		t.Fatalf("start with another size: %+v", rep)
	}
	if rep := h.helper(helperStop("x.h1", "x", 1)); rep.Running || rep.Error != nil {
		t.Fatalf("stop: %+v", rep)
	}
	if used := h.sim.UsedMiB(); used != 0 {
		t.Fatalf("sim holds %d MiB after the stop", used)
	}
	if rep := h.helper(helperStop("x.h1", "x", 1)); rep.Running || rep.Error != nil {
		t.Fatalf("second stop: %+v", rep)
	}
	if st := h.agent.Stats(); st.HelperStarts != 1 || st.HelperStops != 1 || st.Helpers != 0 || st.HelpersRefused != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestHelperEpochFence: a start older than the newest epoch seen for its
// target is refused; a newer epoch's start stops the older helpers of that
// target, and leaves other targets' helpers alone.
func TestHelperEpochFence(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 1000}})
	for _, r := range []schemas.HelperRequest{helperStart("x2.a", "x", 2, 100), helperStart("y1.a", "y", 1, 100)} {
		if rep := h.helper(r); !rep.Running {
			t.Fatalf("start %s: %+v", r.HelperID, rep)
		}
	}
	if rep := h.helper(helperStart("x1.a", "x", 1, 100)); rep.Running || errCode(rep.Error) != schemas.CodeInvalid {
		t.Fatalf("older epoch: %+v", rep)
	}
	if rep := h.helper(helperStart("x3.a", "x", 3, 100)); !rep.Running {
		t.Fatalf("newer epoch: %+v", rep)
	}
	var ids []string
	for _, hs := range h.agent.Helpers() {
		ids = append(ids, hs.HelperID)
	}
	if len(ids) != 2 || ids[0] != "x3.a" || ids[1] != "y1.a" || h.sim.UsedMiB() != 200 {
		t.Fatalf("helpers %v, sim %d MiB", ids, h.sim.UsedMiB())
	}
}

// TestHelperAdmission: helpers and tasks share the host's RAM both ways.
func TestHelperAdmission(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 1000}})
	h.mustLaunch(declared("t", "work", 100, 500, 1000))
	if rep := h.helper(helperStart("x.a", "x", 1, 401)); rep.Running || errCode(rep.Error) != schemas.CodeInsufficientRAM {
		t.Fatalf("helper over the free RAM: %+v", rep)
	}
	if rep := h.helper(helperStart("x.a", "x", 1, 400)); !rep.Running {
		t.Fatalf("helper that fits: %+v", rep)
	}
	if rep := h.launch(declared("u", "work", 1, 0, 1000)); errCode(rep.Error) != schemas.CodeInsufficientRAM {
		t.Fatalf("a launch into the helper's RAM: %+v", rep)
	}
	h.agent.Drain()
	if rep := h.helper(helperStart("z.a", "z", 1, 0)); rep.Running || errCode(rep.Error) != schemas.CodeDraining {
		t.Fatalf("start while draining: %+v", rep)
	}
}

// TestHelperMalformed: a malformed helper request is answered invalid,
// counted, and changes nothing.
func TestHelperMalformed(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 1000}})
	for _, b := range [][]byte{nil, []byte("{"), []byte(`{"v":1,"op":"pause","helper_id":"q"}`)} {
		data := h.request(h.subj.Helper(h.cfg.Host), b)
		rep, err := schemas.DecodeHelperReply(data)
		if err != nil && b != nil && len(b) > 1 {
			t.Fatalf("reply %s: %v", data, err)
		}
		if err == nil && errCode(rep.Error) != schemas.CodeInvalid {
			t.Fatalf("reply %+v", rep)
		}
	}
	if st := h.agent.Stats(); st.Malformed["helper"] != 3 || st.Helpers != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestHelpersStoppedAtShutdown: with KillOnShutdown, the helpers are
// stopped and the last HostStatus lists none.
func TestHelpersStoppedAtShutdown(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 1000, KillOnShutdown: true}})
	if rep := h.helper(helperStart("x.a", "x", 1, 300)); !rep.Running {
		t.Fatalf("start: %+v", rep)
	}
	h.stop()
	if st := h.agent.Stats(); st.Helpers != 0 || st.HelperStops != 1 {
		t.Fatalf("stats %+v", st)
	}
	h.hostStatusWhere("no helper, draining", func(s schemas.HostStatus) bool { return s.Draining && len(s.Helpers) == 0 })
}

// TestNoHelpersIsV1: with NoHelpers the agent does not serve the helper
// subject (the selector gets no responders, as from a v1 worker).
func TestNoHelpersIsV1(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 1000, NoHelpers: true}})
	b, _ := schemas.Marshal(ptr(helperStart("x.a", "x", 1, 1)))
	if _, err := h.cli.Request(h.subj.Helper(h.cfg.Host), b, 2*time.Second); err != nats.ErrNoResponders {
		t.Fatalf("helper request to a NoHelpers agent: %v, want no responders", err)
	}
}

// fakeAllocator answers alloc requests like a selector would: the first
// `refuse` ones with insufficient_ram, then grants what is asked.
type fakeAllocator struct {
	mu     sync.Mutex
	refuse int
	reqs   []schemas.AllocRequest
	at     []time.Time
	held   int64
}

func (f *fakeAllocator) serve(t *testing.T, nc *nats.Conn, subject string) {
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		req, err := schemas.DecodeAllocRequest(m.Data)
		if err != nil {
			t.Errorf("alloc request %s: %v", m.Data, err)
			return
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, req)
		f.at = append(f.at, time.Now())
		rep := schemas.AllocReply{TaskID: req.TaskID}
		if len(f.reqs) <= f.refuse {
			rep.Error = &schemas.ReplyError{Code: schemas.CodeInsufficientRAM, Message: "full"}
		} else if req.MiB > 0 {
			g := schemas.HelperGrant{HelperID: req.TaskID + ".h", Host: "other", MiB: req.MiB}
			rep.Grants = []schemas.HelperGrant{g}
			f.held += req.MiB
		}
		if f.held > 0 {
			rep.Held = []schemas.HelperGrant{{HelperID: req.TaskID + ".h", Host: "other", MiB: f.held}}
		}
		f.mu.Unlock()
		b, _ := schemas.Marshal(&rep)
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
}

func (f *fakeAllocator) requests() []schemas.AllocRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]schemas.AllocRequest(nil), f.reqs...)
}

// TestFleetHelperRequest: a sim task whose local helper budget is below its
// phase's full need asks the selector for the difference on tasks.alloc; a
// refusal waits AllocRetry before the next request; once granted, the
// heartbeats carry fleet_helpers_mib and the task works as fast as its full
// helper RAM allows.
func TestFleetHelperRequest(t *testing.T) {
	const retry = 150 * time.Millisecond
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 4000, HeartbeatInterval: 10 * time.Millisecond, AllocRetry: retry}})
	fa := &fakeAllocator{refuse: 1}
	fa.serve(t, h.cli, h.subj.Alloc())
	if err := h.cli.Flush(); err != nil {
		t.Fatal(err)
	}
	// work_s 100 at full size (1000 MiB of helpers): 500 s with 200 MiB.
	req := declared("t", "work", 10, 200, 100, ArgHelpersFullMiB, 1000.0, ArgHelpersMinMiB, 100.0)
	h.mustLaunch(req)
	h.sim.Advance(time.Millisecond) // the helpers start: the task now wants fleet RAM
	eventually(t, "a grant after a refusal", func() bool { return len(fa.requests()) >= 2 })
	reqs := fa.requests()
	if r := reqs[0]; r.TaskID != req.TaskID || r.Epoch != 1 || r.Target != "t" || r.Host != h.cfg.Host || r.MiB != 800 || r.MinMiB != 100 {
		t.Fatalf("first request %+v", r)
	}
	fa.mu.Lock()
	gap := fa.at[1].Sub(fa.at[0])
	fa.mu.Unlock()
	if gap < retry {
		t.Errorf("asked again %v after a refusal, want at least AllocRetry %v", gap, retry)
	}
	deadline := time.Now().Add(waitFor)
	for {
		hb, _ := h.nextHeartbeat()
		if hb.RAM.FleetHelpersMiB == 800 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no heartbeat with fleet_helpers_mib 800; last %+v", hb.RAM)
		}
	}
	// 100 s of game time is all the work at full size; with local helpers
	// alone it would be a fifth of it.
	h.sim.Advance(100 * time.Second)
	if ev := h.nextEvent(); ev.Kind != schemas.EventDone || ev.TaskID != req.TaskID {
		t.Fatalf("event %+v, want done", ev)
	}
	if st := h.agent.Stats(); st.Allocs < 2 || st.AllocRefusals < 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestFleetHelperProgressWithoutGrant is the control of
// TestFleetHelperRequest: without grants, 100 s of game time is a fifth of
// the work.
func TestFleetHelperProgressWithoutGrant(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 4000, NoHelpers: true}})
	req := declared("t", "work", 10, 200, 100, ArgHelpersFullMiB, 1000.0, ArgHelpersMinMiB, 100.0)
	pid := h.mustLaunch(req)
	h.sim.Advance(time.Millisecond)
	h.sim.Advance(100 * time.Second)
	if ps := h.ps(pid); len(ps.Tasks) != 1 {
		t.Fatalf("ps %+v: the task should still run", ps)
	}
	h.agent.tick()
	for {
		hb, _ := h.nextHeartbeat()
		if hb.Seq < 2 {
			continue
		}
		if hb.Progress == nil || *hb.Progress < 0.19 || *hb.Progress > 0.21 || hb.RAM.FleetHelpersMiB != 0 {
			t.Fatalf("heartbeat %+v, progress %v: want 0.2 and no fleet helpers", hb, *hb.Progress)
		}
		break
	}
}

// allocUser wraps the sim executor as an executor whose tasks ask for fleet
// helper RAM themselves (as the exec executor's do, through the task API):
// its tasks do not implement FleetHelperTask.
type allocUser struct {
	*Sim
	mu    sync.Mutex
	alloc Allocator
}

type plainTask struct{ Task }

func (u *allocUser) Start(spec *LaunchSpec, hooks Hooks) (Task, error) {
	var pt *plainTask
	exited := hooks.Exited
	hooks.Exited = func(_ Task, ex Exit) {
		if exited != nil {
			exited(pt, ex)
		}
	}
	t, err := u.Sim.Start(spec, hooks)
	if err != nil {
		return nil, err
	}
	pt = &plainTask{t}
	return pt, nil
}

func (u *allocUser) SetAllocator(f Allocator) {
	u.mu.Lock()
	u.alloc = f
	u.mu.Unlock()
}

// TestAllocatorForExecutorTasks: an executor that implements AllocatorUser
// gets the agent's Allocator; a request through it reaches tasks.alloc for
// the task, and the task's heartbeats then report what it holds.
func TestAllocatorForExecutorTasks(t *testing.T) {
	var u *allocUser
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 4000, HeartbeatInterval: 10 * time.Millisecond},
		exec: func(s *Sim) Executor { u = &allocUser{Sim: s}; return u }})
	fa := &fakeAllocator{}
	fa.serve(t, h.cli, h.subj.Alloc())
	if err := h.cli.Flush(); err != nil {
		t.Fatal(err)
	}
	req := declared("t", "work", 10, 200, 100)
	h.mustLaunch(req)
	u.mu.Lock()
	alloc := u.alloc
	u.mu.Unlock()
	if alloc == nil {
		t.Fatal("the agent gave the executor no Allocator")
	}
	rep, err := alloc(context.Background(), req.TaskID, 300, 100)
	if err != nil || rep.Error != nil || len(rep.Grants) != 1 || rep.Grants[0].MiB != 300 {
		t.Fatalf("alloc: %+v, %v", rep, err)
	}
	if r := fa.requests(); len(r) != 1 || r[0].TaskID != req.TaskID || r[0].Host != h.cfg.Host || r[0].MiB != 300 || r[0].MinMiB != 100 {
		t.Fatalf("requests %+v", r)
	}
	deadline := time.Now().Add(waitFor)
	for {
		hb, _ := h.nextHeartbeat()
		if hb.RAM.FleetHelpersMiB == 300 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no heartbeat with fleet_helpers_mib 300; last %+v", hb.RAM)
		}
	}
	if _, err := alloc(context.Background(), "nobody", 1, 1); err == nil {
		t.Fatal("alloc for a task that does not run: no error")
	}
	// The agent itself never asks for such a task.
	if n := len(fa.requests()); n != 1 {
		t.Fatalf("%d requests, want only the executor's", n)
	}
}

// TestHelpersStoppedByTheFence: an agent cut off from NATS for its fence
// time stops its fleet helpers with its tasks (their RAM is free), and
// takes helpers again once the fence lifts.
func TestHelpersStoppedByTheFence(t *testing.T) {
	h := fencedHarness(t, 300*time.Millisecond)
	if rep := h.helper(helperStart("x.a", "x", 1, 300)); !rep.Running {
		t.Fatalf("start: %+v", rep)
	}
	h.proxy.Stall()
	h.proxy.Cut()
	waitFenced(t, h.agent, true)
	eventually(t, "the helper stopped", func() bool { return h.agent.Stats().Helpers == 0 })
	if used := h.sim.UsedMiB(); used != 0 {
		t.Fatalf("sim holds %d MiB after the fence", used)
	}
	h.proxy.Resume()
	waitFenced(t, h.agent, false)
	if rep := h.helper(helperStart("x.b", "x", 1, 300)); !rep.Running {
		t.Fatalf("start after the fence lifted: %+v", rep)
	}
	if st := h.agent.Stats(); st.HelperStops != 1 || st.HelperStarts != 2 {
		t.Fatalf("stats %+v", st)
	}
}
