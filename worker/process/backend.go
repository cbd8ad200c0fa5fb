package process

import (
	"fmt"

	"github.com/taskselector/taskselector/taskapi"
)

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
