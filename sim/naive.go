package sim

import (
	"slices"
	"strconv"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/workload"
)

// Naive is the launch policy the selector replaces, for comparison:
//
//   - it books only the wrapper's RAM at launch: no helper estimate, no
//     scaled-down budget. Its launches carry helpers_mib 0, and the task asks
//     for the phase's full helpers once it has started; when the host cannot
//     give them, the task fails with helpers_unavailable;
//   - it does not wait for a launch's first heartbeat before the next one: on
//     every tick it launches every target that has no task, each on the host
//     with the most free RAM by its books (the last HostStatus minus the
//     wrappers it launched since), when the wrapper fits;
//   - it has no backoff: a failed launch is retried at the next tick;
//   - it has no stale-heartbeat detection: a task that vanishes without an
//     event leaves its target stuck, believed running, until a restart. A
//     launch with no reply is forgotten and retried (the task may run after
//     all).
//
// Targets are taken in order of their estimated value, like the selector.
type Naive struct {
	params  workload.Params
	targets []*naiveTarget
	byName  map[string]*naiveTarget
	hosts   []*naiveHost
	hostBy  map[string]*naiveHost
	seq     uint64
	out     []selector.Command
}

type naiveTarget struct {
	name    string
	spec    schemas.TargetSpec
	phase   string
	value   float64
	task    string // the task it believes runs; "" when none
	epoch   uint64
	wrapper int64
	blocked bool // no estimate for its phase (e.g. cannot harvest)
	done    bool
}

type naiveHost struct {
	name      string
	total     int64
	used      int64
	launched  int64 // wrappers launched since the last status
	lastState time.Time
}

// NewNaive builds the naive policy over the declared targets.
func NewNaive(params workload.Params, targets []Target) *Naive {
	n := &Naive{params: params, byName: map[string]*naiveTarget{}, hostBy: map[string]*naiveHost{}}
	for _, t := range targets {
		nt := &naiveTarget{name: t.Name, spec: cloneSpec(t.Spec)}
		ph, err := workload.InitialPhase(&nt.spec)
		if err != nil {
			nt.blocked = true
		}
		nt.phase = ph
		n.estimate(nt)
		n.targets = append(n.targets, nt)
		n.byName[t.Name] = nt
	}
	n.sort()
	return n
}

func (n *Naive) estimate(t *naiveTarget) {
	est, err := n.params.Estimate(&t.spec, t.phase)
	if err != nil {
		t.blocked = true
		return
	}
	t.blocked = false
	t.value = est.Value
	t.wrapper = est.WrapperMiB
}

func (n *Naive) sort() {
	slices.SortStableFunc(n.targets, func(a, b *naiveTarget) int {
		switch {
		case a.value > b.value:
			return -1
		case a.value < b.value:
			return 1
		}
		if a.name < b.name {
			return -1
		}
		return 1
	})
}

// Step implements Policy.
func (n *Naive) Step(now time.Time, ev selector.Event) []selector.Command {
	n.out = n.out[:0]
	switch ev := ev.(type) {
	case *selector.Tick:
		n.launchAll(now)
	case *selector.HostStatusReceived:
		h := n.hostBy[ev.Status.Host]
		if h == nil {
			h = &naiveHost{name: ev.Status.Host}
			n.hostBy[h.name] = h
			n.hosts = append(n.hosts, h)
		}
		h.total, h.used, h.launched, h.lastState = ev.Status.RAM.TotalMiB, ev.Status.RAM.UsedMiB, 0, now
	case *selector.LaunchReplied:
		if t := n.byName[ev.Target]; t != nil && ev.Reply.Error != nil && t.task == ev.Reply.TaskID {
			t.task = ""
		}
	case *selector.LaunchUnanswered:
		if t := n.byName[ev.Target]; t != nil && t.task == ev.TaskID {
			t.task = "" // forgotten; it may be running after all
		}
	case *selector.TaskEventReceived:
		e := ev.Event
		t := n.byName[e.Target]
		if t == nil || t.task != e.TaskID {
			return n.out
		}
		t.task = ""
		if e.Kind == schemas.EventDone {
			next, complete, updated, err := workload.AfterDone(&t.spec, t.phase, e.Metrics)
			if err != nil {
				t.blocked = true
				return n.out
			}
			if updated != nil {
				t.spec = *updated
			}
			t.done = complete
			t.phase = next
			n.estimate(t)
			n.sort()
		}
	}
	return n.out
}

// launchAll launches every target without a task whose wrapper fits somewhere.
func (n *Naive) launchAll(now time.Time) {
	for _, t := range n.targets {
		if t.task != "" || t.blocked || t.done {
			continue
		}
		var best *naiveHost
		var bestFree int64
		for _, h := range n.hosts {
			if f := h.total - h.used - h.launched; best == nil || f > bestFree {
				best, bestFree = h, f
			}
		}
		if best == nil || bestFree < t.wrapper {
			continue
		}
		best.launched += t.wrapper
		t.epoch++
		n.seq++
		t.task = t.name + "#" + strconv.FormatUint(t.epoch, 10) + ".n" + strconv.FormatUint(n.seq, 36)
		spec := t.spec
		n.out = append(n.out, selector.Command{
			Kind: selector.CmdLaunch, Host: best.name, Target: t.name,
			Launch: &schemas.LaunchRequest{V: schemas.Version, TaskID: t.task, Epoch: t.epoch, Target: t.name,
				Type: t.phase, RAM: schemas.TaskRAM{WrapperMiB: t.wrapper}, Args: map[string]any{"spec": &spec}},
		})
	}
}
