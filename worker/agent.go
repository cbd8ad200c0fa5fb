package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/internal/ratelog"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// Defaults of Config.
const (
	DefaultHeartbeatInterval = time.Second
	DefaultFlushTimeout      = 5 * time.Second
	DefaultOutboxSize        = 4096
	DefaultEndedMemory       = 4096
	DefaultPublishTimeout    = 2 * time.Second
	DefaultRetryBase         = 100 * time.Millisecond
	DefaultRetryMax          = 5 * time.Second
	// DefaultFenceAfter is cmd/worker's fence time (WORKER_FENCE_AFTER).
	// Config.FenceAfter has no default: zero there turns fencing off.
	DefaultFenceAfter = 8 * time.Second
)

// Config configures an Agent. Zero fields take the defaults in brackets.
type Config struct {
	// Host is the host's name (required).
	Host string
	// RAMMiB is the host's RAM capacity in MiB (required, > 0).
	RAMMiB int64
	// HeartbeatInterval is the period of task heartbeats and HostStatus [1s].
	HeartbeatInterval time.Duration
	// Prefix of every subject [protocol.DefaultPrefix].
	Prefix string
	// Executor is the executor's name, for logs [sim].
	Executor string
	// KillOnShutdown kills every task when Run's context ends, publishing a
	// killed event for each. When false the tasks are left alone: real
	// processes would keep running, while the sim executor's tasks die with
	// the worker process without a word (the selector finds them stale).
	KillOnShutdown bool
	// FlushTimeout bounds how long shutdown waits for unacked events [5s].
	FlushTimeout time.Duration
	// OutboxSize is the most events awaiting a JetStream ack [4096].
	OutboxSize int
	// EndedMemory is how many ended task_ids are remembered for idempotent
	// launches [4096].
	EndedMemory int
	// PublishTimeout bounds one JetStream publish attempt [2s].
	PublishTimeout time.Duration
	// RetryBase and RetryMax bound the backoff between publish attempts
	// [100ms, 5s].
	RetryBase, RetryMax time.Duration
	// FenceAfter turns self-fencing on: an agent that has had no round trip
	// to the NATS server for FenceAfter stops its tasks itself, reports each
	// as failed with reason fenced, and refuses launches (draining) until a
	// round trip succeeds again. Zero turns fencing off (cmd/worker's
	// default is DefaultFenceAfter); it must not be negative. The selector's
	// host-stale time must be at least FenceAfter + 2 × HeartbeatInterval
	// (see CheckFenceMargin), so that a host it declares lost has stopped its
	// tasks by then.
	FenceAfter time.Duration
	// NoHelpers leaves the helper endpoint out even when the executor runs
	// fleet helpers: the agent then answers helper requests as a v1 worker
	// does (no responders), and asks for no fleet helper RAM.
	NoHelpers bool
	// AllocRetry is the first wait before a task's refused request for
	// fleet helper RAM is asked again; each refusal in a row doubles it, up
	// to 16 × AllocRetry [2s]. A task that holds fleet helpers asks again
	// for 0 MiB every 4 × AllocRetry, to learn which still stand.
	AllocRetry time.Duration
	// AllocTimeout bounds one alloc request [10s].
	AllocTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (c *Config) withDefaults() error {
	if c.Host == "" || len(c.Host) > schemas.MaxNameBytes {
		return fmt.Errorf("worker: host name must be 1-%d bytes, got %q", schemas.MaxNameBytes, c.Host)
	}
	if c.RAMMiB <= 0 || c.RAMMiB > schemas.MaxMiB {
		return fmt.Errorf("worker: RAM must be a positive number of MiB, at most %d, got %d", int64(schemas.MaxMiB), c.RAMMiB)
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.Prefix == "" {
		c.Prefix = protocol.DefaultPrefix
	}
	if c.Executor == "" {
		c.Executor = SimExecutor
	}
	if c.FlushTimeout <= 0 {
		c.FlushTimeout = DefaultFlushTimeout
	}
	if c.OutboxSize <= 0 {
		c.OutboxSize = DefaultOutboxSize
	}
	if c.EndedMemory <= 0 {
		c.EndedMemory = DefaultEndedMemory
	}
	if c.PublishTimeout <= 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	if c.RetryBase <= 0 {
		c.RetryBase = DefaultRetryBase
	}
	if c.RetryMax < c.RetryBase {
		c.RetryMax = max(DefaultRetryMax, c.RetryBase)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.AllocRetry <= 0 {
		c.AllocRetry = 2 * time.Second
	}
	if c.AllocTimeout <= 0 {
		c.AllocTimeout = 10 * time.Second
	}
	if c.FenceAfter < 0 {
		return fmt.Errorf("worker: fence time must not be negative (0 turns fencing off), got %v", c.FenceAfter)
	}
	return nil
}

// Stats are an agent's cumulative counters.
type Stats struct {
	Launches        uint64            // tasks started
	Relaunches      uint64            // launches answered from an existing or ended task
	Refused         map[string]uint64 // launch refusals by reply code
	Kills           uint64            // tasks stopped by a kill request
	Fences          uint64            // times the agent fenced itself (cut off from NATS for Config.FenceAfter)
	FencedTasks     uint64            // tasks the agent stopped because it was fenced
	Fenced          bool              // fenced now: tasks stopped, launches refused until NATS answers again
	Malformed       map[string]uint64 // undecodable requests by kind: launch, kill, ps, helper
	HeartbeatsSent  uint64
	EventsQueued    uint64
	EventsPublished uint64
	EventsDropped   uint64 // refused by a full outbox
	PublishFailures uint64 // failed JetStream publish attempts (retried)
	OutboxLen       int    // events awaiting an ack
	Running         int    // tasks running now
	// Fleet helpers run on this host for tasks anywhere (helpers.go).
	HelperStarts, HelperStops, HelpersRefused uint64
	Helpers                                   int // running now
	// Alloc requests sent for this host's tasks, and those refused (fleet.go).
	Allocs, AllocRefusals uint64
}

// pendingHB is a heartbeat encoded by tick, waiting to be published.
type pendingHB struct {
	subject string
	taskID  string
	end     int // its end in tickBuf
}

// Agent is the worker agent of one host: it answers launch, kill and ps
// requests, heartbeats its tasks, publishes its HostStatus and sends task
// events to JetStream.
type Agent struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	cfg  Config
	exec Executor
	log  *slog.Logger
	subj protocol.Subjects
	out  *outbox

	mu       sync.Mutex
	tasks    map[string]*entry    // by task_id
	starts   map[string]*starting // launches whose Start is under way, by task_id
	ended    endedCache
	draining bool
	memory   string // how the executor accounts for RAM (HostStatus.Memory)
	hbBuf    []byte
	hb       schemas.Heartbeat
	progress float64

	// tick's heartbeats, encoded under mu and published after it; used by
	// Run's goroutine only.
	tickBuf []byte
	tickHBs []pendingHB

	fence fenceState

	// handlers counts the request handlers in flight, for shutdown.
	handlers handlerGate

	ready     chan struct{}
	readyOnce sync.Once

	launches, relaunches, kills, hbSent, queued atomic.Uint64
	fences, fencedTasks                         atomic.Uint64
	refusedMu                                   sync.Mutex
	refused                                     map[string]uint64
	malformed                                   [kinds]atomic.Uint64
	malformedLog                                [kinds]ratelog.Limiter

	// Fleet helpers this host runs (helpers.go), by helper_id, and the
	// newest epoch of a helper start seen per target.
	helpers                                  map[string]*helperEntry
	helperEpoch                              map[string]uint64
	helperStarts, helperStops, helperRefused atomic.Uint64
	// Fleet helper RAM of this host's tasks (fleet.go).
	allocs, allocRefusals atomic.Uint64
	fleetWG               sync.WaitGroup // alloc requests in flight
	fleetCtx              context.Context
	stopFleet             context.CancelFunc // ends the alloc requests in flight (shutdown)
}

// New builds an agent for cfg.Host that runs its tasks with exec. It does
// not touch NATS until Run.
func New(nc *nats.Conn, cfg Config, exec Executor, log *slog.Logger) (*Agent, error) {
	if nc == nil || exec == nil {
		return nil, errors.New("worker: New needs a NATS connection and an executor")
	}
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("host", cfg.Host)
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("worker: jetstream: %w", err)
	}
	a := &Agent{
		nc:      nc,
		js:      js,
		cfg:     cfg,
		exec:    exec,
		log:     log,
		subj:    protocol.NewSubjects(cfg.Prefix),
		tasks:   make(map[string]*entry),
		starts:  make(map[string]*starting),
		ended:   newEndedCache(cfg.EndedMemory),
		ready:   make(chan struct{}),
		refused: make(map[string]uint64),

		helpers:     make(map[string]*helperEntry),
		helperEpoch: make(map[string]uint64),
	}
	a.fleetCtx, a.stopFleet = context.WithCancel(context.Background())
	if u, ok := exec.(AllocatorUser); ok && !cfg.NoHelpers {
		u.SetAllocator(a.allocFor)
	}
	for i := range a.malformedLog {
		a.malformedLog[i].Every, a.malformedLog[i].Now = malformedLogEvery, cfg.Now
	}
	if m, ok := exec.(MemoryAccounter); ok {
		a.memory = m.MemoryAccounting()
	}
	a.out = newOutbox(js, log, cfg.OutboxSize, cfg.PublishTimeout, cfg.RetryBase, cfg.RetryMax)
	return a, nil
}

// Ready is closed once Run has subscribed and published the first HostStatus.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Run serves until ctx ends, then shuts down gracefully: it drains (refuses
// launches), kills the tasks when Config.KillOnShutdown is set, publishes a
// last HostStatus, waits for unacked events, stops the micro service (which
// handles the requests already delivered) and waits for the request
// handlers in flight, waits for the events they queued, and closes the
// executor; the waits share one Config.FlushTimeout. It returns nil after a
// clean shutdown. With Config.FenceAfter set, it also probes the connection
// and fences the agent while NATS does not answer (see fence.go).
func (a *Agent) Run(ctx context.Context) error {
	svc, err := a.startService()
	if err != nil {
		return err
	}
	defer func() {
		if !svc.Stopped() {
			_ = svc.Stop()
		}
	}()
	if err := a.nc.Flush(); err != nil {
		a.log.Warn("flush after subscribing failed; continuing", "err", err)
	}

	outCtx, stopOut := context.WithCancel(context.Background())
	defer stopOut()
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		a.out.run(outCtx)
	}()

	stopFencing := a.startFencing()
	defer stopFencing()

	a.tick()
	a.readyOnce.Do(func() { close(a.ready) })
	a.log.Info("worker agent ready", "ram_mib", a.cfg.RAMMiB, "executor", a.cfg.Executor,
		"heartbeat_interval", a.cfg.HeartbeatInterval, "prefix", a.cfg.Prefix, "fence_after", a.cfg.FenceAfter)

	t := time.NewTicker(a.cfg.HeartbeatInterval)
	defer t.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-t.C:
			a.tick()
		}
	}

	a.log.Info("worker agent shutting down", "kill_tasks", a.cfg.KillOnShutdown)
	stopFencing()
	// Requests are still answered while the agent drains and kills: a
	// launch is refused with draining, a kill or ps carried out.
	a.Drain()
	if a.cfg.KillOnShutdown {
		a.killAll()
		a.stopAllHelpers("worker shutdown")
	}
	a.publishHostStatus()
	flushCtx, cancelFlush := context.WithTimeout(context.Background(), a.cfg.FlushTimeout)
	defer cancelFlush()
	flushed := a.waitOutbox(flushCtx)
	if !a.stopService(flushCtx, svc) {
		a.log.Error("shutdown: request handlers still running; closing the executor anyway", "timeout", a.cfg.FlushTimeout)
	}
	if flushed {
		// Events of kills served while the service stopped.
		flushed = a.waitOutbox(flushCtx)
	}
	if !flushed {
		a.log.Error("shutdown: event outbox not flushed in time", "unacked", a.out.len(), "timeout", a.cfg.FlushTimeout)
	}
	stopOut()
	<-outDone
	a.stopFleet()
	a.fleetWG.Wait()
	if err := a.exec.Close(); err != nil {
		a.log.Warn("closing executor", "err", err)
	}
	if err := a.nc.FlushTimeout(time.Second); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		a.log.Warn("final flush", "err", err)
	}
	a.log.Info("worker agent stopped")
	return nil
}

