package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/taskselector/taskselector/internal/cgroup"
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

	alloc allocator // the agent's, for fleet helper RAM (fleet.go)
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
