package selector

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// Disruption modes, after the Kubernetes node lifecycle controller's zone
// states. See checkHosts.
const (
	// DisruptionNormal: a host silent for HostStale is declared lost.
	DisruptionNormal = "normal"
	// DisruptionPartial: more than UnhealthyHostFraction of the hosts went
	// silent within one HostStale window while others still report; silent
	// hosts are declared lost at LostHostsPerMin.
	DisruptionPartial = "partial"
	// DisruptionFull: the selector is disconnected, or no host reports. The
	// fault is most likely the selector's own: nothing is declared lost and
	// nothing is launched.
	DisruptionFull = "full"
)

// Retention of what the engine remembers about things that are gone.
const (
	// tombTTL is how long the last epoch of a deleted target is kept, so
	// that a late message of its old tasks is still fenced if it is
	// declared again.
	tombTTL = time.Hour
	// forgetHostAfter is how long a lost host without tasks stays in
	// status before it is forgotten.
	forgetHostAfter = 10 * time.Minute
	// pruneEvery is how often the engine looks for what to forget.
	pruneEvery = time.Minute
)

// heardAsOf returns the time up to which an input whose edge reported asOf
// (see Tick) is known to be handled: asOf, or now when asOf is zero or later.
func heardAsOf(now, asOf time.Time) time.Time {
	if asOf.IsZero() || asOf.After(now) {
		return now
	}
	return asOf
}

// heartbeatsHeard is the time up to which heartbeats are known to be
// handled: the silence of a task is judged as of then, since heartbeats that
// arrived later may still wait in the edge's queue.
func (e *Engine) heartbeatsHeard(now time.Time) time.Time { return heardAsOf(now, e.hbAsOf) }

// hostsHeard is the time up to which host statuses are known to be handled:
// the silence of a host is judged as of then.
func (e *Engine) hostsHeard(now time.Time) time.Time { return heardAsOf(now, e.hostAsOf) }

// inputDropped handles the edge's report that it lost heartbeats or host
// statuses: silence up to now proves nothing, so it is measured afresh.
func (e *Engine) inputDropped(now time.Time, ev *InputDropped) {
	e.counters.InputGaps++
	switch ev.Source {
	case InputHeartbeats:
		e.staleBase = now
		e.hbDropAt = now
	case InputHostStatuses:
		e.hostStaleBase = now
	}
}

func (e *Engine) hostStatus(now time.Time, st *schemas.HostStatus) {
	h := e.hostNamed(now, st.Host)
	back := h.lost || !h.seen
	first := !h.seen
	if back || len(st.Helpers) > 0 {
		h.noHelpers = false // a worker that came back, or one that runs helpers
	}
	h.seen = true
	h.lastStatus = now
	h.total = clampMiB(st.RAM.TotalMiB)
	h.used = clampMiB(st.RAM.UsedMiB)
	h.draining = st.Draining
	h.avoided = false
	h.lost = false
	owned := e.helperStatus(now, h, st, first)
	for _, id := range st.Tasks {
		if k := e.byID[id]; k != nil && k.host == h {
			owned += k.used
		}
	}
	h.foreignMiB = max(h.used-owned, 0)
	if !e.connected || len(st.Tasks) == 0 {
		return
	}
	// A task the engine does not know (left over from a time the host was
	// lost, or a launch whose reply never came) may never heartbeat: ask
	// the host, and fence what the reply shows.
	if !back && now.Sub(h.strayPsAt) < e.cfg.HeartbeatStale {
		return
	}
	for _, id := range st.Tasks {
		if e.byID[id] == nil {
			if last, ok := e.fenced[id]; ok && now.Sub(last) < e.cfg.ReplyTimeout {
				continue
			}
			h.strayPsAt = now
			e.emit(Command{Kind: CmdPs, Host: h.name, Ps: &schemas.PsRequest{V: schemas.Version}})
			return
		}
	}
}

