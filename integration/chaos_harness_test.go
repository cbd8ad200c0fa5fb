package integration

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/internal/audit"
	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/wiretap"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// The chaos suite (issue 8): one test per fault, each through the real
// edge (the SelectorService on an embedded server, worker agents running
// the sim executor), each judged by the outside auditor (internal/audit):
// its workers' executors are wrapped so that it knows which processes really
// run, it reads the selectors' launch and kill requests off their
// connections (a wiretap, not a subscription, which would give the request
// subjects interest and so hide "no responders" from the selectors), and it
// follows the event stream.
// Every test ends with aud.Violations() empty and aud.CheckSettled passing,
// polled with a deadline; tests of a permanent fault check it while the fault
// is still active.
//
// This file holds the chaos harness; chaos_*_test.go hold the tests.

// chaosSettle bounds how long a chaos test waits for the system to settle
// once a fault is over (or has been absorbed). It is generous: the suite runs
// under -race on two shared cores.
const chaosSettle = 30 * time.Second

// chaosWorld is one chaos test's world: an env, the auditor watching it, and
// the targets the test declared.
type chaosWorld struct {
	*env
	aud *audit.Auditor

	mu       sync.Mutex
	desired  map[string]bool
	ram      map[string]int64 // RAM of every audited worker's host
	fake     map[string]bool  // hosts no audited worker runs (fake responders)
	watching bool
	tapErr   error // the first time a selector's tap lost track; see checkAudit
}

// newChaosWorld starts an embedded server (on a fixed port when fixedPort is
// set, for server restarts) and an auditor. The auditor starts following the
// event stream when the first selector is up (the selector creates it).
func newChaosWorld(t *testing.T, fixedPort bool) *chaosWorld {
	t.Helper()
	return newChaosWorldOn(newEnv(t, fixedPort))
}

// newChaosWorldOn returns a chaos world on e (a cluster's env, say) with a
// new auditor, which does not follow the event stream yet: startSelector, or
// watch, starts that.
func newChaosWorldOn(e *env) *chaosWorld {
	return &chaosWorld{
		env:     e,
		aud:     audit.New(audit.Config{}),
		desired: map[string]bool{},
		ram:     map[string]int64{},
		fake:    map[string]bool{},
	}
}

// startSelector starts an audited selector service (see
// startAuditedSelector) and, the first time, the auditor's watch of the
// event stream on the env's URL.
func (w *chaosWorld) startSelector(cfg bus.ServiceConfig) *selectorProc {
	w.t.Helper()
	p := w.startAuditedSelector(cfg)
	w.watch(w.url)
	return p
}

// startAuditedSelector starts a selector service on the env's URL whose
// launch and kill requests the auditor reads off its connection, and waits
// until it is ready. It does not start the auditor's watch of the event
// stream.
func (w *chaosWorld) startAuditedSelector(cfg bus.ServiceConfig) *selectorProc {
	w.t.Helper()
	return w.runSelector(w.connectTapped("selector"), cfg)
}

