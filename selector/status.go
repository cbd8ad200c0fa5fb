package selector

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// Target states shown in status.
const (
	StatePending   = "pending"
	StateLaunching = "launching"
	StateActive    = "active"
	StateSuspect   = "suspect"
	StateBlocked   = "blocked"
	StateComplete  = "complete"
)

// Failure causes counted in status.
const (
	FailInsufficientRAM    = schemas.CodeInsufficientRAM
	FailUnknownType        = schemas.CodeUnknownType
	FailInvalid            = schemas.CodeInvalid
	FailDraining           = schemas.CodeDraining
	FailNoResponders       = "no_responders"
	FailLaunchTimeout      = "launch_timeout"
	FailSilent             = "silent"
	FailStale              = "stale"
	FailHelpersUnavailable = schemas.ReasonHelpersUnavailable
	FailExited             = schemas.ReasonExited
	FailKilled             = schemas.ReasonKilled
	FailCrashed            = schemas.ReasonCrashed
	FailHostLost           = "host_lost"
	FailGoneAfterRestart   = "gone_after_restart"
	FailNotSent            = "not_sent"
	FailFenced             = schemas.ReasonFenced
	FailOOM                = schemas.ReasonOOM
	FailOther              = "other"
)

// Status returns a snapshot for operators. It allocates; call it at the rate
// a person reads it, not per message.
func (e *Engine) Status(now time.Time) schemas.SelectorStatus {
	st := schemas.SelectorStatus{
		V:               schemas.Version,
		Ready:           e.Ready(now),
		Connected:       e.connected,
		Degraded:        e.degraded != "",
		DegradedReason:  e.degraded,
		Disruption:      e.disruption,
		Recovering:      e.recovering,
		LaunchesStopped: e.stopReason(now),
		Backoff:         schemas.Backoff{Level: e.backoff.Level()},
		PendingLaunches: e.pendingLaunches,
		Targets:         make([]schemas.TargetStatus, 0, len(e.targets)),
		Hosts:           make([]schemas.HostStatusLine, 0, len(e.hostSeq)),
		Counters:        e.counters,
		At:              now.UTC(),
	}
	if !e.backoff.next.IsZero() {
		st.Backoff.NextLaunchAt = e.wall(now, e.backoff.next)
	}
	st.Counters.Failures = maps.Clone(e.counters.Failures)
	st.Counters.MalformedMessages = maps.Clone(e.counters.MalformedMessages)
	mostFree, live := e.mostFree(now)
	for _, t := range e.targets {
		ts := e.targetStatus(now, t)
		if ts.State == StatePending && ts.Reason == "" {
			ts.Reason = e.pendingReason(now, t, mostFree, live)
		}
		st.Targets = append(st.Targets, ts)
	}
	slices.SortFunc(st.Targets, func(a, b schemas.TargetStatus) int { return strings.Compare(a.Target, b.Target) })
	for _, h := range e.hostSeq {
		st.Hosts = append(st.Hosts, schemas.HostStatusLine{
			Host:        h.name,
			TotalMiB:    h.total,
			UsedMiB:     h.used,
			ReservedMiB: clampMiB(h.reserved + h.helperMiB), // sums of bounded figures: bounded for display
			FreeMiB:     clampMiB(h.free(e.cfg.HostHeadroomMiB)),
			Tasks:       len(h.tasks),
			Stale:       e.hostsHeard(now).Sub(h.lastStatus) >= e.cfg.HostStale,
			Lost:        h.lost,
			Draining:    h.draining,
			Avoided:     h.avoided,
			HelpersMiB:  clampMiB(h.helperMiB),
			NoHelpers:   h.noHelpers,
		})
	}
	slices.SortFunc(st.Hosts, func(a, b schemas.HostStatusLine) int { return strings.Compare(a.Host, b.Host) })
	return st
}