func (e *Engine) tick(now time.Time) {
	if e.recovering {
		// The grace ends early only when every recorded task is confirmed.
		early := e.recorded > 0 && e.recordedOK == e.recorded
		if early || !now.Before(e.graceUntil) {
			e.recovering = false
			if early {
				e.graceUntil = minTime(e.graceUntil, now)
			}
		}
	}
	for e.delayed.len() > 0 && !e.delayed.peek().readyAt.After(now) {
		e.requeue(now, e.delayed.pop())
	}
	if !now.Before(e.nextPrune) {
		e.prune(now)
	}
	if !e.connected {
		return // nothing is declared stale while the bus is away
	}
	watch := !now.Before(e.graceUntil)
	lost := 2 * e.cfg.ReplyTimeout // a probe this old is taken as unanswered
	// Silence is judged only up to the time heartbeats are handled up to:
	// what waits in the edge's queue is no silence of the tasks.
	heard := e.heartbeatsHeard(now)
	// An active task is stale once max(lastHB, staleBase) is this old as of
	// heard; the common case, an active task heard from recently, is decided
	// from the hot slice alone.
	staleAt := heard.Sub(e.start) - e.cfg.HeartbeatStale
	checkStale := watch && e.since(e.staleBase) <= staleAt
	for i := 0; i < len(e.tasks); i++ {
		if hk := &e.hot[i]; hk.state == taskActive && (!checkStale || hk.lastHB > staleAt) {
			continue
		}
		k := e.tasks[i]
		switch k.state {
		case taskLaunching, taskLaunched:
			if k.sent && heard.Sub(k.launchedAt) >= e.cfg.LaunchTimeout {
				e.counters.Timeouts++
				why := suspectLaunch
				if k.why == suspectDeleted || k.why == suspectSuperseded {
					why = k.why
				}
				e.suspect(now, k, onLaunchTimeout, why)
			}
		case taskActive:
			if heard.Sub(maxTime(k.lastHB, e.staleBase)) >= e.cfg.HeartbeatStale {
				e.counters.Stale++
				e.suspect(now, k, onStale, suspectStale)
			}
		case taskSuspect:
			if !k.awaitDoneAt.IsZero() {
				// Its host says it finished; its done event closes it.
				// Should the event never come, it is taken as gone.
				if now.Sub(k.awaitDoneAt) >= e.cfg.HostStale {
					cause, fail := goneCause(k)
					e.close(now, k, cause, fail)
				}
				continue
			}
			if k.probeOut && now.Sub(k.probeAt) >= lost {
				e.probeMissed(k)
			}
			if k.why == suspectRecovered && e.recovering {
				continue
			}
			if !k.probeOut && now.Sub(k.probeAt) >= e.cfg.ReplyTimeout {
				e.ps(now, k)
			}
		case taskKilling:
			if k.probeOut && now.Sub(k.probeAt) >= lost {
				k.probeOut = false
			}
			if !k.probeOut && now.Sub(k.probeAt) >= e.cfg.ReplyTimeout {
				e.kill(now, k, silentReason(k.why))
			}
		}
	}
	e.tickHelpers(now)
	e.checkHosts(now)
	for _, h := range e.hostSeq {
		if h.lost && len(h.tasks) > 0 {
			e.closeLost(now, h)
		}
	}
	if len(e.fenced) >= 1024 {
		for id, at := range e.fenced {
			if now.Sub(at) >= e.cfg.ReplyTimeout {
				delete(e.fenced, id)
			}
		}
	}
}

// prune forgets what no longer matters: tombs of targets deleted more than
// tombTTL ago, fences older than a reply timeout, and hosts lost for
// forgetHostAfter that hold no task. It keeps memory bounded under churn of
// target and host names.
func (e *Engine) prune(now time.Time) {
	e.nextPrune = now.Add(pruneEvery)
	for name, tb := range e.tombs {
		if now.Sub(tb.at) >= tombTTL {
			delete(e.tombs, name)
		}
	}
	for id, at := range e.fenced {
		if now.Sub(at) >= e.cfg.ReplyTimeout {
			delete(e.fenced, id)
		}
	}
	for i := len(e.hostSeq) - 1; i >= 0; i-- {
		if h := e.hostSeq[i]; h.lost && len(h.tasks) == 0 && now.Sub(h.lostAt) >= forgetHostAfter {
			e.dropHost(h)
		}
	}
}

// setDisruption changes the disruption mode and its reason.
func (e *Engine) setDisruption(mode, reason string) {
	switch {
	case mode != DisruptionPartial:
		e.partialSince = time.Time{}
	case e.disruption != DisruptionPartial:
		e.partialSince = e.lastNow
	}
	e.disruption = mode
	if mode == DisruptionNormal {
		reason = ""
	}
	e.degraded = reason
}

