package process

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// Name is the name the executor is registered under (WORKER_EXECUTOR=exec).
const Name = "exec"

func init() { worker.Register(Name, newFromEnv) }

// Timings of the executor.
const (
	// sampleMaxAge is how long one usage reading of a task serves Sample.
	sampleMaxAge = 200 * time.Millisecond
	// memMaxAge is how long one read of /proc/meminfo serves UsedMiB and
	// the helper grants.
	memMaxAge = 100 * time.Millisecond
	// pollEvery is how often an emptying process tree is checked.
	pollEvery = 10 * time.Millisecond
	// killWait is how long a tree may take to disappear after SIGKILL.
	killWait = 10 * time.Second
	// monitorEvery is how often the proc mode checks usage against limits.
	monitorEvery = 500 * time.Millisecond
)

// inheritedEnv are the agent's variables a task gets (unless its entry sets
// them); nothing else of the agent's environment reaches a task.
var inheritedEnv = []string{"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"}

// Config configures an Executor.
type Config struct {
	Host   string
	RAMMiB int64
	// TasksFile is the TOML tasks file: the only commands ever run.
	TasksFile string
	// StateDir holds tasks/ (one JSON state file per live task), logs/
	// (one log per task) and, by default, the task API socket.
	StateDir string
	// APISocket is the task API's Unix socket ["<StateDir>/task.sock"].
	APISocket string
	// LogMaxBytes caps each task's log file [DefaultLogMaxBytes].
	LogMaxBytes int64
	// SlackMiB is added to a task's budget for its memory limit.
	SlackMiB int64
	// MemoryMode forces a mode; "" picks the best available.
	MemoryMode   cgroup.Mode
	CgroupRoot   string
	CgroupParent string
	// Lookup reads the agent's environment, for the variables a task
	// inherits (inheritedEnv); nil means os.LookupEnv.
	Lookup func(string) (string, bool)
	Log    *slog.Logger
	Now    func() time.Time
}

// Executor runs tasks as OS processes (see the package doc). It implements
// worker.Executor, worker.MemoryAccounter and taskapi.Backend.
type Executor struct {
	cfg   Config
	types map[string]*TaskType
	cg    *cgroup.Manager
	api   *taskapi.Server
	log   *slog.Logger
	now   func() time.Time
	boot  string

	stop     context.CancelFunc
	done     sync.WaitGroup // the API server and the monitor
	tasksDir string
	logsDir  string

	mu     sync.Mutex
	tasks  map[string]*task // live tasks (started, not yet cleaned up), by task id
	closed bool

	memMu   sync.Mutex
	memAt   time.Time
	memInfo meminfo
}

