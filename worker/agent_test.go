package worker

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

func TestLaunchRepliesPIDAfterFirstHeartbeat(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	st := h.nextHostStatus() // published at once on start
	if st.Host != "host-1" || st.RAM.TotalMiB != 64<<10 || st.RAM.UsedMiB != 0 || len(st.Tasks) != 0 || st.Draining {
		t.Fatalf("first host status %+v", st)
	}

	req := declared("I.I.I.I", "work", 100, 400, 60)
	req.Epoch = 7
	pid := h.mustLaunch(req)
	// The heartbeat was published before the reply on the same connection,
	// so it is queued on our subscription by the time the reply is read.
	if n, _, _ := h.hbs.Pending(); n < 1 {
		t.Fatal("first heartbeat was not sent before the launch reply")
	}
	hb, subject := h.nextHeartbeat()
	if subject != h.subj.Heartbeat("host-1", "I.I.I.I") {
		t.Errorf("heartbeat subject %q", subject)
	}
	if hb.TaskID != req.TaskID || hb.Epoch != 7 || hb.PID != pid || hb.Host != "host-1" || hb.Target != "I.I.I.I" ||
		hb.Type != "work" || hb.Seq != 1 || hb.RAM.BudgetMiB != 500 || hb.RAM.UsedMiB != 100 {
		t.Errorf("first heartbeat %+v", hb)
	}
	if hb.Progress == nil || *hb.Progress != 0 {
		t.Errorf("first heartbeat progress %v, want 0", hb.Progress)
	}
	if hb.SentAt.IsZero() || hb.SentAt.Location() != time.UTC {
		t.Errorf("sent_at %v", hb.SentAt)
	}
	// A second launch gets another PID.
	if pid2 := h.mustLaunch(declared("b", "work", 100, 400, 60)); pid2 == pid {
		t.Errorf("two tasks share PID %d", pid)
	}
}

func TestHeartbeatsAndHostStatusEveryInterval(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{HeartbeatInterval: 10 * time.Millisecond, RAMMiB: 4096}})
	req := declared("n00dles", "work", 100, 400, 600)
	pid := h.mustLaunch(req)
	h.sim.Advance(time.Second) // the helpers start
	h.sim.Advance(30 * time.Second)

	var seqs []uint64
	for len(seqs) < 5 {
		hb, _ := h.nextHeartbeat()
		if hb.TaskID != req.TaskID || hb.PID != pid {
			t.Fatalf("foreign heartbeat %+v", hb)
		}
		seqs = append(seqs, hb.Seq)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("heartbeat seqs %v, want 1, 2, 3, ...", seqs)
		}
	}
	// Later heartbeats carry the helpers' RAM and the progress made.
	for {
		hb, _ := h.nextHeartbeat()
		if hb.RAM.UsedMiB == 500 {
			if hb.Progress == nil || *hb.Progress < 0.049 || *hb.Progress > 0.051 {
				t.Errorf("progress %v after 30 of 600 s", hb.Progress)
			}
			break
		}
	}
	st := h.hostStatusWhere("the task and its helpers", func(s schemas.HostStatus) bool {
		return s.RAM.UsedMiB == 500
	})
	if !slices.Equal(st.Tasks, []string{req.TaskID}) || st.RAM.TotalMiB != 4096 {
		t.Errorf("host status %+v", st)
	}
}

