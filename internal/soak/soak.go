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
	"github.com/taskselector/taskselector/internal/netproxy"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// Limits on how long components may take to come up or stop.
const (
	readyTimeout = 30 * time.Second
	stopTimeout  = 30 * time.Second
)

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
	selProxy  *netproxy.Proxy // the selectors' way to the server, tapped
	opNC      *nats.Conn      // the operator's: targets, the auditor, the sniffer, injected messages
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
	if w.selProxy, err = netproxy.New(w.serverAddr(), netproxy.Options{Log: w.clog, Tap: w.onRequest}); err != nil {
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
