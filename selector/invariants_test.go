package selector

import (
	"encoding/json"
	"fmt"
	"math"
	"sync"

	"github.com/taskselector/taskselector/schemas"
)

// checkInvariants verifies the engine's internal bookkeeping: every index
// agrees with every other, the ledger sums what its tasks hold, at most one
// task runs per target, and no target is forgotten (every target that may
// run and has no task is in line).
func (e *Engine) checkInvariants() error {
	seenTarget := make(map[*target]*task, len(e.tasks))
	pendingCount := 0
	type sums struct{ reserved int64 }
	perHost := make(map[*host]*sums, len(e.hostSeq))
	for i, k := range e.tasks {
		if k.idx != i {
			return fmt.Errorf("task %s: idx %d, at %d", k.id, k.idx, i)
		}
		if !liveStates.has(k.state) {
			return fmt.Errorf("task %s: state %d is not a live task's", k.id, k.state)
		}
		if i >= len(e.hot) || e.hot[i].state != k.state || e.hot[i].lastHB != e.since(k.lastHB) {
			return fmt.Errorf("task %s: hot entry out of step", k.id)
		}
		if e.byID[k.id] != k {
			return fmt.Errorf("task %s: not in byID", k.id)
		}
		if prev := seenTarget[k.t]; prev != nil {
			return fmt.Errorf("target %s has two tasks: %s and %s", k.t.name, prev.id, k.id)
		}
		seenTarget[k.t] = k
		if k.t.task != k {
			return fmt.Errorf("task %s: its target %s points at another task", k.id, k.t.name)
		}
		if e.targets[k.t.name] != k.t {
			return fmt.Errorf("task %s: its target %s is not declared in the engine", k.id, k.t.name)
		}
		if k.hostIdx >= len(k.host.tasks) || k.host.tasks[k.hostIdx] != k {
			return fmt.Errorf("task %s: not at its index on host %s", k.id, k.host.name)
		}
		if e.hosts[k.host.name] != k.host {
			return fmt.Errorf("task %s: host %s unknown", k.id, k.host.name)
		}
		if k.epoch <= k.t.closedEpoch {
			return fmt.Errorf("task %s: epoch %d not above the closed epoch %d", k.id, k.epoch, k.t.closedEpoch)
		}
		if k.epoch > k.t.epoch {
			return fmt.Errorf("task %s: epoch %d above its target's %d", k.id, k.epoch, k.t.epoch)
		}
		if !inMiB(k.budget) || !inMiB(k.used) || k.wrapper < 0 || k.wrapper > k.budget || k.pid < 0 {
			return fmt.Errorf("task %s: bad figures budget=%d wrapper=%d used=%d pid=%d", k.id, k.budget, k.wrapper, k.used, k.pid)
		}
		if k.budget < 0 || k.used < 0 || k.wrapper < 0 || k.wrapper > k.budget {
			return fmt.Errorf("task %s: bad RAM budget=%d wrapper=%d used=%d", k.id, k.budget, k.wrapper, k.used)
		}
		if k.countedPen {
			pendingCount++
			if k.confirmed {
				return fmt.Errorf("task %s: confirmed but counted as a pending launch", k.id)
			}
		}
		if k.host.lost && !e.inFlight(k.host.lostAt, k) {
			return fmt.Errorf("task %s: on lost host %s, and was not in flight when it was lost", k.id, k.host.name)
		}
		s := perHost[k.host]
		if s == nil {
			s = &sums{}
			perHost[k.host] = s
		}
		s.reserved += k.accounted()
	}
	onHosts := 0
	for i, h := range e.hostSeq {
		onHosts += len(h.tasks)
		switch {
		case h.seq != i:
			return fmt.Errorf("host %s: seq %d, at %d", h.name, h.seq, i)
		case e.hosts[h.name] != h:
			return fmt.Errorf("host %s: not in hosts", h.name)
		case h.reserved < 0:
			return fmt.Errorf("host %s: negative ledger: reserved %d", h.name, h.reserved)
		case !inMiB(h.total) || !inMiB(h.used) || !inMiB(h.foreignMiB):
			return fmt.Errorf("host %s: figure out of 0..MaxMiB: total %d used %d foreign %d", h.name, h.total, h.used, h.foreignMiB)
		}
	}
	if onHosts != len(e.tasks) {
		return fmt.Errorf("hosts list %d tasks, the engine %d", onHosts, len(e.tasks))
	}
	if len(e.hot) != len(e.tasks) {
		return fmt.Errorf("hot has %d entries, tasks %d", len(e.hot), len(e.tasks))
	}
	if len(e.byID) != len(e.tasks) {
		return fmt.Errorf("byID has %d tasks, tasks %d", len(e.byID), len(e.tasks))
	}
	if pendingCount != e.pendingLaunches {
		return fmt.Errorf("pendingLaunches %d, counted %d", e.pendingLaunches, pendingCount)
	}
	if e.pendingLaunches > e.cfg.MaxPendingLaunches {
		return fmt.Errorf("pendingLaunches %d above the window %d", e.pendingLaunches, e.cfg.MaxPendingLaunches)
	}
	if e.pendingLaunches < 0 {
		return fmt.Errorf("pendingLaunches %d", e.pendingLaunches)
	}
	for key, k := range e.pendingByPID {
		if e.byID[k.id] != k || k.pid != key.pid || k.host.name != key.host || k.confirmed || !k.countedPen {
			return fmt.Errorf("pendingByPID[%v] -> %s is stale", key, k.id)
		}
	}
	if len(e.hostSeq) != len(e.hosts) {
		return fmt.Errorf("hostSeq has %d hosts, hosts %d", len(e.hostSeq), len(e.hosts))
	}
	for _, h := range e.hostSeq {
		var s sums
		if p := perHost[h]; p != nil {
			s = *p
		}
		if h.reserved != s.reserved {
			return fmt.Errorf("host %s: reserved %d, its tasks hold %d", h.name, h.reserved, s.reserved)
		}
	}
	if err := e.checkHelpers(); err != nil {
		return err
	}
	if err := e.pending.check(); err != nil {
		return fmt.Errorf("pending queue: %w", err)
	}
	if err := e.delayed.check(); err != nil {
		return fmt.Errorf("delay queue: %w", err)
	}
	for name, t := range e.targets {
		if t.name != name {
			return fmt.Errorf("target %q stored under %q", t.name, name)
		}
		if t.closedEpoch > t.epoch {
			return fmt.Errorf("target %s: closed epoch %d above epoch %d", name, t.closedEpoch, t.epoch)
		}
		if t.task != nil && seenTarget[t] != t.task {
			return fmt.Errorf("target %s points at task %s, which the engine does not hold", name, t.task.id)
		}
		if _, ok := e.tombs[name]; ok {
			return fmt.Errorf("target %s is declared and has a tomb", name)
		}
		inP, inD := e.pending.contains(t), e.delayed.contains(t)
		if inP && inD {
			return fmt.Errorf("target %s is both pending and delayed", name)
		}
		if math.IsNaN(t.priority) || math.IsInf(t.priority, 0) || t.priority < 0 {
			return fmt.Errorf("target %s: priority %v", name, t.priority)
		}
		mayRun := t.hasSpec && t.blocked == "" && !t.complete && !t.deleted
		switch {
		case t.task != nil && (inP || inD):
			return fmt.Errorf("target %s has a task and is queued", name)
		case t.task == nil && mayRun && !inP && !inD:
			return fmt.Errorf("target %s is forgotten: no task, not blocked or complete, not queued", name)
		case !mayRun && (inP || inD):
			return fmt.Errorf("target %s is queued but may not run (blocked %q complete %v deleted %v)",
				name, t.blocked, t.complete, t.deleted)
		case t.deleted && t.task == nil:
			return fmt.Errorf("target %s deleted without a task but still kept", name)
		}
		if t.task == nil && t.blocked == "" && t.hasSpec && (t.est.MinMiB() < 0 || t.est.FullMiB() < t.est.MinMiB()) {
			return fmt.Errorf("target %s: estimate %+v", name, t.est)
		}
	}
	if e.pending.len()+e.delayed.len() > len(e.targets) {
		return fmt.Errorf("queues hold %d targets, only %d exist", e.pending.len()+e.delayed.len(), len(e.targets))
	}
	if e.backoff.Level() < 0 {
		return fmt.Errorf("backoff level %d", e.backoff.Level())
	}
	if math.IsNaN(e.lossTokens) || e.lossTokens < -1e-9 || e.lossTokens > 1+1e-9 {
		return fmt.Errorf("loss tokens %v out of 0..1", e.lossTokens)
	}
	switch e.disruption {
	case DisruptionNormal, DisruptionPartial, DisruptionFull:
	default:
		return fmt.Errorf("disruption mode %q", e.disruption)
	}
	return checkTransitions(e)
}

