package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// Fleet helper RAM for this host's tasks (the memory-manager protocol): a
// task whose local helper budget is below what its phase could use asks the
// selector, through its worker, for helper RAM anywhere in the fleet.
//
//   - A task says what it wants by implementing FleetHelperTask (the sim
//     executor's tasks do). At each tick the agent compares what the task
//     wants with what it holds and, when it wants more and is not waiting
//     for an answer or a backoff, sends an AllocRequest on tasks.alloc for
//     the difference.
//   - The reply's "held" is what the task holds after the call; the agent
//     tells the task (SetFleetHeld) and reports it in the task's heartbeats
//     (ram.fleet_helpers_mib). A refusal (insufficient_ram, over_budget,
//     unknown_task, unavailable), no reply or a malformed reply waits
//     Config.AllocRetry before the next request, doubling with each refusal
//     in a row up to 16 × AllocRetry. A grant also waits AllocRetry, so
//     that a task granted less than it asked does not ask at every tick.
//   - A task that holds fleet helpers asks for 0 MiB every 4 × AllocRetry,
//     to learn which helpers still stand: a helper on a host that was lost
//     is gone from "held", and the task's progress follows.
//   - The agent never releases a task's fleet helpers: when the task ends,
//     for any reason, the selector stops them (it learns of the end from the
//     task's event or its silence). Releasing on a clean finish would save
//     one round trip of RAM, at the price of a second path that can fail;
//     the selector's path is needed anyway for tasks that crash.
//   - Nothing is asked while the agent drains or is fenced, nor with
//     Config.NoHelpers.

// FleetHelperTask is implemented by tasks that can use helper RAM on other
// hosts. Both methods must be cheap and safe to call from any goroutine;
// the agent calls them without its lock.
type FleetHelperTask interface {
	// FleetWant is the fleet helper RAM the task would use now, in all
	// (not beyond what it holds), and the least amount worth asking for.
	// 0 means it wants none.
	FleetWant() (mib, minMiB int64)
	// SetFleetHeld tells the task the fleet helper RAM it holds now.
	SetFleetHeld(mib int64)
}

// Allocator asks the selector for fleet helper RAM for task taskID of this
// host (mib beyond what it holds, at least minMiB of it; mib 0 reads what it
// holds) and returns the selector's reply. The agent records what the task
// holds for its heartbeats.
type Allocator func(ctx context.Context, taskID string, mib, minMiB int64) (schemas.AllocReply, error)

// AllocatorUser is implemented by executors whose tasks ask for fleet helper
// RAM themselves (the exec executor, through the task API): New gives them
// the agent's Allocator, unless Config.NoHelpers.
type AllocatorUser interface {
	SetAllocator(Allocator)
}

// fleetState is one task's fleet helper RAM, guarded by the agent's lock.
// task is nil for a task that asks through an Allocator.
type fleetState struct {
	task    FleetHelperTask
	held    int64
	asking  bool
	next    time.Time     // no request before
	wait    time.Duration // backoff after the last refusal
	checked time.Time     // last answer
}

// allocAsk is one alloc request to send.
type allocAsk struct {
	e           *entry
	mib, minMiB int64
}

// newFleetState returns the fleet state of a task, or nil when the agent
// asks for no fleet helpers.
func (a *Agent) newFleetState(t Task) *fleetState {
	if a.cfg.NoHelpers {
		return nil
	}
	ft, _ := t.(FleetHelperTask)
	return &fleetState{task: ft}
}

// fleetTick sends the alloc requests the tasks call for.
func (a *Agent) fleetTick() {
	if a.cfg.NoHelpers {
		return
	}
	now := a.cfg.Now()
	a.mu.Lock()
	var fleet []*entry
	if !a.draining && !a.fence.fenced.Load() {
		for _, e := range a.tasks {
			if f := e.fleet; f != nil && f.task != nil && !f.asking && !now.Before(f.next) {
				fleet = append(fleet, e)
			}
		}
	}
	a.mu.Unlock()
	var asks []allocAsk
	for _, e := range fleet {
		want, minMiB := e.fleet.task.FleetWant()
		a.mu.Lock()
		f := e.fleet
		switch need := want - f.held; {
		case a.tasks[e.spec.TaskID] != e || f.asking:
		case need > 0:
			f.asking = true
			asks = append(asks, allocAsk{e: e, mib: need, minMiB: max(min(minMiB, need), 0)})
		case f.held > 0 && now.Sub(f.checked) >= 4*a.cfg.AllocRetry:
			f.asking = true
			asks = append(asks, allocAsk{e: e})
		}
		a.mu.Unlock()
	}
	for _, k := range asks {
		a.fleetWG.Add(1)
		go a.ask(k)
	}
}

