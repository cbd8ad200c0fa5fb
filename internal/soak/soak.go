// Package soak runs the whole taskselector system in one process, on the
// loopback only, and injects random faults into it for a while: the
// selector service, several worker agents with the sim executor, an embedded
// NATS server with its file store, and an outside auditor (internal/audit)
// that records every process start and end from the workers' side and
// follows the bus. It measures how long the system takes to recover from
// each fault and reports every breach of the selector's guarantees. It is
// what `go run ./cmd/soak` runs.
//
// The system runs on production-like timers, shortened (DefaultTimers), so
// that a short soak sees many faults. Faults are drawn at random (seeded)
// from a shuffled deck of the kinds in Kinds, one or a few at a time: task
// and host faults may overlap (Options.MaxLocal), while the faults of the
// selector, the bus and the store run alone, and only once every recovery
// under measurement has ended, so that each figure belongs to its fault.
// Some faults heal, some do not: a lost host never returns (a new one joins
// later), and a crashed or hung task is gone for good.
//
// When the faults stop, everything heals, the system settles, and the
// auditor's CheckSettled judges it: every desired target runs (or waits
// with a stated reason), and the reservations equal what runs.
package soak

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/internal/audit"
	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/natsembed"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// Limits on how long components may take to come up or stop.
const (
	readyTimeout = 30 * time.Second
	stopTimeout  = 30 * time.Second
)

// WhaleTarget is the target the soak declares that fits no host: it must
// stay pending, with a stated reason, and block nothing.
const WhaleTarget = "whale"

// Run runs a soak as o says and returns what it found. It injects faults
// for o.Duration, or until ctx ends, and then heals, settles and checks the
// system (bounded by o.Settle) before it tears everything down. The error
// reports a soak that could not run (its setup failed); breaches of the
// system's guarantees are Result.Violations.
func Run(ctx context.Context, o Options) (Result, error) {
	o, err := o.withDefaults()
	if err != nil {
		return Result{}, err
	}
	w := newWorld(o)
	defer w.close()
	if err := w.start(ctx); err != nil {
		return Result{}, err
	}
	start := time.Now()
	w.runFaults(ctx)
	if err := w.fatalError(); err != nil {
		return Result{}, err
	}
	settled := w.settle()
	return w.result(start, settled), nil
}

// world is one soak's system and its bookkeeping.
type world struct {
	o    Options
	tm   Timers
	log  *slog.Logger // progress
	clog *slog.Logger // the components'
	subj protocol.Subjects

	dir  string
	port int
	url  string
	srv  *server.Server // changed by the NATS restart fault only

	aud       *audit.Auditor
	stopWatch context.CancelFunc
	selProxy  *proxy     // the selectors' way to the server, tapped
	opNC      *nats.Conn // the operator's: targets, the auditor, the sniffer, injected messages
	client    *client.Client
	js        jetstream.JetStream
	sniff     *sniffer
	track     *tracker
	svcFaults *bus.ServiceFaults

	slowWrites atomic.Int64 // ns each store write is held (store_slow)
	slowInput  atomic.Int64 // ns each heartbeat or host status is held (heartbeat_flood)

	bg sync.WaitGroup // goroutines that outlive a fault: dying components, replacements

	mu            sync.Mutex
	sel           *selectorProc   // the running one
	sels          []*selectorProc // every one started
	selGen        int
	hosts         map[string]*hostProc
	hostOrder     []string
	hostGen       int
	replaced      int
	desired       map[string]schemas.TargetSpec
	probes        int
	counts        map[string]int // faults injected, by kind
	active        int            // task and host faults under way
	lastHostFault time.Time      // when the last fault that silenced a host ended
	failures      []string       // components that failed, harmless faults that were not
	rng           *rand.Rand     // targets and the fault loop; use under mu

	silentTarget  string        // the target whose next launch is silent
	silentDelay   time.Duration // how long that launch's reply is held
	silentStarted string        // the target whose silent launch has started

	stopFaults context.CancelFunc // ends the fault phase
	fatalErr   error              // the system could not be brought back
}