// checkHelpers verifies the memory manager's books: every helper is in the
// ledger of its host and, while it belongs to a task, in that task's list;
// the task is live and is its target's; no helper outlives its task (one
// that belongs to none is stopping) and none stands on a lost host; each
// host's helper RAM sums its helpers; and a task holds no more than its
// phase's full size allows, unless its helpers were learned after a
// restart.
func (e *Engine) checkHelpers() error {
	n := 0
	for _, h := range e.hostSeq {
		var sum int64
		for i, x := range h.helpers {
			n++
			sum += x.mib
			switch {
			case x.hidx != i || x.host != h:
				return fmt.Errorf("helper %s: at %d on %s, records %d on %v", x.id, i, h.name, x.hidx, x.host.name)
			case e.helpers[x.id] != x:
				return fmt.Errorf("helper %s: not in the index", x.id)
			case !liveHelperStates.has(x.state):
				return fmt.Errorf("helper %s: state %d in the ledger", x.id, x.state)
			case !inMiB(x.mib):
				return fmt.Errorf("helper %s: %d MiB", x.id, x.mib)
			case h.lost:
				return fmt.Errorf("helper %s on lost host %s", x.id, h.name)
			case x.owner == nil && x.state != helperStopping:
				return fmt.Errorf("helper %s belongs to no task and is not stopping (%s)", x.id, helperStateNames[x.state])
			case x.owner != nil && x.state == helperStopping:
				return fmt.Errorf("helper %s is stopping and still belongs to task %s", x.id, x.owner.id)
			case x.alloc != nil && (x.state != helperStarting || x.alloc.done):
				return fmt.Errorf("helper %s waits in a request, in state %s", x.id, helperStateNames[x.state])
			}
			if k := x.owner; k != nil {
				switch {
				case e.byID[k.id] != k || !liveStates.has(k.state) || k.t.task != k:
					return fmt.Errorf("helper %s outlives its task %s", x.id, k.id)
				case k.id != x.taskID || k.epoch != x.epoch:
					return fmt.Errorf("helper %s of %s#%d is held by task %s#%d", x.id, x.taskID, x.epoch, k.id, k.epoch)
				case x.oidx >= len(k.helpers) || k.helpers[x.oidx] != x:
					return fmt.Errorf("helper %s: not at its index in task %s", x.id, k.id)
				}
			}
		}
		if sum != h.helperMiB {
			return fmt.Errorf("host %s: helpers book %d MiB, they hold %d", h.name, h.helperMiB, sum)
		}
	}
	if n != len(e.helpers) {
		return fmt.Errorf("hosts list %d helpers, the index %d", n, len(e.helpers))
	}
	for _, k := range e.tasks {
		for _, x := range k.helpers {
			if x.owner != k || e.helpers[x.id] != x {
				return fmt.Errorf("task %s lists helper %s, which is not its", k.id, x.id)
			}
		}
		for _, a := range k.allocs {
			if a.done || a.k != k || a.waiting <= 0 {
				return fmt.Errorf("task %s: request %d done=%v waiting=%d", k.id, a.id, a.done, a.waiting)
			}
		}
	}
	return checkHelperTransitions(e)
}