// connectTapped connects to the env's URL as name, as natsconn.Connect does,
// through a wiretap.Dialer that hands the auditor every message the client
// publishes, on every connection it makes to any server, reconnections
// included.
func (w *chaosWorld) connectTapped(name string) *nats.Conn {
	w.t.Helper()
	tap := &wiretap.Dialer{
		OnPublish: func(subject string, data []byte) { w.aud.ObserveRequest(w.subj, subject, data) },
		OnError: func(err error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			if w.tapErr == nil {
				w.tapErr = fmt.Errorf("%s: %w", name, err)
			}
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, err := natsconn.Connect(ctx, w.url, name, testLog(), nil, nil, nats.SetCustomDialer(tap))
	if err != nil {
		w.t.Fatalf("connect %s: %v", name, err)
	}
	w.t.Cleanup(nc.Close)
	return nc
}

// watch starts the auditor's watch of the event stream on its own
// connection to url, unless it watches already. The event stream must exist
// (a selector created it).
func (w *chaosWorld) watch(url string) {
	w.t.Helper()
	w.mu.Lock()
	first := !w.watching
	w.watching = true
	w.mu.Unlock()
	if !first {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	nc, err := natsconn.Connect(ctx, url, "auditor", testLog(), nil, nil)
	cancel()
	if err != nil {
		w.t.Fatalf("auditor connect to %s: %v", url, err)
	}
	w.t.Cleanup(nc.Close)
	ctx, cancel = context.WithCancel(context.Background())
	w.t.Cleanup(cancel)
	if err := w.aud.WatchEvents(ctx, nc); err != nil {
		w.t.Fatalf("auditor watch: %v", err)
	}
}

// killSelector stops a selector the way SIGKILL would, in process: its
// connection is closed first, so that nothing more leaves it (no write, no
// request, no ack), then its Run context is cancelled. Its Run is waited for
// at the end of the test, and its error ignored: a killed process reports
// nothing.
func (w *chaosWorld) killSelector(p *selectorProc) {
	w.t.Helper()
	p.nc.Close()
	p.cancel()
	p.once.Do(func() {}) // disarm the graceful stop of the cleanup
	t := w.t
	t.Cleanup(func() {
		select {
		case <-p.done:
		case <-time.After(stopTimeout):
			t.Errorf("killed selector's Run did not return within %v", stopTimeout)
		}
	})
}

// declare puts target's spec in the targets bucket and counts the target as
// desired.
func (w *chaosWorld) declare(name string, spec schemas.TargetSpec) {
	w.t.Helper()
	w.putTarget(name, spec)
	w.mu.Lock()
	w.desired[name] = true
	w.mu.Unlock()
}

// desiredTargets lists the desired targets, sorted.
func (w *chaosWorld) desiredTargets() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return sortedKeys(w.desired)
}

// settle polls the selector's status until the auditor finds the system
// settled (CheckSettled and CheckDoneApplied pass) and cond, if set, holds
// too. It fails the test after timeout with what was last wrong.
func (w *chaosWorld) settle(timeout time.Duration, cond func(st *schemas.SelectorStatus) (bool, string)) schemas.SelectorStatus {
	w.t.Helper()
	desired := w.desiredTargets()
	return w.waitStatus(timeout, func(st *schemas.SelectorStatus) (bool, string) {
		bad := w.aud.CheckSettled(w.withoutFakes(st), desired)
		bad = append(bad, w.aud.CheckDoneApplied(st)...)
		if len(bad) > 0 {
			return false, "not settled: " + strings.Join(bad, "; ") + "\nstatus: " + describe(st) + fmt.Sprintf("\nhosts: %+v", st.Hosts)
		}
		if cond != nil {
			return cond(st)
		}
		return true, ""
	})
}

// withoutFakes returns a copy of st without the lines of fake hosts and of
// the targets placed on them: the auditor knows no process of theirs.
func (w *chaosWorld) withoutFakes(st *schemas.SelectorStatus) *schemas.SelectorStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.fake) == 0 {
		return st
	}
	cp := *st
	cp.Hosts = slices.DeleteFunc(slices.Clone(st.Hosts), func(h schemas.HostStatusLine) bool { return w.fake[h.Host] })
	cp.Targets = slices.DeleteFunc(slices.Clone(st.Targets), func(ts schemas.TargetStatus) bool { return w.fake[ts.Host] })
	return &cp
}

// checkAudit fails the test on any violation the auditor found so far, and
// when a selector's tap lost track of its connection (the auditor missed
// requests).
func (w *chaosWorld) checkAudit() {
	w.t.Helper()
	for _, v := range w.aud.Violations() {
		w.t.Errorf("audit: %s", v)
	}
	w.mu.Lock()
	err := w.tapErr
	w.mu.Unlock()
	if err != nil {
		w.t.Errorf("audit: tap on a selector's connection: %v; requests went unobserved", err)
	}
}

// allActive is a settle condition: every named target (every desired one
// when names is empty) is active.
func (w *chaosWorld) allActive(names ...string) func(st *schemas.SelectorStatus) (bool, string) {
	if len(names) == 0 {
		names = w.desiredTargets()
	}
	return func(st *schemas.SelectorStatus) (bool, string) {
		for _, name := range names {
			ts, ok := targetLine(st, name)
			if !ok || ts.State != selector.StateActive {
				return false, fmt.Sprintf("%s not active: %s", name, describe(st))
			}
		}
		return true, ""
	}
}

// inPhase is a settle condition: every named target (every desired one
// when names is empty) is in phase.
func (w *chaosWorld) inPhase(phase string, names ...string) func(st *schemas.SelectorStatus) (bool, string) {
	if len(names) == 0 {
		names = w.desiredTargets()
	}
	return func(st *schemas.SelectorStatus) (bool, string) {
		for _, name := range names {
			if ts, _ := targetLine(st, name); ts.Phase != phase {
				return false, fmt.Sprintf("%s not in phase %s: %s", name, phase, describeLine(ts))
			}
		}
		return true, ""
	}
}

