package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/ratelog"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// ServiceConfig configures a SelectorService. Zero fields take the defaults
// in brackets.
type ServiceConfig struct {
	// Prefix of every subject [protocol.DefaultPrefix].
	Prefix string
	// Engine holds the decision engine's timers and limits (zero fields take
	// the engine's defaults).
	Engine selector.Config
	// Store sizes the buckets and the event stream.
	Store StoreConfig
	// Tick is how often time is let pass in the engine [50ms].
	Tick time.Duration
	// RequestTimeout bounds each launch, kill, ps and helper request, from
	// the moment it is sent [Engine.ReplyTimeout].
	RequestTimeout time.Duration
	// AllocTimeout bounds how long an alloc request (tasks.alloc) waits for
	// the engine's answer, which may wait for helper starts; it is then
	// answered with the error unavailable [4 × RequestTimeout].
	AllocTimeout time.Duration
	// MaxInFlightRequests bounds the requests awaiting a reply over all
	// hosts; it is also the number of goroutines that send them [64].
	MaxInFlightRequests int
	// MaxInFlightPerHost bounds the requests awaiting a reply from one
	// host; more wait in that host's queue, so that a host that does not
	// answer delays only its own requests [4].
	MaxInFlightPerHost int
	// MaxQueuedRequests bounds the requests waiting to be sent over all
	// hosts. A ps or kill beyond it is dropped and reported to the engine
	// as unanswered, which retries it; launches are never dropped for room
	// [8192].
	MaxQueuedRequests int
	// MaxQueuedFencesPerHost bounds the kills of impostor tasks (fences)
	// waiting for one host; more are dropped, counted and logged, since the
	// engine fences again on the impostor's next message [16].
	MaxQueuedFencesPerHost int
	// HeartbeatPending and HostStatusPending bound the heartbeats and host
	// statuses received but not yet handled. Beyond them the NATS client
	// drops messages; the service tells the engine (InputDropped), which
	// then does not take the gap for silence. Zero fields take the NATS
	// client's defaults (512Ki messages, 64 MiB).
	HeartbeatPending  PendingLimits
	HostStatusPending PendingLimits
	// WriteTimeout bounds one KV write attempt; failed attempts are retried
	// with backoff until they succeed or lose a compare-and-swap [5s].
	WriteTimeout time.Duration
	// ShutdownTimeout bounds each wait of the graceful shutdown: for the
	// in-flight requests, then for the store writer to flush [5s].
	ShutdownTimeout time.Duration
	// StartedAt is when the process began connecting to NATS; the
	// restart-to-ready time is measured from it [the start of Run].
	StartedAt time.Time
	// Faults injects faults, for tests only; nil in production.
	Faults *ServiceFaults
	// Lease, when its ID is set, makes the service one of several
	// selectors of which one leads: it stands by, warm, until it holds
	// the leader lease, and acts only while it does (see leader.go). With
	// no ID the service acts alone, as the only selector.
	Lease LeaseConfig
}

// PendingLimits bound a subscription's buffer of messages not yet handled.
// A zero field takes the NATS client's default.
type PendingLimits struct {
	Msgs  int
	Bytes int
}

func (c ServiceConfig) withDefaults() ServiceConfig {
	c.Engine = c.Engine.WithDefaults()
	// The service reports when each launch really leaves (LaunchSent), so
	// that a launch held back by a slow store write does not time out.
	c.Engine.LaunchSentReported = true
	if c.Tick <= 0 {
		c.Tick = 50 * time.Millisecond
	}
	// The ticker steps the engine every tick: a gap of many ticks means the
	// selector itself was not running (a long pause), not that the fleet
	// fell silent.
	if c.Engine.MaxStepGap <= 0 {
		c.Engine.MaxStepGap = max(20*c.Tick, time.Second)
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = c.Engine.ReplyTimeout
	}
	if c.AllocTimeout <= 0 {
		c.AllocTimeout = 4 * c.RequestTimeout
	}
	if c.MaxInFlightRequests <= 0 {
		c.MaxInFlightRequests = 64
	}
	if c.MaxInFlightPerHost <= 0 {
		c.MaxInFlightPerHost = 4
	}
	if c.MaxQueuedRequests <= 0 {
		c.MaxQueuedRequests = 8192
	}
	if c.MaxQueuedFencesPerHost <= 0 {
		c.MaxQueuedFencesPerHost = 16
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 5 * time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 5 * time.Second
	}
	return c
}