func TestIdempotentLaunch(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	req := declared("foodnstuff", "work", 100, 400, 10)
	pid := h.mustLaunch(req)
	if again := h.mustLaunch(req); again != pid {
		t.Fatalf("relaunch got PID %d, want %d", again, pid)
	}
	if ps := h.ps(); len(ps.Tasks) != 1 {
		t.Fatalf("ps after relaunch: %+v", ps.Tasks)
	}
	if st := h.agent.Stats(); st.Launches != 1 || st.Relaunches != 1 {
		t.Fatalf("stats %+v", st)
	}
	// The same task_id for another target is a caller bug: invalid.
	other := req
	other.Target = "elsewhere"
	if rep := h.launch(other); rep.Error == nil || rep.Error.Code != schemas.CodeInvalid {
		t.Fatalf("reused task_id for another target: %+v", rep)
	}

	// Run it to the end; a late retry gets the old PID and starts nothing.
	h.sim.Advance(time.Second)
	h.sim.Advance(10 * time.Second)
	if ev := h.nextEvent(); ev.Kind != schemas.EventDone || ev.TaskID != req.TaskID {
		t.Fatalf("event %+v", ev)
	}
	if again := h.mustLaunch(req); again != pid {
		t.Fatalf("relaunch after the end got PID %d, want %d", again, pid)
	}
	if ps := h.ps(); len(ps.Tasks) != 0 {
		t.Fatalf("relaunch of an ended task started %+v", ps.Tasks)
	}
	if st := h.agent.Stats(); st.Launches != 1 || st.Relaunches != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestEndedMemoryIsBounded(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{EndedMemory: 2}})
	var reqs []schemas.LaunchRequest
	var pids []int64
	for i := 0; i < 3; i++ {
		r := declared("t", "work", 10, 10, 5)
		reqs = append(reqs, r)
		pids = append(pids, h.mustLaunch(r))
		if rep := h.kill(r.TaskID, 0); rep.Running {
			t.Fatal("still running after kill")
		}
	}
	// The oldest is forgotten: launching it again starts a new task.
	if pid := h.mustLaunch(reqs[0]); pid == pids[0] {
		t.Fatalf("forgotten task_id answered with its old PID")
	}
	if pid := h.mustLaunch(reqs[2]); pid != pids[2] {
		t.Fatalf("remembered task_id got PID %d, want %d", pid, pids[2])
	}
}

func TestInsufficientRAM(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 1024}})
	a := declared("a", "work", 100, 700, 60)
	h.mustLaunch(a)
	// Admission counts a task at its full budget even before its helpers
	// have started: 800 of 1024 are committed.
	b := declared("b", "work", 100, 200, 60)
	rep := h.launch(b)
	if rep.Error == nil || rep.Error.Code != schemas.CodeInsufficientRAM || rep.TaskID != b.TaskID || rep.PID != 0 {
		t.Fatalf("reply %+v", rep)
	}
	if !strings.Contains(rep.Error.Message, "224 MiB free") {
		t.Errorf("message %q", rep.Error.Message)
	}
	if st := h.agent.Stats(); st.Refused[schemas.CodeInsufficientRAM] != 1 || st.Launches != 1 {
		t.Errorf("stats %+v", st)
	}
	// A refused launch is not remembered: once RAM frees up it succeeds.
	if kr := h.kill(a.TaskID, 0); kr.Running {
		t.Fatal("kill left the task running")
	}
	h.mustLaunch(b)
	// A task larger than the host never fits.
	if rep := h.launch(declared("c", "work", 1000, 1000, 60)); rep.Error == nil || rep.Error.Code != schemas.CodeInsufficientRAM {
		t.Fatalf("oversized launch: %+v", rep)
	}
}

func TestLaunchRefusals(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	joes := earlyGame(t, "joesguns")
	cases := []struct {
		name string
		req  schemas.LaunchRequest
		code string
	}{
		{"hacking type that is not a phase", hacking(t, "joesguns", "weaken", joes, 4096), schemas.CodeUnknownType},
		{"declared type not in the spec", func() schemas.LaunchRequest {
			spec := schemas.TargetSpec{V: 1, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
				{Type: "build", WrapperMiB: 10, HelpersMinMiB: 10, HelpersFullMiB: 100, WorkS: 5},
			}}
			r := hacking(t, "proj", "deploy", spec, 100)
			return r
		}(), schemas.CodeUnknownType},
		{"no spec and no work_s", func() schemas.LaunchRequest {
			r := declared("x", "work", 10, 10, 5)
			r.Args = map[string]any{"other": 1}
			return r
		}(), schemas.CodeInvalid},
		{"negative work_s", declared("x", "work", 10, 10, -5), schemas.CodeInvalid},
		{"hacking spec without metrics", hacking(t, "x", "till", schemas.TargetSpec{V: 1, Profile: schemas.ProfileHacking}, 4096), schemas.CodeInvalid},
		{"spec that is not an object", func() schemas.LaunchRequest {
			r := declared("x", "work", 10, 10, 5)
			r.Args = map[string]any{ArgSpec: "till"}
			return r
		}(), schemas.CodeInvalid},
	}
	for _, c := range cases {
		rep := h.launch(c.req)
		if rep.Error == nil || rep.Error.Code != c.code || rep.TaskID != c.req.TaskID {
			t.Errorf("%s: reply %+v (error %+v), want %s", c.name, rep, rep.Error, c.code)
		}
	}
	if ps := h.ps(); len(ps.Tasks) != 0 {
		t.Errorf("refused launches started tasks: %+v", ps.Tasks)
	}

	h.agent.Drain()
	rep := h.launch(declared("y", "work", 10, 10, 5))
	if rep.Error == nil || rep.Error.Code != schemas.CodeDraining {
		t.Fatalf("launch while draining: %+v", rep)
	}
}

