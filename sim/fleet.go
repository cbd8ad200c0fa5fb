package sim

import (
	"slices"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// Fleet helpers: the memory-manager protocol, as the simulated tasks and
// workers play it.
//
//   - A task whose helpers start asks the policy (AllocRequested) for
//     the helper RAM its phase needs beyond its own budget: the threads the
//     phase needs for the target as it truly is (the phase's full helpers
//     now), less what it holds, in whole threads, while it holds less than
//     that. It has one request out at a time, and gives one up after
//     askTimeout without a reply. As the real worker does, it waits
//     allocRetry after a grant before it asks again, and after a refusal
//     (an error, or no reply) a wait that doubles with each refusal in a
//     row, from allocRetry up to allocRetryMax. Its first
//     request is answered before its helpers begin (they begin anyway after
//     askTimeout), so that its first round runs with what it gets.
//   - A worker runs a helper when the host has room for it, as it admits a
//     launch (capacity minus foreign use minus what its tasks and helpers
//     book), and stops it on request. Helper RAM is real RAM on its host.
//   - A task works with the helper RAM it really holds: its own helpers and
//     those of its fleet helpers that its last reply listed and that run,
//     each in whole threads (a thread cannot span hosts). A helper that
//     stops takes its threads with it at once; new ones count from the
//     reply that tells the task of them.
//   - Helpers outlive their task until the policy stops them: their RAM
//     stays taken, and they do no work.

const (
	askTimeout    = int64(5e9)      // a request without a reply by then is given up
	allocRetry    = int64(2e9)      // the worker's WORKER_ALLOC_RETRY default
	allocRetryMax = 16 * allocRetry // the longest wait after refusals in a row
)

// simHelper is a fleet helper a simulated worker runs.
type simHelper struct {
	id, taskID, target string
	epoch              uint64
	mib                int64
	host               *hostState
}

// threadMiB is the RAM of one helper thread of t's tasks: helpers count in
// whole threads (1 MiB for declared targets).
func (s *Sim) threadMiB(t *targetState) int64 {
	if !t.hacking {
		return 1
	}
	return max(s.params.GrowThreadMiB, s.params.WeakenThreadMiB, s.params.HackThreadMiB)
}

// need is the helper RAM p's phase needs now, for its target as it is.
func (s *Sim) need(p *proc) int64 {
	est, err := s.params.Estimate(&p.t.spec, p.typ)
	if err != nil {
		return 0
	}
	return est.HelpersFullMiB
}

// askFleet sends p's request for the helper RAM it lacks, if any.
func (s *Sim) askFleet(p *proc) {
	if !p.alive || !p.started || p.dup {
		return
	}
	if p.askAt >= 0 {
		if s.now-p.askAt < askTimeout {
			return // one request at a time
		}
		refused(p, p.askAt+askTimeout) // no reply
	}
	if s.now < p.askNext {
		return
	}
	grain := s.threadMiB(p.t)
	lack := s.need(p) - p.helpers - p.fleet
	lack -= lack % grain
	if lack < grain {
		return
	}
	s.allocSeq++
	id := s.allocSeq
	s.allocs[id] = p
	p.askAt = s.now
	req := &schemas.AllocRequest{V: schemas.Version, TaskID: p.id, Epoch: p.epoch, Target: p.t.name, Host: p.host.name,
		MiB: lack, MinMiB: grain}
	s.toPolicy(&selector.AllocRequested{ID: id, Req: req}, nil, true)
}

// refused ends p's request, refused at now (or unanswered by then): its next
// waits twice as long as the last one did, from allocRetry up to
// allocRetryMax.
func refused(p *proc, now int64) {
	p.askAt = -1
	p.askWait = min(max(2*p.askWait, allocRetry), allocRetryMax)
	p.askNext = now + p.askWait
}

// allocReplied hands the policy's answer to the task that asked: it now
// works with the helpers the reply lists that truly run.
func (s *Sim) allocReplied(c *selector.Command) {
	p := s.allocs[c.AllocID]
	if p == nil {
		return
	}
	delete(s.allocs, c.AllocID)
	if p.askAt >= 0 {
		if c.Alloc == nil || c.Alloc.Error != nil {
			refused(p, s.now)
		} else {
			p.askAt, p.askWait, p.askNext = -1, 0, s.now+allocRetry
		}
	}
	if !p.alive || c.Alloc == nil {
		return
	}
	p.known = p.known[:0]
	for _, g := range c.Alloc.Held {
		p.known = append(p.known, g.HelperID)
	}
	s.regrow(p)
	p.waiting = false // its helpers begin now
}

// regrow sets the helper RAM p works with: its own, and its known fleet
// helpers that run, in whole threads each.
func (s *Sim) regrow(p *proc) {
	if !p.alive {
		return
	}
	grain := s.threadMiB(p.t)
	var fleet int64
	for _, x := range s.helperOf[p.id] {
		if slices.Contains(p.known, x.id) && x.epoch == p.epoch {
			fleet += x.mib - x.mib%grain
		}
	}
	if fleet == p.fleet {
		return
	}
	s.advance(p) // the work so far at the old rate
	p.fleet = fleet
	p.run.SetHelpers(p.helpers + fleet)
}

// workerHelper is a worker's helper request: start (idempotent per helper
// id) when the host has room, or stop.
func (s *Sim) workerHelper(r *request) {
	h, req := r.host, r.helper
	rep := schemas.HelperReply{V: schemas.Version, HelperID: req.HelperID}
	i := slices.IndexFunc(h.helpers, func(x *simHelper) bool { return x.id == req.HelperID })
	switch {
	case req.Op == schemas.HelperStop:
		if i >= 0 {
			s.stopHelper(h, i)
		}
	case i >= 0:
		rep.Running = true
	case req.MiB <= 0 || req.MiB > h.capacity-h.foreign-h.booked:
		// No room: it does not run.
	default:
		x := &simHelper{id: req.HelperID, taskID: req.TaskID, target: req.Target, epoch: req.Epoch, mib: req.MiB, host: h}
		h.helpers = append(h.helpers, x)
		h.used += x.mib
		h.booked += x.mib
		s.helperOf[x.taskID] = append(s.helperOf[x.taskID], x)
		rep.Running = true
	}
	s.toPolicy(&selector.HelperReplied{Host: h.name, Req: req, Reply: rep}, r, true)
}

// stopHelper ends the i-th helper of h; its task loses its threads at once.
func (s *Sim) stopHelper(h *hostState, i int) {
	x := h.helpers[i]
	h.helpers = slices.Delete(h.helpers, i, i+1)
	h.used -= x.mib
	h.booked -= x.mib
	list := s.helperOf[x.taskID]
	if j := slices.Index(list, x); j >= 0 {
		list = slices.Delete(list, j, j+1)
	}
	if len(list) == 0 {
		delete(s.helperOf, x.taskID)
	} else {
		s.helperOf[x.taskID] = list
	}
	if p := s.procByID[x.taskID]; p != nil {
		s.regrow(p)
	}
}
