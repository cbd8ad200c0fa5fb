package selector

import (
	"slices"
	"strconv"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// The memory manager. A running task may ask for helper RAM anywhere in the
// fleet (AllocRequested). The engine grants it from the ledger on hosts that
// may take new work, books it there as helpers of the task, starts them
// through their hosts' workers (CmdHelper) and answers once every start is
// answered. A helper belongs to its task: it carries the task's epoch, the
// task's budget bounds it, and it is stopped when the task closes. See the
// package doc for the rules and the helper state table.

// FailAllocRefused counts helper RAM requests refused for want of RAM, every
// one of them, whether it took a backoff step or not (see refuseAlloc).
const FailAllocRefused = "alloc_refused"

// Error codes of an AllocReply besides insufficient_ram (the same strings
// as the schemas package's codes of the memory-manager protocol).
const (
	codeUnknownTask = "unknown_task" // no running task of that id and epoch
	codeOverBudget  = "over_budget"  // the least asked is above what the task's budget leaves
)

// helperBudget is the helper RAM task k may still be granted: its phase's
// full size (wrapper plus helpers_full_mib, as estimated) minus what it holds
// on its own host (its budget) and what its fleet helpers hold. A task whose
// target has left the task's phase gets nothing more.
func (e *Engine) helperBudget(k *task) int64 {
	t := k.t
	if !t.hasSpec || t.blocked != "" || t.phase != k.typ {
		return 0
	}
	return max(t.est.FullMiB()-k.budget-e.held(k), 0)
}

// held is the helper RAM k holds: its starting and running helpers.
func (e *Engine) held(k *task) int64 {
	var n int64
	for _, x := range k.helpers {
		n += x.mib
	}
	return n
}

// holdings lists k's helpers as grants, in the order they were granted.
func holdings(k *task) []schemas.HelperGrant {
	if len(k.helpers) == 0 {
		return nil
	}
	gs := make([]schemas.HelperGrant, 0, len(k.helpers))
	for _, x := range k.helpers {
		gs = append(gs, schemas.HelperGrant{HelperID: x.id, Host: x.host.name, MiB: x.mib})
	}
	slices.SortFunc(gs, func(a, b schemas.HelperGrant) int {
		if a.HelperID < b.HelperID {
			return -1
		}
		if a.HelperID > b.HelperID {
			return 1
		}
		return 0
	})
	return gs
}

// mayAlloc reports whether task k may be granted helper RAM: it is running
// (a reply or a heartbeat says so) and is not being stopped.
func mayAlloc(k *task) bool {
	return (k.state == taskActive || k.state == taskLaunched) && k.why == 0
}

func (e *Engine) replyAlloc(id uint64, r *schemas.AllocReply) {
	e.emit(Command{Kind: CmdAllocReply, AllocID: id, Alloc: r})
}

func allocError(taskID, code, msg string) *schemas.AllocReply {
	return &schemas.AllocReply{V: schemas.Version, TaskID: taskID, Error: &schemas.ReplyError{Code: code, Message: msg}}
}

// allocRequested handles a task's request for helper RAM (and release of
// some).
func (e *Engine) allocRequested(now time.Time, ev *AllocRequested) {
	req := ev.Req
	if req == nil {
		return
	}
	k := e.byID[req.TaskID]
	if k == nil || k.epoch != req.Epoch || k.t.name != req.Target || k.host.name != req.Host || !mayAlloc(k) {
		e.replyAlloc(ev.ID, allocError(req.TaskID, codeUnknownTask, "no running task with that id and epoch"))
		return
	}
	for _, id := range req.Release {
		if x := e.helpers[id]; x != nil && x.owner == k {
			e.stopHelper(now, x)
		}
	}
	want := clampMiB(req.MiB)
	lo := min(clampMiB(req.MinMiB), want)
	if want == 0 {
		e.replyAlloc(ev.ID, &schemas.AllocReply{V: schemas.Version, TaskID: k.id, Held: holdings(k)})
		return
	}
	left := e.helperBudget(k)
	if lo > left {
		r := allocError(k.id, codeOverBudget,
			"the least asked, "+strconv.FormatInt(lo, 10)+" MiB, is above the "+strconv.FormatInt(left, 10)+" MiB the task's budget leaves")
		r.Held = holdings(k)
		e.replyAlloc(ev.ID, r)
		return
	}
	want = min(want, left)
	grain := max(e.cfg.HelperGrainMiB, 1)
	want -= want % grain
	if lo > want {
		r := allocError(k.id, codeOverBudget, "the least asked is above the whole grains ("+
			strconv.FormatInt(grain, 10)+" MiB) the task's budget leaves")
		r.Held = holdings(k)
		e.replyAlloc(ev.ID, r)
		return
	}
	if want == 0 {
		e.replyAlloc(ev.ID, &schemas.AllocReply{V: schemas.Version, TaskID: k.id, Held: holdings(k)})
		return
	}
	plan := e.planGrants(now, want)
	var sum int64
	for _, g := range plan {
		sum += g.free
	}
	if sum == 0 || sum < lo {
		e.refuseAlloc(now, ev.ID, k, want, "the fleet has "+strconv.FormatInt(sum, 10)+" MiB free for helpers")
		return
	}
	a := &allocReq{id: ev.ID, k: k, min: lo, want: want, waiting: len(plan)}
	k.allocs = append(k.allocs, a)
	for _, g := range plan {
		x := e.newHelper(k, g.h, g.free)
		x.alloc = a
		a.grants = append(a.grants, x)
		e.helperTransition(x, hOnGrant)
		e.sendHelper(now, x, schemas.HelperStart)
	}
}

// refuseAlloc answers a request with insufficient_ram and counts it. It takes
// one step of the global backoff only when the task needed the RAM to run
// (see belowMin): that is the plan's launch that could not allocate RAM for
// its helpers. A top-up of a task that already holds its phase's minimum is
// refused without a step: the task runs on, so nothing failed, and a full
// fleet would otherwise hold every new launch back on its tasks' top-ups.
func (e *Engine) refuseAlloc(now time.Time, id uint64, k *task, want int64, msg string) {
	e.counters.Failures[FailAllocRefused]++
	e.setUnmet(now, k, want)
	if e.belowMin(k) {
		e.backoff.raise(now)
	}
	r := allocError(k.id, schemas.CodeInsufficientRAM, msg)
	r.Held = holdings(k)
	e.replyAlloc(id, r)
}

// belowMin reports whether task k holds less than its phase's minimum size
// (wrapper plus helpers_min_mib, as estimated) on its own host (its budget)
// and in fleet helpers together: the least it can run with. A task placed
// with at least that is below it only when its phase's estimate has grown
// since, or when fleet helpers it held were lost. A task whose target has
// left the task's phase (or is blocked, or has no spec) is not: it has no
// minimum to reach.
func (e *Engine) belowMin(k *task) bool {
	t := k.t
	if !t.hasSpec || t.blocked != "" || t.phase != k.typ {
		return false
	}
	return k.budget+e.held(k) < t.est.MinMiB()
}

// unmetFor is how long a refused request holds back new launches: a task
// that still wants more asks again well within it (the worker waits at most
// 32 s between requests), one that no longer does stops holding RAM back.
const unmetFor = time.Minute

// setUnmet records that task k's helper RAM request for mib went unmet at
// now (0: it was met, or the task closed).
func (e *Engine) setUnmet(now time.Time, k *task, mib int64) {
	k.unmet, k.unmetAt = mib, now
	if mib > 0 {
		e.unmet[k] = struct{}{}
	} else {
		delete(e.unmet, k)
	}
}

// reserved reports whether a new launch needing lo MiB must wait because
// the RAM free for helpers is wanted by running tasks whose requests were
// refused within unmetFor: running tasks' top-ups come before new tasks, so
// that the RAM that frees goes to the tasks that run, up to their phase's
// full size, rather than to one more wrapper.
func (e *Engine) reserved(now time.Time, cands []hostFree, lo int64) bool {
	if len(e.unmet) == 0 {
		return false
	}
	var want int64
	for k := range e.unmet {
		if now.Sub(k.unmetAt) >= unmetFor {
			e.setUnmet(now, k, 0)
			continue
		}
		want += k.unmet
	}
	if want == 0 {
		return false
	}
	var free int64
	for _, c := range cands {
		if !c.h.noHelpers {
			free += c.free
		}
	}
	return free-want < lo
}

// planGrants picks where want MiB of helpers (a whole number of grains, see
// Config.HelperGrainMiB) go, each piece a whole number of grains: on one
// host when one holds
// it all (the one with the least RAM free that does), or else on the hosts
// with the most RAM free, the roomiest first, in as few pieces as may be.
// Hosts that may take no new task, or run no fleet helpers, get none. The
// slice holds the pieces (hostFree.free is the piece's size) and is scratch.
func (e *Engine) planGrants(now time.Time, want int64) []hostFree {
	cands, _ := e.feasible(now)
	grain := max(e.cfg.HelperGrainMiB, 1)
	n := 0
	for _, c := range cands {
		c.free -= c.free % grain
		if c.free > 0 && !c.h.noHelpers {
			cands[n] = c
			n++
		}
	}
	cands = cands[:n]
	best := -1
	for i, c := range cands {
		if c.free >= want && (best < 0 || c.free < cands[best].free) {
			best = i
		}
	}
	if best >= 0 {
		cands[0] = hostFree{cands[best].h, want}
		return cands[:1]
	}
	slices.SortStableFunc(cands, func(a, b hostFree) int {
		switch {
		case a.free > b.free:
			return -1
		case a.free < b.free:
			return 1
		}
		return a.h.seq - b.h.seq
	})
	for i := range cands {
		if want <= 0 {
			return cands[:i]
		}
		cands[i].free = min(cands[i].free, want)
		want -= cands[i].free
	}
	return cands
}

// newHelper books a helper of mib on h for k (or, with k nil, an orphan).
func (e *Engine) newHelper(k *task, h *host, mib int64) *helper {
	id := ""
	for id == "" || e.helpers[id] != nil {
		id = k.id + "/h" + strconv.FormatUint(e.ids.Uint64()>>16, 36)
	}
	x := &helper{id: id, taskID: k.id, epoch: k.epoch, target: k.t.name, typ: k.typ, mib: mib}
	e.bookHelper(x, h)
	e.own(x, k)
	return x
}

// bookHelper puts x in the ledger, on h.
func (e *Engine) bookHelper(x *helper, h *host) {
	x.host = h
	x.hidx = len(h.helpers)
	h.helpers = append(h.helpers, x)
	h.helperMiB += x.mib
	e.helpers[x.id] = x
}

// own makes x one of k's helpers.
func (e *Engine) own(x *helper, k *task) {
	x.owner = k
	x.oidx = len(k.helpers)
	k.helpers = append(k.helpers, x)
}

// disown takes x from its task.
func (e *Engine) disown(x *helper) {
	k := x.owner
	if k == nil {
		return
	}
	last := len(k.helpers) - 1
	k.helpers[x.oidx] = k.helpers[last]
	k.helpers[x.oidx].oidx = x.oidx
	k.helpers[last] = nil
	k.helpers = k.helpers[:last]
	x.owner = nil
}

// dropHelper takes x out of the ledger, by trigger by.
func (e *Engine) dropHelper(x *helper, by helperTrigger) {
	e.helperTransition(x, by)
	e.disown(x)
	h := x.host
	last := len(h.helpers) - 1
	h.helpers[x.hidx] = h.helpers[last]
	h.helpers[x.hidx].hidx = x.hidx
	h.helpers[last] = nil
	h.helpers = h.helpers[:last]
	h.helperMiB -= x.mib
	delete(e.helpers, x.id)
	e.settleStart(x)
}

// sendHelper sends a start or stop of x to its host.
func (e *Engine) sendHelper(now time.Time, x *helper, op string) {
	x.op = op
	x.sentAt = now
	e.emit(Command{Kind: CmdHelper, Host: x.host.name, Target: x.target, Helper: &schemas.HelperRequest{
		V: schemas.Version, Op: op, HelperID: x.id, TaskID: x.taskID, Epoch: x.epoch, Target: x.target,
		Type: x.typ, TaskHost: taskHostOf(x), MiB: x.mib,
	}})
}

// taskHostOf is the host of x's task, or "" when it has none any more.
func taskHostOf(x *helper) string {
	if x.owner != nil {
		return x.owner.host.name
	}
	return ""
}

// stopHelper takes x from its task and stops it: at once, or once its
// outstanding start is answered.
func (e *Engine) stopHelper(now time.Time, x *helper) {
	if x.state == helperStopping {
		return
	}
	e.helperTransition(x, hOnStop)
	e.disown(x)
	x.stopAt = now
	e.settleStart(x)
	if x.op == schemas.HelperStart {
		return // stopped once the start is answered (see helperReplied)
	}
	e.sendHelper(now, x, schemas.HelperStop)
}

// settleStart counts x's start as answered in the request it was granted
// for, and answers that request when it was the last.
func (e *Engine) settleStart(x *helper) {
	a := x.alloc
	if a == nil {
		return
	}
	x.alloc = nil
	a.waiting--
	if a.waiting == 0 && !a.done {
		e.finishAlloc(e.lastNow, a)
	}
}

// finishAlloc answers a once every start of its grants is answered. A
// request whose started grants sum below its minimum is refused, and what
// did start is stopped.
func (e *Engine) finishAlloc(now time.Time, a *allocReq) {
	a.done = true
	k := a.k
	if i := slices.Index(k.allocs, a); i >= 0 {
		k.allocs = slices.Delete(k.allocs, i, i+1)
	}
	var got []*helper
	var sum int64
	for _, x := range a.grants {
		if x.owner == k && x.state == helperRunning {
			got = append(got, x)
			sum += x.mib
		}
	}
	if sum < a.min || sum == 0 {
		for _, x := range got {
			e.stopHelper(now, x)
		}
		e.refuseAlloc(now, a.id, k, a.want, "the helpers granted could not be started")
		return
	}
	e.setUnmet(now, k, 0)
	r := &schemas.AllocReply{V: schemas.Version, TaskID: k.id, Held: holdings(k)}
	for _, x := range got {
		r.Grants = append(r.Grants, schemas.HelperGrant{HelperID: x.id, Host: x.host.name, MiB: x.mib})
	}
	e.replyAlloc(a.id, r)
}

// closeHelpers stops every helper of k, which is closing, and answers its
// requests still waiting with unknown_task.
func (e *Engine) closeHelpers(now time.Time, k *task) {
	e.setUnmet(now, k, 0)
	for _, a := range k.allocs {
		a.done = true
		e.replyAlloc(a.id, allocError(k.id, codeUnknownTask, "the task ended"))
	}
	k.allocs = nil
	for len(k.helpers) > 0 {
		e.stopHelper(now, k.helpers[len(k.helpers)-1])
	}
}

// helperFor finds the helper a reply from host speaks of.
func (e *Engine) helperFor(hostName string, req *schemas.HelperRequest) *helper {
	if req == nil {
		return nil
	}
	x := e.helpers[req.HelperID]
	if x == nil || x.host.name != hostName || x.op != req.Op {
		return nil // not the request outstanding: an earlier one's late reply
	}
	return x
}

func (e *Engine) helperReplied(now time.Time, ev *HelperReplied) {
	x := e.helperFor(ev.Host, ev.Req)
	if x == nil {
		return
	}
	x.op = ""
	ran := ev.Reply.Error != nil || ev.Reply.Running // an error: it may run
	switch {
	case ev.Req.Op == schemas.HelperStop && !ran:
		e.dropHelper(x, hOnStopped)
	case ev.Req.Op == schemas.HelperStop:
		// Retried after ReplyTimeout (see tickHelpers).
	case x.state == helperStarting && ev.Reply.Error == nil && ev.Reply.Running:
		e.helperTransition(x, hOnStarted)
		e.settleStart(x)
	case x.state == helperStarting:
		e.dropHelper(x, hOnStartFailed)
	case !ran: // stopping, and its start did not take
		e.dropHelper(x, hOnStartFailed)
	default: // stopping, and its start took (or may have)
		e.sendHelper(now, x, schemas.HelperStop)
	}
}

func (e *Engine) helperUnanswered(now time.Time, ev *HelperUnanswered) {
	x := e.helperFor(ev.Host, ev.Req)
	if x == nil {
		return
	}
	x.op = ""
	if ev.NoResponders {
		// Nobody listens on the host's helper subject: nothing started,
		// and nothing of the engine's runs there.
		x.host.noHelpers = true
		if ev.Req.Op == schemas.HelperStop {
			e.dropHelper(x, hOnStopped)
		} else {
			e.dropHelper(x, hOnStartFailed)
		}
		return
	}
	if ev.Req.Op == schemas.HelperStart {
		// The worker may have started it: it is stopped to be sure, and
		// its request counts it as not started.
		e.stopHelper(now, x)
	}
	// A stop that timed out is retried after ReplyTimeout.
}

// helperStatus handles the helpers a host status lists and returns the RAM
// of those the ledger books on h. first is whether the status is the first
// this engine has from h: only then are standing helpers of their target's
// current task booked to it (a restarted engine learns what runs). Any other
// helper the engine does not hold is an orphan and is stopped.
func (e *Engine) helperStatus(now time.Time, h *host, st *schemas.HostStatus, first bool) int64 {
	var owned int64
	for i := range st.Helpers {
		hs := &st.Helpers[i]
		if x := e.helpers[hs.HelperID]; x != nil {
			if x.host == h {
				owned += x.mib
			}
			continue
		}
		if !e.connected || hs.HelperID == "" {
			continue
		}
		var k *task
		if t := e.targets[hs.Target]; t != nil && t.task != nil && first {
			if c := t.task; c.id == hs.TaskID && c.epoch == hs.Epoch && c.state != taskKilling && (c.why == 0 || c.why == suspectRecovered) {
				k = c
			}
		}
		x := &helper{id: hs.HelperID, taskID: hs.TaskID, epoch: hs.Epoch, target: hs.Target, mib: clampMiB(hs.MiB)}
		if k != nil {
			x.typ = k.typ
		}
		e.bookHelper(x, h)
		owned += x.mib
		if k != nil {
			e.own(x, k)
			e.helperTransition(x, hOnLearn)
			continue
		}
		e.helperTransition(x, hOnOrphan)
		x.stopAt = now
		e.sendHelper(now, x, schemas.HelperStop)
	}
	return owned
}

// loseHelpers drops the helpers of lost host h from the ledger: they no
// longer work for their tasks, which see them gone from held. Should h come
// back running them, its status shows them as orphans, and they are stopped.
func (e *Engine) loseHelpers(h *host) {
	for len(h.helpers) > 0 {
		e.dropHelper(h.helpers[len(h.helpers)-1], hOnLost)
	}
	h.noHelpers = false
}

// tickHelpers retries stops: a request unanswered for twice ReplyTimeout is
// taken as lost, and a stop is sent again ReplyTimeout after the last.
func (e *Engine) tickHelpers(now time.Time) {
	lost := 2 * e.cfg.ReplyTimeout
	for _, h := range e.hostSeq {
		for i := 0; i < len(h.helpers); i++ {
			x := h.helpers[i]
			if x.op != "" && now.Sub(x.sentAt) >= lost {
				op := x.op
				x.op = ""
				if op == schemas.HelperStart {
					if x.state == helperStarting {
						e.stopHelper(now, x)
						continue
					}
				}
			}
			if x.state == helperStopping && x.op == "" && now.Sub(x.sentAt) >= e.cfg.ReplyTimeout {
				e.sendHelper(now, x, schemas.HelperStop)
			}
		}
	}
}

// helperDeadline is the earliest time tickHelpers may act on.
func (e *Engine) helperDeadline(at func(time.Time)) {
	for _, h := range e.hostSeq {
		for _, x := range h.helpers {
			switch {
			case x.op != "":
				at(x.sentAt.Add(2 * e.cfg.ReplyTimeout))
			case x.state == helperStopping:
				at(x.sentAt.Add(e.cfg.ReplyTimeout))
			}
		}
	}
}