func TestKill(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 2048, HeartbeatInterval: 10 * time.Millisecond}})
	req := declared("sigma-cosmetics", "work", 100, 400, 600)
	req.Epoch = 3
	pid := h.mustLaunch(req)
	h.sim.Advance(time.Second)
	h.hostStatusWhere("the task's RAM", func(s schemas.HostStatus) bool { return s.RAM.UsedMiB == 500 })

	// A kill naming the wrong PID does not touch the task, and is answered
	// with an error, not with a "gone" that would be wrong.
	if rep := h.kill(req.TaskID, pid+100); !rep.Running || rep.Error == nil || rep.Error.Code != schemas.CodeInvalid ||
		!strings.Contains(rep.Error.Message, "runs with pid") {
		t.Fatalf("kill with a wrong PID: %+v (error %+v)", rep, rep.Error)
	}
	if ps := h.ps(); len(ps.Tasks) != 1 {
		t.Fatalf("task gone after a kill with a wrong PID")
	}

	rep := h.kill(req.TaskID, pid)
	if rep.Running || rep.TaskID != req.TaskID || rep.PID != pid {
		t.Fatalf("kill reply %+v", rep)
	}
	if ps := h.ps(); len(ps.Tasks) != 0 {
		t.Fatalf("ps after kill: %+v", ps.Tasks)
	}
	ev := h.nextEvent()
	if ev.Kind != schemas.EventFailed || ev.Reason != schemas.ReasonKilled || ev.TaskID != req.TaskID ||
		ev.PID != pid || ev.Epoch != 3 || ev.Host != "host-1" || ev.Target != "sigma-cosmetics" || ev.Type != "work" {
		t.Fatalf("event %+v", ev)
	}
	h.hostStatusWhere("the RAM freed", func(s schemas.HostStatus) bool { return s.RAM.UsedMiB == 0 && len(s.Tasks) == 0 })

	// Killing it again, or a task that never was, answers running=false
	// and publishes nothing more.
	if rep := h.kill(req.TaskID, pid); rep.Running || rep.Error != nil {
		t.Fatalf("second kill: %+v", rep)
	}
	if rep := h.kill("never", 0); rep.Running || rep.Error != nil {
		t.Fatalf("kill of an unknown task: %+v", rep)
	}
	if st := h.agent.Stats(); st.Kills != 1 {
		t.Errorf("kills %d, want 1", st.Kills)
	}
	eventually(t, "the event acked", func() bool { return h.agent.Stats().EventsPublished == 1 })
	if n := h.streamCount(); n != 1 {
		t.Errorf("%d events in the stream, want 1", n)
	}
}

// stubbornTask is a task whose Kill fails, as a process the worker may not
// signal.
type stubbornTask struct{ Task }

func (stubbornTask) Kill() error { return errors.New("operation not permitted") }

// stubbornExec starts stubborn tasks.
type stubbornExec struct{ *Sim }