// SelectorService runs the decision engine over NATS: it feeds the engine
// heartbeats, host statuses, task events, target changes, request replies
// and ticks, and carries out the commands the engine returns. It keeps the
// engine's state in the tasks bucket, so that a restart loses nothing.
//
// One mutex serializes every engine call. Messages are decoded before the
// lock is taken, and commands are carried out after it is released: writes
// by one ordered store writer, requests by a bounded pool of senders fed
// from per-host queues (see requestQueue). A Step's writes are stored before
// that Step's launch is sent (write-ahead), and the engine is told when the
// launch really leaves (LaunchSent). Every task event is acked through the
// store writer's queue, so only once every write queued before it is stored.
//
// Heartbeats and host statuses may wait in their subscriptions' queues when
// the service handles them late. Each Tick tells the engine up to when each
// input is known to be handled (see inputLag), so that what waits there is
// not taken for silence of the workers.
type SelectorService struct {
	nc   *nats.Conn
	cfg  ServiceConfig
	subj protocol.Subjects
	log  *slog.Logger

	mu  sync.Mutex
	eng *selector.Engine // nil until Run has rebuilt the state

	store   *Store
	tasks   *TaskStore
	targets *TargetsWatcher
	writer  *storeWriter

	reqCtx    context.Context
	reqCancel context.CancelFunc
	reqs      *requestQueue
	allocs    allocTable // alloc requests awaiting the engine (alloc.go)

	ready     chan struct{}
	statusSvc micro.Service // answers status requests (status.go)
	hbSub     *nats.Subscription
	hostSub   *nats.Subscription

	// Heartbeat scratch, owned by hbSub's callback goroutine: the messages
	// of one subscription are delivered one at a time.
	hb   schemas.Heartbeat
	hbEv selector.HeartbeatReceived

	tickEv selector.Tick
	// How far the heartbeats and host statuses are handled (see inputLag);
	// set by start, then owned by the tick loop.
	hbLag, hostLag *inputLag

	heartbeats     atomic.Uint64 // heartbeat messages handled
	hostStatuses   atomic.Uint64 // host status messages handled
	storeErrors    atomic.Uint64
	replyErrors    atomic.Uint64
	allocTimeouts  atomic.Uint64
	backlogEvents  atomic.Uint64
	restartToReady atomic.Int64
	malformed      map[string]*sourceCounter // fixed keys; values are safe for concurrent use
	logLimit       ratelog.Keyed             // for repeated bus errors, keyed by site
	dropLog        ratelog.Limiter           // for input drops
	lagLog         ratelog.Limiter           // for input handled late
	replyErrLog    ratelog.Limiter           // for error replies to ps and kill

	runOnce atomic.Bool

	lead leadership // the leader lease and the standby's warm state (leader.go)

	// wrapTasksKV, if set, wraps the tasks bucket's handle (bus tests).
	wrapTasksKV func(jetstream.KeyValue) jetstream.KeyValue
}

// NewSelectorService returns a service on nc (typically from Connect). It
// wraps nc's disconnect and reconnect handlers, keeping the ones already set,
// so that the engine learns of both. Call Run to start it.
func NewSelectorService(nc *nats.Conn, cfg ServiceConfig, log *slog.Logger) *SelectorService {
	if log == nil {
		log = slog.Default()
	}
	cfg = cfg.withDefaults()
	s := &SelectorService{
		nc:    nc,
		cfg:   cfg,
		subj:  protocol.NewSubjects(cfg.Prefix),
		log:   log,
		ready: make(chan struct{}),
		malformed: map[string]*sourceCounter{
			SourceHeartbeat: {}, SourceHost: {}, SourceEvent: {}, SourceTargets: {}, SourceTasks: {},
			SourceLaunchReply: {}, SourcePsReply: {}, SourceKillReply: {},
			SourceAllocRequest: {}, SourceHelperReply: {},
		},
	}
	for src, c := range s.malformed {
		c.ev = selector.Malformed{Source: src}
	}
	s.hbEv.Heartbeat = &s.hb
	s.reqCtx, s.reqCancel = context.WithCancel(context.Background())
	s.writer = newStoreWriter(s)
	s.reqs = newRequestQueue(s, cfg.MaxInFlightPerHost, cfg.MaxQueuedRequests, cfg.MaxQueuedFencesPerHost)
	return s
}

