package taskapi

import (
	"context"
	"fmt"
	"net/http"

	"github.com/taskselector/taskselector/schemas"
)

// Fleet helper RAM (the memory-manager protocol): a task may hold helper RAM
// on other hosts, granted by the selector, beyond the helper budget of its
// own host. It asks with the explicit endpoint
//
//	POST /v1/helpers/fleet  {"mib": 4096, "min_mib": 1024}  → {"fleet_mib": 4096, "grants": [...], "held": [...]}
//
// mib is the fleet helper RAM wanted beyond what the task holds (0 reads
// what it holds); min_mib, optional (default mib), the least worth having.
// The agent sends the request to the selector on tasks.alloc on the task's
// behalf and answers with the selector's grants (this call's) and held
// (every fleet helper the task holds now; fleet_mib is their sum). A
// selector refusal is a 409 with its code: insufficient_ram, over_budget,
// unknown_task or unavailable (the agent could not ask: no selector
// answered, or the agent asks none, as with WORKER's NoHelpers). A backend
// that is not a FleetBackend answers 404, as an agent from before this
// endpoint does.
//
// /v1/helpers/request and /v1/helpers/release are unchanged: they grant RAM
// of the task's own helper budget on its own host, and old clients keep
// working. The selector stops a task's fleet helpers when the task ends.

// PathHelpersFleet is the endpoint of fleet helper RAM requests.
const PathHelpersFleet = "/v1/helpers/fleet"

// FleetRequest is the body of POST /v1/helpers/fleet.
type FleetRequest struct {
	// MiB is the fleet helper RAM wanted beyond what the task holds, in
	// [0, schemas.MaxMiB]; 0 only reads what it holds.
	MiB int64 `json:"mib"`
	// MinMiB is the least worth having, at most MiB; absent means MiB.
	MinMiB int64 `json:"min_mib"`
}

// FleetReply is the reply to /v1/helpers/fleet.
type FleetReply struct {
	// FleetMiB is the fleet helper RAM the task holds after the call.
	FleetMiB int64 `json:"fleet_mib"`
	// Grants are the helpers this call granted; Held every helper the task
	// holds now.
	Grants []schemas.HelperGrant `json:"grants"`
	Held   []schemas.HelperGrant `json:"held"`
}

// FleetBackend is implemented by backends that can ask the selector for
// fleet helper RAM. A refusal is a *Refusal with the selector's code.
type FleetBackend interface {
	RequestFleetHelpers(taskID string, mib, minMiB int64) (FleetReply, error)
}

type fleetWire struct {
	MiB    *int64 `json:"mib"`
	MinMiB *int64 `json:"min_mib"`
}

// DecodeFleet strictly decodes a /v1/helpers/fleet body: mib is required,
// an integer in [0, schemas.MaxMiB]; min_mib, when present, in [0, mib].
func DecodeFleet(data []byte) (FleetRequest, error) {
	var w fleetWire
	if err := decodeStrict(data, &w, "mib", "min_mib"); err != nil {
		return FleetRequest{}, err
	}
	if w.MiB == nil {
		return FleetRequest{}, malformed("mib: missing")
	}
	r := FleetRequest{MiB: *w.MiB, MinMiB: *w.MiB}
	if w.MinMiB != nil {
		r.MinMiB = *w.MinMiB
	}
	if err := checkFleet(r); err != nil {
		return FleetRequest{}, malformed("%v", err)
	}
	return r, nil
}

func checkFleet(r FleetRequest) error {
	switch {
	case r.MiB < 0 || r.MiB > schemas.MaxMiB:
		return fmt.Errorf("mib: %d not in [0, %d]", r.MiB, int64(schemas.MaxMiB))
	case r.MinMiB < 0 || r.MinMiB > r.MiB:
		return fmt.Errorf("min_mib: %d not in [0, mib %d]", r.MinMiB, r.MiB)
	}
	return nil
}

func (s *Server) handleHelpersFleet(w http.ResponseWriter, r *http.Request) {
	taskID, body, ok := s.request(w, r)
	if !ok {
		return
	}
	fb, ok := s.b.(FleetBackend)
	if !ok {
		s.bad(w, r, http.StatusNotFound, CodeNotFound, "this agent cannot ask for fleet helper RAM")
		return
	}
	req, err := DecodeFleet(body)
	if err != nil {
		s.bad(w, r, http.StatusBadRequest, CodeBadRequest, err.Error())
		return
	}
	rep, err := fb.RequestFleetHelpers(taskID, req.MiB, req.MinMiB)
	if err != nil {
		s.backendError(w, r, taskID, err)
		return
	}
	if rep.Grants == nil {
		rep.Grants = []schemas.HelperGrant{}
	}
	if rep.Held == nil {
		rep.Held = []schemas.HelperGrant{}
	}
	writeJSON(w, http.StatusOK, rep)
}

// RequestFleetHelpers asks for mib of helper RAM on other hosts (at least
// minMiB of it), beyond what the task holds there; mib 0 reads what it
// holds. A refusal is a *Refusal (insufficient_ram: the fleet has no room;
// over_budget; unknown_task; unavailable: retry later); an agent that cannot
// ask answers an *APIError with status 404.
func (t *Task) RequestFleetHelpers(ctx context.Context, mib, minMiB int64) (FleetReply, error) {
	if err := checkFleet(FleetRequest{MiB: mib, MinMiB: minMiB}); err != nil {
		return FleetReply{}, fmt.Errorf("taskapi: RequestFleetHelpers: %w", err)
	}
	var rep FleetReply
	if err := t.call(ctx, PathHelpersFleet, FleetRequest{MiB: mib, MinMiB: minMiB}, &rep); err != nil {
		return FleetReply{}, err
	}
	return rep, nil
}