func (x stubbornExec) Start(spec *LaunchSpec, hooks Hooks) (Task, error) {
	t, err := x.Sim.Start(spec, hooks)
	if err != nil {
		return nil, err
	}
	return stubbornTask{t}, nil
}

// TestKillThatFails: a kill the executor cannot carry out is answered with
// error failed and running true, not with running false (which the selector
// would take for "gone").
func TestKillThatFails(t *testing.T) {
	h := newHarness(t, harnessOpts{exec: func(s *Sim) Executor { return stubbornExec{s} }})
	req := declared("n00dles", "work", 10, 10, 1e6)
	pid := h.mustLaunch(req)
	rep := h.kill(req.TaskID, pid)
	if !rep.Running || rep.Error == nil || rep.Error.Code != schemas.CodeFailed || !strings.Contains(rep.Error.Message, "operation not permitted") {
		t.Fatalf("kill that fails: %+v (error %+v)", rep, rep.Error)
	}
	if ps := h.ps(pid); len(ps.Tasks) != 1 {
		t.Fatalf("the task is no longer listed: %+v", ps)
	}
	if st := h.agent.Stats(); st.Kills != 0 || st.EventsQueued != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPs(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	var reqs []schemas.LaunchRequest
	var pids []int64
	for i, target := range []string{"n00dles", "foodnstuff", "joesguns"} {
		r := declared(target, "work", 10, int64(100*(i+1)), 60)
		r.Epoch = uint64(i + 1)
		reqs = append(reqs, r)
		pids = append(pids, h.mustLaunch(r))
	}
	ps := h.ps()
	if ps.Host != "host-1" || len(ps.Tasks) != 3 {
		t.Fatalf("ps %+v", ps)
	}
	for i, task := range ps.Tasks {
		r := reqs[i]
		if task.PID != pids[i] || task.TaskID != r.TaskID || task.Epoch != r.Epoch || task.Target != r.Target ||
			task.Type != "work" || task.RAM != r.RAM || task.StartedAt.IsZero() {
			t.Errorf("ps task %d: %+v, want %+v pid %d", i, task, r, pids[i])
		}
	}
	if one := h.ps(pids[1]); len(one.Tasks) != 1 || one.Tasks[0].PID != pids[1] {
		t.Errorf("ps of one pid: %+v", one.Tasks)
	}
	if none := h.ps(99999); len(none.Tasks) != 0 {
		t.Errorf("ps of an unknown pid: %+v", none.Tasks)
	}
}

// TestMalformedRequests: an undecodable request is answered with its own
// reply type carrying error code invalid (and the task_id when one can be
// read). The kill and ps replies decode strictly when they carry a task_id;
// a kill's says running, so that a reader that ignores the error does not
// take the task for gone.
func TestMalformedRequests(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	for _, c := range []struct {
		subject string
		body    string
		taskID  string
	}{
		{h.subj.Launch("host-1"), `{`, ""},
		{h.subj.Launch("host-1"), `{"v":2,"task_id":"t-9","epoch":1,"target":"a","type":"b","ram":{"wrapper_mib":1,"helpers_mib":1},"args":{}}`, "t-9"},
		{h.subj.Launch("host-1"), `{"v":1,"task_id":"t-10","epoch":1,"target":"a","type":"b","ram":{"wrapper_mib":-1,"helpers_mib":1},"args":{}}`, "t-10"},
		{h.subj.Launch("host-1"), `{"v":1,"task_id":"t-11","epoch":1,"target":"a","type":"b","ram":{"wrapper_mib":1,"helpers_mib":1099511627777},"args":{}}`, "t-11"},
	} {
		b := h.request(c.subject, []byte(c.body))
		var r schemas.LaunchReply
		if c.taskID != "" {
			var err error
			if r, err = schemas.DecodeLaunchReply(b); err != nil {
				t.Fatalf("launch reply %s: %v", b, err)
			}
		} else if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("launch reply %s: %v", b, err)
		}
		if r.Error == nil || r.Error.Code != schemas.CodeInvalid || r.TaskID != c.taskID || r.Error.Message == "" || r.PID != 0 {
			t.Errorf("%s %s: reply %s", c.subject, c.body, b)
		}
	}
	for _, c := range []struct {
		body   string
		taskID string
	}{
		{`not json`, ""},
		{`{"v":1,"task_id":"k-1","pid":-4}`, "k-1"},
		{`{"v":1,"task_id":"k-2","pid":1,"reason":"x","zz":` + strings.Repeat("[", 20000) + `}`, ""},
	} {
		b := h.request(h.subj.Kill("host-1"), []byte(c.body))
		var r schemas.KillReply
		if c.taskID != "" {
			var err error
			if r, err = schemas.DecodeKillReply(b); err != nil {
				t.Fatalf("kill reply %s: %v", b, err)
			}
		} else if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("kill reply %s: %v", b, err)
		}
		if r.Error == nil || r.Error.Code != schemas.CodeInvalid || r.TaskID != c.taskID || r.Error.Message == "" || !r.Running {
			t.Errorf("kill %.40s: reply %s", c.body, b)
		}
	}
	b := h.request(h.subj.Ps("host-1"), []byte(`{"v":1,"pids":[0]}`))
	ps, err := schemas.DecodePsReply(b)
	if err != nil || ps.Error == nil || ps.Error.Code != schemas.CodeInvalid || ps.Host != "host-1" || len(ps.Tasks) != 0 ||
		!strings.Contains(ps.Error.Message, "pids[0]") {
		t.Errorf("ps reply %s: %v", b, err)
	}
	// A flood without reply subjects: counted, nothing breaks.
	const flood = 300
	for i := 0; i < flood; i++ {
		for _, s := range []string{h.subj.Launch("host-1"), h.subj.Kill("host-1"), h.subj.Ps("host-1")} {
			if err := h.cli.Publish(s, []byte(`{"v":1,"garbage`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, "the flood counted", func() bool {
		m := h.agent.Stats().Malformed
		return m["launch"] == flood+4 && m["kill"] == flood+3 && m["ps"] == flood+1
	})
	h.mustLaunch(declared("still", "work", 1, 1, 1))
}

func TestDeclaredTaskRunsToDone(t *testing.T) {
	h := newHarness(t, harnessOpts{sim: SimConfig{Speed: 1000, Tick: 2 * time.Millisecond}, cfg: Config{HeartbeatInterval: 5 * time.Millisecond}})
	req := declared("harakiri-sushi", "work", 100, 300, 20)
	pid := h.mustLaunch(req)
	ev := h.nextEvent()
	if ev.Kind != schemas.EventDone || ev.TaskID != req.TaskID || ev.PID != pid || ev.Reason != "" || ev.Metrics != nil {
		t.Fatalf("event %+v", ev)
	}
	h.hostStatusWhere("the task gone", func(s schemas.HostStatus) bool { return len(s.Tasks) == 0 && s.RAM.UsedMiB == 0 })
	if ps := h.ps(); len(ps.Tasks) != 0 {
		t.Fatalf("ps after done: %+v", ps.Tasks)
	}
}

func TestShutdownKillsTasksAndFlushesEvents(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{KillOnShutdown: true}})
	a := declared("a", "work", 10, 10, 100)
	b := declared("b", "work", 10, 10, 100)
	h.mustLaunch(a)
	h.mustLaunch(b)
	h.nextHostStatus() // the one at start
	h.stop()
	got := map[string]string{}
	for i := 0; i < 2; i++ {
		ev := h.nextEvent()
		got[ev.TaskID] = ev.Kind + "/" + ev.Reason
	}
	want := map[string]string{a.TaskID: "failed/killed", b.TaskID: "failed/killed"}
	if len(got) != 2 || got[a.TaskID] != want[a.TaskID] || got[b.TaskID] != want[b.TaskID] {
		t.Fatalf("events %v, want %v", got, want)
	}
	st := h.nextHostStatus()
	if !st.Draining || len(st.Tasks) != 0 {
		t.Fatalf("last host status %+v", st)
	}
}