// mostFree is the most RAM free on a host a launch may go to, and whether
// there is such a host.
func (e *Engine) mostFree(now time.Time) (int64, bool) {
	most, any := int64(0), false
	for _, h := range e.hostSeq {
		if e.eligible(now, h) {
			most, any = max(most, h.free(e.cfg.HostHeadroomMiB)), true
		}
	}
	return most, any
}

// pendingReason says why a pending target is not launched now.
func (e *Engine) pendingReason(now time.Time, t *target, mostFree int64, live bool) string {
	switch {
	case e.stopReason(now) != "":
		return "launches stopped: " + e.stopReason(now)
	case !e.backoff.open(now):
		return "global backoff until " + e.wall(now, e.backoff.next).Format(time.RFC3339Nano)
	case e.pendingLaunches >= e.cfg.MaxPendingLaunches:
		return "waiting for pending launches to be confirmed"
	case !live:
		return "no live host to launch on"
	case t.est.MinMiB() > mostFree:
		return fmt.Sprintf("needs at least %d MiB; the most free on a live host is %d MiB", t.est.MinMiB(), mostFree)
	}
	return "next in line"
}

// wall turns an engine time into wall-clock UTC for display, relative to now.
func (e *Engine) wall(now, t time.Time) time.Time { return now.UTC().Add(t.Sub(now)) }

// Ready reports whether the engine is connected and past its recovery grace.
func (e *Engine) Ready(now time.Time) bool {
	return e.connected && !e.recovering && !now.Before(e.graceUntil)
}

func (e *Engine) stopReason(now time.Time) string {
	switch {
	case e.shutdown:
		return "shutting down"
	case e.conflict != "":
		return e.conflict
	case !e.connected:
		return "disconnected"
	case e.recovering || now.Before(e.graceUntil):
		return "recovery grace"
	case e.disruption == DisruptionFull:
		return "full disruption: " + e.degraded
	}
	return ""
}

func (e *Engine) targetStatus(now time.Time, t *target) schemas.TargetStatus {
	ts := schemas.TargetStatus{
		Target:  t.name,
		Phase:   t.phase,
		Epoch:   t.epoch,
		FullMiB: clampMiB(t.est.FullMiB()),
		State:   StatePending,
		Reason:  t.blocked,
	}
	switch {
	case t.task != nil:
		k := t.task
		ts.TaskID, ts.PID, ts.Host, ts.BudgetMiB = k.id, k.pid, k.host.name, k.budget
		ts.Helpers = holdings(k)
		if !k.lastHB.IsZero() {
			ts.HeartbeatAgeMS = now.Sub(k.lastHB).Milliseconds()
		} else {
			ts.HeartbeatAgeMS = 0 // the wire format has no negative ages; state launching says "none yet"
		}
		switch k.state {
		case taskLaunching, taskLaunched:
			ts.State = StateLaunching
		case taskActive:
			ts.State = StateActive
		default:
			ts.State = StateSuspect
			ts.Reason = suspectReason(k)
		}
	case t.blocked != "":
		ts.State = StateBlocked
	case t.complete:
		ts.State = StateComplete
	case t.readyAt.After(now):
		ts.Reason = "restart delay until " + e.wall(now, t.readyAt).Format(time.RFC3339)
	}
	if t.deleted {
		ts.Reason = "deleted; stopping its task"
	}
	return ts
}

func suspectReason(k *task) string {
	var r string
	switch k.why {
	case suspectLaunch:
		r = "no first heartbeat"
	case suspectStale:
		r = "heartbeat stale"
	case suspectRecovered:
		r = "recorded before restart; unconfirmed"
	case suspectDeleted:
		r = "target deleted"
	case suspectSuperseded:
		r = "its phase was done by an earlier task"
	case suspectPreempted:
		r = "preempted: its RAM goes to the focus target"
	}
	if k.state == taskKilling {
		return r + "; killing"
	}
	if !k.awaitDoneAt.IsZero() {
		return r + "; its host says it finished: waiting for its done event"
	}
	if k.psMissing {
		return r + "; host does not answer"
	}
	return r + "; checking host"
}