// waitOutbox waits until every queued event is acked, or ctx ends; it
// reports whether the outbox is idle.
func (a *Agent) waitOutbox(ctx context.Context) bool {
	select {
	case <-a.out.idleCh():
		return true
	case <-ctx.Done():
		return false
	}
}

// Drain stops accepting launches (they are refused with draining); running
// tasks go on. It is announced in the next HostStatus.
func (a *Agent) Drain() {
	a.mu.Lock()
	a.draining = true
	a.mu.Unlock()
}

// Stats returns the agent's counters.
func (a *Agent) Stats() Stats {
	st := Stats{
		Launches:        a.launches.Load(),
		Relaunches:      a.relaunches.Load(),
		Kills:           a.kills.Load(),
		Fences:          a.fences.Load(),
		FencedTasks:     a.fencedTasks.Load(),
		Fenced:          a.fence.fenced.Load(),
		HeartbeatsSent:  a.hbSent.Load(),
		EventsQueued:    a.queued.Load(),
		EventsPublished: a.out.published.Load(),
		EventsDropped:   a.out.dropped.Load(),
		PublishFailures: a.out.failures.Load(),
		OutboxLen:       a.out.len(),
		HelperStarts:    a.helperStarts.Load(),
		HelperStops:     a.helperStops.Load(),
		HelpersRefused:  a.helperRefused.Load(),
		Allocs:          a.allocs.Load(),
		AllocRefusals:   a.allocRefusals.Load(),
		Refused:         map[string]uint64{},
		Malformed:       map[string]uint64{},
	}
	a.refusedMu.Lock()
	for k, v := range a.refused {
		st.Refused[k] = v
	}
	a.refusedMu.Unlock()
	for i := range a.malformed {
		if n := a.malformed[i].Load(); n > 0 {
			st.Malformed[kindNames[i]] = n
		}
	}
	a.mu.Lock()
	st.Running = len(a.tasks)
	st.Helpers = len(a.helpers)
	a.mu.Unlock()
	return st
}