// Ready is closed once the service answers status requests, which it does
// only after it has rebuilt its state and subscribed to heartbeats, host
// statuses and events.
func (s *SelectorService) Ready() <-chan struct{} { return s.ready }

// RestartToReady is the time from StartedAt (or the start of Run) until the
// state was rebuilt and every subscription was up; 0 before that. With a
// lease, the time spent waiting for it is left out.
func (s *SelectorService) RestartToReady() time.Duration {
	return time.Duration(s.restartToReady.Load())
}

// HeartbeatsHandled counts the heartbeat messages the service has processed,
// malformed ones included.
func (s *SelectorService) HeartbeatsHandled() uint64 { return s.heartbeats.Load() }

// Run starts the service and blocks until ctx ends, then shuts down
// gracefully: it stops launching, lets in-flight requests settle (bounded by
// ShutdownTimeout), flushes the store writer (bounded likewise), drains its
// subscriptions and stops its micro service (see status.go). Startup steps
// that fail for a transient reason (the server restarting, JetStream not
// ready) are retried with backoff until ctx ends. Run may be called once.
func (s *SelectorService) Run(ctx context.Context) error {
	if !s.runOnce.CompareAndSwap(false, true) {
		return errors.New("bus: SelectorService.Run called twice")
	}
	ctx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	s.lead.cancelRun = cancelRun
	started := s.cfg.StartedAt
	if started.IsZero() {
		started = time.Now()
	}
	defer s.reqCancel()

	// Learn of connection changes from now on. Before the engine exists
	// they are ignored: the engine is told the state once it is built.
	prevDisc, prevRec := s.nc.DisconnectErrHandler(), s.nc.ReconnectHandler()
	s.nc.SetDisconnectErrHandler(func(nc *nats.Conn, err error) {
		if prevDisc != nil {
			prevDisc(nc, err)
		}
		s.step(&selector.Disconnected{}, nil)
	})
	s.nc.SetReconnectHandler(func(nc *nats.Conn) {
		if prevRec != nil {
			prevRec(nc)
		}
		s.step(&selector.Reconnected{}, nil)
		s.mu.Lock()
		tw := s.targets
		s.mu.Unlock()
		if tw != nil {
			tw.Resume()
		}
	})
	defer func() {
		s.nc.SetDisconnectErrHandler(prevDisc)
		s.nc.SetReconnectHandler(prevRec)
	}()

	writerCtx, stopWriter := context.WithCancel(context.Background())
	defer stopWriter()
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); s.writer.run(writerCtx) }()
	s.reqs.start(s.cfg.MaxInFlightRequests)

	var consume jetstream.ConsumeContext
	var err error
	if s.leased() {
		consume, err = s.startLeader(ctx)
	} else {
		consume, err = s.start(ctx)
	}
	if err != nil {
		s.reqs.close()
		s.reqCancel()
		s.reqs.wait()
		stopWriter()
		<-writerDone
		return s.standbyExit(ctx, err)
	}
	// A standby's wait for the lease is no part of its start.
	s.restartToReady.Store(int64(time.Since(started) - s.lead.waited))
	s.tookOver()
	close(s.ready)
	s.log.Info("selector ready: state rebuilt and listening", "restart_to_ready", s.RestartToReady())

	tickCtx, stopTick := context.WithCancel(ctx)
	tickDone := make(chan struct{})
	go func() { defer close(tickDone); s.tickLoop(tickCtx) }()
	stopTargets, targetsDone := s.lead.stopTargets, s.lead.targetsDone
	if stopTargets == nil {
		stopTargets, targetsDone = s.runTargets(s.step)
	}

	<-ctx.Done()
	s.log.Info("selector shutting down")

	// Stop launching; stop taking new input. Alloc requests still waiting
	// are answered unavailable.
	s.step(&selector.ShutdownRequested{}, nil)
	s.closeAllocs()
	stopTick()
	<-tickDone
	stopTargets()
	_ = s.targets.Stop()
	<-targetsDone
	consume.Drain()
	s.drainSub(s.hbSub)
	s.drainSub(s.hostSub)
	if s.nc.IsConnected() {
		bound := time.NewTimer(s.cfg.ShutdownTimeout)
		select {
		case <-consume.Closed():
		case <-bound.C:
			consume.Stop()
		}
		bound.Stop()
	} else {
		consume.Stop()
	}

	// Send no more launches; let queued and in-flight ps and kills settle,
	// since their replies may still cause writes.
	s.reqs.stopLaunches()
	waitCtx, cancelWait := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	if err := s.reqs.busy.wait(waitCtx); err != nil {
		s.log.Warn("shutdown: requests did not settle in time; abandoning them", "pending", s.reqs.busy.count())
	}
	cancelWait()
	s.reqs.close()
	s.reqCancel()
	s.reqs.wait()

	// Flush the store writer.
	flushCtx, cancelFlush := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	if err := s.writer.flush(flushCtx); err != nil {
		s.log.Error("shutdown: store writer did not flush in time; unwritten state is lost", "queued", s.writer.len())
	}
	cancelFlush()
	stopWriter()
	<-writerDone
	s.stopHolding()

	s.stopStatusService()
	if s.nc.IsConnected() {
		// Once Run returns, the server no longer routes status or $SRV
		// requests here.
		if err := s.nc.FlushTimeout(s.cfg.ShutdownTimeout); err != nil {
			s.log.Warn("shutdown: flush after stopping the status service", "err", err)
		}
		s.waitSubsClosed(s.cfg.ShutdownTimeout, s.hbSub, s.hostSub)
	}
	s.log.Info("selector stopped")
	if s.lead.deposed.Load() {
		return ErrDeposed
	}
	return nil
}