// checkHelperTransitions fails if e made a helper transition that
// helperTransitions does not declare, and records those it made.
func checkHelperTransitions(e *Engine) error {
	transitionsMade.Lock()
	defer transitionsMade.Unlock()
	for from := range numHelperStates {
		for by := range numHelperTriggers {
			if e.helperMoves[from][by] == 0 {
				continue
			}
			if !helperTransitions[by].from.has(from) {
				return fmt.Errorf("undeclared helper transition: from %s on %s (%d times)",
					helperStateNames[from], helperTriggerNames[by], e.helperMoves[from][by])
			}
			transitionsMade.helpers[from][by] = true
		}
	}
	return nil
}

// transitionsMade is every task state transition (from-state, trigger) that
// an engine checked by checkInvariants has made, across engines and tests.
var transitionsMade struct {
	sync.Mutex
	made    [numTaskStates][numTaskTriggers]bool
	helpers [numHelperStates][numHelperTriggers]bool
}

// checkTransitions fails if e made a task state transition that
// taskTransitions does not declare, and records those it made in
// transitionsMade.
func checkTransitions(e *Engine) error {
	transitionsMade.Lock()
	defer transitionsMade.Unlock()
	for from := range numTaskStates {
		for by := range numTaskTriggers {
			if e.transitions[from][by] == 0 {
				continue
			}
			if !taskTransitions[by].from.has(from) {
				return fmt.Errorf("undeclared task transition: from %s on %s (%d times)",
					stateNames[from], triggerNames[by], e.transitions[from][by])
			}
			transitionsMade.made[from][by] = true
		}
	}
	return nil
}

