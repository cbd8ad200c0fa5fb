// Package taskapitest provides a fake taskapi.Backend and helpers to run a
// real taskapi.Server in tests, so that task programs and the SDK can be
// tested without a worker agent.
package taskapitest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taskselector/taskselector/taskapi"
)

// Fake is an in-memory taskapi.Backend. It knows tasks added with AddTask,
// records every call, and grants helper RAM up to each task's helper limit,
// refusing more with code over_budget. Its methods are safe for concurrent
// use.
type Fake struct {
	mu    sync.Mutex
	tasks map[string]*TaskState
	// changed is closed and replaced whenever a task's state changes.
	changed chan struct{}
}

// TaskState is what a Fake knows about one task.
type TaskState struct {
	// ID is the task id.
	ID string
	// Token is the task's secret.
	Token string
	// HelperLimitMiB is the most helper RAM granted at once.
	HelperLimitMiB int64
	// GrantedMiB is the helper RAM granted now.
	GrantedMiB int64
	// PeakGrantedMiB is the most helper RAM granted at any time.
	PeakGrantedMiB int64
	// Requests counts helper requests, Refusals those refused.
	Requests, Refusals int
	// Releases counts helper releases.
	Releases int
	// Progress is every progress reported, in order.
	Progress []float64
	// LastMetrics are the metrics of the last progress report.
	LastMetrics map[string]any
	// Result is the task's finish, nil until it reports one.
	Result *taskapi.Result
}

// NewFake returns a Fake with no tasks.
func NewFake() *Fake {
	return &Fake{tasks: map[string]*TaskState{}, changed: make(chan struct{})}
}

// AddTask registers task id with a fresh token and a helper RAM limit, and
// returns the token.
func (f *Fake) AddTask(id string, helperLimitMiB int64) string {
	token, err := taskapi.NewToken()
	if err != nil {
		panic(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tasks[id] = &TaskState{ID: id, Token: token, HelperLimitMiB: helperLimitMiB}
	return token
}

// Auth is the auth function for taskapi.NewServer.
func (f *Fake) Auth(taskID, token string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	ts, ok := f.tasks[taskID]
	return ok && taskapi.TokenEqual(token, ts.Token)
}

// State returns a copy of what f knows about task id (the zero TaskState
// and false for an unknown task).
func (f *Fake) State(id string) (TaskState, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ts, ok := f.tasks[id]
	if !ok {
		return TaskState{}, false
	}
	c := *ts
	c.Progress = append([]float64(nil), ts.Progress...)
	c.LastMetrics = maps.Clone(ts.LastMetrics)
	if ts.Result != nil {
		r := *ts.Result
		c.Result = &r
	}
	return c, true
}

// WaitFinished waits until task id reports its finish, or timeout passes.
func (f *Fake) WaitFinished(id string, timeout time.Duration) (taskapi.Result, error) {
	deadline := time.After(timeout)
	for {
		f.mu.Lock()
		ts, ok := f.tasks[id]
		var r *taskapi.Result
		if ok {
			r = ts.Result
		}
		ch := f.changed
		f.mu.Unlock()
		if r != nil {
			return *r, nil
		}
		select {
		case <-ch:
		case <-deadline:
			return taskapi.Result{}, fmt.Errorf("taskapitest: task %s did not finish within %v", id, timeout)
		}
	}
}

// task returns task id's state; f.mu must be held.
func (f *Fake) task(id string) (*TaskState, error) {
	ts, ok := f.tasks[id]
	if !ok {
		return nil, &taskapi.Refusal{Code: taskapi.CodeUnknownTask, Message: "no task " + id}
	}
	return ts, nil
}

// notify wakes WaitFinished; f.mu must be held.
func (f *Fake) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Progress implements taskapi.Backend.
func (f *Fake) Progress(taskID string, progress float64, metrics map[string]any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	ts, err := f.task(taskID)
	if err != nil {
		return err
	}
	if ts.Result != nil {
		return &taskapi.Refusal{Code: taskapi.CodeFinished, Message: "task already finished"}
	}
	ts.Progress = append(ts.Progress, progress)
	ts.LastMetrics = metrics
	f.notify()
	return nil
}

// Finish implements taskapi.Backend.
func (f *Fake) Finish(taskID string, r taskapi.Result) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	ts, err := f.task(taskID)
	if err != nil {
		return err
	}
	if ts.Result != nil {
		return &taskapi.Refusal{Code: taskapi.CodeFinished, Message: "task already finished"}
	}
	ts.Result = &r
	f.notify()
	return nil
}

// RequestHelpers implements taskapi.Backend.
func (f *Fake) RequestHelpers(taskID string, mib int64) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ts, err := f.task(taskID)
	if err != nil {
		return 0, err
	}
	ts.Requests++
	defer f.notify()
	if ts.GrantedMiB+mib > ts.HelperLimitMiB {
		ts.Refusals++
		return ts.GrantedMiB, &taskapi.Refusal{Code: taskapi.CodeOverBudget,
			Message: fmt.Sprintf("%d MiB more would exceed the helper budget: %d of %d MiB granted", mib, ts.GrantedMiB, ts.HelperLimitMiB)}
	}
	ts.GrantedMiB += mib
	ts.PeakGrantedMiB = max(ts.PeakGrantedMiB, ts.GrantedMiB)
	return ts.GrantedMiB, nil
}