// sampleStatus calls fn with the selector's status and the round trip of
// its request every 25 ms, from another goroutine, until the returned stop
// is called (at the end of the test at the latest). Failed status requests
// are skipped.
func (w *chaosWorld) sampleStatus(fn func(st *schemas.SelectorStatus, rtt time.Duration)) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(25 * time.Millisecond)
		defer tk.Stop()
		for {
			sent := time.Now()
			if st, err := w.status(); err == nil {
				fn(&st, time.Since(sent))
			}
			select {
			case <-quit:
				return
			case <-tk.C:
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(quit); <-done }) }
	w.t.Cleanup(stop)
	return stop
}

// chaosBoth combines settle conditions.
func chaosBoth(conds ...func(st *schemas.SelectorStatus) (bool, string)) func(st *schemas.SelectorStatus) (bool, string) {
	return func(st *schemas.SelectorStatus) (bool, string) {
		for _, c := range conds {
			if ok, desc := c(st); !ok {
				return false, desc
			}
		}
		return true, ""
	}
}

// chaosSpec is a declared target with short phases of shortS game seconds
// each (typed "p1", "p2", ...) and a last phase, "last", that repeats and
// runs for good at sim speed 1: its done events flow early, and the auditor
// checks that no finished phase runs again. Every phase takes 8 MiB of
// wrapper and 16 to 64 MiB of helpers (72 MiB at full size).
func chaosSpec(short int, shortS float64) schemas.TargetSpec {
	spec := schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared}
	for i := range short {
		spec.Phases = append(spec.Phases, schemas.Phase{Type: fmt.Sprintf("p%d", i+1),
			WrapperMiB: 8, HelpersMinMiB: 16, HelpersFullMiB: 64, WorkS: shortS})
	}
	spec.Phases = append(spec.Phases, schemas.Phase{Type: "last",
		WrapperMiB: 8, HelpersMinMiB: 16, HelpersFullMiB: 64, WorkS: 1e7, Repeat: true})
	return spec
}

// chaosMinMiB and chaosFullMiB are what a chaosSpec or longSpec task takes
// at its minimum and at full size.
const (
	chaosMinMiB  = 8 + 16
	chaosFullMiB = 8 + 64
)

// ----- audited workers -----

// chaosWorkerOpts are the options of an audited worker. The zero value is a
// worker connected straight to the server, at sim speed 1, with no fault and
// no fence.
type chaosWorkerOpts struct {
	// faults are the sim executor's own fault knobs.
	faults worker.Faults
	// script adds executor faults by target (see chaosExec).
	script *chaosExec
	// url is where the worker connects (a proxy, say); "" is the server.
	url string
	// fenceAfter is the worker's fence time; 0 turns fencing off.
	fenceAfter time.Duration
	// now is the agent's clock (nil: time.Now); the sim keeps the real one.
	now func() time.Time
	// firstPID is the sim's first PID (so that a host's PIDs differ from
	// those of its earlier incarnations).
	firstPID int64
	// allocRetry is the agent's AllocRetry (0: its default).
	allocRetry time.Duration
}

