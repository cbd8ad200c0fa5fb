package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/nats-io/nats.go/micro"

	"github.com/taskselector/taskselector/schemas"
)

// Fleet helpers (the memory-manager protocol, see schemas.HelperRequest): a
// task anywhere in the fleet may hold helper RAM on this host. The selector
// starts and stops such helpers on tasks.helper.<host>, the endpoint
// protocol.EndpointHelper, which the agent serves only when its executor is
// a HelperExecutor (the sim executor is one). An agent whose executor runs
// no fleet helpers does not serve the subject, so NATS answers the selector
// with no responders, as it does for a v1 worker, and the selector grants
// nothing on this host.
//
// A start:
//   - is idempotent by helper_id (a retry answers running; a helper_id
//     already used by another task or epoch is refused invalid);
//   - is fenced by epoch, per target: a start older than the newest epoch
//     seen on this host for its target is refused invalid; a start of a
//     newer epoch stops the older epochs' helpers of that target first;
//   - is admitted against the host's RAM like a launch (helpers count like
//     tasks in the free RAM); refused insufficient_ram when it does not fit;
//   - is refused draining while the agent drains or is fenced.
//
// A stop of an unknown helper answers not running. Helpers are listed in
// HostStatus.Helpers (their RAM is part of ram.used_mib) and stopped when
// the agent fences itself, and at shutdown with Config.KillOnShutdown.

// HelperSpec is a fleet helper the selector asks an executor to run: the
// fields of a validated HelperRequest.
type HelperSpec struct {
	HelperID string
	TaskID   string
	Epoch    uint64
	Target   string
	Type     string
	TaskHost string
	MiB      int64
}

// Helper is one fleet helper an executor runs.
type Helper interface {
	// Stop stops the helper and frees its RAM; stopping a stopped helper
	// does nothing.
	Stop() error
}

// HelperExecutor is implemented by executors that run fleet helpers. The
// agent calls StartHelper and Helper.Stop with its own lock held: they must
// return quickly and must not call back into the agent.
type HelperExecutor interface {
	// StartHelper starts a helper holding spec.MiB of RAM; it returns
	// ErrInsufficientRAM (wrapped) when the RAM is not there.
	StartHelper(spec *HelperSpec) (Helper, error)
}

// helperEntry is one running fleet helper.
type helperEntry struct {
	spec   HelperSpec
	helper Helper
}

// handleHelper is the helper endpoint's handler.
func (a *Agent) handleHelper(r micro.Request) {
	if !a.handlers.enter() {
		re := replyError(schemas.CodeDraining, "the worker is shutting down")
		a.respond(r, schemas.HelperReply{V: schemas.Version, HelperID: bestEffortHelperID(r.Data()), Running: true, Error: re}, re, false)
		return
	}
	defer a.handlers.leave()
	req, err := schemas.DecodeHelperRequest(r.Data())
	if err != nil {
		a.malformedRequest(kindHelper, r, err)
		re := replyError(schemas.CodeInvalid, err.Error())
		a.respond(r, schemas.HelperReply{V: schemas.Version, HelperID: bestEffortHelperID(r.Data()), Running: true, Error: re}, re, false)
		return
	}
	var reply schemas.HelperReply
	if req.Op == schemas.HelperStart {
		reply = a.startHelper(&req)
	} else {
		reply = a.stopHelper(req.HelperID, "stop request")
	}
	a.respond(r, reply, reply.Error, true)
}