func newWorld(o Options) *world {
	w := &world{
		o:       o,
		tm:      o.Timers,
		log:     o.Log,
		clog:    o.ComponentLog,
		subj:    protocol.NewSubjects(""),
		aud:     audit.New(audit.Config{}),
		track:   newTracker(),
		hosts:   make(map[string]*hostProc),
		desired: make(map[string]schemas.TargetSpec),
		counts:  make(map[string]int),
		rng:     rand.New(rand.NewPCG(uint64(o.Seed), 0x50a4)),
	}
	w.track.onDone = func(kind, desc string, d time.Duration) {
		w.log.Info("soak: recovered", "kind", kind, "fault", desc, "after", d.Round(time.Millisecond))
	}
	w.svcFaults = &bus.ServiceFaults{
		BeforeWrite: func(ctx context.Context, _ string) error {
			if d := time.Duration(w.slowWrites.Load()); d > 0 {
				sleepCtx(ctx, d)
			}
			return nil
		},
		BeforeInput: func(string) {
			if d := time.Duration(w.slowInput.Load()); d > 0 {
				time.Sleep(d)
			}
		},
	}
	return w
}

// fatal records that the system could not be brought back after a fault,
// and ends the fault phase.
func (w *world) fatal(err error) {
	w.log.Error("soak: cannot go on", "err", err)
	w.mu.Lock()
	if w.fatalErr == nil {
		w.fatalErr = err
	}
	stop := w.stopFaults
	w.mu.Unlock()
	if stop != nil {
		stop()
	}
}

func (w *world) fatalError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fatalErr
}

// fail records a component failure as a violation.
func (w *world) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	w.log.Error("soak: " + msg)
	w.mu.Lock()
	w.failures = append(w.failures, msg)
	w.mu.Unlock()
}

// start brings the system up: server, operator connection, selector,
// auditor, workers, targets; it returns once every target has run.
func (w *world) start(ctx context.Context) error {
	var err error
	if w.dir, err = os.MkdirTemp("", "taskselector-soak-"); err != nil {
		return fmt.Errorf("soak: data directory: %w", err)
	}
	if w.port, err = freePort(); err != nil {
		return fmt.Errorf("soak: free port: %w", err)
	}
	if err := w.startServer(ctx); err != nil {
		return err
	}
	w.url = w.srv.ClientURL()
	if w.opNC, err = natsconn.Connect(ctx, w.url, "soak-operator", w.clog, nil, nil); err != nil {
		return fmt.Errorf("soak: connect: %w", err)
	}
	if w.client, err = client.New(w.opNC, ""); err != nil {
		return fmt.Errorf("soak: client: %w", err)
	}
	if w.js, err = jetstream.New(w.opNC); err != nil {
		return fmt.Errorf("soak: jetstream: %w", err)
	}
	if w.sniff, err = startSniffer(w.opNC, w.subj, w.log); err != nil {
		return err
	}
	if w.selProxy, err = newProxy(w.serverAddr(), w.clog, w.onRequest); err != nil {
		return fmt.Errorf("soak: selector proxy: %w", err)
	}
	sel, err := w.startSelector(ctx, time.Now())
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.sel = sel
	w.sels = append(w.sels, sel)
	w.mu.Unlock()

	watchCtx, stopWatch := context.WithCancel(context.Background())
	w.stopWatch = stopWatch
	if err := w.aud.WatchEvents(watchCtx, w.opNC); err != nil {
		return fmt.Errorf("soak: auditor: %w", err)
	}
	for i := 1; i <= w.o.Hosts; i++ {
		name := fmt.Sprintf("h%d", i)
		if i == 3 {
			name = "h3.ä" // names are data: this one is encoded in subjects
		}
		if _, err := w.startHost(ctx, name, hostRAM(i)); err != nil {
			return err
		}
	}
	w.mu.Lock()
	specs := declaredTargets(w.rng, w.o.Targets)
	w.mu.Unlock()
	specs[WhaleTarget] = whaleSpec()
	for _, name := range sortedKeys(specs) {
		if err := w.putTarget(ctx, name, specs[name]); err != nil {
			return err
		}
	}
	// Every target but the whale runs before the first fault.
	deadline := time.Now().Add(readyTimeout)
	for _, name := range sortedKeys(specs) {
		for name != WhaleTarget {
			if _, ok := w.track.lastStart(name); ok {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("soak: target %q did not start within %v", name, readyTimeout)
			}
			if !sleepCtx(ctx, 50*time.Millisecond) {
				return ctx.Err()
			}
		}
	}
	w.log.Info("soak: system up", "hosts", w.o.Hosts, "targets", len(specs), "url", w.url, "store", w.dir)
	return nil
}

func (w *world) startServer(ctx context.Context) error {
	srv, err := natsembed.Start(ctx, natsembed.Options{StoreDir: filepath.Join(w.dir, "nats"), Port: w.port, ReadyTimeout: readyTimeout})
	if err != nil {
		return fmt.Errorf("soak: NATS server: %w", err)
	}
	w.srv = srv
	return nil
}

