package soak

import (
	"fmt"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// ----- settling and the result -----

// settle waits, once every fault has healed, until the recoveries under
// measurement have ended and the settled system passes the auditor's
// checks, bounded by Options.Settle. It returns the breaches found by the
// last check when the system did not settle.
func (w *world) settle() []string {
	deadline := time.Now().Add(w.o.Settle)
	w.log.Info("soak: faults stopped; settling", "bound", w.o.Settle)
	for w.track.pending() > 0 && time.Now().Before(deadline) {
		w.track.expire(time.Now())
		time.Sleep(100 * time.Millisecond)
	}
	var last []string
	clean := 0
	for time.Now().Before(deadline) {
		st := w.status()
		last = w.checkSettled(&st)
		if len(last) > 0 {
			clean = 0
		} else if clean++; clean == 3 {
			w.log.Info("soak: settled")
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	w.track.expire(time.Now().Add(w.o.StallAfter)) // whatever is still open stalled
	return last
}

// checkSettled judges st: the auditor's CheckSettled, and every desired
// target but the whale running or complete.
func (w *world) checkSettled(st *schemas.SelectorStatus) []string {
	w.mu.Lock()
	desired := sortedKeys(w.desired)
	w.mu.Unlock()
	out := w.aud.CheckSettled(st, desired)
	if !st.Ready || st.Recovering || st.PendingLaunches > 0 {
		out = append(out, fmt.Sprintf("selector not settled: ready %v, recovering %v, %d launches pending (%s)",
			st.Ready, st.Recovering, st.PendingLaunches, st.LaunchesStopped))
	}
	for _, ts := range st.Targets {
		switch {
		case ts.Target == WhaleTarget:
			if ts.State != selector.StatePending && ts.State != selector.StateBlocked {
				out = append(out, fmt.Sprintf("target %q, which fits no host, is %s", ts.Target, ts.State))
			}
		case !containsStr(desired, ts.Target):
		case ts.State != selector.StateActive && ts.State != selector.StateComplete:
			out = append(out, fmt.Sprintf("target %q is %s after the faults stopped (%s)", ts.Target, ts.State, ts.Reason))
		}
	}
	return out
}

func containsStr(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// result gathers the figures; faults began at start.
func (w *world) result(start time.Time, settled []string) Result {
	byKind, stalled := w.track.results()
	var all []time.Duration
	stats := make(map[string]Stats, len(byKind))
	for k, ds := range byKind {
		stats[k] = summarize(ds)
		all = append(all, ds...)
	}
	overall := summarize(all)
	w.mu.Lock()
	faults := make(map[string]int, len(w.counts))
	for k, n := range w.counts {
		faults[k] = n
	}
	failures := append([]string(nil), w.failures...)
	w.mu.Unlock()
	var v []string
	v = append(v, w.aud.Violations()...)
	for _, s := range settled {
		v = append(v, "settled: "+s)
	}
	v = append(v, stalled...)
	v = append(v, failures...)
	return Result{
		Seed:       w.o.Seed,
		Duration:   time.Since(start),
		Faults:     faults,
		Recoveries: overall.N,
		Recovery:   overall,
		ByKind:     stats,
		Goals:      goals(w.tm, byKind),
		Violations: v,
		Heartbeats: w.heartbeats(),
		Launches:   w.aud.LaunchCount(),
		Timers:     w.tm,
	}
}
