package selector

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/taskselector/taskselector/schemas"
)

// maxTaskIDPrefix bounds the target-name part of a task id, so that the id
// stays within schemas.MaxNameBytes.
const maxTaskIDPrefix = 160

// taskID names a new task: the target, its epoch and a random suffix. A long
// target name is cut (on a rune boundary) and followed by a hash of the whole
// name.
func taskID(name string, epoch, rnd uint64) string {
	prefix := name
	if len(prefix) > maxTaskIDPrefix {
		cut := maxTaskIDPrefix
		for cut > 0 && !utf8.RuneStart(prefix[cut]) {
			cut--
		}
		h := fnv.New64a()
		h.Write([]byte(name))
		prefix = prefix[:cut] + "~" + strconv.FormatUint(h.Sum64(), 36)
	}
	return prefix + "#" + strconv.FormatUint(epoch, 10) + "." + strconv.FormatUint(rnd>>16, 36)
}

func (e *Engine) launch(now time.Time, t *target, h *host, budget int64) {
	t.epoch++
	wrapper := min(t.est.WrapperMiB, budget)
	k := &task{
		id:         taskID(t.name, t.epoch, e.ids.Uint64()),
		epoch:      t.epoch,
		t:          t,
		typ:        t.phase,
		budget:     budget,
		wrapper:    wrapper,
		launchedAt: now,
		countedPen: true,
		placed:     true,
		sent:       !e.cfg.LaunchSentReported,
	}
	e.pendingLaunches++
	e.attach(k, h)
	e.transition(k, onLaunch)
	e.counters.Launches++
	spec := t.spec
	args := map[string]any{"spec": &spec}
	if pa := phaseArgs(&spec, k.typ); pa != nil {
		args = pa // a real task program gets its phase's args, not the spec
	}
	e.persist(now, t) // write-ahead: the state names the task before it exists
	e.emit(Command{
		Kind:   CmdLaunch,
		Host:   h.name,
		Target: t.name,
		Launch: &schemas.LaunchRequest{
			V:      schemas.Version,
			TaskID: k.id,
			Epoch:  k.epoch,
			Target: t.name,
			Type:   k.typ,
			RAM:    schemas.TaskRAM{WrapperMiB: wrapper, HelpersMiB: budget - wrapper},
			Args:   args,
		},
	})
}

// phaseArgs returns the args of spec's phase typ, or nil when it declares
// none.
func phaseArgs(spec *schemas.TargetSpec, typ string) map[string]any {
	for i := range spec.Phases {
		if spec.Phases[i].Type == typ {
			return spec.Phases[i].Args
		}
	}
	return nil
}

func (e *Engine) launchReplied(now time.Time, ev *LaunchReplied) {
	k := e.byID[ev.Reply.TaskID]
	if k != nil && k.host.name != ev.Host {
		return // not from the task's host: it says nothing of the task
	}
	if k == nil {
		// A reply for a task already closed. If it started after all, it
		// is an impostor now.
		if ev.Reply.Error == nil && ev.Reply.PID > 0 {
			e.fence(now, ev.Host, ev.Target, ev.Reply.TaskID, ev.Reply.PID, "late launch reply")
		}
		return
	}
	if re := ev.Reply.Error; re != nil {
		if k.confirmed {
			return // it heartbeats: the error is stale
		}
		t := k.t
		switch re.Code {
		case schemas.CodeInsufficientRAM:
			e.close(now, k, closeRAM, FailInsufficientRAM)
		case schemas.CodeDraining:
			k.host.draining = true
			e.close(now, k, closeRequeue, FailDraining)
		default: // unknown_type, invalid, or a code this version does not know
			code := re.Code
			if code != schemas.CodeUnknownType && code != schemas.CodeInvalid {
				code = FailOther
			}
			if !t.deleted {
				// Blocked before close persists, so that a restart does
				// not try the refused spec again.
				t.blocked = fmt.Sprintf("launch refused: %s: %s", re.Code, re.Message)
			}
			e.close(now, k, closeRequeue, code)
		}
		return
	}
	k.sent = true // a reply came, so it left
	if k.pid == 0 && ev.Reply.PID > 0 {
		k.pid = ev.Reply.PID
		if k.countedPen {
			e.pendingByPID[pidKey{k.host.name, k.pid}] = k
		}
	}
	if k.state == taskLaunching {
		e.transition(k, onReply)
	}
	if (k.why == suspectDeleted || k.why == suspectSuperseded) && k.state != taskKilling && k.state != taskSuspect {
		e.kill(now, k, silentReason(k.why))
	}
}