// ReleaseHelpers implements taskapi.Backend.
func (f *Fake) ReleaseHelpers(taskID string, mib int64) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ts, err := f.task(taskID)
	if err != nil {
		return 0, err
	}
	if mib > ts.GrantedMiB {
		return ts.GrantedMiB, &taskapi.Refusal{Code: taskapi.CodeNotGranted,
			Message: fmt.Sprintf("releasing %d MiB but only %d MiB granted", mib, ts.GrantedMiB)}
	}
	ts.Releases++
	ts.GrantedMiB -= mib
	f.notify()
	return ts.GrantedMiB, nil
}

// SocketPath returns a fresh Unix socket path in a short temporary
// directory (socket paths are limited to about 108 bytes, which
// t.TempDir's long names can exceed), removed at the end of the test.
func SocketPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "taskapi")
	if err != nil {
		t.Fatalf("taskapitest: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "api.sock")
}

// Serve starts a taskapi.Server for b on a fresh socket and stops it at the
// end of the test. It returns the server.
func Serve(t testing.TB, b taskapi.Backend, auth func(taskID, token string) bool) *taskapi.Server {
	t.Helper()
	srv, err := taskapi.NewServer(SocketPath(t), b, auth, nil)
	if err != nil {
		t.Fatalf("taskapitest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("taskapitest: serve: %v", err)
		}
	})
	return srv
}

// Identity is what Env puts in a task's environment besides the socket and
// token.
type Identity struct {
	// ID, Target, Type and Host name the task (TASK_ID and so on).
	ID, Target, Type, Host string
	// Epoch is TASK_EPOCH.
	Epoch uint64
	// BudgetMiB and HelpersMiB are TASK_BUDGET_MIB and TASK_HELPERS_MIB.
	BudgetMiB, HelpersMiB int64
	// ArgsJSON is TASK_ARGS, empty for no args.
	ArgsJSON string
}

// Env returns the environment variables (as "NAME=value") the exec
// executor would give the task: its identity, the socket and the token.
func Env(id Identity, socket, token string) []string {
	return []string{
		taskapi.EnvTaskID + "=" + id.ID,
		taskapi.EnvTaskEpoch + "=" + strconv.FormatUint(id.Epoch, 10),
		taskapi.EnvTaskTarget + "=" + id.Target,
		taskapi.EnvTaskType + "=" + id.Type,
		taskapi.EnvTaskHost + "=" + id.Host,
		taskapi.EnvTaskBudgetMiB + "=" + strconv.FormatInt(id.BudgetMiB, 10),
		taskapi.EnvTaskHelpersMiB + "=" + strconv.FormatInt(id.HelpersMiB, 10),
		taskapi.EnvTaskAPI + "=" + socket,
		taskapi.EnvTaskToken + "=" + token,
		taskapi.EnvTaskArgs + "=" + id.ArgsJSON,
	}
}

// Lookup returns a lookup function over env ("NAME=value" entries) for
// taskapi.FromLookup.
func Lookup(env []string) func(string) (string, bool) {
	m := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}