// tick sends every task's heartbeat and the HostStatus. The heartbeats are
// encoded under the lock and published after it, so that a connection that
// blocks cannot hold the lock (and with it the fence) up.
func (a *Agent) tick() {
	a.mu.Lock()
	buf, hbs := a.tickBuf[:0], a.tickHBs[:0]
	for _, e := range a.tasks {
		var ok bool
		if buf, ok = a.appendHeartbeatLocked(buf, e); ok {
			hbs = append(hbs, pendingHB{subject: e.hbSubject, taskID: e.spec.TaskID, end: len(buf)})
		}
	}
	a.mu.Unlock()
	start := 0
	for i := range hbs {
		h := &hbs[i]
		a.publishHeartbeat(h.subject, h.taskID, buf[start:h.end])
		start = h.end
		*h = pendingHB{}
	}
	a.tickBuf, a.tickHBs = buf, hbs
	a.publishHostStatus()
	a.fleetTick()
}

// heartbeatLocked publishes one heartbeat for e unless the task is silent.
func (a *Agent) heartbeatLocked(e *entry) {
	var ok bool
	if a.hbBuf, ok = a.appendHeartbeatLocked(a.hbBuf[:0], e); ok {
		a.publishHeartbeat(e.hbSubject, e.spec.TaskID, a.hbBuf)
	}
}