// checkHosts sets the disruption mode and declares silent hosts lost
// accordingly. It is modelled on the Kubernetes node lifecycle controller:
//
//   - full disruption: no host has reported for most of a HostStale window
//     (the selector's own fault is likelier than every host failing at
//     once): nothing is declared lost, nothing is launched, and running
//     tasks found stale are not killed. When it ends, host and task silence
//     are measured afresh, as after a reconnect.
//   - partial disruption: more than UnhealthyHostFraction of the hosts went
//     silent within one HostStale window while others still report: silent
//     hosts are declared lost, the longest silent first, at LostHostsPerMin.
//   - normal: every host silent for HostStale is declared lost.
//
// Hosts report on their own clocks, so the statuses of a fleet that stops
// reporting at one moment run out over a spread of up to one status period.
// So that the first hosts to run out are not declared lost before the rest
// are seen to follow, a host silent for three quarters of HostStale counts
// as silent here. Every mode leads somewhere that does not depend on the
// fault healing: partial disruption loses hosts at a bounded rate, and full
// disruption ends as soon as one host reports.
//
// Silence is measured up to the time host statuses are handled up to (see
// Tick), not up to now: statuses that wait in the edge's own queue are no
// silence of their hosts.
func (e *Engine) checkHosts(now time.Time) {
	if now.Before(e.graceUntil) {
		return
	}
	near := e.cfg.HostStale - e.cfg.HostStale/4
	// Host silence is judged up to the time statuses are handled up to.
	heard := e.hostsHeard(now)
	stale := e.stale[:0]
	total, silent, reporting := 0, 0, 0
	for _, h := range e.hostSeq {
		if h.lost {
			if now.Sub(h.lostAt) < e.cfg.HostStale || (!e.partialSince.IsZero() && !h.lostAt.Before(e.partialSince)) {
				// Lost within the window, or during this partial
				// disruption: it still counts, so that losing hosts one
				// by one does not end the disruption.
				total++
				silent++
			}
			continue
		}
		total++
		quiet := heard.Sub(maxTime(h.lastStatus, e.hostStaleBase))
		if quiet >= e.cfg.HostStale {
			stale = append(stale, h)
		}
		switch {
		case quiet >= near:
			silent++
		case h.seen:
			reporting++
		}
	}
	e.stale = stale
	defer clear(e.stale)
	switch {
	case reporting == 0 && len(stale) > 0:
		if e.disruption != DisruptionFull {
			e.setDisruption(DisruptionFull, fmt.Sprintf("no host has reported for %v", near))
		}
		return
	case e.disruption == DisruptionFull:
		// A host reports again. Silence during the disruption proves
		// nothing (it was most likely the selector's own): measure afresh.
		e.setDisruption(DisruptionNormal, "")
		e.hostStaleBase = now
		e.staleBase = now
		e.hbDropAt = now // a task that went stale meanwhile and runs is not killed for it
		return
	case len(stale) > 0 && float64(silent) > e.cfg.UnhealthyHostFraction*float64(total):
		e.setDisruption(DisruptionPartial, fmt.Sprintf("%d of %d hosts went silent within %v; declaring them lost at %g per minute",
			silent, total, e.cfg.HostStale, e.cfg.LostHostsPerMin))
		e.refillLossTokens(now)
		// The longest silent first; ties by name, for determinism.
		slices.SortFunc(stale, func(a, b *host) int {
			if c := a.lastStatus.Compare(b.lastStatus); c != 0 {
				return c
			}
			return strings.Compare(a.name, b.name)
		})
		for _, h := range stale {
			if e.lossTokens < 1 {
				break
			}
			e.lossTokens--
			e.loseHost(now, h)
		}
		return
	}
	e.setDisruption(DisruptionNormal, "")
	e.refillLossTokens(now)
	for _, h := range stale {
		e.loseHost(now, h)
	}
}

// refillLossTokens adds the host losses that LostHostsPerMin allows since the
// last refill, up to a burst of one.
func (e *Engine) refillLossTokens(now time.Time) {
	if d := now.Sub(e.lossTokensAt); d > 0 {
		e.lossTokens = min(1, e.lossTokens+d.Minutes()*e.cfg.LostHostsPerMin)
	}
	e.lossTokensAt = now
}

