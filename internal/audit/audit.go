// Package audit judges a running taskselector system from outside, the way
// an operator would: it keeps the workers' own truth of which processes run
// (by wrapping their executors), follows the task-event stream and is handed
// the selector's launch and kill requests, which its caller reads off the
// selector's connection (package wiretap) rather than subscribe to them,
// and it reports every breach of the guarantees the selector makes:
//
//   - no two live processes of one target overlap in time, with no
//     exemption for a process that "would be fenced";
//   - every desired target has a task, or is pending with a stated reason;
//   - the reservations on each host equal what its live tasks hold;
//   - no acknowledged event is lost, and no finished phase runs again;
//   - no fenced process lives past one kill round trip;
//   - fleet helpers run only while their task does, and count in every RAM
//     check (helpers.go).
//
// It is shared by the chaos tests in integration/ and by cmd/soak.
//
// audit.go holds the auditor's record of processes and its executor
// wrapper (Wrap), watch.go how it follows the bus, and checks.go the checks
// run against the selector's status.
package audit

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/taskselector/taskselector/worker"
)

// Config tunes the auditor. Zero fields take the defaults in brackets.
type Config struct {
	// KillBound is how long a process may live after a kill request
	// reached its reachable host [2s]: one kill round trip plus slack for
	// a loaded machine.
	KillBound time.Duration
	// HelperBound is how long a fleet helper may outlive its task [10s]:
	// the selector must learn that the task ended (at worst from its
	// silence: a stale heartbeat and a ps round trip) and stop the helper.
	HelperBound time.Duration
	// Now is the clock [time.Now].
	Now func() time.Time
}

// Proc is one process as its worker ran it.
type Proc struct {
	Host, TaskID, Target, Type string
	Epoch                      uint64
	BudgetMiB                  int64
	Start, End                 time.Time // End is zero while it runs
}

func (p *Proc) String() string {
	end := "running"
	if !p.End.IsZero() {
		end = p.End.Format("15:04:05.000")
	}
	return fmt.Sprintf("%s epoch %d on %q [%s, %s]", p.TaskID, p.Epoch, p.Host, p.Start.Format("15:04:05.000"), end)
}

type procKey struct{ host, taskID string }

type kill struct {
	at     time.Time
	host   string
	taskID string
	reason string
}

// Auditor records what happens and reports violations. It is safe for
// concurrent use.
type Auditor struct {
	cfg Config

	mu          sync.Mutex
	procs       map[string][]*Proc // by target, in start order
	live        map[procKey]*Proc
	kills       []kill
	done        map[string]map[string]uint64 // target -> finished phase type -> highest epoch
	launched    map[string]int               // launches seen per target
	unreachable map[string]time.Time         // hosts cut off from the bus, since when
	violations  []string
	events      int
	helpers     []*HelperProc // every fleet helper seen, in start order
}

// New returns an auditor.
func New(cfg Config) *Auditor {
	if cfg.KillBound <= 0 {
		cfg.KillBound = 2 * time.Second
	}
	if cfg.HelperBound <= 0 {
		cfg.HelperBound = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Auditor{
		cfg:         cfg,
		procs:       make(map[string][]*Proc),
		live:        make(map[procKey]*Proc),
		done:        make(map[string]map[string]uint64),
		launched:    make(map[string]int),
		unreachable: make(map[string]time.Time),
	}
}

func (a *Auditor) violate(format string, args ...any) {
	a.violations = append(a.violations, fmt.Sprintf(format, args...))
}

// Violations returns every breach found so far, including fenced processes
// that outlived their kill by more than KillBound.
func (a *Auditor) Violations() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Now()
	out := slices.Clone(a.violations)
	out = append(out, a.helperViolations(now)...)
	for _, k := range a.kills {
		if _, cut := a.unreachable[k.host]; cut {
			continue
		}
		for _, p := range a.procs[a.targetOf(k.host, k.taskID)] {
			if p.Host != k.host || p.TaskID != k.taskID || p.Start.After(k.at) {
				continue
			}
			deadline := k.at.Add(a.cfg.KillBound)
			if (p.End.IsZero() && now.After(deadline)) || p.End.After(deadline) {
				out = append(out, fmt.Sprintf("%s outlived the kill sent at %s (%s) by more than %v",
					p, k.at.Format("15:04:05.000"), k.reason, a.cfg.KillBound))
			}
		}
	}
	return out
}

// targetOf finds the target of a process by host and task id ("" when none
// was seen). The caller holds a.mu.
func (a *Auditor) targetOf(host, taskID string) string {
	if p := a.live[procKey{host, taskID}]; p != nil {
		return p.Target
	}
	for target, ps := range a.procs {
		for _, p := range ps {
			if p.Host == host && p.TaskID == taskID {
				return target
			}
		}
	}
	return ""
}

// Procs returns a copy of every process recorded for target.
func (a *Auditor) Procs(target string) []Proc {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Proc, 0, len(a.procs[target]))
	for _, p := range a.procs[target] {
		out = append(out, *p)
	}
	return out
}

