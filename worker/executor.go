package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// Errors an Executor returns from Check or Start. The agent maps them to the
// launch reply codes: ErrUnknownType to unknown_type, ErrInvalidLaunch to
// invalid and ErrInsufficientRAM to insufficient_ram. Any other Start error is
// answered invalid with the error's text.
var (
	ErrUnknownType     = errors.New("unknown task type")
	ErrInvalidLaunch   = errors.New("invalid launch")
	ErrInsufficientRAM = errors.New("insufficient RAM")
	// ErrGone is returned by Task.Kill when the task had already ended.
	ErrGone = errors.New("task already gone")
)

// LaunchSpec is what the agent asks an executor to start: the fields of a
// validated LaunchRequest.
type LaunchSpec struct {
	TaskID string
	Epoch  uint64
	Target string
	Type   string
	RAM    schemas.TaskRAM
	Args   map[string]any
}

// BudgetMiB is the RAM the launch asks for: wrapper plus helpers.
func (s *LaunchSpec) BudgetMiB() int64 { return s.RAM.WrapperMiB + s.RAM.HelpersMiB }

// Exit says how a task ended on its own (not through Task.Kill).
type Exit struct {
	// Kind is schemas.EventDone or schemas.EventFailed. An empty Kind means
	// the task vanished without a word (a crash the worker does not
	// report): no event is published and its heartbeats just stop.
	Kind string
	// Reason of a failed exit, e.g. schemas.ReasonHelpersUnavailable.
	Reason string
	// Metrics the done event carries (the target's new metrics), or nil.
	Metrics map[string]any
	// ExitCode is the status of a process that exited non-zero (reason
	// schemas.ReasonExited), or nil.
	ExitCode *int
}

// TaskLogger is implemented by a task whose output goes to a log file on
// its host; ps replies show the path (schemas.PsTask.Log).
type TaskLogger interface {
	LogPath() string
}

// MemoryAccounter is implemented by an executor that says how it measures
// and limits its tasks' RAM (schemas.HostStatus.Memory): "cgroup2",
// "cgroup1", "proc" or "sim".
type MemoryAccounter interface {
	MemoryAccounting() string
}

// Hooks are how an executor reports on the tasks it started.
type Hooks struct {
	// Exited is called exactly once for a task that ends on its own, after
	// its RAM has been freed, and never for a task stopped by Task.Kill. It
	// must not be called while Start is still running for that task, nor
	// while the executor holds a lock the agent may wait on: the agent takes
	// its own lock inside. It may come as soon as Start has returned.
	Exited func(t Task, exit Exit)
}

// Sample is a task's state at one instant, read for heartbeats and status.
type Sample struct {
	// UsedMiB is the RAM the task really holds now (wrapper and helpers).
	UsedMiB int64
	// Progress is the fraction of the task's work done, 0..1, when
	// HasProgress is set.
	Progress    float64
	HasProgress bool
	// Silent marks a task that is alive but sends no heartbeats (hung).
	Silent bool
}

// Task is one task an executor started.
type Task interface {
	// PID is the task's process id, unique on its host.
	PID() int64
	// Sample reads the task's current state; it must be cheap and safe to
	// call from any goroutine.
	Sample() Sample
	// Kill stops the task and frees its RAM. It returns once the task is
	// gone, or ErrGone when it had already ended on its own (its Exited hook
	// has then been or is being called).
	Kill() error
}

// Executor starts and stops the tasks of one host.
type Executor interface {
	// Check validates a launch before admission, without side effects:
	// ErrUnknownType for a type it cannot run, ErrInvalidLaunch (wrapped)
	// for args it cannot use.
	Check(spec *LaunchSpec) error
	// Start starts the task. The agent has already checked that the budget
	// fits the host's free RAM; the executor may still fail with
	// ErrInsufficientRAM when the RAM it needs at once is not there.
	Start(spec *LaunchSpec, hooks Hooks) (Task, error)
	// UsedMiB is the RAM in use on the host by everything: the tasks, their
	// helpers and anything else (foreign processes).
	UsedMiB() int64
	// Close stops the executor. Tasks still running end without hooks.
	Close() error
}

// Env is what an executor factory gets to build an executor for one host.
type Env struct {
	Host   string
	RAMMiB int64
	Log    *slog.Logger
	// Lookup reads the executor's own settings (os.LookupEnv in cmd/worker).
	Lookup func(key string) (string, bool)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Factory builds an executor. It reads its settings through env.Lookup and
// returns an error naming the variable and the accepted form when one is bad.
type Factory func(env Env) (Executor, error)

var (
	registryMu sync.Mutex
	registry   = map[string]Factory{}
)

// Register makes an executor available under name (WORKER_EXECUTOR). It panics
// when the name is taken, like database/sql.Register.
func Register(name string, f Factory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("worker: executor " + name + " registered twice")
	}
	registry[name] = f
}

// Executors lists the registered executor names, sorted.
func Executors() []string {
	registryMu.Lock()
	defer registryMu.Unlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// NewExecutor builds the executor registered under name.
func NewExecutor(name string, env Env) (Executor, error) {
	registryMu.Lock()
	f, ok := registry[name]
	registryMu.Unlock()
	if !ok {
		return nil, fmt.Errorf("unknown executor %q (have %v)", name, Executors())
	}
	ex, err := f(env)
	if err != nil {
		return nil, fmt.Errorf("executor %s: %w", name, err)
	}
	return ex, nil
}