// runTargets runs the targets watcher's loop, handing each change to emit,
// until the returned stop function is called; done is closed once it has
// returned.
func (s *SelectorService) runTargets(emit func(selector.Event, func())) (stop context.CancelFunc, done chan struct{}) {
	targetsCtx, stopTargets := context.WithCancel(context.Background())
	targetsDone := make(chan struct{})
	go func() {
		defer close(targetsDone)
		s.targets.Run(targetsCtx, func(ev selector.Event) {
			if _, ok := ev.(*selector.Malformed); ok {
				s.malformed[SourceTargets].n.Add(1)
			}
			emit(ev, nil)
		})
	}()
	return stopTargets, targetsDone
}

// start brings the service up in the order that makes any status answer mean
// "listening": store, replay, engine, event backlog, subscriptions, then
// status.
//
// The task events that the durable consumer has not acked are stepped into
// the engine before anything the rebuilt state calls for is carried out:
// otherwise the ps probes of the recorded hosts could report a finished
// task gone before its done event is read, and the event would then be
// dropped as a duplicate. The commands of those steps (the probes included)
// are dispatched, in order, before the durable consumer starts, so that the
// acks of its redeliveries queue behind their writes.
func (s *SelectorService) start(ctx context.Context) (jetstream.ConsumeContext, error) {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	var specs map[string]schemas.TargetSpec
	var states []schemas.TaskState
	loadStart := time.Now()
	err = s.retryStart(ctx, "loading state", func() error { return s.loadState(ctx, js, &specs, &states) })
	if err != nil {
		return nil, err
	}
	s.malformed[SourceTargets].n.Add(s.targets.Malformed())
	s.malformed[SourceTasks].n.Add(s.tasks.Malformed())
	return s.build(ctx, specs, states, loadStart)
}