// startAuditedWorker runs a worker agent for host with the sim executor,
// wrapped by the auditor (and, with opts.script, by chaosExec inside it),
// and waits until the agent is ready. It mirrors startWorker.
func (w *chaosWorld) startAuditedWorker(host string, ramMiB int64, opts chaosWorkerOpts) *workerProc {
	w.t.Helper()
	log := testLog()
	url := opts.url
	if url == "" {
		url = w.url
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	nc, err := natsconn.Connect(ctx, url, "worker-"+host, log, nil, nil)
	cancel()
	if err != nil {
		w.t.Fatalf("connect %s: %v", host, err)
	}
	w.t.Cleanup(nc.Close)
	sim, err := worker.NewSim(worker.SimConfig{Host: host, RAMMiB: ramMiB, Speed: 1, Tick: 20 * time.Millisecond,
		Faults: opts.faults, FirstPID: opts.firstPID, Log: log})
	if err != nil {
		w.t.Fatalf("sim %s: %v", host, err)
	}
	var inner worker.Executor = sim
	if opts.script != nil {
		opts.script.inner = sim
		inner = opts.script
	}
	ex := w.aud.Wrap(host, inner)
	agent, err := worker.New(nc, worker.Config{
		Host: host, RAMMiB: ramMiB, HeartbeatInterval: hbInterval, Executor: worker.SimExecutor,
		FlushTimeout: time.Second, PublishTimeout: 500 * time.Millisecond,
		RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		FenceAfter: opts.fenceAfter, Now: opts.now, AllocRetry: opts.allocRetry,
	}, ex, log)
	if err != nil {
		w.t.Fatalf("worker %s: %v", host, err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	p := &workerProc{host: host, agent: agent, sim: sim, nc: nc, cancel: stop, done: make(chan error, 1)}
	go func() {
		defer ex.Close() // the host's processes die with it; the auditor records their end
		p.done <- agent.Run(runCtx)
	}()
	w.t.Cleanup(func() { p.stop(w.t) })
	select {
	case <-agent.Ready():
	case err := <-p.done:
		w.t.Fatalf("worker %s stopped before it was ready: %v", host, err)
	case <-time.After(20 * time.Second):
		w.t.Fatalf("worker %s not ready within 20s", host)
	}
	w.mu.Lock()
	w.ram[host] = ramMiB
	w.mu.Unlock()
	return p
}

// killWorker stops host's worker as if the host died: the agent stops
// without killing its tasks, and its executor's processes die with it.
func (w *chaosWorld) killWorker(p *workerProc) {
	w.t.Helper()
	p.stop(w.t)
	waitFor(w.t, 10*time.Second, func() (bool, string) {
		n := len(w.aud.Live(p.host))
		return n == 0, fmt.Sprintf("%d processes still live on the dead host %s", n, p.host)
	})
}

// checkCapacity fails the test when some audited host's live processes
// hold more than its RAM.
func (w *chaosWorld) checkCapacity() {
	w.t.Helper()
	w.mu.Lock()
	ram := make(map[string]int64, len(w.ram))
	for h, n := range w.ram {
		ram[h] = n
	}
	w.mu.Unlock()
	for _, v := range w.aud.CheckCapacity(ram) {
		w.t.Errorf("audit: %s", v)
	}
}

// chaosExec sits between the auditor's wrapper and the sim executor and
// injects faults into the launches of chosen targets (see chaosRule).
type chaosExec struct {
	inner worker.Executor // set by startAuditedWorker

	mu    sync.Mutex
	rules map[string]*chaosRule
}

// chaosRule is a fault for the next launches of one target.
type chaosRule struct {
	// times is how many more launches the rule hits; negative: all.
	times int
	// delay holds Start (and with it the launch reply) for this long
	// before it goes on: longer than the reply timeout, the launch reply
	// comes too late; longer than the launch timeout, the host still lists
	// the task as starting when the selector asks.
	delay time.Duration
	// fail makes Start fail after the delay: no process starts.
	fail error
	// silent, while held, makes the task send no heartbeat (it runs, and
	// ps lists it): a first heartbeat delayed, or never sent.
	silent *chaosLatch
}

// newChaosExec returns a chaosExec with the given rules by target.
func newChaosExec(rules map[string]*chaosRule) *chaosExec {
	return &chaosExec{rules: rules}
}

// rule takes one hit of target's rule, or returns nil.
func (c *chaosExec) rule(target string) *chaosRule {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.rules[target]
	if r == nil || r.times == 0 {
		return nil
	}
	if r.times > 0 {
		r.times--
	}
	return r
}

// Check implements worker.Executor.
func (c *chaosExec) Check(spec *worker.LaunchSpec) error { return c.inner.Check(spec) }

// UsedMiB implements worker.Executor.
func (c *chaosExec) UsedMiB() int64 { return c.inner.UsedMiB() }

// Close implements worker.Executor.
func (c *chaosExec) Close() error { return c.inner.Close() }

// Start implements worker.Executor, applying target's rule.
func (c *chaosExec) Start(spec *worker.LaunchSpec, hooks worker.Hooks) (worker.Task, error) {
	r := c.rule(spec.Target)
	if r == nil {
		return c.inner.Start(spec, hooks)
	}
	if r.delay > 0 {
		time.Sleep(r.delay) // the fault: a launch that hangs in the executor
	}
	if r.fail != nil {
		return nil, r.fail
	}
	t, err := c.inner.Start(spec, hooks)
	if err != nil || r.silent == nil {
		return t, err
	}
	return &chaosTask{Task: t, silent: r.silent}, nil
}

// chaosTask is a task whose heartbeats are held while its latch is.
type chaosTask struct {
	worker.Task
	silent *chaosLatch
}

// Sample implements worker.Task.
func (t *chaosTask) Sample() worker.Sample {
	s := t.Task.Sample()
	if t.silent.held() {
		s.Silent = true
	}
	return s
}

// chaosLatch is a flag a test releases once; a new latch is held.
type chaosLatch struct{ released atomic.Bool }

func (l *chaosLatch) held() bool { return !l.released.Load() }
func (l *chaosLatch) release()   { l.released.Store(true) }

// ----- measurements -----

// relaunchGaps returns, for target, the time from the end of each of its
// processes to the start of the next one, as the workers saw them.
func (w *chaosWorld) relaunchGaps(target string) []time.Duration {
	ps := w.aud.Procs(target)
	sort.Slice(ps, func(i, j int) bool { return ps[i].Start.Before(ps[j].Start) })
	var out []time.Duration
	for i := 1; i < len(ps); i++ {
		if !ps[i-1].End.IsZero() {
			out = append(out, ps[i].Start.Sub(ps[i-1].End))
		}
	}
	return out
}

// firstStartAfter returns the earliest start of a process of any of targets
// after t0, and whether there is one.
func (w *chaosWorld) firstStartAfter(t0 time.Time, targets ...string) (time.Time, bool) {
	var first time.Time
	for _, name := range targets {
		for _, p := range w.aud.Procs(name) {
			if p.Start.After(t0) && (first.IsZero() || p.Start.Before(first)) {
				first = p.Start
			}
		}
	}
	return first, !first.IsZero()
}

// lastStartAfter returns, once every one of targets has a process started
// after t0, the latest of their first such starts.
func (w *chaosWorld) lastStartAfter(t0 time.Time, targets ...string) (time.Time, bool) {
	var last time.Time
	for _, name := range targets {
		first, ok := w.firstStartAfter(t0, name)
		if !ok {
			return time.Time{}, false
		}
		if first.After(last) {
			last = first
		}
	}
	return last, true
}

// chaosSummary formats durations as "n=3 min 1s p50 1.2s max 1.5s".
func chaosSummary(ds []time.Duration) string {
	if len(ds) == 0 {
		return "n=0"
	}
	return fmt.Sprintf("n=%d min %v p50 %v max %v", len(ds),
		percentile(ds, 0).Round(time.Millisecond), percentile(ds, 0.5).Round(time.Millisecond), percentile(ds, 1).Round(time.Millisecond))
}

// chaosOnHost lists the targets of st that have a task, by host.
func chaosOnHost(st *schemas.SelectorStatus) map[string][]string {
	out := map[string][]string{}
	for _, ts := range st.Targets {
		if ts.Host != "" {
			out[ts.Host] = append(out[ts.Host], ts.Target)
		}
	}
	for h := range out {
		slices.Sort(out[h])
	}
	return out
}

// chaosHostLine returns host's line in st.
func chaosHostLine(st *schemas.SelectorStatus, host string) (schemas.HostStatusLine, bool) {
	for _, h := range st.Hosts {
		if h.Host == host {
			return h, true
		}
	}
	return schemas.HostStatusLine{}, false
}

// heartbeatGaps follows every heartbeat on the test's own connection and
// keeps, per task, the longest time between two of its heartbeats as they
// arrived. The selector sees the same gaps, give or take its own
// scheduling: a task whose gap neared the stale threshold on a loaded
// machine may be judged stale with no fault to blame, and a test that
// counts stale tasks allows for those.
type heartbeatGaps struct {
	mu   sync.Mutex
	last map[string]time.Time
	max  map[string]time.Duration
}

// watchHeartbeatGaps starts following heartbeats until the test ends.
func (w *chaosWorld) watchHeartbeatGaps() *heartbeatGaps {
	w.t.Helper()
	g := &heartbeatGaps{last: map[string]time.Time{}, max: map[string]time.Duration{}}
	sub, err := w.nc.Subscribe(w.subj.Heartbeats(), func(m *nats.Msg) {
		hb, err := schemas.DecodeHeartbeat(m.Data)
		if err != nil {
			return
		}
		now := time.Now()
		g.mu.Lock()
		if last, ok := g.last[hb.TaskID]; ok {
			g.max[hb.TaskID] = max(g.max[hb.TaskID], now.Sub(last))
		}
		g.last[hb.TaskID] = now
		g.mu.Unlock()
	})
	if err != nil {
		w.t.Fatalf("subscribe to heartbeats: %v", err)
	}
	w.t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := w.nc.Flush(); err != nil {
		w.t.Fatalf("flush: %v", err)
	}
	return g
}

// over returns the tasks, with their longest gap, whose heartbeats were at
// least d apart at some time.
func (g *heartbeatGaps) over(d time.Duration) map[string]time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[string]time.Duration{}
	for id, gap := range g.max {
		if gap >= d {
			out[id] = gap
		}
	}
	return out
}
