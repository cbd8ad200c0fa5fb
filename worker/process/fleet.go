package process

import (
	"context"
	"sync"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/taskapi"
	"github.com/taskselector/taskselector/worker"
)

// Fleet helper RAM (the memory-manager protocol) for the exec executor's
// tasks: a task asks through the task API (POST /v1/helpers/fleet), and the
// executor passes the request to the agent's Allocator, which asks the
// selector on tasks.alloc. The exec executor runs no fleet helpers of other
// hosts' tasks (it is not a worker.HelperExecutor), so its agent does not
// serve tasks.helper.<host> and the selector grants nothing on its host.

// allocator holds the agent's Allocator.
type allocator struct {
	mu sync.Mutex
	f  worker.Allocator
}

// SetAllocator implements worker.AllocatorUser.
func (e *Executor) SetAllocator(f worker.Allocator) {
	e.alloc.mu.Lock()
	e.alloc.f = f
	e.alloc.mu.Unlock()
}

// RequestFleetHelpers implements taskapi.FleetBackend. Without an agent's
// Allocator, or when the selector cannot be asked, the refusal is
// unavailable; the selector's own refusals keep their codes.
func (e *Executor) RequestFleetHelpers(taskID string, mib, minMiB int64) (taskapi.FleetReply, error) {
	if _, err := e.lookup(taskID); err != nil {
		return taskapi.FleetReply{}, err
	}
	e.alloc.mu.Lock()
	f := e.alloc.f
	e.alloc.mu.Unlock()
	if f == nil {
		return taskapi.FleetReply{}, &taskapi.Refusal{Code: schemas.CodeUnavailable, Message: "the agent asks no selector for fleet helper RAM"}
	}
	rep, err := f(context.Background(), taskID, mib, minMiB)
	if err != nil {
		return taskapi.FleetReply{}, &taskapi.Refusal{Code: schemas.CodeUnavailable, Message: err.Error()}
	}
	if rep.Error != nil {
		return taskapi.FleetReply{}, &taskapi.Refusal{Code: rep.Error.Code, Message: rep.Error.Message}
	}
	out := taskapi.FleetReply{Grants: rep.Grants, Held: rep.Held}
	for _, g := range rep.Held {
		out.FleetMiB += g.MiB
	}
	return out, nil
}
