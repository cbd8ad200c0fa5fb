package selector

import "time"

// canLaunch reports whether the global gates allow a launch now.
func (e *Engine) canLaunch(now time.Time) bool {
	return e.connected && !e.recovering && !now.Before(e.graceUntil) && e.disruption != DisruptionFull &&
		e.conflict == "" && !e.shutdown && e.pendingLaunches < e.cfg.MaxPendingLaunches &&
		e.backoff.open(now)
}

// schedule launches as many pending targets as the gates and RAM allow.
func (e *Engine) schedule(now time.Time) {
	e.refocus(now)
	if e.connected && !e.shutdown {
		e.preempt(now)
	}
	for e.pending.len() > 0 && e.canLaunch(now) {
		if !e.launchOne(now) {
			return
		}
	}
}

// eligible reports whether a new task may be placed on h: among other
// things, h has not been silent for HostStale as of the time host statuses
// are handled up to (see hostsHeard).
func (e *Engine) eligible(now time.Time, h *host) bool {
	return h.seen && !h.lost && !h.draining && !h.avoided && e.hostsHeard(now).Sub(h.lastStatus) < e.cfg.HostStale
}

// Placement runs in three steps, after the iterators of Nomad's scheduler:
//
//  1. feasibility (Engine.feasible): the hosts a new task may go to at all,
//     with the RAM free on each;
//  2. rank (place): for one target, the host with the least RAM free that
//     holds the target's full size (best fit) or, when none holds it all,
//     the host with the most RAM free, scaled down to what it has;
//  3. limit (Engine.launchOne): one launch per pass, of the best pending
//     target that fits somewhere; up to MaxSkips targets that fit nowhere
//     are passed over.

// hostFree is a feasible host and the RAM a new task may take on it.
type hostFree struct {
	h    *host
	free int64
}

// feasible returns the hosts a new task may be placed on, with their free
// RAM, in order of first sight, and the index among them of the first one
// with the most RAM free (-1 when there is none). The slice is scratch,
// reused by the next call.
func (e *Engine) feasible(now time.Time) ([]hostFree, int) {
	cands := e.elig[:0]
	most := -1
	for _, h := range e.hostSeq {
		if !e.eligible(now, h) {
			continue
		}
		f := h.free(e.cfg.HostHeadroomMiB)
		if f < 0 {
			continue
		}
		if most < 0 || f > cands[most].free {
			most = len(cands)
		}
		cands = append(cands, hostFree{h, f})
	}
	e.elig = cands
	return cands, most
}

// place ranks the feasible hosts cands for a task that needs lo MiB at
// least and full MiB at full size, where cands[most] is the first of them
// with the most RAM free. It returns the chosen host and the task's budget:
// full on the host with the least RAM free that holds it all (the first
// such in cands), or else all the free RAM of cands[most]. ok is false when
// no host has lo MiB free. place depends on its arguments alone.
func place(cands []hostFree, most int, lo, full int64) (h *host, budget int64, ok bool) {
	roomiest := cands[most]
	if lo > roomiest.free {
		return nil, 0, false
	}
	if full > roomiest.free {
		return roomiest.h, roomiest.free, true
	}
	best := roomiest
	for _, c := range cands {
		if c.free >= full && c.free < best.free {
			best = c
		}
	}
	return best.h, full, true
}

// launchOne takes the best pending target that fits somewhere and launches
// it. Targets that fit nowhere even at their minimum wait; up to MaxSkips of
// them are passed over so that a large target does not hold back small ones.
// It costs one pass over the hosts, one over the feasible ones, and
// O(log targets) per target it looks at.
func (e *Engine) launchOne(now time.Time) bool {
	cands, most := e.feasible(now)
	if most < 0 {
		return false
	}
	launched := false
	for e.pending.len() > 0 && len(e.skipped) <= e.cfg.MaxSkips {
		t := e.pending.pop()
		if e.heldBack(t) {
			e.skipped = append(e.skipped, t)
			continue
		}
		full := t.est.FullMiB()
		if e.cfg.LaunchAtMinimum {
			full = t.est.MinMiB()
		}
		h, budget, ok := place(cands, most, t.est.MinMiB(), full)
		if ok && e.reserved(now, cands, t.est.MinMiB()) {
			ok = false
		}
		if !ok {
			e.skipped = append(e.skipped, t)
			continue
		}
		e.launch(now, t, h, budget)
		launched = true
		break
	}
	for _, t := range e.skipped {
		e.pending.push(t)
	}
	clear(e.skipped)
	e.skipped = e.skipped[:0]
	return launched
}