// ask sends one alloc request for a task that implements FleetHelperTask,
// and records its answer.
func (a *Agent) ask(k allocAsk) {
	defer a.fleetWG.Done()
	e := k.e
	rep, err := a.sendAlloc(a.fleetCtx, e, k.mib, k.minMiB)
	if err != nil {
		a.log.Debug("alloc request failed", "task_id", e.spec.TaskID, "mib", k.mib, "err", err)
	}
	refused := err != nil || rep.Error != nil
	if refused {
		a.allocRefusals.Add(1)
		if rep.Error != nil {
			a.log.Info("fleet helper RAM refused", "task_id", e.spec.TaskID, "target", e.spec.Target, "mib", k.mib,
				"min_mib", k.minMiB, "code", rep.Error.Code, "reason", rep.Error.Message)
		}
	}
	held, known := heldBy(rep, err)
	now := a.cfg.Now()
	a.mu.Lock()
	f := e.fleet
	f.asking = false
	if refused {
		f.wait = min(max(2*f.wait, a.cfg.AllocRetry), 16*a.cfg.AllocRetry)
		f.next = now.Add(f.wait)
	} else {
		f.wait = 0
		f.next = now.Add(a.cfg.AllocRetry)
	}
	current := a.recordHeldLocked(e, held, known, now)
	a.mu.Unlock()
	if known && current {
		f.task.SetFleetHeld(held)
	}
}

// allocFor is the agent's Allocator (see AllocatorUser).
func (a *Agent) allocFor(ctx context.Context, taskID string, mib, minMiB int64) (schemas.AllocReply, error) {
	a.mu.Lock()
	e := a.tasks[taskID]
	a.mu.Unlock()
	if e == nil {
		return schemas.AllocReply{}, fmt.Errorf("worker: alloc: no task %s runs on this host", taskID)
	}
	rep, err := a.sendAlloc(ctx, e, mib, minMiB)
	if err != nil || rep.Error != nil {
		a.allocRefusals.Add(1)
	}
	held, known := heldBy(rep, err)
	a.mu.Lock()
	a.recordHeldLocked(e, held, known, a.cfg.Now())
	a.mu.Unlock()
	return rep, err
}

// sendAlloc sends one AllocRequest for e, bounded by Config.AllocTimeout,
// and decodes the reply.
func (a *Agent) sendAlloc(ctx context.Context, e *entry, mib, minMiB int64) (schemas.AllocReply, error) {
	req := schemas.AllocRequest{V: schemas.Version, TaskID: e.spec.TaskID, Epoch: e.spec.Epoch, Target: e.spec.Target,
		Host: a.cfg.Host, MiB: mib, MinMiB: minMiB}
	data, err := schemas.Marshal(&req)
	if err != nil {
		return schemas.AllocReply{}, fmt.Errorf("worker: alloc: %w", err)
	}
	a.allocs.Add(1)
	ctx, cancel := context.WithTimeout(ctx, a.cfg.AllocTimeout)
	defer cancel()
	msg, err := a.nc.RequestWithContext(ctx, a.subj.Alloc(), data)
	if err != nil {
		return schemas.AllocReply{}, fmt.Errorf("worker: alloc request for %s: %w", req.TaskID, err)
	}
	rep, err := schemas.DecodeAllocReply(msg.Data)
	if err != nil {
		return schemas.AllocReply{}, fmt.Errorf("worker: alloc reply for %s: %w", req.TaskID, err)
	}
	return rep, nil
}

// heldBy is what a reply says the task holds, and whether it says: a grant,
// or a refusal by a selector that knows the task (insufficient_ram,
// over_budget), or unknown_task (it holds nothing).
func heldBy(rep schemas.AllocReply, err error) (int64, bool) {
	if err != nil {
		return 0, false
	}
	if rep.Error != nil {
		switch rep.Error.Code {
		case schemas.CodeUnknownTask:
			return 0, true
		case schemas.CodeInsufficientRAM, schemas.CodeOverBudget:
		default:
			return 0, false
		}
	}
	var held int64
	for _, g := range rep.Held {
		held += g.MiB
	}
	return held, true
}

// recordHeldLocked records what e holds, when known, and reports whether e
// still runs.
func (a *Agent) recordHeldLocked(e *entry, held int64, known bool, now time.Time) bool {
	if f := e.fleet; f != nil {
		f.checked = now
		if known {
			f.held = held
		}
	}
	return a.tasks[e.spec.TaskID] == e
}