// Live returns the processes running now on host ("" for every host).
func (a *Auditor) Live(host string) []Proc {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Proc
	for _, p := range a.live {
		if host == "" || p.Host == host {
			out = append(out, *p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TaskID < out[j].TaskID })
	return out
}

// Launches returns how many launch requests were seen for target.
func (a *Auditor) Launches(target string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.launched[target]
}

// SetUnreachable marks host as cut off from the bus (or back): kills sent
// to it cannot arrive, so its processes are not held to KillBound; its own
// fence stops them.
func (a *Auditor) SetUnreachable(host string, cut bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if cut {
		a.unreachable[host] = a.cfg.Now()
	} else {
		delete(a.unreachable, host)
	}
}

// Heal marks host as reachable again after SetUnreachable(host, true), and
// forgets the kills sent to it while it was cut off: they could not arrive
// (a stalled connection holds them, a cut one loses them), so they bind no
// process to KillBound. The host's own fence stopped its processes, and any
// kill sent from now on is judged as usual. Overlaps are judged regardless.
// Heal does nothing for a host that is not marked unreachable.
func (a *Auditor) Heal(host string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	since, cut := a.unreachable[host]
	if !cut {
		return
	}
	delete(a.unreachable, host)
	a.kills = slices.DeleteFunc(a.kills, func(k kill) bool {
		return k.host == host && !k.at.Before(since)
	})
}

// LaunchCount returns how many launch requests were seen, for every target.
func (a *Auditor) LaunchCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, c := range a.launched {
		n += c
	}
	return n
}

// DoneEpoch is the highest epoch at which the auditor saw target's phase
// typ reported done on the event stream, and whether it saw one.
func (a *Auditor) DoneEpoch(target, typ string) (uint64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ep, ok := a.done[target][typ]
	return ep, ok
}

// DoneEvents counts the distinct (target, phase) pairs the auditor saw
// reported done on the event stream.
func (a *Auditor) DoneEvents() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, m := range a.done {
		n += len(m)
	}
	return n
}

// starting records a process about to start.
func (a *Auditor) starting(host string, spec *worker.LaunchSpec, at time.Time) *Proc {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := &Proc{Host: host, TaskID: spec.TaskID, Target: spec.Target, Type: spec.Type, Epoch: spec.Epoch, BudgetMiB: spec.BudgetMiB(), Start: at}
	a.procs[spec.Target] = append(a.procs[spec.Target], p)
	a.live[procKey{host, spec.TaskID}] = p
	return p
}

// started checks a process that did start against its target's others: any
// that had not ended when it began overlaps it.
func (a *Auditor) started(p *Proc) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, o := range a.procs[p.Target] {
		if o != p && !o.Start.After(p.Start) && (o.End.IsZero() || o.End.After(p.Start)) {
			a.violate("overlap: target %q runs %s while %s starts", p.Target, o, p)
		}
	}
}

// discard forgets a process that did not start.
func (a *Auditor) discard(p *Proc) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.procs[p.Target] = slices.DeleteFunc(a.procs[p.Target], func(o *Proc) bool { return o == p })
	if a.live[procKey{p.Host, p.TaskID}] == p {
		delete(a.live, procKey{p.Host, p.TaskID})
	}
}

// ended records that p stopped at the latest at.
func (a *Auditor) ended(p *Proc, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !p.End.IsZero() {
		return
	}
	p.End = at
	if a.live[procKey{p.Host, p.TaskID}] == p {
		delete(a.live, procKey{p.Host, p.TaskID})
	}
}

// hostClosed ends every process of host: its executor stopped, and they
// died with it.
func (a *Auditor) hostClosed(host string, at time.Time) {
	a.mu.Lock()
	var ps []*Proc
	for k, p := range a.live {
		if k.host == host {
			ps = append(ps, p)
		}
	}
	a.mu.Unlock()
	for _, p := range ps {
		a.ended(p, at)
	}
}

// Wrap returns ex with every process start and end recorded as host's, and
// every fleet helper's when ex runs them (it is then a HelperExecutor too).
func (a *Auditor) Wrap(host string, ex worker.Executor) worker.Executor {
	x := &executor{a: a, host: host, inner: ex}
	if hx, ok := ex.(worker.HelperExecutor); ok {
		return &helperExecutor{executor: x, hx: hx}
	}
	return x
}

type executor struct {
	a     *Auditor
	host  string
	inner worker.Executor
}

func (x *executor) Check(spec *worker.LaunchSpec) error { return x.inner.Check(spec) }
func (x *executor) UsedMiB() int64                      { return x.inner.UsedMiB() }

// Start records the process before it starts (so that an overlap is judged
// conservatively) and drops the record if it did not start.
//
// A task that ends on its own is reported to the caller's Exited hook as
// the task Start returned, never as the inner executor's: the caller (a
// worker agent) recognises the task by comparing the two, and ignores an
// exit of a task it does not know. The hook reads no field of that task,
// and worker.Hooks promises it is not called before Start has returned, so
// the inner task can be set once the inner Start returns.
func (x *executor) Start(spec *worker.LaunchSpec, hooks worker.Hooks) (worker.Task, error) {
	p := x.a.starting(x.host, spec, x.a.cfg.Now())
	outer := &task{p: p, a: x.a}
	exited := hooks.Exited
	hooks.Exited = func(_ worker.Task, ex worker.Exit) {
		x.a.ended(p, x.a.cfg.Now())
		if exited != nil {
			exited(outer.self, ex)
		}
	}
	t, err := x.inner.Start(spec, hooks)
	if err != nil {
		x.a.discard(p)
		return nil, err
	}
	outer.Task = t
	outer.self = wrapTask(outer, t)
	x.a.started(p)
	return outer.self, nil
}

// Close stops the executor; its processes die with it.
func (x *executor) Close() error {
	err := x.inner.Close()
	x.a.hostClosed(x.host, x.a.cfg.Now())
	x.a.helperHostClosed(x.host, x.a.cfg.Now())
	return err
}

type task struct {
	worker.Task
	p    *Proc
	a    *Auditor
	self worker.Task // what Start returned: t, or its fleet helper wrapper
}

// Kill records the end once the process is gone (recorded after, so that
// an overlap is judged conservatively).
func (t *task) Kill() error {
	err := t.Task.Kill()
	if err == nil || errors.Is(err, worker.ErrGone) {
		t.a.ended(t.p, t.a.cfg.Now())
	}
	return err
}
