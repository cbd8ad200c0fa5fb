package selector

import (
	"maps"
	"slices"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// The world's side of the memory manager: tasks that ask for fleet helper
// RAM, and workers that run helpers for tasks on any host.

// maybeAlloc lets a running task ask, now and then, for helper RAM (and give
// back some of what it holds). Its request goes over the bus like its
// heartbeats; the engine's reply comes back through the edge (allocReplied).
// A request that gets no reply (the selector was away) is given up after a
// few seconds.
func (w *world) maybeAlloc(p *wProc) {
	if !p.allocAt.IsZero() && w.now.Sub(p.allocAt) < 3*time.Second {
		return
	}
	if !w.chance(w.f.alloc) {
		return
	}
	w.allocSeq++
	id := w.allocSeq
	mib := int64(w.rng.IntN(120))
	req := &schemas.AllocRequest{V: schemas.Version, TaskID: p.id, Epoch: p.epoch, Target: p.target, Host: p.host.name,
		MiB: mib, MinMiB: int64(w.rng.IntN(int(mib) + 1))}
	for _, g := range p.grants {
		if w.rng.IntN(3) == 0 {
			req.Release = append(req.Release, g)
		}
	}
	p.allocAt = w.now
	w.allocs[id] = p
	w.publish(p.host, "alloc", func() { w.step(&AllocRequested{ID: id, Req: req}, nil) })
}

// allocReplied hands the engine's answer to the task that asked, and checks
// it: the grants are among what the task holds, and what it holds fits its
// phase's full size.
func (w *world) allocReplied(c Command) {
	p := w.allocs[c.AllocID]
	if p == nil {
		return // a duplicate request's second reply
	}
	delete(w.allocs, c.AllocID)
	p.allocAt = time.Time{}
	r := c.Alloc
	held := map[string]bool{}
	p.grants = p.grants[:0]
	for _, g := range r.Held {
		held[g.HelperID] = true
		p.grants = append(p.grants, g.HelperID)
	}
	for _, g := range r.Grants {
		if !held[g.HelperID] {
			w.fail("alloc reply to %s grants %s, which it does not hold: %+v", p.id, g.HelperID, r)
		}
		w.granted++
	}
}

// workerHelper is a worker agent's helper request: a start runs the helper
// when the host has room (idempotent per helper id), unless the worker is
// fenced or the helper fails to start; a stop ends it.
func (w *world) workerHelper(h *wHost, req *schemas.HelperRequest) schemas.HelperReply {
	rep := schemas.HelperReply{V: schemas.Version, HelperID: req.HelperID}
	if req.Op == schemas.HelperStop {
		delete(h.helpers, req.HelperID)
		return rep
	}
	switch {
	case h.helpers[req.HelperID] != nil:
		rep.Running = true
	case h.fenced:
		rep.Error = &schemas.ReplyError{Code: schemas.CodeDraining, Message: "fenced"}
	case req.MiB > h.free() || w.chance(w.f.helpers):
		// No room, or the helper fails at its start: it does not run.
	default:
		h.helpers[req.HelperID] = &wHelper{id: req.HelperID, taskID: req.TaskID, target: req.Target, epoch: req.Epoch, mib: req.MiB}
		rep.Running = true
	}
	return rep
}

// checkHelpersSettled checks, once the world is calm, that no helper
// outlives its task: every helper a worker runs belongs to a live process of
// the same task id and epoch, and the engine books on each host exactly the
// helpers its worker runs.
func (w *world) checkHelpersSettled() {
	live := map[string]*wProc{}
	for _, h := range w.hosts {
		for _, p := range h.procs {
			live[p.id] = p
		}
	}
	for _, h := range w.hosts {
		for _, id := range slices.Sorted(maps.Keys(h.helpers)) {
			x := h.helpers[id]
			if p := live[x.taskID]; p == nil || p.epoch != x.epoch {
				w.fail("helper %s on %s outlives its task %s (epoch %d)", x.id, h.name, x.taskID, x.epoch)
			}
		}
	}
	for _, eh := range w.e.hostSeq {
		wh := w.byName[eh.name]
		var want int64
		for _, x := range wh.helpers {
			want += x.mib
		}
		if eh.helperMiB != want {
			w.fail("host %s: the engine books %d MiB of helpers, the worker runs %d", eh.name, eh.helperMiB, want)
		}
		for _, x := range eh.helpers {
			if wh.helpers[x.id] == nil {
				w.fail("host %s: the engine books helper %s, which does not run", eh.name, x.id)
			}
		}
	}
}