// New loads the tasks file, sets up the state directory and memory groups,
// kills what a previous agent left running (see the package doc) and starts
// the task API.
func New(cfg Config) (*Executor, error) {
	if cfg.RAMMiB <= 0 {
		return nil, fmt.Errorf("exec: RAM must be positive, got %d MiB", cfg.RAMMiB)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Lookup == nil {
		cfg.Lookup = os.LookupEnv
	}
	if cfg.LogMaxBytes <= 0 {
		cfg.LogMaxBytes = DefaultLogMaxBytes
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = cgroup.ParentName(cfg.Host)
	}
	if cfg.StateDir == "" {
		return nil, errors.New("exec: no state directory")
	}
	if cfg.APISocket == "" {
		cfg.APISocket = filepath.Join(cfg.StateDir, "task.sock")
	}
	types, err := LoadTasks(cfg.TasksFile)
	if err != nil {
		return nil, fmt.Errorf("WORKER_TASKS_FILE: %w", err)
	}
	e := &Executor{
		cfg:      cfg,
		types:    types,
		log:      cfg.Log,
		now:      cfg.Now,
		tasks:    make(map[string]*task),
		tasksDir: filepath.Join(cfg.StateDir, "tasks"),
		logsDir:  filepath.Join(cfg.StateDir, "logs"),
	}
	for _, d := range []string{cfg.StateDir, e.tasksDir, e.logsDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("WORKER_STATE_DIR: %w", err)
		}
	}
	e.boot = bootID()
	e.cg, err = cgroup.DetectMode(cfg.CgroupRoot, cfg.CgroupParent, cfg.MemoryMode)
	if err != nil {
		return nil, fmt.Errorf("exec: memory groups: %w", err)
	}
	e.log.Info("exec executor: memory accounting", "mode", string(e.cg.Mode()), "why", e.cg.Why(),
		"parent", cfg.CgroupParent, "slack_mib", cfg.SlackMiB)
	e.cleanLeftovers()
	e.api, err = taskapi.NewServer(cfg.APISocket, e, e.auth, e.log.With("component", "taskapi"))
	if err != nil {
		_ = e.cg.Close()
		return nil, fmt.Errorf("WORKER_TASK_API: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.stop = cancel
	e.done.Add(1)
	go func() {
		defer e.done.Done()
		if err := e.api.Serve(ctx); err != nil {
			e.log.Error("task API stopped", "err", err)
		}
	}()
	if e.cg.Mode() == cgroup.ModeProc {
		e.done.Add(1)
		go e.monitor(ctx)
	}
	names := make([]string, 0, len(types))
	for n := range types {
		names = append(names, n)
	}
	sort.Strings(names)
	e.log.Info("exec executor ready", "tasks_file", cfg.TasksFile, "types", names, "state_dir", cfg.StateDir, "task_api", cfg.APISocket)
	return e, nil
}

// MemoryAccounting implements worker.MemoryAccounter: "cgroup2", "cgroup1" or
// "proc".
func (e *Executor) MemoryAccounting() string { return string(e.cg.Mode()) }

// MemoryWhy says why the memory accounting mode was picked.
func (e *Executor) MemoryWhy() string { return e.cg.Why() }

// APISocket is the path of the task API socket.
func (e *Executor) APISocket() string { return e.cfg.APISocket }

// Check implements worker.Executor.
func (e *Executor) Check(spec *worker.LaunchSpec) error {
	_, _, err := e.check(spec)
	return err
}

func (e *Executor) check(spec *worker.LaunchSpec) (*TaskType, []byte, error) {
	t, ok := e.types[spec.Type]
	if !ok {
		return nil, nil, fmt.Errorf("%w: %q is not in the tasks file %s", worker.ErrUnknownType, spec.Type, e.cfg.TasksFile)
	}
	args := spec.Args
	if args == nil {
		args = map[string]any{}
	}
	b, err := json.Marshal(args)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: args are not JSON-encodable: %v", worker.ErrInvalidLaunch, err)
	}
	if len(b) > 128<<10 {
		return nil, nil, fmt.Errorf("%w: args take %d bytes of JSON, more than 128 KiB", worker.ErrInvalidLaunch, len(b))
	}
	if spec.RAM.WrapperMiB < 0 || spec.RAM.HelpersMiB < 0 {
		return nil, nil, fmt.Errorf("%w: negative RAM", worker.ErrInvalidLaunch)
	}
	return t, b, nil
}

// Start implements worker.Executor: it starts the type's command in its own
// process group and memory group, with its identity, budget, args and the
// task API in the environment, and returns once it runs.
//
// In cgroup v2 the process starts inside its group. In v1 and proc mode it
// is added right after the fork: during that short window (before Add) its
// memory is charged outside the group and a child it forks at once would
// stay outside the memory group; such a child is still in the task's
// process group, which Kill and the exit cleanup signal as well.
func (e *Executor) Start(spec *worker.LaunchSpec, hooks worker.Hooks) (worker.Task, error) {
	typ, args, err := e.check(spec)
	if err != nil {
		return nil, err
	}
	token, err := taskapi.NewToken()
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, errors.New("exec: executor closed")
	}
	if _, dup := e.tasks[spec.TaskID]; dup {
		e.mu.Unlock()
		return nil, fmt.Errorf("%w: task %s is still running or being cleaned up", worker.ErrInvalidLaunch, spec.TaskID)
	}
	t := &task{
		e:       e,
		spec:    *spec,
		typ:     typ,
		token:   token,
		hooks:   hooks,
		name:    groupName(spec.TaskID),
		started: make(chan struct{}),
		waited:  make(chan struct{}),
		cleaned: make(chan struct{}),
	}
	// Registered at once so that the task can use the API from its first
	// instruction; nothing else sees it before Start returns.
	e.tasks[spec.TaskID] = t
	e.mu.Unlock()
	if err := t.start(args); err != nil {
		e.mu.Lock()
		delete(e.tasks, spec.TaskID)
		e.mu.Unlock()
		return nil, fmt.Errorf("exec: start task %s (type %s): %w", spec.TaskID, spec.Type, err)
	}
	return t, nil
}

