package process

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/taskselector/taskselector/internal/cgroup"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/taskapi"
	"github.com/taskselector/taskselector/worker"
)

// task states.
const (
	stateRunning = iota
	stateExiting // ended on its own; the wait goroutine reports it
	stateKilling // Task.Kill stops it; no hook
)

// task is one running command.
type task struct {
	e     *Executor
	spec  worker.LaunchSpec
	typ   *TaskType
	token string
	hooks worker.Hooks
	name  string // memory group and state file name

	cmd       *exec.Cmd
	pid       int
	group     *cgroup.Group
	limit     int64 // bytes
	logPath   string
	statePath string

	started chan struct{} // Start is over
	waited  chan struct{} // the wrapper was reaped
	cleaned chan struct{} // tree gone, group and state file removed

	mu          sync.Mutex
	state       int
	silenced    bool // executor closed: no hook
	progress    float64
	hasProgress bool
	result      *taskapi.Result
	granted     int64 // helper MiB
	usedMiB     int64
	peakBytes   int64
	sampledAt   time.Time
	limitKilled bool // proc mode: the monitor killed it over its limit
	cleanErr    error
}

// groupName is a unique, readable group name for a task.
func groupName(taskID string) string {
	var b strings.Builder
	b.WriteString("task-")
	for i := 0; i < len(taskID) && b.Len() < 80; i++ {
		c := taskID[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
		}
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	b.WriteByte('-')
	b.WriteString(hex.EncodeToString(r[:]))
	return b.String()
}

func (t *task) start(args []byte) (err error) {
	e := t.e
	spec := &t.spec
	defer close(t.started)
	t.limit = (spec.BudgetMiB() + e.cfg.SlackMiB) << 20
	t.group, err = e.cg.New(t.name, t.limit)
	if err != nil {
		return fmt.Errorf("memory group: %w", err)
	}
	removeGroup := true
	defer func() {
		if removeGroup {
			if rerr := t.group.Remove(); rerr != nil {
				e.log.Warn("removing memory group of a failed start", "group", t.name, "err", rerr)
			}
		}
	}()

	t.logPath = filepath.Join(e.logsDir, t.name+".log")
	logFile, err := os.OpenFile(t.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("log file: %w", err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return fmt.Errorf("log pipe: %w", err)
	}

	cmd := exec.Command(t.typ.Path, t.typ.Argv[1:]...)
	cmd.Args[0] = t.typ.Argv[0]
	cmd.Dir = t.typ.Dir
	cmd.Env = t.environ(args)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var cgFD *os.File
	if e.cg.Mode() == cgroup.ModeV2 {
		if cgFD, err = t.group.CgroupFD(); err == nil {
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = int(cgFD.Fd())
		} else {
			e.log.Warn("starting inside the memory group is not possible; adding after start", "group", t.name, "err", err)
		}
	}
	err = cmd.Start()
	if cgFD != nil {
		cgFD.Close()
	}
	pw.Close()
	if err != nil {
		pr.Close()
		logFile.Close()
		return fmt.Errorf("%s: %w", t.typ.Path, err)
	}
	t.cmd = cmd
	t.pid = cmd.Process.Pid
	go copyLog(logFile, pr, e.cfg.LogMaxBytes)
	if err := t.group.Add(t.pid); err != nil {
		// Kill what started (it holds RAM nobody would account for).
		_ = syscall.Kill(-t.pid, syscall.SIGKILL)
		_, _ = cmd.Process.Wait()
		waitGone(func() bool { return pgroupEmpty(t.pid) }, killWait)
		return fmt.Errorf("memory group: %w", err)
	}
	t.statePath = filepath.Join(e.tasksDir, t.name+".json")
	rec := stateRecord{
		TaskID: spec.TaskID, Epoch: spec.Epoch, Target: spec.Target, Type: spec.Type,
		PID: t.pid, PGID: t.pid, Group: t.name, StartTicks: procStartTicks(t.pid),
		BootID: e.boot, StartedAt: e.now().UTC(), Log: t.logPath,
	}
	if err := writeState(t.statePath, &rec); err != nil {
		// Not fatal: the task runs and is accounted for; only a restart
		// would miss it outside its memory group (proc mode).
		e.log.Warn("writing task state file", "task_id", spec.TaskID, "err", err)
	}
	removeGroup = false
	go t.wait()
	e.log.Info("exec task started", "task_id", spec.TaskID, "pid", t.pid, "type", spec.Type, "target", spec.Target,
		"group", t.name, "limit_mib", t.limit>>20, "log", t.logPath)
	return nil
}

// environ is the task's environment: a few of the agent's variables, the
// entry's env, then the TASK_* variables.
func (t *task) environ(args []byte) []string {
	vars := map[string]string{}
	for _, k := range inheritedEnv {
		if v, ok := t.e.cfg.Lookup(k); ok {
			vars[k] = v
		}
	}
	for k, v := range t.typ.Env {
		vars[k] = v
	}
	s := &t.spec
	vars[taskapi.EnvTaskID] = s.TaskID
	vars[taskapi.EnvTaskEpoch] = strconv.FormatUint(s.Epoch, 10)
	vars[taskapi.EnvTaskTarget] = s.Target
	vars[taskapi.EnvTaskType] = s.Type
	vars[taskapi.EnvTaskHost] = t.e.cfg.Host
	vars[taskapi.EnvTaskBudgetMiB] = strconv.FormatInt(s.BudgetMiB(), 10)
	vars[taskapi.EnvTaskHelpersMiB] = strconv.FormatInt(s.RAM.HelpersMiB, 10)
	vars[taskapi.EnvTaskAPI] = t.e.cfg.APISocket
	vars[taskapi.EnvTaskToken] = t.token
	vars[taskapi.EnvTaskArgs] = string(args)
	out := make([]string, 0, len(vars))
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// PID implements worker.Task: the wrapper's real PID (also its process group).
func (t *task) PID() int64 { return int64(t.pid) }

// LogPath is the task's log file.
func (t *task) LogPath() string { return t.logPath }

// GroupName is the task's memory group name.
func (t *task) GroupName() string { return t.name }

// Sample implements worker.Task. UsedMiB is the memory group's usage (the
// whole tree), read at most every sampleMaxAge; Progress is the last one the
// task reported through the API.
func (t *task) Sample() worker.Sample {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refreshLocked(false)
	return worker.Sample{UsedMiB: t.usedMiB, Progress: t.progress, HasProgress: t.hasProgress}
}

// refreshLocked rereads the group's usage when the last reading is stale.
func (t *task) refreshLocked(force bool) {
	now := time.Now()
	if !force && now.Sub(t.sampledAt) < sampleMaxAge {
		return
	}
	t.sampledAt = now
	select {
	case <-t.cleaned:
		t.usedMiB = 0
		return
	default:
	}
	b, err := t.group.UsageBytes()
	if err != nil {
		return // keep the last reading (the group may be going away)
	}
	t.peakBytes = max(t.peakBytes, b)
	t.usedMiB = (b + 1<<20 - 1) >> 20
}

// Kill implements worker.Task: SIGTERM to the process group and the memory
// group, SIGKILL after the entry's kill grace, and it returns once both are
// empty and the group is removed. ErrGone when the task had ended already.
func (t *task) Kill() error {
	t.mu.Lock()
	switch t.state {
	case stateExiting:
		t.mu.Unlock()
		return worker.ErrGone
	case stateKilling:
		t.mu.Unlock()
		<-t.cleaned
		return t.cleanErr
	}
	t.state = stateKilling
	t.mu.Unlock()
	log := t.e.log.With("task_id", t.spec.TaskID, "pid", t.pid)
	t.signal(syscall.SIGTERM)
	if !waitGone(t.treeGone, t.typ.KillGrace) {
		log.Info("task still running after its kill grace: SIGKILL", "grace", t.typ.KillGrace)
		t.signal(syscall.SIGKILL)
	}
	<-t.cleaned
	return t.cleanErr
}

// signal sends sig to the process group and to every process of the memory
// group (which holds children that left the process group).
func (t *task) signal(sig syscall.Signal) {
	if err := syscall.Kill(-t.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		t.e.log.Warn("signalling process group", "pgid", t.pid, "signal", sig, "err", err)
	}
	if err := t.group.Signal(sig); err != nil {
		t.e.log.Warn("signalling memory group", "group", t.name, "signal", sig, "err", err)
	}
}

// treeGone reports whether the wrapper was reaped and no live process is
// left in its process group or its memory group. Once the wait goroutine has
// cleaned up (its own treeGone said true and it removed the memory group, so
// that Empty can no longer read it), the tree is gone: without this, a Kill
// polling treeGone would wait its whole kill grace for a task that died at
// once.
func (t *task) treeGone() bool {
	select {
	case <-t.cleaned:
		return true
	default:
	}
	select {
	case <-t.waited:
	default:
		return false
	}
	if !pgroupEmpty(t.pid) {
		return false
	}
	empty, err := t.group.Empty()
	return err == nil && empty
}

// wait reaps the wrapper, clears what is left of its tree, removes its
// group and state file, and reports the exit unless the task was killed.
func (t *task) wait() {
	e := t.e
	_ = t.cmd.Wait()
	ps := t.cmd.ProcessState
	close(t.waited)

	t.mu.Lock()
	t.refreshLocked(true)
	own := t.state == stateRunning
	if own {
		t.state = stateExiting
	}
	limitKilled := t.limitKilled
	t.mu.Unlock()

	ws, _ := ps.Sys().(syscall.WaitStatus)
	bySIGKILL := ws.Signaled() && ws.Signal() == syscall.SIGKILL
	oom, oerr := t.group.OOMLikely(bySIGKILL && own)
	if oerr != nil {
		e.log.Warn("reading OOM kills", "group", t.name, "err", oerr)
	}
	oom = oom || limitKilled

	// No helper outlives its task: whatever is left goes now. A killed
	// task gets its SIGTERM grace from Kill, which sends SIGKILL after it.
	var cleanErr error
	wait := killWait
	if !own {
		wait += t.typ.KillGrace
	} else {
		t.signal(syscall.SIGKILL)
	}
	if !waitGone(t.treeGone, wait) {
		t.signal(syscall.SIGKILL)
		if !waitGone(t.treeGone, killWait) {
			cleanErr = fmt.Errorf("exec: processes of task %s (group %s) survive SIGKILL", t.spec.TaskID, t.name)
			e.log.Error("task processes survive SIGKILL", "task_id", t.spec.TaskID, "group", t.name)
		}
	}
	if cleanErr == nil {
		if err := t.group.Remove(); err != nil {
			e.log.Warn("removing memory group", "group", t.name, "err", err)
		}
		if t.statePath != "" {
			if err := os.Remove(t.statePath); err != nil && !errors.Is(err, os.ErrNotExist) {
				e.log.Warn("removing task state file", "path", t.statePath, "err", err)
			}
		}
	}
	t.mu.Lock()
	t.cleanErr = cleanErr
	res := t.result
	silenced := t.silenced
	t.usedMiB = 0
	t.mu.Unlock()
	close(t.cleaned)
	e.mu.Lock()
	if e.tasks[t.spec.TaskID] == t {
		delete(e.tasks, t.spec.TaskID)
	}
	e.mu.Unlock()

	if !own {
		e.log.Info("exec task killed", "task_id", t.spec.TaskID, "pid", t.pid, "status", ps.String())
		return
	}
	exit := classify(ws, res, oom)
	e.log.Info("exec task exited", "task_id", t.spec.TaskID, "pid", t.pid, "status", ps.String(),
		"kind", exit.Kind, "reason", exit.Reason, "peak_mib", t.peakBytes>>20)
	<-t.started
	if t.hooks.Exited != nil && !silenced {
		t.hooks.Exited(t, exit)
	}
}

// classify turns how the wrapper ended, what it reported and whether its
// memory limit stopped it into an Exit:
//   - exit 0 → done with the reported metrics (none without a report), or
//     failed with the reported reason when it said it failed;
//   - otherwise a reported failure keeps its reason (helpers_unavailable);
//   - stopped by its memory limit → failed, oom;
//   - killed by a signal → failed, crashed;
//   - non-zero status → failed, exited, with the code.
func classify(ws syscall.WaitStatus, res *taskapi.Result, oom bool) worker.Exit {
	switch {
	case ws.Exited() && ws.ExitStatus() == 0 && (res == nil || res.Done):
		var m map[string]any
		if res != nil {
			m = res.Metrics
		}
		return worker.Exit{Kind: schemas.EventDone, Metrics: m}
	case res != nil && !res.Done:
		return worker.Exit{Kind: schemas.EventFailed, Reason: res.Reason}
	case oom:
		return worker.Exit{Kind: schemas.EventFailed, Reason: schemas.ReasonOOM}
	case ws.Signaled():
		return worker.Exit{Kind: schemas.EventFailed, Reason: schemas.ReasonCrashed}
	default:
		code := ws.ExitStatus()
		if code < 0 || code > 255 {
			code = 255
		}
		return worker.Exit{Kind: schemas.EventFailed, Reason: schemas.ReasonExited, ExitCode: &code}
	}
}

// waitGone polls gone until it says true or d passes.
func waitGone(gone func() bool, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if gone() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollEvery)
	}
}

// copyLog copies the task's output into its log file up to max bytes, then
// notes the truncation and discards the rest (draining the pipe so the task
// never blocks on it). It ends when every writer has closed the pipe.
func copyLog(f *os.File, r *os.File, max int64) {
	defer f.Close()
	defer r.Close()
	written, err := io.Copy(f, io.LimitReader(r, max))
	if err != nil {
		return
	}
	extra, _ := io.Copy(io.Discard, r)
	if extra > 0 {
		fmt.Fprintf(f, "\n[taskselector: log truncated at %d bytes; %d more bytes discarded]\n", written, extra)
	}
}