// serverAddr is the server's host:port.
func (w *world) serverAddr() string { return fmt.Sprintf("127.0.0.1:%d", w.port) }

// onRequest is the tap on the selectors' connections: every request they
// send goes to the auditor and the sniffer.
func (w *world) onRequest(subject string, data []byte) {
	w.aud.ObserveRequest(w.subj, subject, data)
	w.sniff.request(subject, data)
}

// freePort finds a free TCP port on the loopback, for a server that must
// come back on the same port after a restart.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// hostRAM is the RAM of the i-th host, in MiB.
func hostRAM(i int) int64 {
	sizes := [...]int64{512, 768, 384, 640}
	return sizes[(i-1)%len(sizes)]
}

// declaredTargets returns n targets with two short phases and a long
// repeating last one ("serve"), so that done events flow and tasks run long
// enough to be hit.
func declaredTargets(rng *rand.Rand, n int) map[string]schemas.TargetSpec {
	out := make(map[string]schemas.TargetSpec, n)
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("t%02d", i)
		if i == n && n > 1 {
			name = "odd/target.ü" // names are data
		}
		out[name] = schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
			{Type: "fetch", WrapperMiB: 16, HelpersMinMiB: 16, HelpersFullMiB: 48, WorkS: 1 + 2*rng.Float64()},
			{Type: "build", WrapperMiB: 16, HelpersMinMiB: 32, HelpersFullMiB: 96, WorkS: 2 + 3*rng.Float64()},
			{Type: servePhase, WrapperMiB: 16, HelpersMinMiB: 24, HelpersFullMiB: 64, WorkS: 15 + 25*rng.Float64(), Repeat: true},
		}}
	}
	return out
}

// servePhase is the long repeating last phase of the declared targets.
const servePhase = "serve"

// whaleSpec is a target whose every RAM figure is the largest a message
// may carry: it fits nowhere, and its sums overflow a careless ledger.
func whaleSpec() schemas.TargetSpec {
	return schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
		{Type: "hoard", WrapperMiB: schemas.MaxMiB, HelpersMinMiB: schemas.MaxMiB, HelpersFullMiB: schemas.MaxMiB, WorkS: 60, Repeat: true},
	}}
}

// probeSpec is a short single-phase target, declared so that a launch is
// due (after a restart, for a silent launch, during slow writes).
func probeSpec() schemas.TargetSpec {
	return schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
		{Type: "probe", WrapperMiB: 8, HelpersMinMiB: 8, HelpersFullMiB: 16, WorkS: 1},
	}}
}

// putTarget declares a target, retrying while the bus is away.
func (w *world) putTarget(ctx context.Context, name string, spec schemas.TargetSpec) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := w.client.PutTarget(pctx, name, spec)
		cancel()
		if err == nil {
			w.mu.Lock()
			w.desired[name] = spec
			w.mu.Unlock()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("soak: declare %q: %w", name, err)
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
}

// lingerSpec is a probe whose single phase never ends in a soak: the
// target of a silent launch, whose task must not finish while silent.
func lingerSpec() schemas.TargetSpec {
	return schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
		{Type: "linger", WrapperMiB: 8, HelpersMinMiB: 8, HelpersFullMiB: 16, WorkS: 1e6},
	}}
}

// putProbe declares a new probe target and returns its name.
func (w *world) putProbe(ctx context.Context) (string, error) {
	w.mu.Lock()
	w.probes++
	name := fmt.Sprintf("probe-%d", w.probes)
	w.mu.Unlock()
	return name, w.putTarget(ctx, name, probeSpec())
}