func (e *Engine) launchUnanswered(now time.Time, ev *LaunchUnanswered) {
	k := e.byID[ev.TaskID]
	if k == nil || k.confirmed || k.host.name != ev.Host {
		return
	}
	if ev.NotSent && !k.sent {
		// The edge never sent it: nothing started.
		e.close(now, k, closeRequeue, FailNotSent)
		return
	}
	if ev.NoResponders {
		// Nobody received the request, so nothing started.
		k.host.avoided = true
		e.close(now, k, closeRequeue, FailNoResponders)
	}
	// A timed-out reply leaves the launch pending: the worker may have
	// started it and lost only the reply. The launch timeout decides.
}

// launchSent starts a launch's timeout: the request has left.
func (e *Engine) launchSent(now time.Time, ev *LaunchSent) {
	k := e.byID[ev.TaskID]
	if k == nil || k.sent {
		return
	}
	k.sent = true
	k.launchedAt = now
}

// heartbeat handles one heartbeat and reports whether it may enable a launch.
func (e *Engine) heartbeat(now time.Time, hb *schemas.Heartbeat) bool {
	e.counters.Heartbeats++
	t := e.targets[hb.Target]
	if t == nil {
		e.fenceHeartbeat(now, hb, "target not declared")
		return false
	}
	k := t.task
	if k == nil {
		if !t.deleted && hb.Epoch > t.epoch && hb.TaskID != "" && hb.Host != "" && e.byID[hb.TaskID] == nil {
			if h := e.hosts[hb.Host]; h == nil || !h.lost {
				e.adopt(now, t, hb)
				return true
			}
		}
		e.fenceHeartbeat(now, hb, "stale epoch")
		return false
	}
	if k.id != hb.TaskID || k.epoch != hb.Epoch || k.host.name != hb.Host {
		e.fenceHeartbeat(now, hb, "not the target's task")
		return false
	}
	k.lastHB = now
	e.hot[k.idx].lastHB = now.Sub(e.start)
	if hb.RAM.UsedMiB != k.used {
		e.setUsed(k, hb.RAM.UsedMiB)
	}
	k.sent = true
	if k.state == taskActive && !t.deleted {
		return false
	}
	return e.confirm(now, k, hb.PID)
}

// confirm handles the first heartbeat of a task that was not active.
func (e *Engine) confirm(now time.Time, k *task, pid int64) bool {
	if k.pid == 0 && pid > 0 {
		k.pid = pid
	}
	if k.state == taskKilling {
		return false // it was judged already; the kill stands
	}
	if k.t.deleted {
		e.kill(now, k, "target deleted")
		return false
	}
	if k.why == suspectSuperseded {
		e.kill(now, k, silentReason(k.why))
		return false
	}
	first := !k.confirmed
	e.transition(k, onHeartbeat)
	k.probeOut = false
	k.psMissing = false
	if first {
		k.confirmed = true
		k.confirmedAt = now
		if k.why == suspectRecovered {
			e.recordedOK++
		}
		if k.placed {
			e.counters.Confirmed++
			e.backoff.reset()
		}
		e.releasePending(k)
	}
	k.why = 0
	e.persist(now, k.t)
	return true
}

// adopt takes over a running task that no record names: the tasks bucket
// was lost, or the launch was sent just before a crash.
func (e *Engine) adopt(now time.Time, t *target, hb *schemas.Heartbeat) {
	e.pending.remove(t)
	e.delayed.remove(t)
	t.epoch = hb.Epoch
	if hb.Type != "" && hb.Type != t.phase && t.hasSpec && e.setPhase(t, hb.Type) &&
		strings.HasPrefix(t.blocked, blockedNoEstimate) {
		t.blocked = "" // the old phase had no estimate; the task's phase has one
	}
	k := &task{
		id:          hb.TaskID,
		epoch:       hb.Epoch,
		t:           t,
		typ:         hb.Type,
		pid:         hb.PID,
		budget:      clampMiB(hb.RAM.BudgetMiB),
		used:        clampMiB(hb.RAM.UsedMiB),
		confirmed:   true,
		launchedAt:  now,
		confirmedAt: now,
		lastHB:      now,
		sent:        true,
	}
	k.wrapper = min(t.est.WrapperMiB, k.budget)
	e.attach(k, e.hostNamed(now, hb.Host))
	e.transition(k, onAdopt)
	e.counters.Adoptions++
	e.persist(now, t)
}

