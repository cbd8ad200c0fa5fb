package worker

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/schemas"
)

// gatedExec holds the Start of tasks for the target "slow" until gate is
// closed, and makes a task for the target "brief" end as soon as its Start
// returns.
type gatedExec struct {
	*Sim
	gate chan struct{}
}

func (x gatedExec) Start(spec *LaunchSpec, hooks Hooks) (Task, error) {
	if spec.Target == "slow" {
		<-x.gate
	}
	t, err := x.Sim.Start(spec, Hooks{}) // the sim's own end is not reported
	if err != nil {
		return nil, err
	}
	if spec.Target == "brief" {
		go func() {
			_ = t.Kill()
			code := 3
			hooks.Exited(t, Exit{Kind: schemas.EventFailed, Reason: schemas.ReasonCrashed, ExitCode: &code})
		}()
	}
	return t, nil
}

// asyncRequest sends a request and returns the channel its reply comes on.
func (h *harness) asyncRequest(subject string, m schemas.Message) <-chan *nats.Msg {
	h.t.Helper()
	b, err := schemas.Marshal(m)
	if err != nil {
		h.t.Fatal(err)
	}
	out := make(chan *nats.Msg, 1)
	go func() {
		msg, err := h.cli.Request(subject, b, 2*waitFor)
		if err != nil {
			h.t.Errorf("request %s: %v", subject, err)
			close(out)
			return
		}
		out <- msg
	}()
	return out
}

// TestSlowStartHoldsNothingUp: while the executor takes long to start a
// task, the agent answers ps (listing the task as starting), kills other
// tasks and sends their heartbeats; a kill of the starting task is answered
// "still running", and the task is stopped once it runs, so that it never
// runs unknown.
func TestSlowStartHoldsNothingUp(t *testing.T) {
	gate := make(chan struct{})
	h := newHarness(t, harnessOpts{exec: func(s *Sim) Executor { return gatedExec{s, gate} }})
	defer func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	}()
	fast := declared("fast", "work", 10, 10, 1e6)
	fastPID := h.mustLaunch(fast)
	slow := declared("slow", "work", 10, 100, 1e6)
	slow.Epoch = 4
	launched := h.asyncRequest(h.subj.Launch(h.cfg.Host), &slow)

	var ps schemas.PsReply
	eventually(t, "the slow task listed as starting", func() bool {
		ps = h.ps()
		return len(ps.Starting) == 1
	})
	if got, want := ps.Starting[0], (schemas.PsStarting{TaskID: slow.TaskID, Epoch: 4, Target: "slow"}); got != want || len(ps.Tasks) != 1 || ps.Tasks[0].PID != fastPID {
		t.Fatalf("ps during a slow start: %+v", ps)
	}
	if byPID := h.ps(fastPID); len(byPID.Starting) != 0 {
		t.Errorf("ps naming a PID lists starting tasks: %+v", byPID)
	}
	// A kill of the starting task is answered at once, with an error (so
	// the selector asks again) and running true; the task is stopped as
	// soon as it runs.
	if rep := h.kill(slow.TaskID, 0); !rep.Running || rep.Error == nil || rep.Error.Code != schemas.CodeFailed {
		t.Fatalf("kill of a task being started: %+v (error %+v)", rep, rep.Error)
	}
	// Heartbeats and kills of other tasks go on meanwhile.
	h.agent.tick()
	if hb, _ := h.nextHeartbeat(); hb.TaskID != fast.TaskID {
		t.Errorf("heartbeat of %s, want %s", hb.TaskID, fast.TaskID)
	}
	if rep := h.kill(fast.TaskID, fastPID); rep.Running || rep.Error != nil {
		t.Fatalf("kill during a slow start: %+v", rep)
	}
	if ev := h.nextEvent(); ev.TaskID != fast.TaskID || ev.Reason != schemas.ReasonKilled {
		t.Fatalf("event %+v", ev)
	}

	close(gate)
	m := <-launched
	rep, err := schemas.DecodeLaunchReply(m.Data)
	if err != nil || rep.PID <= 0 {
		t.Fatalf("launch reply %s: %v", m.Data, err)
	}
	if ev := h.nextEvent(); ev.TaskID != slow.TaskID || ev.Reason != schemas.ReasonKilled || ev.PID != rep.PID {
		t.Fatalf("event %+v, want the slow task killed", ev)
	}
	if kr := h.kill(slow.TaskID, rep.PID); kr.Running || kr.Error != nil {
		t.Fatalf("kill asked again: %+v", kr)
	}
	if st := h.agent.Stats(); st.Kills != 2 {
		t.Errorf("kills %d, want 2", st.Kills)
	}
	if ps := h.ps(); len(ps.Tasks) != 0 || len(ps.Starting) != 0 {
		t.Fatalf("ps at the end: %+v", ps)
	}
}

// TestTaskEndingAsItStartsIsReported: a task whose Exited hook runs as soon
// as Start returns, before or after the agent recorded it, is reported once
// and not listed as running; its launch reply carries its PID.
func TestTaskEndingAsItStartsIsReported(t *testing.T) {
	h := newHarness(t, harnessOpts{exec: func(s *Sim) Executor { return gatedExec{s, nil} }})
	for i := 0; i < 20; i++ {
		req := declared("brief", "work", 10, 10, 1e6)
		req.Epoch = uint64(i + 1)
		pid := h.mustLaunch(req)
		ev := h.nextEvent()
		if ev.TaskID != req.TaskID || ev.PID != pid || ev.Kind != schemas.EventFailed || ev.Reason != schemas.ReasonCrashed || ev.ExitCode == nil || *ev.ExitCode != 3 {
			t.Fatalf("event %+v, want %s (pid %d) failed/crashed", ev, req.TaskID, pid)
		}
		eventually(t, "the task gone from ps", func() bool { return len(h.ps().Tasks) == 0 })
		if ended := h.ps(pid).Ended; len(ended) != 1 || ended[0].TaskID != req.TaskID {
			t.Fatalf("ps ended: %+v", ended)
		}
	}
	if st := h.agent.Stats(); st.Launches != 20 || st.EventsQueued != 20 {
		t.Errorf("stats %+v", st)
	}
}
