package process

import (
	"context"
	"errors"
	"testing"

	"github.com/taskselector/taskselector/internal/cgroup"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/taskapi"
)

// TestFleetHelpersThroughAllocator: a task's fleet helper request goes to
// the agent's Allocator; its grants come back, the selector's refusals keep
// their codes, and without an Allocator (or without a selector) the
// refusal is unavailable.
func TestFleetHelpersThroughAllocator(t *testing.T) {
	h := newHarness(t, cgroup.ModeProc)
	tk := h.start("sleep", 100, nil)
	id := tk.(*task).spec.TaskID
	var r *taskapi.Refusal
	if _, err := h.ex.RequestFleetHelpers(id, 10, 10); !errors.As(err, &r) || r.Code != schemas.CodeUnavailable {
		t.Fatalf("without an allocator: %v", err)
	}
	var asked []int64
	h.ex.SetAllocator(func(_ context.Context, taskID string, mib, minMiB int64) (schemas.AllocReply, error) {
		asked = append(asked, mib, minMiB)
		switch mib {
		case 999:
			return schemas.AllocReply{}, errors.New("nats: no responders available for request")
		case 500:
			return schemas.AllocReply{V: 1, TaskID: taskID, Error: &schemas.ReplyError{Code: schemas.CodeInsufficientRAM, Message: "full"}}, nil
		}
		g := schemas.HelperGrant{HelperID: taskID + "/h1", Host: "other", MiB: mib}
		return schemas.AllocReply{V: 1, TaskID: taskID, Grants: []schemas.HelperGrant{g},
			Held: []schemas.HelperGrant{g, {HelperID: taskID + "/h0", Host: "b", MiB: 7}}}, nil
	})
	rep, err := h.ex.RequestFleetHelpers(id, 64, 32)
	if err != nil || rep.FleetMiB != 71 || len(rep.Grants) != 1 || len(rep.Held) != 2 {
		t.Fatalf("grant: %+v, %v", rep, err)
	}
	if _, err := h.ex.RequestFleetHelpers(id, 500, 1); !errors.As(err, &r) || r.Code != schemas.CodeInsufficientRAM {
		t.Fatalf("refused: %v", err)
	}
	if _, err := h.ex.RequestFleetHelpers(id, 999, 1); !errors.As(err, &r) || r.Code != schemas.CodeUnavailable {
		t.Fatalf("no selector: %v", err)
	}
	if _, err := h.ex.RequestFleetHelpers("nobody", 1, 1); !errors.As(err, &r) || r.Code != taskapi.CodeUnknownTask {
		t.Fatalf("unknown task: %v", err)
	}
	if len(asked) != 6 || asked[0] != 64 || asked[1] != 32 {
		t.Fatalf("allocator asked %v", asked)
	}
}