// inMiB reports whether v is a RAM figure the wire format allows.
func inMiB(v int64) bool { return v >= 0 && v <= schemas.MaxMiB }

// checkCommands checks one step's commands against the engine that returned
// them: each encodes (so no NaN or infinity) and passes its message's
// validation (so that a worker or the store takes it: a persisted state that
// fails would be dropped by the next start's replay); each names what it
// should; a launch is its target's task, is written ahead (a persist naming
// it comes before it in the same step) and fits its host's ledger.
func checkCommands(e *Engine, cmds []Command) error {
	persisted := map[string]string{} // target -> task id of its last persist in this step
	for i, c := range cmds {
		b, err := json.Marshal(c)
		if err != nil {
			return fmt.Errorf("command %d (%s) does not encode: %v", i, c.Kind, err)
		}
		var msg schemas.Message
		fields := 0
		for _, set := range []bool{c.Launch != nil, c.Kill != nil, c.Ps != nil, c.State != nil, c.Alloc != nil, c.Helper != nil} {
			if set {
				fields++
			}
		}
		switch c.Kind {
		case CmdLaunch:
			if c.Launch == nil || fields != 1 || c.Host == "" || c.Target != c.Launch.Target {
				return fmt.Errorf("malformed launch: %s", b)
			}
			msg = c.Launch
		case CmdKill:
			if c.Kill == nil || fields != 1 || c.Host == "" {
				return fmt.Errorf("malformed kill: %s", b)
			}
			msg = c.Kill
		case CmdPs:
			if c.Ps == nil || fields != 1 || c.Host == "" {
				return fmt.Errorf("malformed ps: %s", b)
			}
			msg = c.Ps
		case CmdPersist:
			if c.State == nil || fields != 1 || c.State.Target != c.Target {
				return fmt.Errorf("malformed persist: %s", b)
			}
			msg = c.State
			persisted[c.Target] = ""
			if c.State.Task != nil {
				persisted[c.Target] = c.State.Task.TaskID
			}
		case CmdDelete:
			if fields != 0 || c.Target == "" || c.Host != "" {
				return fmt.Errorf("malformed delete: %s", b)
			}
		case CmdAllocReply:
			if c.Alloc == nil || fields != 1 || c.Host != "" {
				return fmt.Errorf("malformed alloc reply: %s", b)
			}
			var sum int64
			for _, g := range c.Alloc.Grants {
				sum += g.MiB
				if g.MiB <= 0 || g.Host == "" || g.HelperID == "" {
					return fmt.Errorf("alloc reply with a bad grant: %s", b)
				}
			}
			if c.Alloc.Error != nil && sum > 0 {
				return fmt.Errorf("alloc reply with both grants and an error: %s", b)
			}
		case CmdHelper:
			x := c.Helper
			if x == nil || fields != 1 || c.Host == "" || x.HelperID == "" || (x.Op != schemas.HelperStart && x.Op != schemas.HelperStop) {
				return fmt.Errorf("malformed helper request: %s", b)
			}
			if x.Op == schemas.HelperStart {
				h := e.helpers[x.HelperID]
				switch {
				case h == nil || h.owner == nil || h.host.name != c.Host || h.state != helperStarting:
					return fmt.Errorf("start of helper %s, which is not a starting helper of a task on %s: %s", x.HelperID, c.Host, b)
				case h.owner.id != x.TaskID || h.owner.epoch != x.Epoch || x.MiB != h.mib || x.MiB <= 0:
					return fmt.Errorf("start of helper %s does not carry its task's id, epoch and size: %s", x.HelperID, b)
				case h.host.reserved+h.host.helperMiB+h.host.foreign() > h.host.total-e.cfg.HostHeadroomMiB:
					return fmt.Errorf("start of helper %s over capacity on %s: reserves %d + helpers %d + foreign %d > %d - headroom %d",
						x.HelperID, c.Host, h.host.reserved, h.host.helperMiB, h.host.foreign(), h.host.total, e.cfg.HostHeadroomMiB)
				case h.host.lost || h.host.noHelpers:
					return fmt.Errorf("start of helper %s on a host that may not take one: %s", x.HelperID, b)
				}
			}
		default:
			return fmt.Errorf("unknown command kind %d", c.Kind)
		}
		if msg != nil {
			if err := msg.Validate(); err != nil {
				return fmt.Errorf("command %d (%s) would be refused: %v: %s", i, c.Kind, err, b)
			}
		}
		if c.Kind != CmdLaunch {
			continue
		}
		r := c.Launch
		k := e.byID[r.TaskID]
		switch {
		case k == nil || k.t.task != k || k.t.name != r.Target || k.epoch != r.Epoch || k.host.name != c.Host:
			return fmt.Errorf("launch %s is not its target's task: %s", r.TaskID, b)
		case persisted[r.Target] != r.TaskID:
			return fmt.Errorf("launch %s is not written ahead: no persist naming it before it", r.TaskID)
		case r.RAM.WrapperMiB+r.RAM.HelpersMiB != k.budget:
			return fmt.Errorf("launch %s asks %d MiB, its task books %d", r.TaskID, r.RAM.WrapperMiB+r.RAM.HelpersMiB, k.budget)
		case k.host.lost:
			return fmt.Errorf("launch %s on lost host %s", r.TaskID, c.Host)
		case k.host.reserved+k.host.helperMiB+k.host.foreign() > k.host.total-e.cfg.HostHeadroomMiB:
			return fmt.Errorf("launch %s over capacity: host %s reserves %d + helpers %d + foreign %d > %d - headroom %d",
				r.TaskID, c.Host, k.host.reserved, k.host.helperMiB, k.host.foreign(), k.host.total, e.cfg.HostHeadroomMiB)
		}
	}
	return nil
}

// check verifies the heap order and the positions recorded in the targets.
func (h *targetHeap) check() error {
	for i, t := range h.items {
		if *h.pos(t) != i {
			return fmt.Errorf("%s at %d records %d", t.name, i, *h.pos(t))
		}
		if i > 0 && h.less(t, h.items[(i-1)/2]) {
			return fmt.Errorf("%s at %d is before its parent", t.name, i)
		}
	}
	return nil
}