func (a *Agent) publishHeartbeat(subject, taskID string, b []byte) {
	if err := a.nc.Publish(subject, b); err != nil {
		a.log.Warn("heartbeat publish failed", "task_id", taskID, "err", err)
		return
	}
	a.hbSent.Add(1)
}

// appendHeartbeatLocked appends e's next heartbeat to dst, unless the task
// is silent (ok false).
func (a *Agent) appendHeartbeatLocked(dst []byte, e *entry) (_ []byte, ok bool) {
	s := e.task.Sample()
	if s.Silent {
		return dst, false
	}
	e.seq++
	h := &a.hb
	*h = schemas.Heartbeat{
		V:      schemas.Version,
		TaskID: e.spec.TaskID,
		Epoch:  e.spec.Epoch,
		PID:    e.pid,
		Host:   a.cfg.Host,
		Target: e.spec.Target,
		Type:   e.spec.Type,
		Seq:    e.seq,
		RAM:    schemas.HeartbeatRAM{BudgetMiB: e.spec.BudgetMiB(), UsedMiB: s.UsedMiB},
		SentAt: a.cfg.Now().UTC(),
	}
	if e.fleet != nil {
		h.RAM.FleetHelpersMiB = e.fleet.held
	}
	if s.HasProgress {
		a.progress = min(max(s.Progress, 0), 1)
		h.Progress = &a.progress
	}
	return schemas.AppendHeartbeat(dst, h), true
}