// build builds the engine on the state loaded (specs and states, loaded
// since loadStart), then brings the rest of the service up: the event
// backlog, the subscriptions, the durable consumer and the status service
// (unless a standby started it already).
func (s *SelectorService) build(ctx context.Context, specs map[string]schemas.TargetSpec, states []schemas.TaskState, loadStart time.Time) (jetstream.ConsumeContext, error) {
	// Read the backlog before the engine exists: its recovery grace, and
	// the silence it judges, start only once it can hear the workers (a
	// read held up by a recovering cluster is no silence of theirs).
	var backlog []*schemas.TaskEvent
	err := s.retryStart(ctx, "reading the event backlog", func() error {
		var err error
		backlog, err = s.readBacklog(ctx)
		return err
	})
	if err != nil {
		_ = s.targets.Stop()
		return nil, err
	}
	loaded := time.Now()
	eng, err := selector.New(s.cfg.Engine, loaded, selector.Snapshot{Targets: specs, Tasks: states})
	if err != nil {
		_ = s.targets.Stop()
		return nil, fmt.Errorf("bus: build engine: %w", err)
	}
	// The engine is not shared yet: step the backlog without the lock.
	var startup []batch
	for _, ev := range backlog {
		startup = append(startup, s.collect(eng.Step(time.Now(), &selector.TaskEventReceived{Event: ev})))
	}
	s.backlogEvents.Store(uint64(len(backlog)))
	s.mu.Lock()
	s.eng = eng
	// Target changes held while the engine was built (leader.go).
	for _, ev := range s.lead.held {
		startup = append(startup, s.collect(eng.Step(time.Now(), ev)))
	}
	s.lead.held, s.lead.building = nil, false
	if !s.nc.IsConnected() {
		startup = append(startup, s.collect(eng.Step(time.Now(), &selector.Disconnected{})))
	}
	s.mu.Unlock()
	s.log.Info("selector state rebuilt", "targets", len(specs), "tasks", len(states), "backlog_events", len(backlog),
		"load", loaded.Sub(loadStart), "engine", time.Since(loaded))

	fail := func(err error) (jetstream.ConsumeContext, error) {
		_ = s.targets.Stop()
		for _, sub := range []*nats.Subscription{s.hbSub, s.hostSub} {
			if sub != nil {
				_ = sub.Unsubscribe()
			}
		}
		return nil, err
	}
	// Nothing of an input has arrived before its subscription is made: its
	// lag is measured from then.
	hbStart := time.Now()
	hbSub, err := s.subscribeInput(s.subj.Heartbeats(), s.onHeartbeat, s.cfg.HeartbeatPending)
	if err != nil {
		return fail(err)
	}
	s.setSub(&s.hbSub, hbSub)
	s.hbLag = &inputLag{source: selector.InputHeartbeats, sub: hbSub, handled: &s.heartbeats, clock: newLagClock(hbStart)}
	hostStart := time.Now()
	hostSub, err := s.subscribeInput(s.subj.Hosts(), s.onHostStatus, s.cfg.HostStatusPending)
	if err != nil {
		return fail(err)
	}
	s.setSub(&s.hostSub, hostSub)
	s.hostLag = &inputLag{source: selector.InputHostStatuses, sub: hostSub, handled: &s.hostStatuses, clock: newLagClock(hostStart)}
	// What the backlog and the rebuilt state call for, in order, before
	// any event of the durable consumer (whose acks must queue behind
	// these writes).
	for _, b := range startup {
		s.dispatch(b, nil)
	}
	consume, err := s.store.Consumer.Consume(s.onEvent,
		jetstream.PullMaxMessages(256),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			s.logLimit.Log("consume", s.log, slog.LevelWarn, "event consumer error", "err", err)
		}))
	if err != nil {
		return fail(fmt.Errorf("bus: consume %s: %w", protocol.EventStream, err))
	}
	// Make sure the server has registered the subscriptions before the
	// first status answer claims that the service listens.
	if err := s.nc.FlushTimeout(s.cfg.WriteTimeout); err != nil && s.nc.IsConnected() {
		consume.Stop()
		return fail(fmt.Errorf("bus: flush subscriptions: %w", err))
	}
	// Dispatch what the rebuilt state calls for right away (a ps of the
	// known hosts, for instance) rather than at the first tick.
	s.step(&s.tickEv, nil)
	s.mu.Lock()
	standbySvc := s.statusSvc
	s.mu.Unlock()
	if standbySvc != nil {
		// A standby answers status already; as the leader it books helper
		// RAM too.
		if err := s.addAllocEndpoint(standbySvc); err != nil {
			consume.Stop()
			return fail(err)
		}
		return consume, nil
	}
	statusSvc, err := s.startStatusService(true)
	if err != nil {
		consume.Stop()
		return fail(err)
	}
	s.mu.Lock()
	s.statusSvc = statusSvc
	s.mu.Unlock()
	// Ready means answering: make sure the server knows the subscription.
	if err := s.nc.FlushTimeout(s.cfg.WriteTimeout); err != nil && s.nc.IsConnected() {
		consume.Stop()
		s.stopStatusService()
		return fail(fmt.Errorf("bus: flush status subscription: %w", err))
	}
	return consume, nil
}

