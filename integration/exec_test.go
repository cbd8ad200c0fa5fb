package integration

// The exec executor end to end (issue 9's acceptance): real task processes
// (testdata/exectask, built once per test binary) run by a real worker agent
// with the exec executor (worker/process), their RAM measured and limited by
// a memory group per task, against the real selector over an embedded NATS
// server.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/internal/cgroup"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
	"github.com/taskselector/taskselector/worker/process"
)

// execWait bounds every wait of these tests: real processes on a loaded
// machine, but nothing here takes more than a few seconds.
const execWait = 20 * time.Second

var (
	execTaskOnce sync.Once
	execTaskDir  string
	execTaskBin  string
	execTaskErr  error
)

// TestMain removes the task program built for the exec tests, if any.
func TestMain(m *testing.M) {
	code := m.Run()
	if execTaskDir != "" {
		_ = os.RemoveAll(execTaskDir)
	}
	os.Exit(code)
}

// execTaskProgram builds testdata/exectask once per test binary (TestMain
// removes it) and returns its path.
func execTaskProgram(t *testing.T) string {
	t.Helper()
	execTaskOnce.Do(func() {
		dir, err := os.MkdirTemp("", "exectask-")
		if err != nil {
			execTaskErr = err
			return
		}
		execTaskDir = dir
		execTaskBin = filepath.Join(dir, "exectask")
		cmd := exec.Command("go", "build", "-o", execTaskBin, "./testdata/exectask")
		if out, err := cmd.CombinedOutput(); err != nil {
			execTaskErr = fmt.Errorf("go build ./testdata/exectask: %v\n%s", err, out)
		}
	})
	if execTaskErr != nil {
		t.Fatal(execTaskErr)
	}
	return execTaskBin
}

// execTypes are the task types of every test's tasks file: the phase type a
// target declares picks the exectask mode.
var execTypes = []struct{ typ, mode string }{
	{"sleep", "sleep"}, {"tree", "tree"}, {"overbudget", "overbudget"}, {"hog", "hog"}, {"done", "done"},
}

// execHelperMiB is what a tree task's helper allocates and touches.
const execHelperMiB = 24

// execSpec is a declared target of one endless phase of type typ with a
// fixed budget: 16 MiB wrapper and 32 MiB of helpers.
func execSpec(typ string) schemas.TargetSpec {
	return schemas.TargetSpec{
		V: schemas.Version, Profile: schemas.ProfileDeclared,
		Phases: []schemas.Phase{{Type: typ, WrapperMiB: 16, HelpersMinMiB: 32, HelpersFullMiB: 32, WorkS: 1e7, Repeat: true}},
	}
}

// execSetup is what the exec workers of one test share: the tasks file, the
// state directory, the memory group parent, and the directory where the
// task processes write their pids.
type execSetup struct {
	tasksFile string
	stateDir  string
	parent    string
	notes     string // EXECTASK_DIR
}

