package audit

import (
	"fmt"
	"time"

	"github.com/taskselector/taskselector/worker"
)

// Fleet helpers (the memory-manager protocol): the auditor records every
// helper its wrapped executors run, beside the processes, and holds them to
// these guarantees:
//
//   - a helper runs only while its task runs: it starts no earlier than its
//     task, and ends no later than Config.HelperBound after its task ended
//     (the selector must learn of the end, then stop the helper) — helpers
//     whose task the auditor never saw, or on a host cut off from the bus,
//     are not judged;
//   - helper RAM counts in every RAM check: a host's reservations equal
//     what its live processes and helpers hold (CheckSettled), and no host
//     holds more than its RAM (CheckCapacity).

// HelperProc is one fleet helper as its worker ran it.
type HelperProc struct {
	Host, HelperID, TaskID, Target string
	Epoch                          uint64
	MiB                            int64
	Start, End                     time.Time // End is zero while it runs
}

func (h *HelperProc) String() string {
	end := "running"
	if !h.End.IsZero() {
		end = h.End.Format("15:04:05.000")
	}
	return fmt.Sprintf("helper %s of %s epoch %d on %q (%d MiB) [%s, %s]", h.HelperID, h.TaskID, h.Epoch, h.Host, h.MiB,
		h.Start.Format("15:04:05.000"), end)
}

// Helpers returns a copy of every helper recorded, running or not, in start
// order.
func (a *Auditor) Helpers() []HelperProc {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]HelperProc, 0, len(a.helpers))
	for _, h := range a.helpers {
		out = append(out, *h)
	}
	return out
}

// helperStarted records a helper that started on host.
func (a *Auditor) helperStarted(host string, spec *worker.HelperSpec, at time.Time) *HelperProc {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := &HelperProc{Host: host, HelperID: spec.HelperID, TaskID: spec.TaskID, Target: spec.Target, Epoch: spec.Epoch,
		MiB: spec.MiB, Start: at}
	a.helpers = append(a.helpers, h)
	return h
}

// helperEnded records that h stopped at the latest at.
func (a *Auditor) helperEnded(h *HelperProc, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if h.End.IsZero() {
		h.End = at
	}
}

// liveHelperMiB sums the RAM of the running helpers per host. The caller
// holds a.mu.
func (a *Auditor) liveHelperMiB() map[string]int64 {
	m := map[string]int64{}
	for _, h := range a.helpers {
		if h.End.IsZero() {
			m[h.Host] += h.MiB
		}
	}
	return m
}

// helperViolations judges every helper against its task at now. The caller
// holds a.mu.
func (a *Auditor) helperViolations(now time.Time) []string {
	var out []string
	for _, h := range a.helpers {
		if _, cut := a.unreachable[h.Host]; cut {
			continue
		}
		var task *Proc
		for _, p := range a.procs[h.Target] {
			if p.TaskID == h.TaskID && p.Epoch == h.Epoch {
				task = p
			}
		}
		if task == nil {
			continue
		}
		if h.Start.Before(task.Start) {
			out = append(out, fmt.Sprintf("%s started before its task %s", h, task))
			continue
		}
		if task.End.IsZero() {
			continue
		}
		deadline := task.End.Add(a.cfg.HelperBound)
		if (h.End.IsZero() && now.After(deadline)) || h.End.After(deadline) {
			out = append(out, fmt.Sprintf("%s outlived its task %s by more than %v", h, task, a.cfg.HelperBound))
		}
	}
	return out
}

// helperHostClosed ends every helper of host: its executor stopped.
func (a *Auditor) helperHostClosed(host string, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, h := range a.helpers {
		if h.Host == host && h.End.IsZero() {
			h.End = at
		}
	}
}

// helperExecutor is the wrapper of an executor that runs fleet helpers.
type helperExecutor struct {
	*executor
	hx worker.HelperExecutor
}

// StartHelper records the helper once it started.
func (x *helperExecutor) StartHelper(spec *worker.HelperSpec) (worker.Helper, error) {
	h, err := x.hx.StartHelper(spec)
	if err != nil {
		return nil, err
	}
	return &helper{Helper: h, p: x.a.helperStarted(x.host, spec, x.a.cfg.Now()), a: x.a}, nil
}

type helper struct {
	worker.Helper
	p *HelperProc
	a *Auditor
}

// Stop records the end once the helper is gone.
func (h *helper) Stop() error {
	err := h.Helper.Stop()
	if err == nil {
		h.a.helperEnded(h.p, h.a.cfg.Now())
	}
	return err
}

// fleetTask is the wrapper of a task that asks for fleet helper RAM.
type fleetTask struct {
	*task
	ft worker.FleetHelperTask
}

func (t *fleetTask) FleetWant() (mib, minMiB int64) { return t.ft.FleetWant() }
func (t *fleetTask) SetFleetHeld(mib int64)         { t.ft.SetFleetHeld(mib) }

// wrapTask returns the task the agent sees: t, or t with its inner task's
// fleet helper methods when it has them.
func wrapTask(t *task, inner worker.Task) worker.Task {
	if ft, ok := inner.(worker.FleetHelperTask); ok {
		return &fleetTask{task: t, ft: ft}
	}
	return t
}
