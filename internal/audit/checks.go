package audit

import (
	"fmt"
	"sort"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// This file holds the checks a test or the soak runs against the
// selector's status, beyond the violations recorded as they happen.

// CheckSettled judges a settled system (no fault active, nothing in
// flight): st is the selector's status and desired the declared targets. It
// returns the breaches found, without recording them.
func (a *Auditor) CheckSettled(st *schemas.SelectorStatus, desired []string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	lines := make(map[string]schemas.TargetStatus, len(st.Targets))
	for _, ts := range st.Targets {
		lines[ts.Target] = ts
	}
	for _, name := range desired {
		ts, ok := lines[name]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("desired target %q is not in status", name))
		case ts.State == selector.StatePending && ts.Reason == "":
			out = append(out, fmt.Sprintf("target %q is pending with no stated reason", name))
		case ts.State == selector.StateActive:
			if p := a.live[procKey{ts.Host, ts.TaskID}]; p == nil {
				out = append(out, fmt.Sprintf("target %q is active as %s on %q, which runs no such process", name, ts.TaskID, ts.Host))
			}
		}
	}
	held := a.liveHelperMiB()
	for _, p := range a.live {
		held[p.Host] += p.BudgetMiB
	}
	for _, h := range st.Hosts {
		if h.Lost {
			if h.ReservedMiB != 0 || h.Tasks != 0 {
				out = append(out, fmt.Sprintf("lost host %q still holds %d MiB for %d tasks", h.Host, h.ReservedMiB, h.Tasks))
			}
			continue
		}
		if h.ReservedMiB != held[h.Host] {
			out = append(out, fmt.Sprintf("host %q: %d MiB reserved, its live processes and helpers hold %d MiB", h.Host, h.ReservedMiB, held[h.Host]))
		}
	}
	return out
}

// CheckDoneApplied judges the selector's status st against the done events
// on the stream: a target whose task runs phase typ at an epoch no later
// than the one at which typ was reported done has lost that event (the
// selector should have moved on, or launched the repeat at a new epoch). It
// returns the breaches found, without recording them. Pending targets are
// not judged: their next epoch is not issued yet.
func (a *Auditor) CheckDoneApplied(st *schemas.SelectorStatus) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, ts := range st.Targets {
		if ts.TaskID == "" {
			continue
		}
		if ep, ok := a.done[ts.Target][ts.Phase]; ok && ts.Epoch <= ep {
			out = append(out, fmt.Sprintf("target %q runs phase %q at epoch %d, but that phase was reported done at epoch %d",
				ts.Target, ts.Phase, ts.Epoch, ep))
		}
	}
	return out
}

// CheckCapacity reports every host whose live processes (by their budgets)
// and fleet helpers hold more RAM than ramMiB gives it (hosts missing from
// ramMiB are not judged): the selector overcommitted it.
func (a *Auditor) CheckCapacity(ramMiB map[string]int64) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	held := a.liveHelperMiB()
	for _, p := range a.live {
		held[p.Host] += p.BudgetMiB
	}
	var out []string
	for host, total := range ramMiB {
		if held[host] > total {
			out = append(out, fmt.Sprintf("host %q: live processes and helpers hold %d MiB of its %d MiB", host, held[host], total))
		}
	}
	sort.Strings(out)
	return out
}