// startHelper carries out a start request.
func (a *Agent) startHelper(req *schemas.HelperRequest) schemas.HelperReply {
	hx := a.exec.(HelperExecutor) // the endpoint is served only then
	ok := schemas.HelperReply{V: schemas.Version, HelperID: req.HelperID, Running: true}
	refuse := func(code, msg string) schemas.HelperReply {
		a.helperRefused.Add(1)
		a.log.Info("helper start refused", "helper_id", req.HelperID, "task_id", req.TaskID, "target", req.Target,
			"epoch", req.Epoch, "mib", req.MiB, "code", code, "reason", msg)
		return schemas.HelperReply{V: schemas.Version, HelperID: req.HelperID, Running: false, Error: replyError(code, msg)}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if h, found := a.helpers[req.HelperID]; found {
		if h.spec.TaskID != req.TaskID || h.spec.Epoch != req.Epoch || h.spec.MiB != req.MiB {
			return refuse(schemas.CodeInvalid, fmt.Sprintf("helper_id %s already runs for task %s epoch %d with %d MiB",
				req.HelperID, h.spec.TaskID, h.spec.Epoch, h.spec.MiB))
		}
		return ok
	}
	if a.draining || a.fence.fenced.Load() {
		return refuse(schemas.CodeDraining, "the host takes no helpers (draining or fenced)")
	}
	newest := a.helperEpoch[req.Target]
	if req.Epoch < newest {
		return refuse(schemas.CodeInvalid, fmt.Sprintf("epoch %d is older than epoch %d of target %q on this host", req.Epoch, newest, req.Target))
	}
	if req.Epoch > newest {
		a.helperEpoch[req.Target] = req.Epoch
		for _, h := range a.sortedHelpersLocked() {
			if h.spec.Target == req.Target && h.spec.Epoch < req.Epoch {
				a.stopHelperLocked(h, fmt.Sprintf("epoch %d of its target started a helper", req.Epoch))
			}
		}
	}
	if free := a.freeLocked(); req.MiB > free {
		return refuse(schemas.CodeInsufficientRAM, fmt.Sprintf("helper needs %d MiB, %d MiB free", req.MiB, max(free, 0)))
	}
	spec := HelperSpec{HelperID: req.HelperID, TaskID: req.TaskID, Epoch: req.Epoch, Target: req.Target,
		Type: req.Type, TaskHost: req.TaskHost, MiB: req.MiB}
	h, err := hx.StartHelper(&spec)
	if err != nil {
		code := schemas.CodeFailed
		if errors.Is(err, ErrInsufficientRAM) {
			code = schemas.CodeInsufficientRAM
		}
		return refuse(code, err.Error())
	}
	a.helpers[req.HelperID] = &helperEntry{spec: spec, helper: h}
	a.helperStarts.Add(1)
	a.log.Info("helper started", "helper_id", req.HelperID, "task_id", req.TaskID, "task_host", req.TaskHost,
		"target", req.Target, "epoch", req.Epoch, "mib", req.MiB)
	return ok
}

// stopHelper stops the helper id, if it runs.
func (a *Agent) stopHelper(id, why string) schemas.HelperReply {
	a.mu.Lock()
	defer a.mu.Unlock()
	h, found := a.helpers[id]
	if !found {
		return schemas.HelperReply{V: schemas.Version, HelperID: id, Running: false}
	}
	if err := a.stopHelperLocked(h, why); err != nil {
		return schemas.HelperReply{V: schemas.Version, HelperID: id, Running: true, Error: replyError(schemas.CodeFailed, err.Error())}
	}
	return schemas.HelperReply{V: schemas.Version, HelperID: id, Running: false}
}

// stopHelperLocked stops h and forgets it; on failure it is kept.
func (a *Agent) stopHelperLocked(h *helperEntry, why string) error {
	if err := h.helper.Stop(); err != nil {
		a.log.Error("stopping helper failed", "helper_id", h.spec.HelperID, "task_id", h.spec.TaskID, "err", err)
		return fmt.Errorf("stop helper %s: %w", h.spec.HelperID, err)
	}
	delete(a.helpers, h.spec.HelperID)
	a.helperStops.Add(1)
	a.log.Info("helper stopped", "helper_id", h.spec.HelperID, "task_id", h.spec.TaskID, "target", h.spec.Target,
		"epoch", h.spec.Epoch, "reason", why)
	return nil
}

// stopAllHelpers stops every fleet helper (fence, shutdown).
func (a *Agent) stopAllHelpers(why string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, h := range a.sortedHelpersLocked() {
		_ = a.stopHelperLocked(h, why)
	}
}

// sortedHelpersLocked returns the helpers ordered by helper_id.
func (a *Agent) sortedHelpersLocked() []*helperEntry {
	out := make([]*helperEntry, 0, len(a.helpers))
	for _, h := range a.helpers {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].spec.HelperID < out[j].spec.HelperID })
	return out
}

// helperStatusesLocked lists the helpers for HostStatus, and their RAM.
func (a *Agent) helperStatusesLocked() ([]schemas.HelperStatus, int64) {
	var out []schemas.HelperStatus
	var mib int64
	for _, h := range a.sortedHelpersLocked() {
		out = append(out, schemas.HelperStatus{HelperID: h.spec.HelperID, TaskID: h.spec.TaskID, Epoch: h.spec.Epoch,
			Target: h.spec.Target, MiB: h.spec.MiB})
		mib += h.spec.MiB
	}
	return out, mib
}

// helpersMiBLocked is the RAM the fleet helpers hold.
func (a *Agent) helpersMiBLocked() int64 {
	var mib int64
	for _, h := range a.helpers {
		mib += h.spec.MiB
	}
	return mib
}

// Helpers lists the fleet helpers the agent runs, ordered by helper_id.
func (a *Agent) Helpers() []schemas.HelperStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	hs, _ := a.helperStatusesLocked()
	return hs
}

// bestEffortHelperID pulls a helper_id out of a request that failed strict
// decoding, so that its error reply can still be matched; "" when none.
func bestEffortHelperID(b []byte) string {
	if len(b) > schemas.MaxMessageBytes {
		return ""
	}
	var v struct {
		HelperID string `json:"helper_id"`
	}
	if json.Unmarshal(b, &v) != nil || len(v.HelperID) > schemas.MaxNameBytes {
		return ""
	}
	return v.HelperID
}