func TestShutdownLeavesTasks(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.mustLaunch(declared("a", "work", 10, 10, 100))
	h.nextHostStatus()
	h.stop()
	st := h.nextHostStatus()
	if !st.Draining || len(st.Tasks) != 1 {
		t.Fatalf("last host status %+v", st)
	}
	if n := h.streamCount(); n != 0 {
		t.Fatalf("%d events published for a task left running", n)
	}
}

// TestPsListsEndedTasks: a task that ended on its own is named in the
// reply's Ended with how it ended, so that the selector waits for its done
// event instead of taking it for a task that vanished.
func TestPsListsEndedTasks(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	short := declared("n00dles", "work", 10, 100, 5)
	short.Epoch = 4
	pid := h.mustLaunch(short)
	long := declared("joesguns", "work", 10, 100, 1e6)
	long.Epoch = 2
	longPID := h.mustLaunch(long)
	h.sim.Advance(time.Second)
	h.sim.Advance(10 * time.Second)
	if ev := h.nextEvent(); ev.Kind != schemas.EventDone || ev.TaskID != short.TaskID {
		t.Fatalf("event %+v", ev)
	}
	one := h.ps(pid)
	if len(one.Tasks) != 0 || len(one.Ended) != 1 || one.Ended[0] != (schemas.PsEnded{TaskID: short.TaskID, Epoch: 4, Kind: schemas.EventDone}) {
		t.Fatalf("ps of the ended pid: %+v", one)
	}
	if other := h.ps(longPID); len(other.Tasks) != 1 || len(other.Ended) != 0 {
		t.Fatalf("ps of the running pid: %+v", other)
	}
	if all := h.ps(); len(all.Tasks) != 1 || len(all.Ended) != 1 || all.Ended[0].TaskID != short.TaskID {
		t.Fatalf("ps of every task: %+v", all)
	}
}

