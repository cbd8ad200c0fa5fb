package soak

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// recovery is one fault's recovery being measured: it ends at the first
// process start, after since, of every target in want, or of any target when
// want is nil (the selector launching again). Starts of the task ids in
// skip do not count: their launches left before the fault.
type recovery struct {
	kind     string
	host     string // the host the fault hit, when it hit one task
	since    time.Time
	want     map[string]bool
	skip     map[string]bool
	last     time.Time
	deadline time.Time
	desc     string
	overdue  bool // reported as slower than its goal
}

// tracker measures recoveries from the process starts the workers report.
type tracker struct {
	// onDone, if set, hears of every recovery measured (under the
	// tracker's lock: it must not call back).
	onDone func(kind, desc string, d time.Duration)

	mu      sync.Mutex
	open    []*recovery
	done    map[string][]time.Duration // by fault kind
	stalled []string
	starts  map[string]time.Time // last start per target
}

func newTracker() *tracker {
	return &tracker{done: make(map[string][]time.Duration), starts: make(map[string]time.Time)}
}

// expect starts measuring how long after since every target in targets has
// started a new process, the task ids in skip excepted. A fault that left
// no target to relaunch is not measured. host, if set, is the host whose
// task the fault hit: no host fault hits it until the recovery ends.
func (t *tracker) expect(kind, desc, host string, since time.Time, targets []string, skip map[string]bool, bound time.Duration) {
	if len(targets) == 0 {
		return
	}
	want := make(map[string]bool, len(targets))
	for _, n := range targets {
		want[n] = true
	}
	t.add(&recovery{kind: kind, desc: desc, host: host, since: since, want: want, skip: skip, deadline: since.Add(bound)})
}

// expectAny starts measuring how long after since any process starts, the
// task ids in skip excepted.
func (t *tracker) expectAny(kind, desc string, since time.Time, skip map[string]bool, bound time.Duration) {
	t.add(&recovery{kind: kind, desc: desc, since: since, skip: skip, deadline: since.Add(bound)})
}

func (t *tracker) add(r *recovery) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.open = append(t.open, r)
}

// started records a process start.
func (t *tracker) started(target, taskID string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.starts[target] = at
	t.open = slices.DeleteFunc(t.open, func(r *recovery) bool {
		if at.Before(r.since) || r.skip[taskID] {
			return false
		}
		if r.want == nil {
			t.finish(r, at.Sub(r.since))
			return true
		}
		if !r.want[target] {
			return false
		}
		delete(r.want, target)
		r.last = maxTime(r.last, at)
		if len(r.want) > 0 {
			return false
		}
		t.finish(r, r.last.Sub(r.since))
		return true
	})
}

// finish records r's recovery time d. The caller holds t.mu.
func (t *tracker) finish(r *recovery, d time.Duration) {
	t.done[r.kind] = append(t.done[r.kind], d)
	if t.onDone != nil {
		t.onDone(r.kind, r.desc, d)
	}
}

// expire closes the recoveries whose deadline passed before now, as stalls.
func (t *tracker) expire(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.open = slices.DeleteFunc(t.open, func(r *recovery) bool {
		if now.Before(r.deadline) {
			return false
		}
		t.stalled = append(t.stalled, r.stallText())
		return true
	})
}

func (r *recovery) stallText() string {
	what := "no process started"
	if r.want != nil {
		names := make([]string, 0, len(r.want))
		for n := range r.want {
			names = append(names, fmt.Sprintf("%q", n))
		}
		sort.Strings(names)
		what = "not relaunched: " + strings.Join(names, ", ")
	}
	return fmt.Sprintf("stalled: %s (%s at %s): %s within %v", r.kind, r.desc,
		r.since.Format("15:04:05.000"), what, r.deadline.Sub(r.since))
}

// overdue returns, once each, the descriptions of the recoveries still open
// longer than limit(kind) after their fault, with the targets they await.
func (t *tracker) overdue(now time.Time, limit func(kind string) time.Duration) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, r := range t.open {
		if r.overdue || now.Sub(r.since) <= limit(r.kind) {
			continue
		}
		r.overdue = true
		out = append(out, fmt.Sprintf("%s (%s): awaits %v", r.kind, r.desc, sortedKeys(r.want)))
	}
	return out
}

// pending is the number of recoveries still measured.
func (t *tracker) pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.open)
}

// awaited reports whether a recovery waits for target.
func (t *tracker) awaited(target string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range t.open {
		if r.want == nil || r.want[target] {
			return true
		}
	}
	return false
}

// hostAwaited reports whether a recovery waits on a task fault of host.
func (t *tracker) hostAwaited(host string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range t.open {
		if r.host == host {
			return true
		}
	}
	return false
}

// lastStart is the time of target's latest process start.
func (t *tracker) lastStart(target string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.starts[target]
	return at, ok
}

// results returns the recovery times by kind and the stalls.
func (t *tracker) results() (map[string][]time.Duration, []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string][]time.Duration, len(t.done))
	for k, v := range t.done {
		out[k] = slices.Clone(v)
	}
	return out, slices.Clone(t.stalled)
}

// Stats summarise recovery times.
type Stats struct {
	N   int
	P50 time.Duration
	P99 time.Duration
	Max time.Duration
}

// summarize returns the nearest-rank percentiles of ds.
func summarize(ds []time.Duration) Stats {
	if len(ds) == 0 {
		return Stats{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return Stats{N: len(s), P50: rank(0.50), P99: rank(0.99), Max: s[len(s)-1]}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