// suspect marks k suspect for why, on trigger by (onLaunchTimeout or
// onStale), and asks its host whether it runs.
func (e *Engine) suspect(now time.Time, k *task, by taskTrigger, why suspicion) {
	e.transition(k, by)
	k.why = why
	k.suspectAt = now
	e.ps(now, k)
	e.persist(now, k.t)
}

func (e *Engine) ps(now time.Time, k *task) {
	k.probeOut = true
	k.probeAt = now
	req := &schemas.PsRequest{V: schemas.Version}
	if k.pid != 0 {
		req.PIDs = []int64{k.pid}
	}
	e.emit(Command{Kind: CmdPs, Host: k.host.name, Target: k.t.name, Ps: req})
}

func (e *Engine) kill(now time.Time, k *task, reason string) {
	e.transition(k, onKill)
	k.probeOut = true
	k.probeAt = now
	e.counters.Kills++
	e.emit(Command{Kind: CmdKill, Host: k.host.name, Target: k.t.name, Kill: &schemas.KillRequest{
		V: schemas.Version, TaskID: k.id, PID: k.pid, Reason: reason,
	}})
}

func (e *Engine) psReplied(now time.Time, ev *PsReplied) {
	h := e.hosts[ev.Host]
	if h == nil {
		return
	}
	if ev.Reply.Error != nil {
		// The host could not answer: its (empty) list says nothing.
		e.psUnanswered(now, &PsUnanswered{Host: ev.Host})
		return
	}
	var ended map[string]schemas.PsEnded
	for _, d := range ev.Reply.Ended {
		if ended == nil {
			ended = make(map[string]schemas.PsEnded, len(ev.Reply.Ended))
		}
		ended[d.TaskID] = d
	}
	// A task being started runs as far as the engine is concerned: it may
	// be killed (the worker kills it once it runs), and it is not gone.
	starting := make(map[string]bool, len(ev.Reply.Starting))
	for _, st := range ev.Reply.Starting {
		starting[st.TaskID] = true
	}
	running := make(map[string]*schemas.PsTask, len(ev.Reply.Tasks))
	for i := range ev.Reply.Tasks {
		p := &ev.Reply.Tasks[i]
		running[p.TaskID] = p
		if e.byID[p.TaskID] == nil && e.wouldFence(p.Target, p.TaskID, p.Epoch) {
			// A task that is not its target's: a leftover of a lost host,
			// a late launch, or another selector's. It must go.
			e.fence(now, ev.Host, p.Target, p.TaskID, p.PID, "not the target's task")
		}
	}
	for _, k := range slices.Clone(h.tasks) {
		if k.state != taskSuspect || !k.probeOut {
			continue
		}
		if ev.PIDs != nil && (k.pid == 0 || !slices.Contains(ev.PIDs, k.pid)) {
			continue // this reply does not speak of k
		}
		k.probeOut = false
		k.psMissing = false
		if p := running[k.id]; p != nil || starting[k.id] {
			if p != nil && k.pid == 0 && p.PID > 0 {
				k.pid = p.PID
			}
			switch {
			case k.why == suspectRecovered && e.recovering:
				continue // alive; its heartbeat will confirm it
			case k.why == suspectRecovered && p == nil && now.Sub(k.launchedAt) < e.cfg.LaunchTimeout:
				// Still being started, as a launch the engine sent
				// itself would be: its first heartbeat has the
				// launch timeout, counted from the restart, to come.
				continue
			case k.why == suspectStale && e.hbDropAt.After(k.suspectAt):
				// Heartbeats were lost on the selector's side since it was
				// judged stale: its silence may be ours. It runs, so it is
				// active again, and stale once HeartbeatStale passes from
				// the loss.
				e.transition(k, onRevive)
				k.why = 0
				e.persist(now, k.t)
				continue
			case e.disruption == DisruptionFull && k.why != suspectDeleted && k.why != suspectSuperseded:
				// Heartbeats may be what is failing: do not kill a
				// running task on their account; ask again later.
				continue
			}
			e.kill(now, k, silentReason(k.why))
			continue
		}
		if d, ok := ended[k.id]; ok && d.Kind == schemas.EventDone && d.Epoch == k.epoch {
			// It finished, and its done event is on its way: closing
			// it as gone now would run its phase again.
			if k.awaitDoneAt.IsZero() {
				k.awaitDoneAt = now
			}
			continue
		}
		cause, fail := goneCause(k)
		e.close(now, k, cause, fail)
	}
}

