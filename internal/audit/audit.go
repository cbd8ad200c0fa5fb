// Package audit judges a running taskselector system from outside, the way
// an operator would: it keeps the workers' own truth of which processes run
// (by wrapping their executors) and watches the bus (launch and kill
// requests, heartbeats, the task-event stream), and it reports every breach
// of the guarantees the selector makes:
//
//   - no two live processes of one target overlap in time, with no
//     exemption for a process that "would be fenced";
//   - every desired target has a task, or is pending with a stated reason;
//   - the reservations on each host equal what its live tasks hold;
//   - no acknowledged event is lost, and no finished phase runs again;
//   - no fenced process lives past one kill round trip.
//
// It is shared by the chaos tests in integration/ and by cmd/soak.
package audit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// Config tunes the auditor. Zero fields take the defaults in brackets.
type Config struct {
	// KillBound is how long a process may live after a kill request
	// reached its reachable host [2s]: one kill round trip plus slack for
	// a loaded machine.
	KillBound time.Duration
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
}

// New returns an auditor.
func New(cfg Config) *Auditor {
	if cfg.KillBound <= 0 {
		cfg.KillBound = 2 * time.Second
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

// Watch follows the bus on nc until ctx ends: launch and kill requests on
// subj, and every event of the task-event stream from its start. It returns
// once the subscriptions are in place.
func (a *Auditor) Watch(ctx context.Context, nc *nats.Conn, subj bus.Subjects) error {
	var subs []*nats.Subscription
	for kind, fn := range map[string]nats.MsgHandler{
		"launch": a.onLaunch,
		"kill":   a.onKill,
	} {
		sub, err := nc.Subscribe(subj.Prefix+"."+kind+".*", fn)
		if err != nil {
			return fmt.Errorf("audit: subscribe %s requests: %w", kind, err)
		}
		subs = append(subs, sub)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("audit: jetstream: %w", err)
	}
	var cc jetstream.ConsumeContext
	for attempt := 0; ; attempt++ {
		cc, err = a.consumeEvents(ctx, js)
		if err == nil {
			break
		}
		if !errors.Is(err, jetstream.ErrStreamNotFound) || attempt > 100 {
			return err
		}
		select { // the selector creates the stream at its start
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("audit: flush: %w", err)
	}
	go func() {
		<-ctx.Done()
		cc.Stop()
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	return nil
}

func (a *Auditor) consumeEvents(ctx context.Context, js jetstream.JetStream) (jetstream.ConsumeContext, error) {
	cons, err := js.OrderedConsumer(ctx, bus.EventStream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return nil, fmt.Errorf("audit: event stream: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ev, err := schemas.DecodeTaskEvent(m.Data())
		if err != nil {
			return // hostile input is some tests' own doing
		}
		a.onEvent(&ev)
	})
	if err != nil {
		return nil, fmt.Errorf("audit: consume events: %w", err)
	}
	return cc, nil
}

func (a *Auditor) onEvent(ev *schemas.TaskEvent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events++
	if ev.Kind != schemas.EventDone {
		return
	}
	m := a.done[ev.Target]
	if m == nil {
		m = make(map[string]uint64)
		a.done[ev.Target] = m
	}
	m[ev.Type] = max(m[ev.Type], ev.Epoch)
}

func (a *Auditor) onLaunch(m *nats.Msg) {
	req, err := schemas.DecodeLaunchRequest(m.Data)
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.launched[req.Target]++
	if ep, ok := a.done[req.Target][req.Type]; ok && req.Epoch > ep && !repeats(req.Args, req.Type) {
		a.violate("finished phase runs again: %q phase %q finished at epoch %d, launched again at epoch %d",
			req.Target, req.Type, ep, req.Epoch)
	}
}

// repeats reports whether phase typ of the spec a launch carries repeats
// (the last phase of a declared spec marked repeat, or any phase of a
// profile whose phases cycle).
func repeats(args map[string]any, typ string) bool {
	spec, ok := args["spec"].(map[string]any)
	if !ok {
		return true // no spec to judge by: assume the worst case, no violation
	}
	if spec["profile"] != schemas.ProfileDeclared {
		return true
	}
	phases, _ := spec["phases"].([]any)
	for _, p := range phases {
		if ph, ok := p.(map[string]any); ok && ph["type"] == typ {
			r, _ := ph["repeat"].(bool)
			return r
		}
	}
	return true
}

func (a *Auditor) onKill(m *nats.Msg) {
	req, err := schemas.DecodeKillRequest(m.Data)
	if err != nil {
		return
	}
	host, err := bus.DecodeName(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:])
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.kills = append(a.kills, kill{at: a.cfg.Now(), host: host, taskID: req.TaskID, reason: req.Reason})
}

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
	held := map[string]int64{}
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
			out = append(out, fmt.Sprintf("host %q: %d MiB reserved, its live processes hold %d MiB", h.Host, h.ReservedMiB, held[h.Host]))
		}
	}
	return out
}

// Wrap returns ex with every process start and end recorded as host's.
func (a *Auditor) Wrap(host string, ex worker.Executor) worker.Executor {
	return &executor{a: a, host: host, inner: ex}
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
func (x *executor) Start(spec *worker.LaunchSpec, hooks worker.Hooks) (worker.Task, error) {
	p := x.a.starting(x.host, spec, x.a.cfg.Now())
	exited := hooks.Exited
	hooks.Exited = func(t worker.Task, ex worker.Exit) {
		x.a.ended(p, x.a.cfg.Now())
		if exited != nil {
			exited(t, ex)
		}
	}
	t, err := x.inner.Start(spec, hooks)
	if err != nil {
		x.a.discard(p)
		return nil, err
	}
	x.a.started(p)
	return &task{Task: t, p: p, a: x.a}, nil
}

// Close stops the executor; its processes die with it.
func (x *executor) Close() error {
	err := x.inner.Close()
	x.a.hostClosed(x.host, x.a.cfg.Now())
	return err
}

type task struct {
	worker.Task
	p *Proc
	a *Auditor
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