func newExecSetup(t *testing.T) *execSetup {
	t.Helper()
	bin := execTaskProgram(t)
	dir := t.TempDir()
	s := &execSetup{
		tasksFile: filepath.Join(dir, "tasks.toml"),
		stateDir:  filepath.Join(dir, "state"),
		notes:     filepath.Join(dir, "notes"),
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	s.parent = "taskselector-itest-" + hex.EncodeToString(r[:])
	if err := os.Mkdir(s.notes, 0o700); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, ty := range execTypes {
		fmt.Fprintf(&b, "[[task]]\ntype = %q\ncommand = [%q]\nkill_grace = \"500ms\"\n", ty.typ, bin)
		fmt.Fprintf(&b, "env = { EXECTASK_MODE = %q, EXECTASK_DIR = %q, EXECTASK_HELPER_MIB = \"%d\" }\n\n", ty.mode, s.notes, execHelperMiB)
	}
	if err := os.WriteFile(s.tasksFile, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	// Last cleanup: whatever memory group is left under the parent is
	// emptied and removed, whatever the test did.
	t.Cleanup(func() { removeParent(t, s.parent) })
	return s
}

// removeParent kills and removes every group under parent, then parent.
func removeParent(t *testing.T, parent string) {
	m, err := cgroup.DetectMode("", parent, "")
	if err != nil {
		t.Errorf("cleanup: memory groups: %v", err)
		return
	}
	names, _ := m.List()
	for _, n := range names {
		g, err := m.Open(n)
		if err != nil {
			continue
		}
		_ = g.Signal(syscall.SIGKILL)
		deadline := time.Now().Add(10 * time.Second)
		for {
			if empty, err := g.Empty(); err != nil || empty || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		_ = g.Remove()
	}
	_ = m.Close()
}

// groups lists the memory groups under the setup's parent.
func (s *execSetup) groups(t *testing.T, mode string) []string {
	t.Helper()
	m, err := cgroup.DetectMode("", s.parent, cgroup.Mode(mode))
	if err != nil {
		t.Fatalf("memory groups: %v", err)
	}
	names, err := m.List()
	if err != nil {
		t.Fatalf("memory groups: %v", err)
	}
	return names
}

// notedPID reads the pid a task process wrote as <task id>.<role>, 0 when
// it has not yet.
func (s *execSetup) notedPID(taskID, role string) int {
	b, err := os.ReadFile(filepath.Join(s.notes, taskID+"."+role))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(string(b))
	return pid
}

// open lets a tree task of target start its helper.
func (s *execSetup) open(t *testing.T, target string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.notes, target+".go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// execWorker is a worker agent with an exec executor on its own connection.
type execWorker struct {
	host   string
	agent  *worker.Agent
	ex     *process.Executor
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startExecWorker runs a worker agent for host with an exec executor on the
// setup's tasks file, state directory and memory group parent, and waits
// until it is ready. Its tasks are killed when it stops.
func (e *env) startExecWorker(host string, s *execSetup) *execWorker {
	e.t.Helper()
	return e.startExecWorkerSocket(host, s, "")
}

// startExecWorkerSocket is startExecWorker with the task API on socket
// ("" for the default, in the state directory).
func (e *env) startExecWorkerSocket(host string, s *execSetup, socket string) *execWorker {
	e.t.Helper()
	log := testLog()
	ex, err := process.New(process.Config{
		Host: host, RAMMiB: 4096, TasksFile: s.tasksFile, StateDir: s.stateDir, APISocket: socket,
		CgroupParent: s.parent, Log: log.With("host", host),
	})
	if err != nil {
		e.t.Fatalf("exec executor %s: %v", host, err)
	}
	nc := e.connect("worker-" + host)
	agent, err := worker.New(nc, worker.Config{
		Host: host, RAMMiB: 4096, HeartbeatInterval: hbInterval, Executor: process.Name,
		KillOnShutdown: true, FlushTimeout: time.Second, PublishTimeout: 500 * time.Millisecond,
		RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
	}, ex, log)
	if err != nil {
		_ = ex.Close()
		e.t.Fatalf("worker %s: %v", host, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &execWorker{host: host, agent: agent, ex: ex, nc: nc, cancel: cancel, done: make(chan error, 1)}
	go func() { w.done <- agent.Run(ctx) }()
	e.t.Cleanup(func() { w.stop(e.t, true) })
	select {
	case <-agent.Ready():
	case err := <-w.done:
		e.t.Fatalf("worker %s stopped before it was ready: %v", host, err)
	case <-time.After(20 * time.Second):
		e.t.Fatalf("worker %s not ready within 20s", host)
	}
	return w
}

// stop ends the agent (which kills its tasks) and closes the executor.
// check says whether Run must have returned nil.
func (w *execWorker) stop(t testing.TB, check bool) {
	t.Helper()
	w.once.Do(func() {
		w.cancel()
		select {
		case err := <-w.done:
			if err != nil && check {
				t.Errorf("worker %s Run: %v", w.host, err)
			}
		case <-time.After(stopTimeout):
			t.Errorf("worker %s did not stop within %v", w.host, stopTimeout)
		}
		if err := w.ex.Close(); err != nil {
			t.Errorf("worker %s executor: %v", w.host, err)
		}
	})
}

// eventSpy records every task event published.
type eventSpy struct {
	mu  sync.Mutex
	evs []schemas.TaskEvent
}

func (e *env) startEventSpy() *eventSpy {
	e.t.Helper()
	s := &eventSpy{}
	sub, err := e.nc.Subscribe(e.subj.Events(), func(m *nats.Msg) {
		ev, err := schemas.DecodeTaskEvent(m.Data)
		if err != nil {
			return
		}
		s.mu.Lock()
		s.evs = append(s.evs, ev)
		s.mu.Unlock()
	})
	if err != nil {
		e.t.Fatalf("event spy: %v", err)
	}
	e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := e.nc.Flush(); err != nil {
		e.t.Fatalf("event spy flush: %v", err)
	}
	return s
}

// of returns the events of taskID.
func (s *eventSpy) of(taskID string) []schemas.TaskEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []schemas.TaskEvent
	for _, ev := range s.evs {
		if ev.TaskID == taskID {
			out = append(out, ev)
		}
	}
	return out
}

// waitEvent waits for an event of taskID and returns the first.
func (s *eventSpy) waitEvent(t *testing.T, taskID string) schemas.TaskEvent {
	t.Helper()
	var ev schemas.TaskEvent
	waitFor(t, execWait, func() (bool, string) {
		evs := s.of(taskID)
		if len(evs) == 0 {
			return false, "no event of task " + taskID
		}
		ev = evs[0]
		return true, ""
	})
	return ev
}

// procAlive reports whether pid is a live process (not a zombie) started at
// start (clock ticks since boot; 0 matches any), and its state line.
func procAlive(pid int, start uint64) (bool, string) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false, "gone"
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return false, "unparsable stat"
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 20 {
		return false, "short stat"
	}
	st, _ := strconv.ParseUint(f[19], 10, 64)
	if start != 0 && st != start {
		return false, "pid reused"
	}
	if f[0] == "Z" || f[0] == "X" {
		return false, "zombie"
	}
	return true, "state " + f[0]
}

// procStart is pid's start time in clock ticks since boot, 0 when gone.
func procStart(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 20 {
		return 0
	}
	st, _ := strconv.ParseUint(f[19], 10, 64)
	return st
}

// treePIDs waits until taskID's wrapper, helper and grandchild have noted
// their pids and returns them with their start times.
func (s *execSetup) treePIDs(t *testing.T, taskID string) (map[string]int, map[int]uint64) {
	t.Helper()
	pids := map[string]int{}
	waitFor(t, execWait, func() (bool, string) {
		for _, role := range []string{"wrapper", "helper", "grandchild"} {
			if pids[role] = s.notedPID(taskID, role); pids[role] == 0 {
				return false, "no pid noted for the " + role + " of task " + taskID
			}
		}
		return true, ""
	})
	starts := map[int]uint64{}
	for _, p := range pids {
		starts[p] = procStart(p)
	}
	return pids, starts
}

// waitNoneAlive waits until none of pids lives.
func waitNoneAlive(t *testing.T, pids map[string]int, starts map[int]uint64) {
	t.Helper()
	waitFor(t, execWait, func() (bool, string) {
		for role, p := range pids {
			if ok, st := procAlive(p, starts[p]); ok {
				return false, fmt.Sprintf("%s pid %d still alive (%s)", role, p, st)
			}
		}
		return true, ""
	})
}

// exeOf is the program pid runs.
func exeOf(pid int) string {
	p, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return p
}

// execSelector starts a selector with the harness's timers, changed by mod.
func (e *env) execSelector(mod func(*selector.Config)) *selectorProc {
	e.t.Helper()
	eng := engineConfig()
	if mod != nil {
		mod(&eng)
	}
	return e.startSelector(serviceConfig(eng))
}

// TestExecLaunchRealPID: a launch yields a real process, alive in /proc, in
// the task's memory group, running the tasks file's program, whose PID the
// status, the heartbeats and the stored task all name.
func TestExecLaunchRealPID(t *testing.T) {
	e := newEnv(t, false)
	s := newExecSetup(t)
	spy := e.startSpy()
	e.execSelector(nil)
	w := e.startExecWorker("h1", s)
	e.putTarget("a", execSpec("sleep"))

	line := e.waitTarget(execWait, "a", func(ts schemas.TargetStatus) bool {
		return ts.State == selector.StateActive && ts.PID > 0
	})
	pid := int(line.PID)
	if ok, st := procAlive(pid, 0); !ok {
		t.Fatalf("task pid %d is not alive: %s", pid, st)
	}
	if got, want := exeOf(pid), execTaskProgram(t); got != want {
		t.Errorf("pid %d runs %q, want the tasks file's %q", pid, got, want)
	}
	if noted := s.notedPID(line.TaskID, "wrapper"); noted != 0 && noted != pid {
		t.Errorf("the task says its pid is %d, the status %d", noted, pid)
	}
	if pg, err := syscall.Getpgid(pid); err != nil || pg != pid {
		t.Errorf("pid %d: process group %d (%v), want its own", pid, pg, err)
	}
	if mode := w.ex.MemoryAccounting(); mode != string(cgroup.ModeProc) {
		cg, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
		if !strings.Contains(string(cg), "/"+s.parent+"/task-") {
			t.Errorf("pid %d is not in a task memory group under %s:\n%s", pid, s.parent, cg)
		}
	}
	waitFor(t, execWait, func() (bool, string) {
		hb, ok := spy.lastHeartbeat(line.TaskID)
		switch {
		case !ok:
			return false, "no heartbeat of " + line.TaskID
		case hb.hb.PID != line.PID:
			t.Fatalf("heartbeat pid %d, launch pid %d", hb.hb.PID, line.PID)
		case hb.hb.Host != "h1" || hb.hb.Type != "sleep" || hb.hb.Target != "a":
			t.Fatalf("heartbeat %+v", hb.hb)
		}
		return hb.hb.Progress != nil && *hb.hb.Progress == 0.1, fmt.Sprintf("heartbeat progress %v, want the task's 0.1", hb.hb.Progress)
	})
	st, err := e.taskState("a")
	if err != nil || st.Task == nil || st.Task.PID != line.PID {
		t.Fatalf("stored task %+v (%v), want pid %d", st.Task, err, line.PID)
	}
}

// TestExecUsedMiBGrows: used_mib, measured over the whole tree, grows when
// the helper and grandchild allocate, and shows in the heartbeats and the
// HostStatus, which names the memory accounting mode.
func TestExecUsedMiBGrows(t *testing.T) {
	e := newEnv(t, false)
	s := newExecSetup(t)
	spy := e.startSpy()
	var hsMu sync.Mutex
	var hss []schemas.HostStatus
	sub, err := e.nc.Subscribe(e.subj.Hosts(), func(m *nats.Msg) {
		var hs schemas.HostStatus
		if json.Unmarshal(m.Data, &hs) == nil {
			hsMu.Lock()
			hss = append(hss, hs)
			hsMu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	e.execSelector(nil)
	w := e.startExecWorker("h1", s)
	mode := w.ex.MemoryAccounting()
	t.Logf("memory accounting: %s (%s)", mode, w.ex.MemoryWhy())
	// Where the agent made its parent in the v1 memory hierarchy (as on
	// the development machines, whose v2 has no memory controller), it
	// accounts with cgroup1.
	if _, err := os.Stat(filepath.Join(cgroup.DefaultRoot, "memory", s.parent)); err == nil && mode != string(cgroup.ModeV1) {
		t.Errorf("the agent's parent is in the v1 memory hierarchy, but the mode is %s", mode)
	}
	e.putTarget("a", execSpec("tree"))
	line := e.waitActive(execWait, "a")

	var before int64
	waitFor(t, execWait, func() (bool, string) {
		hb, ok := spy.lastHeartbeat(line.TaskID)
		if !ok {
			return false, "no heartbeat"
		}
		before = hb.hb.RAM.UsedMiB
		return true, ""
	})
	if before >= execHelperMiB {
		t.Fatalf("used_mib %d before the helper starts, want less than the helper's %d", before, execHelperMiB)
	}
	s.open(t, "a")
	s.treePIDs(t, line.TaskID)
	want := before + execHelperMiB
	var used int64
	waitFor(t, execWait, func() (bool, string) {
		hb, _ := spy.lastHeartbeat(line.TaskID)
		used = hb.hb.RAM.UsedMiB
		return used >= want, fmt.Sprintf("heartbeat used_mib %d, want at least %d (%d before + %d of helper)", used, want, before, execHelperMiB)
	})
	if hb, _ := spy.lastHeartbeat(line.TaskID); hb.hb.RAM.BudgetMiB != 48 {
		t.Errorf("heartbeat budget_mib %d, want 48", hb.hb.RAM.BudgetMiB)
	}
	waitFor(t, execWait, func() (bool, string) {
		hsMu.Lock()
		defer hsMu.Unlock()
		if len(hss) == 0 {
			return false, "no host status"
		}
		hs := hss[len(hss)-1]
		if hs.Memory != mode {
			t.Fatalf("host status memory %q, want %q", hs.Memory, mode)
		}
		return hs.RAM.UsedMiB >= want && slices.Contains(hs.Tasks, line.TaskID),
			fmt.Sprintf("host status used_mib %d tasks %v, want at least %d with %s", hs.RAM.UsedMiB, hs.Tasks, want, line.TaskID)
	})
	e.waitStatus(execWait, func(st *schemas.SelectorStatus) (bool, string) {
		for _, h := range st.Hosts {
			if h.Host == "h1" {
				return h.UsedMiB >= want, fmt.Sprintf("status host used_mib %d, want at least %d", h.UsedMiB, want)
			}
		}
		return false, "no host h1 in status"
	})
}

// TestExecHelpersRefused: a helper request past the task's helper budget is
// refused; the task reports helpers_unavailable, and the selector takes one
// backoff step.
func TestExecHelpersRefused(t *testing.T) {
	e := newEnv(t, false)
	s := newExecSetup(t)
	events := e.startEventSpy()
	spy := e.startSpy()
	// A long backoff: no relaunch while the test looks.
	e.execSelector(func(c *selector.Config) { c.BackoffBase, c.BackoffMax = 10*time.Second, 20*time.Second })
	e.startExecWorker("h1", s)
	e.putTarget("a", execSpec("overbudget"))

	taskID := spy.firstLaunch(t, execWait, "a")
	ev := events.waitEvent(t, taskID)
	if ev.Kind != schemas.EventFailed || ev.Reason != schemas.ReasonHelpersUnavailable {
		t.Fatalf("event %s/%s, want failed/%s", ev.Kind, ev.Reason, schemas.ReasonHelpersUnavailable)
	}
	b, err := os.ReadFile(filepath.Join(s.notes, taskID+".refusal"))
	if err != nil || !strings.HasPrefix(string(b), "over_budget: ") {
		t.Errorf("refusal the task got: %q (%v), want over_budget", b, err)
	}
	st := e.waitStatus(execWait, func(st *schemas.SelectorStatus) (bool, string) {
		return st.Counters.Failures[schemas.ReasonHelpersUnavailable] >= 1,
			fmt.Sprintf("failures %v backoff %d", st.Counters.Failures, st.Backoff.Level)
	})
	if n := st.Counters.Failures[schemas.ReasonHelpersUnavailable]; n != 1 || st.Backoff.Level != 1 {
		t.Fatalf("failures %v backoff level %d, want one helpers_unavailable and level 1", st.Counters.Failures, st.Backoff.Level)
	}
	if len(spy.launches("a")) != 1 {
		t.Fatalf("%d launches, want 1 during the backoff", len(spy.launches("a")))
	}
}

// TestExecOOM: a task that allocates past its memory limit (budget + slack)
// is stopped by its memory group and reported as oom; the selector counts it
// as RAM pressure and raises the backoff.
func TestExecOOM(t *testing.T) {
	e := newEnv(t, false)
	s := newExecSetup(t)
	events := e.startEventSpy()
	spy := e.startSpy()
	e.execSelector(func(c *selector.Config) { c.BackoffBase, c.BackoffMax = 10*time.Second, 20*time.Second })
	w := e.startExecWorker("h1", s)
	if w.ex.MemoryAccounting() == string(cgroup.ModeProc) {
		t.Skipf("no writable memory cgroup (%s): no kernel memory limit to test", w.ex.MemoryWhy())
	}
	e.putTarget("a", execSpec("hog"))
	taskID := spy.firstLaunch(t, execWait, "a")
	ev := events.waitEvent(t, taskID)
	if ev.Kind != schemas.EventFailed || ev.Reason != schemas.ReasonOOM {
		t.Fatalf("event %s/%s, want failed/%s", ev.Kind, ev.Reason, schemas.ReasonOOM)
	}
	st := e.waitStatus(execWait, func(st *schemas.SelectorStatus) (bool, string) {
		return st.Counters.Failures[schemas.ReasonOOM] >= 1, fmt.Sprintf("failures %v", st.Counters.Failures)
	})
	if st.Backoff.Level < 1 {
		t.Fatalf("backoff level %d after an oom, want it raised", st.Backoff.Level)
	}
	if pid := s.notedPID(taskID, "wrapper"); pid != 0 {
		if ok, _ := procAlive(pid, 0); ok {
			t.Errorf("the oom task's pid %d still lives", pid)
		}
	}
}

// TestExecKillTree: deleting the target makes the selector kill its task,
// which takes down the whole tree: the wrapper, its helper and the helper's
// child in its own session (which ignores SIGTERM).
func TestExecKillTree(t *testing.T) {
	e := newEnv(t, false)
	s := newExecSetup(t)
	spy := e.startSpy()
	e.execSelector(nil)
	w := e.startExecWorker("h1", s)
	e.putTarget("a", execSpec("tree"))
	line := e.waitActive(execWait, "a")
	s.open(t, "a")
	pids, starts := s.treePIDs(t, line.TaskID)
	for role, p := range pids {
		if ok, st := procAlive(p, starts[p]); !ok {
			t.Fatalf("%s pid %d not alive before the kill: %s", role, p, st)
		}
	}
	if pg, _ := syscall.Getpgid(pids["grandchild"]); pg == pids["wrapper"] {
		t.Fatalf("the grandchild is in the wrapper's process group; the test wants it out")
	}
	if err := e.client.DeleteTarget(e.ctx(10*time.Second), "a"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, execWait, func() (bool, string) {
		return len(spy.kills(line.TaskID)) > 0, "no kill request for " + line.TaskID
	})
	e.waitStatus(execWait, func(st *schemas.SelectorStatus) (bool, string) {
		_, ok := targetLine(st, "a")
		return !ok, describe(st)
	})
	waitNoneAlive(t, pids, starts)
	waitFor(t, execWait, func() (bool, string) {
		g := s.groups(t, w.ex.MemoryAccounting())
		return len(g) == 0, fmt.Sprintf("memory groups left: %v", g)
	})
}

// TestExecKill9Crashed: SIGKILL of a task's wrapper is reported as failed,
// crashed; the selector requeues the target and a new process starts.
func TestExecKill9Crashed(t *testing.T) {
	e := newEnv(t, false)
	s := newExecSetup(t)
	events := e.startEventSpy()
	e.execSelector(nil)
	e.startExecWorker("h1", s)
	e.putTarget("a", execSpec("tree"))
	s.open(t, "a")
	line := e.waitActive(execWait, "a")
	pids, starts := s.treePIDs(t, line.TaskID)
	if err := syscall.Kill(pids["wrapper"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev := events.waitEvent(t, line.TaskID)
	if ev.Kind != schemas.EventFailed || ev.Reason != schemas.ReasonCrashed || ev.PID != line.PID {
		t.Fatalf("event %s/%s pid %d, want failed/%s pid %d", ev.Kind, ev.Reason, ev.PID, schemas.ReasonCrashed, line.PID)
	}
	waitNoneAlive(t, pids, starts)
	next := e.waitTarget(execWait, "a", func(ts schemas.TargetStatus) bool {
		return ts.State == selector.StateActive && ts.TaskID != line.TaskID && ts.PID > 0
	})
	if next.PID == line.PID {
		t.Fatalf("the new task has the old pid %d", next.PID)
	}
	if ok, st := procAlive(int(next.PID), 0); !ok {
		t.Fatalf("the new task's pid %d is not alive: %s", next.PID, st)
	}
	st := e.mustStatus()
	if st.Counters.Failures[schemas.ReasonCrashed] < 1 || st.Counters.Requeues < 1 {
		t.Fatalf("failures %v requeues %d, want a crash and a requeue", st.Counters.Failures, st.Counters.Requeues)
	}
}

// TestExecAgentRestart: an agent that dies without a word (simulated: its
// connection closed, its executor abandoned without Close) leaves its tasks
// running; a new agent on the same state directory and memory group parent
// kills them all, with no memory group left but its own tasks', and the
// selector relaunches the target on it.
func TestExecAgentRestart(t *testing.T) {
	e := newEnv(t, false)
	s := newExecSetup(t)
	e.execSelector(nil)
	old := e.startExecWorker("h1", s)
	e.putTarget("a", execSpec("tree"))
	s.open(t, "a")
	line := e.waitActive(execWait, "a")
	pids, starts := s.treePIDs(t, line.TaskID)
	mode := old.ex.MemoryAccounting()
	before := s.groups(t, mode)
	if len(before) != 1 {
		t.Fatalf("memory groups %v, want one", before)
	}

	// "kill -9" of the agent: it stops heartbeating, and nothing of it
	// kills its tasks.
	old.nc.Close()
	t.Cleanup(func() { old.stop(t, false) }) // after the new one, at the end
	for role, p := range pids {
		if ok, st := procAlive(p, starts[p]); !ok {
			t.Fatalf("%s pid %d died with its agent: %s", role, p, st)
		}
	}

	// The old executor's task API still listens in this process (a killed
	// agent's would not): the new one takes another socket.
	fresh := e.startExecWorkerSocket("h1", s, filepath.Join(s.stateDir, "task2.sock"))
	// Its executor's start killed the leftovers.
	for role, p := range pids {
		if ok, st := procAlive(p, starts[p]); ok {
			t.Errorf("%s pid %d of the old agent's task survives the new agent's start: %s", role, p, st)
		}
	}
	if g := s.groups(t, mode); slices.Contains(g, before[0]) {
		t.Errorf("the old task's memory group %s is left: %v", before[0], g)
	}
	next := e.waitTarget(execWait, "a", func(ts schemas.TargetStatus) bool {
		return ts.State == selector.StateActive && ts.TaskID != line.TaskID && ts.PID > 0
	})
	if ok, st := procAlive(int(next.PID), 0); !ok {
		t.Fatalf("the relaunched task's pid %d is not alive: %s", next.PID, st)
	}
	// No memory group but the new task's, and it holds the new process.
	g := s.groups(t, mode)
	if len(g) != 1 || g[0] == before[0] {
		t.Fatalf("memory groups %v after the relaunch, want only the new task's", g)
	}
	if mode != string(cgroup.ModeProc) {
		cg, _ := os.ReadFile("/proc/" + strconv.Itoa(int(next.PID)) + "/cgroup")
		if !strings.Contains(string(cg), "/"+s.parent+"/"+g[0]) {
			t.Errorf("the new task (pid %d) is not in group %s:\n%s", next.PID, g[0], cg)
		}
	}
	// The state directory names only the new task.
	files, _ := filepath.Glob(filepath.Join(s.stateDir, "tasks", "*.json"))
	if len(files) != 1 || filepath.Base(files[0]) != g[0]+".json" {
		t.Errorf("task state files %v, want only %s.json", files, g[0])
	}
	// ps on the host names only the new task, with its log.
	m, err := e.nc.Request(e.subj.Ps("h1"), []byte(`{"v":1}`), 5*time.Second)
	if err != nil {
		t.Fatalf("ps: %v", err)
	}
	ps, err := schemas.DecodePsReply(m.Data)
	if err != nil {
		t.Fatalf("ps reply %s: %v", m.Data, err)
	}
	if len(ps.Tasks) != 1 || ps.Tasks[0].TaskID != next.TaskID || ps.Tasks[0].PID != next.PID ||
		filepath.Base(ps.Tasks[0].Log) != g[0]+".log" {
		t.Errorf("ps %s, want only task %s pid %d with log %s.log", m.Data, next.TaskID, next.PID, g[0])
	}
	_ = fresh
}

// TestExecUnknownType: a tasks file whose command does not exist stops the
// executor at load with a clear error, and a target whose type is not in the
// tasks file gets unknown_type and shows as blocked with the reason, not a
// hang.
func TestExecUnknownType(t *testing.T) {
	s := newExecSetup(t)
	bad := filepath.Join(t.TempDir(), "tasks.toml")
	missing := filepath.Join(t.TempDir(), "no-such-program")
	if err := os.WriteFile(bad, []byte(fmt.Sprintf("[[task]]\ntype = \"x\"\ncommand = [%q]\n", missing)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := process.New(process.Config{Host: "h0", RAMMiB: 1024, TasksFile: bad, StateDir: t.TempDir(), CgroupParent: s.parent})
	if err == nil {
		t.Fatal("an executor started with a tasks file naming a missing program")
	}
	for _, want := range []string{bad, `type "x"`, missing, "no such file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("load error %q does not say %q", err, want)
		}
	}

	e := newEnv(t, false)
	spy := e.startSpy()
	e.execSelector(nil)
	e.startExecWorker("h1", s)
	e.putTarget("a", execSpec("nosuch"))
	line := e.waitTarget(execWait, "a", func(ts schemas.TargetStatus) bool { return ts.State == selector.StateBlocked })
	if !strings.Contains(line.Reason, schemas.CodeUnknownType) || !strings.Contains(line.Reason, "nosuch") {
		t.Fatalf("blocked reason %q, want unknown_type naming the type", line.Reason)
	}
	st := e.mustStatus()
	if st.Counters.Failures[schemas.CodeUnknownType] != 1 {
		t.Errorf("failures %v, want one unknown_type", st.Counters.Failures)
	}
	if n := len(spy.launches("a")); n != 1 {
		t.Errorf("%d launches of the blocked target, want 1", n)
	}
	// A target beside it runs.
	e.putTarget("b", execSpec("sleep"))
	e.waitActive(execWait, "b")
}

// TestExecLaunchCommandRefused: a launch request on the bus that names a
// command or a path is refused, and nothing runs it.
func TestExecLaunchCommandRefused(t *testing.T) {
	e := newEnv(t, false)
	s := newExecSetup(t)
	w := e.startExecWorker("h1", s)
	marker := filepath.Join(t.TempDir(), "pwned")
	shell := []string{"/bin/sh", "-c", "touch " + marker + "; sleep 30"}
	n := 0
	req := func(typ string, extra map[string]any) map[string]any {
		n++
		m := map[string]any{
			"v": schemas.Version, "task_id": fmt.Sprintf("raw-%d", n), "epoch": 1, "target": "a", "type": typ,
			"ram": map[string]any{"wrapper_mib": 8, "helpers_mib": 8}, "args": map[string]any{},
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	cases := []struct {
		name string
		req  map[string]any
		code string
	}{
		{"type is a path", req("/bin/sh", nil), schemas.CodeUnknownType},
		{"type is a command line", req("/bin/sh -c touch "+marker, nil), schemas.CodeUnknownType},
		{"type is a program name", req("sh", nil), schemas.CodeUnknownType},
		{"command in args", req("/bin/sh", map[string]any{"args": map[string]any{"command": shell}}), schemas.CodeUnknownType},
		// A known type with a command beside it is refused: a launch
		// names a type, and the worker's tasks file says what runs.
		{"command field", req("sleep", map[string]any{"command": shell}), schemas.CodeInvalid},
		{"argv and path fields", req("sleep", map[string]any{"argv": shell, "path": "/bin/sh", "dir": "/"}), schemas.CodeInvalid},
		// A known type with the command in its args runs the tasks file's
		// program, the command only data in TASK_ARGS.
		{"command in args of a known type", req("sleep", map[string]any{"args": map[string]any{"command": shell}}), ""},
	}
	var started []schemas.LaunchReply
	for _, c := range cases {
		data, err := json.Marshal(c.req)
		if err != nil {
			t.Fatal(err)
		}
		m, err := e.nc.Request(e.subj.Launch("h1"), data, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: no reply: %v", c.name, err)
		}
		var rep schemas.LaunchReply
		if err := json.Unmarshal(m.Data, &rep); err != nil {
			t.Fatalf("%s: reply %s: %v", c.name, m.Data, err)
		}
		switch {
		case c.code == "" && rep.Error == nil:
			if got, want := exeOf(int(rep.PID)), execTaskProgram(t); got != want {
				t.Errorf("%s: pid %d runs %q, want the tasks file's %q", c.name, rep.PID, got, want)
			}
			started = append(started, rep)
			t.Logf("%s: accepted, the command ignored: pid %d runs the tasks file's program", c.name, rep.PID)
		case c.code == "":
			t.Logf("%s: refused: %s: %s", c.name, rep.Error.Code, rep.Error.Message)
		case rep.Error == nil || rep.PID != 0:
			t.Errorf("%s: reply %s, want a refusal", c.name, m.Data)
		case rep.Error.Code != c.code:
			t.Errorf("%s: refused with %s (%s), want %s", c.name, rep.Error.Code, rep.Error.Message, c.code)
		}
	}
	// The tasks that started ran the tasks file's program (which notes its
	// pid); nothing ran the shell: no marker, no process with its command
	// line.
	waitFor(t, execWait, func() (bool, string) {
		for _, rep := range started {
			if s.notedPID(rep.TaskID, "wrapper") != int(rep.PID) {
				return false, "task " + rep.TaskID + " has not noted its pid"
			}
		}
		return true, ""
	})
	if _, err := os.Stat(marker); err == nil {
		t.Fatalf("the command of a launch request ran: %s exists", marker)
	}
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + d.Name() + "/cmdline")
		if strings.Contains(string(cmdline), marker) {
			t.Errorf("pid %d runs the request's command: %q", pid, cmdline)
		}
	}
	if g := s.groups(t, w.ex.MemoryAccounting()); len(g) != len(started) {
		t.Errorf("memory groups %v, want only the %d started tasks'", g, len(started))
	}
}