// dropCompleteProbes deletes the probe targets that have completed.
func (w *world) dropCompleteProbes(ctx context.Context) {
	st := w.status()
	for _, ts := range st.Targets {
		if !strings.HasPrefix(ts.Target, "probe-") || ts.State != selector.StateComplete {
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := w.client.DeleteTarget(dctx, ts.Target)
		cancel()
		if err == nil {
			w.mu.Lock()
			delete(w.desired, ts.Target)
			w.mu.Unlock()
		}
	}
}

// ----- the selector -----

// selectorProc is one selector service on its own connection.
type selectorProc struct {
	svc    *bus.SelectorService
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's, once done is closed
}

// startSelector starts a new selector, as a process started at started
// would, and waits until it is ready.
func (w *world) startSelector(ctx context.Context, started time.Time) (*selectorProc, error) {
	nc, err := natsconn.Connect(ctx, w.selProxy.URL(), "taskselector", w.clog, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("soak: connect selector: %w", err)
	}
	w.mu.Lock()
	w.selGen++
	seed := uint64(w.o.Seed)<<16 + uint64(w.selGen)
	w.mu.Unlock()
	svc := bus.NewSelectorService(nc, bus.ServiceConfig{
		Engine:            w.tm.engine(seed),
		Tick:              w.tm.Tick,
		Store:             bus.StoreConfig{AckWait: w.tm.AckWait},
		WriteTimeout:      2 * time.Second,
		ShutdownTimeout:   2 * time.Second,
		HeartbeatPending:  bus.PendingLimits{Msgs: 4096},
		HostStatusPending: bus.PendingLimits{Msgs: 512},
		StartedAt:         started,
		Faults:            w.svcFaults,
	}, w.clog)
	runCtx, cancel := context.WithCancel(context.Background())
	p := &selectorProc{svc: svc, nc: nc, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = svc.Run(runCtx)
	}()
	select {
	case <-svc.Ready():
		return p, nil
	case <-p.done:
		nc.Close()
		return nil, fmt.Errorf("soak: selector stopped before it was ready: %v", p.err)
	case <-time.After(readyTimeout):
	case <-ctx.Done():
	}
	cancel()
	nc.Close()
	<-p.done
	return nil, fmt.Errorf("soak: selector not ready within %v", readyTimeout)
}

// stopSelector stops p: gracefully (it finishes its work, then its
// connection closes), or at once, as a SIGKILL would (its connection closes
// first, so that nothing more leaves it, and Run winds down in the
// background).
func (w *world) stopSelector(p *selectorProc, graceful bool) {
	finish := func() {
		if p.err != nil {
			w.fail("selector Run: %v", p.err)
		}
	}
	if !graceful {
		p.nc.Close()
		p.cancel()
		w.bg.Add(1)
		go func() {
			defer w.bg.Done()
			select {
			case <-p.done:
				finish()
			case <-time.After(stopTimeout):
				w.fail("killed selector's Run did not return within %v", stopTimeout)
			}
		}()
		return
	}
	p.cancel()
	select {
	case <-p.done:
		finish()
	case <-time.After(stopTimeout):
		w.fail("selector did not stop within %v", stopTimeout)
	}
	p.nc.Close()
}

// current returns the running selector.
func (w *world) current() *selectorProc {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sel
}

// status is the running selector's status snapshot.
func (w *world) status() schemas.SelectorStatus { return w.current().svc.Status() }

// heartbeats counts the heartbeats every selector has handled.
func (w *world) heartbeats() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n uint64
	for _, p := range w.sels {
		n += p.svc.HeartbeatsHandled()
	}
	return n
}

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

// close tears everything down, in order: the selector, the workers, the
// auditor and the operator's connection, the server, the store directory.
func (w *world) close() {
	w.mu.Lock()
	sel := w.sel
	hosts := make([]*hostProc, 0, len(w.hosts))
	for _, name := range w.hostOrder {
		hosts = append(hosts, w.hosts[name])
	}
	w.mu.Unlock()
	if sel != nil {
		w.stopSelector(sel, true)
	}
	if w.selProxy != nil {
		w.selProxy.Close()
	}
	for _, h := range hosts {
		h.stop()
		if h.proxy != nil {
			h.proxy.Close()
		}
	}
	w.bg.Wait()
	if w.sniff != nil {
		w.sniff.stop()
	}
	if w.stopWatch != nil {
		w.stopWatch()
	}
	if w.opNC != nil {
		w.opNC.Close()
	}
	natsembed.Shutdown(w.srv)
	if w.dir != "" {
		if err := os.RemoveAll(w.dir); err != nil {
			w.log.Warn("soak: remove data directory", "dir", w.dir, "err", err)
		}
	}
}

// sleepCtx sleeps for d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// errStopped is returned by a fault that the end of the fault phase cut
// short.
var errStopped = errors.New("soak: stopped")

// ----- workers -----

// hostState is where a worker host is in its life.
type hostState int

const (
	hostUp   hostState = iota
	hostDown           // dead, and coming back
	hostLost           // dead for good
)

// hostProc is one worker host: its proxy (which outlives its agents) and
// its current agent.
type hostProc struct {
	name  string
	ram   int64
	proxy *proxy
	state hostState
	busy  bool // a host fault holds it

	// The current agent; nil while down.
	nc     *nats.Conn
	agent  *worker.Agent
	exec   *chaosExec
	cancel context.CancelFunc
	done   chan struct{}
}