// publishHostStatus sends the host's RAM, tasks and draining flag, which is
// also set while the agent is fenced.
func (a *Agent) publishHostStatus() {
	a.mu.Lock()
	st := schemas.HostStatus{
		V:        schemas.Version,
		Host:     a.cfg.Host,
		RAM:      schemas.HostRAM{TotalMiB: a.cfg.RAMMiB, UsedMiB: min(a.exec.UsedMiB(), a.cfg.RAMMiB)},
		Tasks:    make([]string, 0, len(a.tasks)),
		Draining: a.draining || a.fence.fenced.Load(),
		Memory:   a.memory,
		SentAt:   a.cfg.Now().UTC(),
	}
	for id := range a.tasks {
		st.Tasks = append(st.Tasks, id)
	}
	st.Helpers, _ = a.helperStatusesLocked()
	a.mu.Unlock()
	sort.Strings(st.Tasks)
	b, err := schemas.Marshal(&st)
	if err != nil {
		a.log.Error("encoding host status", "err", err)
		return
	}
	if err := a.nc.Publish(a.subj.Host(a.cfg.Host), b); err != nil {
		a.log.Warn("host status publish failed", "err", err)
	}
}

// freeLocked is the RAM a launch or a helper start may still take: capacity
// minus every task counted at the larger of its budget and its use, minus the
// fleet helpers, minus RAM used by anything else on the host.
func (a *Agent) freeLocked() int64 {
	helpers := a.helpersMiBLocked()
	committed, tasksUsed := helpers, helpers
	for _, e := range a.tasks {
		used := e.task.Sample().UsedMiB
		tasksUsed += used
		committed += max(e.spec.BudgetMiB(), used)
	}
	for _, st := range a.starts {
		committed += st.spec.BudgetMiB()
	}
	committed += max(a.exec.UsedMiB()-tasksUsed, 0)
	return a.cfg.RAMMiB - committed
}