// retryStart runs a startup step until it succeeds, retrying failures with
// backoff until ctx ends.
func (s *SelectorService) retryStart(ctx context.Context, what string, step func() error) error {
	for attempt := 1; ; attempt++ {
		err := step()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("bus: selector start: %s: %w", what, err)
		}
		wait := natsconn.ReconnectDelay(attempt)
		s.log.Warn("selector start: "+what+" failed; retrying", "attempt", attempt, "wait", wait, "err", err)
		if !sleepCtx(ctx, wait) {
			return fmt.Errorf("bus: selector start: %s: %w", what, ctx.Err())
		}
	}
}

// setSub records a subscription under the engine lock, for Status to read.
func (s *SelectorService) setSub(field **nats.Subscription, sub *nats.Subscription) {
	s.mu.Lock()
	*field = sub
	s.mu.Unlock()
}

func (s *SelectorService) loadState(ctx context.Context, js jetstream.JetStream, specs *map[string]schemas.TargetSpec, states *[]schemas.TaskState) error {
	opCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	store, err := EnsureStore(opCtx, js, s.subj, s.cfg.Store)
	if err != nil {
		return err
	}
	// Replay both buckets at once: each decodes on every core while it
	// reads, and reading one overlaps decoding the other.
	var (
		tw      *TargetsWatcher
		sp      map[string]schemas.TargetSpec
		twErr   error
		tasksKV = store.Tasks
		st      []schemas.TaskState
		stErr   error
		replay  sync.WaitGroup
	)
	if s.wrapTasksKV != nil {
		tasksKV = s.wrapTasksKV(tasksKV)
	}
	tasks := NewTaskStore(tasksKV, s.log)
	tasks.RecreateWith(func(ctx context.Context) error {
		_, err := js.CreateKeyValue(ctx, TasksBucketConfig(s.cfg.Store))
		return err
	})
	replay.Go(func() { tw, sp, twErr = WatchTargets(opCtx, store.Targets, s.log) })
	replay.Go(func() { st, stErr = tasks.Replay(opCtx) })
	replay.Wait()
	if err := errors.Join(twErr, stErr); err != nil {
		if tw != nil {
			_ = tw.Stop()
		}
		return err
	}
	s.mu.Lock()
	s.store, s.targets, s.tasks = store, tw, tasks
	s.mu.Unlock()
	*specs, *states = sp, st
	return nil
}

// step runs one engine step for ev and carries out its commands; ack, if
// set, is called once the step's writes are stored.
func (s *SelectorService) step(ev selector.Event, ack func()) {
	s.mu.Lock()
	if s.eng == nil {
		s.mu.Unlock()
		return
	}
	b := s.collect(s.eng.Step(time.Now(), ev))
	s.mu.Unlock()
	s.dispatch(b, ack)
}

// BacklogEvents is the number of task events read at start from the
// durable consumer's ack floor and stepped before anything else.
func (s *SelectorService) BacklogEvents() uint64 { return s.backlogEvents.Load() }

func (s *SelectorService) drainSub(sub *nats.Subscription) {
	if sub == nil {
		return
	}
	if err := sub.Drain(); err != nil && !errors.Is(err, nats.ErrBadSubscription) && !errors.Is(err, nats.ErrConnectionClosed) {
		s.log.Warn("cannot drain subscription", "subject", sub.Subject, "err", err)
	}
}

func (s *SelectorService) waitSubsClosed(bound time.Duration, subs ...*nats.Subscription) {
	deadline := time.NewTimer(bound)
	defer deadline.Stop()
	for _, sub := range subs {
		if sub == nil || !sub.IsValid() {
			continue
		}
		ch := sub.StatusChanged(nats.SubscriptionClosed)
		if !sub.IsValid() {
			continue
		}
		select {
		case <-ch:
		case <-deadline.C:
			s.log.Warn("shutdown: subscriptions did not drain in time")
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