// UsedMiB implements worker.Executor: the RAM in use on the host, read from
// /proc/meminfo as MemTotal - MemAvailable, seen through the agent's
// configured RAM. When WORKER_RAM_MIB is below the host's real RAM, the agent
// owns a slice of it: the tasks count in full, and RAM used by anything else
// (foreign processes, other agents' tasks) counts only for what does not fit
// in the rest of the host (MemTotal - WORKER_RAM_MIB). So foreign use is
// seen as soon as it eats into the agent's slice, and not before.
func (e *Executor) UsedMiB() int64 {
	mi, err := e.meminfo()
	if err != nil {
		e.log.Warn("reading /proc/meminfo", "err", err)
		return e.tasksUsedMiB()
	}
	tasks := e.tasksUsedMiB()
	foreign := max(mi.usedMiB()-tasks, 0)
	outside := max(mi.totalMiB-e.cfg.RAMMiB, 0)
	return tasks + max(foreign-outside, 0)
}

func (e *Executor) tasksUsedMiB() int64 {
	var sum int64
	for _, t := range e.live() {
		sum += t.Sample().UsedMiB
	}
	return sum
}

// live lists the tasks whose Start is over and that are not cleaned up yet.
func (e *Executor) live() []*task {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*task, 0, len(e.tasks))
	for _, t := range e.tasks {
		select {
		case <-t.started: // its fields are set
			out = append(out, t)
		default:
		}
	}
	return out
}

// Close implements worker.Executor: it stops the task API. Tasks still
// running keep running without hooks; the next agent on the same state
// directory kills them (see the package doc).
func (e *Executor) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	live := make([]*task, 0, len(e.tasks))
	for _, t := range e.tasks {
		live = append(live, t)
	}
	e.mu.Unlock()
	for _, t := range live {
		t.mu.Lock()
		t.silenced = true
		t.mu.Unlock()
	}
	e.stop()
	e.done.Wait()
	if len(live) == 0 {
		if err := e.cg.Close(); err != nil {
			return fmt.Errorf("exec: close: %w", err)
		}
	}
	return nil
}

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