// loseHost declares h lost: its tasks are gone and their targets requeued,
// except those that may still start or run unseen (see inFlight), which
// closeLost settles later.
func (e *Engine) loseHost(now time.Time, h *host) {
	h.lost = true
	h.lostAt = now
	e.counters.HostsLost++
	e.loseHelpers(h)
	e.closeLost(now, h)
}

// closeLost closes the tasks of lost host h that are no longer in flight.
func (e *Engine) closeLost(now time.Time, h *host) {
	for i := len(h.tasks) - 1; i >= 0; i-- {
		// close moves the last task into the slot it frees: every task
		// from i on has been seen already.
		if k := h.tasks[i]; !e.inFlight(now, k) {
			e.close(now, k, closeRequeue, FailHostLost)
		}
	}
}

// inFlight reports whether k may still start, or run, on its host unseen
// even though the host has been silent for HostStale: its launch has not
// left yet (the edge holds it until the state written ahead of it is
// stored, and sends it whatever happens meanwhile); or it left, or k
// heartbeated, less than HostStale ago. A worker that takes the launch (at
// most a reply timeout after it left) or heartbeats is on the bus at that
// moment: cut off right after, it fences itself within the fence time plus
// one probe period, which HostStale exceeds. Before then, relaunching k's
// target elsewhere could run it twice.
func (e *Engine) inFlight(now time.Time, k *task) bool {
	switch {
	case k.placed && !k.sent:
		return true
	case k.confirmed:
		return now.Sub(k.lastHB) < e.cfg.HostStale
	}
	return now.Sub(k.launchedAt) < e.cfg.HostStale
}

// NextDeadline returns the earliest time at which a Tick may change
// something, or the zero time when nothing waits on time. It costs a pass
// over every task and host; call it when arming a timer, not per message.
// It assumes that the input is handled up to the Tick's time: while the
// edge's queues lag (see Tick), the deadlines of silence come later.
func (e *Engine) NextDeadline() time.Time {
	var next time.Time
	at := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if e.recovering {
		at(e.graceUntil)
	}
	if e.pending.len() > 0 {
		at(e.graceUntil)
		at(e.backoff.next)
	}
	if e.delayed.len() > 0 {
		at(e.delayed.peek().readyAt)
	}
	if len(e.tombs) > 0 || len(e.fenced) > 0 {
		at(e.nextPrune)
	}
	if !e.connected {
		return next
	}
	for _, k := range e.tasks {
		switch k.state {
		case taskLaunching, taskLaunched:
			if k.sent {
				at(k.launchedAt.Add(e.cfg.LaunchTimeout))
			}
		case taskActive:
			at(maxTime(maxTime(k.lastHB, e.staleBase).Add(e.cfg.HeartbeatStale), e.graceUntil))
		case taskSuspect, taskKilling:
			if k.probeOut {
				at(k.probeAt.Add(2 * e.cfg.ReplyTimeout))
			} else {
				at(k.probeAt.Add(e.cfg.ReplyTimeout))
			}
		}
	}
	e.helperDeadline(at)
	near := e.cfg.HostStale - e.cfg.HostStale/4
	for _, h := range e.hostSeq {
		if h.lost {
			at(h.lostAt.Add(e.cfg.HostStale))
			for _, k := range h.tasks {
				switch {
				case k.placed && !k.sent:
				case k.confirmed:
					at(k.lastHB.Add(e.cfg.HostStale))
				default:
					at(k.launchedAt.Add(e.cfg.HostStale))
				}
			}
			if len(h.tasks) == 0 {
				at(maxTime(e.nextPrune, h.lostAt.Add(forgetHostAfter)))
			}
			continue
		}
		base := maxTime(h.lastStatus, e.hostStaleBase)
		at(maxTime(base.Add(near), e.graceUntil))
		at(maxTime(base.Add(e.cfg.HostStale), e.graceUntil))
	}
	if e.disruption == DisruptionPartial && e.lossTokens < 1 && e.cfg.LostHostsPerMin > 0 {
		wait := time.Duration((1 - e.lossTokens) / e.cfg.LostHostsPerMin * float64(time.Minute))
		at(e.lossTokensAt.Add(wait))
	}
	return next
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