func silentReason(w suspicion) string {
	switch w {
	case suspectLaunch:
		return "no first heartbeat"
	case suspectDeleted:
		return "target deleted"
	case suspectSuperseded:
		return "phase already done"
	case suspectRecovered:
		return "no heartbeat since restart"
	case suspectPreempted:
		return "preempted for the focus target"
	}
	return "heartbeat stale"
}

func (e *Engine) psUnanswered(now time.Time, ev *PsUnanswered) {
	h := e.hosts[ev.Host]
	if h == nil {
		return
	}
	for _, k := range h.tasks {
		if k.state == taskSuspect && k.probeOut {
			e.probeMissed(k)
		}
	}
}

// probeMissed records that a ps of suspect task k went unanswered. The task
// may still run, so k keeps its RAM and its target waits: a host that is
// silent altogether is declared lost in time, which settles k, and a host
// that still reports but answers no ps (its replies fail to decode, or it
// refuses them) may never settle it. Either way k no longer holds a
// pending-launch slot, so that one silent or broken host cannot stop every
// launch elsewhere until it is lost. A host that took such a launch and has
// not reported since the ps was sent gets no new launch until it reports
// again: the slot given back must not go to it.
func (e *Engine) probeMissed(k *task) {
	k.probeOut = false
	k.psMissing = true
	if k.countedPen && k.host.lastStatus.Before(k.probeAt) {
		k.host.avoided = true
	}
	e.releasePending(k)
}

func (e *Engine) killReplied(now time.Time, ev *KillReplied) {
	k := e.byID[ev.Reply.TaskID]
	if k == nil || k.state != taskKilling || k.host.name != ev.Host {
		return
	}
	k.probeOut = false
	if ev.Reply.Running || ev.Reply.Error != nil {
		return // retried after ReplyTimeout
	}
	cause, fail := killedCause(k)
	e.close(now, k, cause, fail)
}

func (e *Engine) killUnanswered(now time.Time, ev *KillUnanswered) {
	if k := e.byID[ev.TaskID]; k != nil && k.state == taskKilling && k.host.name == ev.Host {
		k.probeOut = false
	}
}

type closeCause uint8

const (
	closeRequeue closeCause = iota + 1 // requeue at once, no penalty
	closeRAM                           // RAM pressure: raise the global backoff
	closeCrash                         // the target's task died: per-target restart delay
	closeDone                          // finished its phase
)

// goneCause is how a suspect task that its host says is gone is closed, and
// the failure it counts as.
func goneCause(k *task) (closeCause, string) {
	switch k.why {
	case suspectLaunch:
		if k.confirmed {
			return closeCrash, FailCrashed
		}
		return closeRAM, FailLaunchTimeout // a launch that died before its first heartbeat
	case suspectStale:
		return closeCrash, FailCrashed
	case suspectRecovered:
		return closeRequeue, FailGoneAfterRestart
	}
	return closeRequeue, "" // deleted, or superseded: not the task's fault
}

// killedCause is how a task killed for its silence is closed.
func killedCause(k *task) (closeCause, string) {
	switch k.why {
	case suspectDeleted, suspectSuperseded, suspectPreempted:
		return closeRequeue, ""
	case suspectLaunch:
		return closeCrash, FailSilent
	}
	return closeCrash, FailStale
}

// close ends k: its RAM is freed, its epoch closed and its target requeued
// (or deleted, blocked, advanced) according to cause. fail, when set, is the
// failure counted.
func (e *Engine) close(now time.Time, k *task, cause closeCause, fail string) {
	t := k.t
	if fail != "" {
		e.counters.Failures[fail]++
	}
	e.transition(k, onClose)
	e.closeHelpers(now, k)
	e.detach(k)
	if cause != closeDone && !t.deleted {
		e.counters.Requeues++
	}
	switch cause {
	case closeRAM:
		e.backoff.raise(now)
	case closeCrash:
		switch {
		case k.confirmed && now.Sub(k.confirmedAt) >= e.cfg.RestartDelayReset:
			t.restartDelay = e.cfg.RestartDelayBase
		case t.restartDelay == 0:
			t.restartDelay = e.cfg.RestartDelayBase
		default:
			t.restartDelay = min(2*t.restartDelay, e.cfg.RestartDelayMax)
		}
		t.readyAt = now.Add(t.restartDelay)
	}
	if t.deleted {
		e.forget(t)
		return
	}
	e.persist(now, t)
	e.requeue(now, t)
}