// monitor enforces the memory limits in proc mode, where no kernel does: a
// task whose process group uses more than its limit is killed with SIGKILL
// and reported as oom.
func (e *Executor) monitor(ctx context.Context) {
	defer e.done.Done()
	tick := time.NewTicker(monitorEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, t := range e.live() {
			t.mu.Lock()
			t.refreshLocked(true)
			over := t.state == stateRunning && t.limit > 0 && t.usedMiB<<20 > t.limit
			if over {
				t.limitKilled = true
			}
			t.mu.Unlock()
			if over {
				e.log.Warn("task over its memory limit: SIGKILL", "task_id", t.spec.TaskID, "pid", t.pid, "limit_mib", t.limit>>20)
				t.signal(syscall.SIGKILL)
			}
		}
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

// --- task API backend ---

func (e *Executor) lookup(taskID string) (*task, error) {
	e.mu.Lock()
	t := e.tasks[taskID]
	e.mu.Unlock()
	if t == nil {
		return nil, &taskapi.Refusal{Code: taskapi.CodeUnknownTask, Message: "no task " + taskID + " runs on this agent"}
	}
	return t, nil
}

// auth says whether token is the secret of the live task taskID.
func (e *Executor) auth(taskID, token string) bool {
	e.mu.Lock()
	t := e.tasks[taskID]
	e.mu.Unlock()
	return t != nil && taskapi.TokenEqual(token, t.token)
}

// Progress implements taskapi.Backend.
func (e *Executor) Progress(taskID string, progress float64, _ map[string]any) error {
	t, err := e.lookup(taskID)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.progress, t.hasProgress = progress, true
	return nil
}

// Finish implements taskapi.Backend: the report decides how the exit is
// classified (see classify).
func (e *Executor) Finish(taskID string, r taskapi.Result) error {
	t, err := e.lookup(taskID)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.result != nil {
		return &taskapi.Refusal{Code: taskapi.CodeFinished, Message: "the task already reported its end"}
	}
	t.result = &r
	if r.Done {
		t.progress, t.hasProgress = 1, true
	}
	return nil
}

// RequestHelpers implements taskapi.Backend. A grant must fit the task's
// helper budget (TASK_HELPERS_MIB) and the host's real free RAM:
// MemAvailable minus what is granted but not yet used by every live task.
// A task's unused grant is its wrapper budget plus its helper grant minus its
// measured use (never below 0): RAM a task already touches is gone from
// MemAvailable, so it is not counted twice.
func (e *Executor) RequestHelpers(taskID string, mib int64) (int64, error) {
	t, err := e.lookup(taskID)
	if err != nil {
		return 0, err
	}
	if mib <= 0 {
		return 0, &taskapi.Refusal{Code: taskapi.CodeRefused, Message: "mib must be positive"}
	}
	// One grant at a time per executor, so that two tasks cannot both take
	// the same free RAM.
	e.memMu.Lock()
	defer e.memMu.Unlock()
	t.mu.Lock()
	granted, budget := t.granted, t.spec.RAM.HelpersMiB
	t.mu.Unlock()
	if granted+mib > budget {
		return granted, &taskapi.Refusal{Code: taskapi.CodeOverBudget,
			Message: fmt.Sprintf("%d MiB more helper RAM would make %d MiB, over the task's helper budget of %d MiB", mib, granted+mib, budget)}
	}
	mi, err := e.meminfoLocked()
	if err != nil {
		return granted, fmt.Errorf("exec: free RAM: %w", err)
	}
	var pending int64
	for _, o := range e.live() {
		o.mu.Lock()
		o.refreshLocked(false)
		pending += max(o.spec.RAM.WrapperMiB+o.granted-o.usedMiB, 0)
		o.mu.Unlock()
	}
	free := mi.availMiB - pending
	if mib > free {
		return granted, &taskapi.Refusal{Code: taskapi.CodeNoHostRAM,
			Message: fmt.Sprintf("%d MiB of helper RAM asked, the host has %d MiB free (%d MiB available, %d MiB granted but not yet used)", mib, max(free, 0), mi.availMiB, pending)}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state != stateRunning {
		return t.granted, &taskapi.Refusal{Code: taskapi.CodeUnknownTask, Message: "the task is ending"}
	}
	t.granted += mib
	return t.granted, nil
}

// ReleaseHelpers implements taskapi.Backend.
func (e *Executor) ReleaseHelpers(taskID string, mib int64) (int64, error) {
	t, err := e.lookup(taskID)
	if err != nil {
		return 0, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if mib <= 0 || mib > t.granted {
		return t.granted, &taskapi.Refusal{Code: taskapi.CodeNotGranted,
			Message: fmt.Sprintf("cannot release %d MiB: %d MiB granted", mib, t.granted)}
	}
	t.granted -= mib
	return t.granted, nil
}

// Granted is the helper RAM granted to task taskID, in MiB.
func (e *Executor) Granted(taskID string) int64 {
	t, err := e.lookup(taskID)
	if err != nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.granted
}

// --- /proc/meminfo ---

type meminfo struct {
	totalMiB, availMiB int64
}

func (m meminfo) usedMiB() int64 { return max(m.totalMiB-m.availMiB, 0) }

func (e *Executor) meminfo() (meminfo, error) {
	e.memMu.Lock()
	defer e.memMu.Unlock()
	return e.meminfoLocked()
}

func (e *Executor) meminfoLocked() (meminfo, error) {
	if time.Since(e.memAt) < memMaxAge {
		return e.memInfo, nil
	}
	mi, err := readMeminfo("/proc/meminfo")
	if err != nil {
		return meminfo{}, err
	}
	e.memInfo, e.memAt = mi, time.Now()
	return mi, nil
}

func readMeminfo(path string) (meminfo, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return meminfo{}, err
	}
	var mi meminfo
	var haveT, haveA bool
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			mi.totalMiB, haveT = n>>10, true
		case "MemAvailable:":
			mi.availMiB, haveA = n>>10, true
		}
	}
	if !haveT || !haveA {
		return meminfo{}, fmt.Errorf("%s: no MemTotal or MemAvailable", path)
	}
	return mi, nil
}

// --- /proc helpers ---

// procStat is what the executor reads of /proc/<pid>/stat.
type procStat struct {
	state      byte
	pgid       int
	startTicks uint64
}

func readProcStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+2:]))
	// f[0] state, f[2] pgrp, f[19] starttime.
	if len(f) < 20 {
		return procStat{}, false
	}
	pg, err1 := strconv.Atoi(f[2])
	st, err2 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil || len(f[0]) == 0 {
		return procStat{}, false
	}
	return procStat{state: f[0][0], pgid: pg, startTicks: st}, true
}

func procStartTicks(pid int) uint64 {
	st, _ := readProcStat(pid)
	return st.startTicks
}

// pgroupMembers lists the live (not zombie) processes of process group pgid
// started at or after minStart (clock ticks since boot).
func pgroupMembers(pgid int, minStart uint64) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		st, ok := readProcStat(pid)
		if !ok || st.pgid != pgid || st.state == 'Z' || st.state == 'X' || st.startTicks < minStart {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// pgroupEmpty reports whether process group pgid has no live process.
func pgroupEmpty(pgid int) bool {
	// kill(-pgid, 0) is cheap and says ESRCH when not even a zombie is left.
	if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	return len(pgroupMembers(pgid, 0)) == 0
}

func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