// startHost starts (or restarts) host name with ram MiB, connected through
// its own proxy, and waits until its agent is ready.
func (w *world) startHost(ctx context.Context, name string, ram int64) (*hostProc, error) {
	w.mu.Lock()
	h := w.hosts[name]
	if h == nil {
		h = &hostProc{name: name, ram: ram}
		w.hosts[name] = h
		w.hostOrder = append(w.hostOrder, name)
	}
	w.hostGen++
	gen := w.hostGen
	w.mu.Unlock()
	if h.proxy == nil {
		p, err := newProxy(w.serverAddr(), w.clog, nil)
		if err != nil {
			return nil, fmt.Errorf("soak: proxy for %s: %w", name, err)
		}
		h.proxy = p
	}
	nc, err := natsconn.Connect(ctx, h.proxy.URL(), "worker-"+name, w.clog, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("soak: connect worker %s: %w", name, err)
	}
	sim, err := worker.NewSim(worker.SimConfig{Host: name, RAMMiB: h.ram, Speed: 1, FirstPID: int64(gen) * 1_000_000, Log: w.clog})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("soak: worker %s: %w", name, err)
	}
	exec := newChaosExec(name, w.aud.Wrap(name, sim), w.onStart, w.takeSilent)
	agent, err := worker.New(nc, worker.Config{
		Host: name, RAMMiB: h.ram, HeartbeatInterval: w.tm.Heartbeat, Executor: worker.SimExecutor,
		FenceAfter: w.tm.FenceAfter, FlushTimeout: time.Second, PublishTimeout: 500 * time.Millisecond,
		RetryBase: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond,
	}, exec, w.clog)
	if err != nil {
		_ = exec.Close()
		nc.Close()
		return nil, fmt.Errorf("soak: worker %s: %w", name, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer exec.Close()
		if err := agent.Run(runCtx); err != nil {
			w.fail("worker %s Run: %v", name, err)
		}
	}()
	select {
	case <-agent.Ready():
	case <-done:
		cancel()
		nc.Close()
		return nil, fmt.Errorf("soak: worker %s stopped before it was ready", name)
	case <-time.After(readyTimeout):
		cancel()
		nc.Close()
		<-done
		return nil, fmt.Errorf("soak: worker %s not ready within %v", name, readyTimeout)
	}
	w.mu.Lock()
	h.nc, h.agent, h.exec, h.cancel, h.done = nc, agent, exec, cancel, done
	h.state = hostUp
	w.mu.Unlock()
	return h, nil
}

// die kills h's agent as a host crash would: its connection closes first
// (nothing more leaves it), its processes die at once, and the agent winds
// down in the background. The caller sets h's state.
func (w *world) die(h *hostProc) {
	w.mu.Lock()
	nc, exec, cancel, done := h.nc, h.exec, h.cancel, h.done
	h.nc, h.agent, h.exec, h.cancel, h.done = nil, nil, nil, nil, nil
	w.mu.Unlock()
	if nc == nil {
		return
	}
	nc.Close()
	_ = exec.Close()
	cancel()
	w.bg.Add(1)
	go func() {
		defer w.bg.Done()
		select {
		case <-done:
		case <-time.After(stopTimeout):
			w.fail("dead worker %s's Run did not return within %v", h.name, stopTimeout)
		}
	}()
}

// stop shuts h's agent down gracefully (its tasks are left to die with its
// executor) and waits for it.
func (h *hostProc) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(stopTimeout):
	}
	h.nc.Close()
	h.nc, h.agent, h.exec, h.cancel, h.done = nil, nil, nil, nil, nil
}

// onStart is every worker's report of a process start.
func (w *world) onStart(host, target, taskID string, at time.Time, silent bool) {
	if silent {
		w.track.expect(KindSilentLaunch, fmt.Sprintf("silent launch of %s on %s", taskID, host), host, at,
			[]string{target}, map[string]bool{taskID: true}, w.o.StallAfter)
		w.mu.Lock()
		w.counts[KindSilentLaunch]++
		w.silentStarted = target
		w.mu.Unlock()
	}
	w.track.started(target, taskID, at)
}

// takeSilent reports whether the launch of target is to be silent, and
// how long its reply is held; only the first launch of the silent-launch
// probe is.
func (w *world) takeSilent(target string) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.silentTarget == "" || w.silentTarget != target {
		return 0, false
	}
	w.silentTarget = "-" // taken
	return w.silentDelay, true
}