// TestHostStatusSaysHowRAMIsAccounted: the status carries the executor's
// memory accounting, so that an operator sees a fallback.
func TestHostStatusSaysHowRAMIsAccounted(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.hostStatusWhere("memory sim", func(s schemas.HostStatus) bool { return s.Memory == "sim" })
}

// loggedSim is the sim executor whose tasks keep a log file.
type loggedSim struct{ *Sim }

func (s loggedSim) Start(spec *LaunchSpec, hooks Hooks) (Task, error) {
	t, err := s.Sim.Start(spec, hooks)
	if err != nil {
		return nil, err
	}
	return loggedTask{t, "/var/log/tasks/" + spec.TaskID + ".log"}, nil
}

type loggedTask struct {
	Task
	path string
}

func (t loggedTask) LogPath() string { return t.path }

// TestPsShowsTheTaskLog: ps names the log file of a task that keeps one.
func TestPsShowsTheTaskLog(t *testing.T) {
	h := newHarness(t, harnessOpts{exec: func(s *Sim) Executor { return loggedSim{s} }})
	req := declared("n00dles", "work", 10, 10, 1e6)
	h.mustLaunch(req)
	rep := h.ps()
	if len(rep.Tasks) != 1 || rep.Tasks[0].Log != "/var/log/tasks/"+req.TaskID+".log" {
		t.Fatalf("ps %+v, want the task's log path", rep.Tasks)
	}
}

// TestLaunchNamingACommandIsRefused: a launch request that carries a field
// naming a command is refused as invalid, and nothing starts.
func TestLaunchNamingACommandIsRefused(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	for _, field := range []string{"command", "argv", "path", "shell"} {
		req := declared("n00dles", "work", 10, 10, 1e6)
		raw, err := json.Marshal(&req)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		m[field] = []string{"/bin/sh", "-c", "true"}
		data := h.request(h.subj.Launch(h.cfg.Host), m)
		rep, err := schemas.DecodeLaunchReply(data)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Error == nil || rep.Error.Code != schemas.CodeInvalid || !strings.Contains(rep.Error.Message, field) {
			t.Errorf("launch with %q: %s, want invalid naming the field", field, data)
		}
	}
	if st := h.agent.Stats(); st.Launches != 0 || st.Running != 0 {
		t.Errorf("something started: %+v", st)
	}
}
