package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
	// RequestTimeout bounds each launch, kill and ps request, from the
	// moment it is sent [Engine.ReplyTimeout].
	RequestTimeout time.Duration
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

	ready     chan struct{}
	statusSub *nats.Subscription
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
	backlogEvents  atomic.Uint64
	restartToReady atomic.Int64
	malformed      map[string]*sourceCounter // fixed keys; values are safe for concurrent use
	logLimit       ratelog.Keyed             // for repeated bus errors, keyed by site
	dropLog        ratelog.Limiter           // for input drops
	lagLog         ratelog.Limiter           // for input handled late
	replyErrLog    ratelog.Limiter           // for error replies to ps and kill

	runOnce atomic.Bool

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
// state was rebuilt and every subscription was up; 0 before that.
func (s *SelectorService) RestartToReady() time.Duration {
	return time.Duration(s.restartToReady.Load())
}

// HeartbeatsHandled counts the heartbeat messages the service has processed,
// malformed ones included.
func (s *SelectorService) HeartbeatsHandled() uint64 { return s.heartbeats.Load() }

func (s *SelectorService) heartbeatsDropped() int {
	s.mu.Lock()
	sub := s.hbSub
	s.mu.Unlock()
	if sub == nil {
		return 0
	}
	n, _ := sub.Dropped()
	return n
}

// Status returns the engine's status snapshot with the bus-level counters
// merged in: slow-consumer drops, store errors and malformed messages.
func (s *SelectorService) Status() schemas.SelectorStatus {
	s.mu.Lock()
	var st schemas.SelectorStatus
	if s.eng != nil {
		st = s.eng.Status(time.Now())
	} else {
		st = schemas.SelectorStatus{V: schemas.Version, Recovering: true, Connected: s.nc.IsConnected(), At: time.Now().UTC()}
	}
	subs := [...]*nats.Subscription{s.hbSub, s.hostSub, s.statusSub}
	s.mu.Unlock()
	s.mergeCounters(&st, subs[:])
	return st
}

func (s *SelectorService) mergeCounters(st *schemas.SelectorStatus, subs []*nats.Subscription) {
	c := &st.Counters
	var drops uint64
	for _, sub := range subs {
		if sub == nil {
			continue
		}
		if n, err := sub.Dropped(); err == nil && n > 0 {
			drops += uint64(n)
		}
	}
	c.SlowConsumerDrops += drops
	c.StoreErrors += s.storeErrors.Load()
	for src, sc := range s.malformed {
		n := sc.n.Load()
		if n == 0 {
			continue
		}
		if c.MalformedMessages == nil {
			c.MalformedMessages = make(map[string]uint64)
		}
		// Every malformed message is also fed to the engine, except those
		// found while replaying the buckets before the engine existed.
		c.MalformedMessages[src] = max(c.MalformedMessages[src], n)
	}
}

// Run starts the service and blocks until ctx ends, then shuts down
// gracefully: it stops launching, lets in-flight requests settle (bounded by
// ShutdownTimeout), flushes the store writer (bounded likewise) and drains
// its subscriptions. Startup steps that fail for a transient reason (the
// server restarting, JetStream not ready) are retried with backoff until ctx
// ends. Run may be called once.
func (s *SelectorService) Run(ctx context.Context) error {
	if !s.runOnce.CompareAndSwap(false, true) {
		return errors.New("bus: SelectorService.Run called twice")
	}
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

	consume, err := s.start(ctx)
	if err != nil {
		s.reqs.close()
		s.reqCancel()
		s.reqs.wait()
		stopWriter()
		<-writerDone
		return err
	}
	s.restartToReady.Store(int64(time.Since(started)))
	close(s.ready)
	s.log.Info("selector ready: state rebuilt and listening", "restart_to_ready", s.RestartToReady())

	tickCtx, stopTick := context.WithCancel(ctx)
	tickDone := make(chan struct{})
	go func() { defer close(tickDone); s.tickLoop(tickCtx) }()
	targetsCtx, stopTargets := context.WithCancel(context.Background())
	targetsDone := make(chan struct{})
	go func() {
		defer close(targetsDone)
		s.targets.Run(targetsCtx, func(ev selector.Event) {
			if _, ok := ev.(*selector.Malformed); ok {
				s.malformed[SourceTargets].n.Add(1)
			}
			s.step(ev, nil)
		})
	}()

	<-ctx.Done()
	s.log.Info("selector shutting down")

	// Stop launching; stop taking new input.
	s.step(&selector.ShutdownRequested{}, nil)
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

	s.drainSub(s.statusSub)
	if s.nc.IsConnected() {
		s.waitSubsClosed(s.cfg.ShutdownTimeout, s.hbSub, s.hostSub, s.statusSub)
	}
	s.log.Info("selector stopped")
	return nil
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

	loaded := time.Now()
	eng, err := selector.New(s.cfg.Engine, loaded, selector.Snapshot{Targets: specs, Tasks: states})
	if err != nil {
		_ = s.targets.Stop()
		return nil, fmt.Errorf("bus: build engine: %w", err)
	}
	var backlog []*schemas.TaskEvent
	err = s.retryStart(ctx, "reading the event backlog", func() error {
		var err error
		backlog, err = s.readBacklog(ctx)
		return err
	})
	if err != nil {
		_ = s.targets.Stop()
		return nil, err
	}
	// The engine is not shared yet: step the backlog without the lock.
	var startup []batch
	for _, ev := range backlog {
		startup = append(startup, s.collect(eng.Step(time.Now(), &selector.TaskEventReceived{Event: ev})))
	}
	s.backlogEvents.Store(uint64(len(backlog)))
	s.mu.Lock()
	s.eng = eng
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
	statusSub, err := s.nc.Subscribe(s.subj.Status(), s.onStatus)
	if err != nil {
		consume.Stop()
		return fail(fmt.Errorf("bus: subscribe %s: %w", s.subj.Status(), err))
	}
	s.setSub(&s.statusSub, statusSub)
	// Ready means answering: make sure the server knows the subscription.
	if err := s.nc.FlushTimeout(s.cfg.WriteTimeout); err != nil && s.nc.IsConnected() {
		consume.Stop()
		_ = statusSub.Unsubscribe()
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
		wait := reconnectDelay(attempt)
		s.log.Warn("selector start: "+what+" failed; retrying", "attempt", attempt, "wait", wait, "err", err)
		if !sleepCtx(ctx, wait) {
			return fmt.Errorf("bus: selector start: %s: %w", what, ctx.Err())
		}
	}
}

// subscribeInput subscribes h to subject with the given pending limits.
func (s *SelectorService) subscribeInput(subject string, h nats.MsgHandler, lim PendingLimits) (*nats.Subscription, error) {
	sub, err := s.nc.Subscribe(subject, h)
	if err != nil {
		return nil, fmt.Errorf("bus: subscribe %s: %w", subject, err)
	}
	if lim.Msgs != 0 || lim.Bytes != 0 {
		msgs, bytes := lim.Msgs, lim.Bytes
		if msgs == 0 {
			msgs = nats.DefaultSubPendingMsgsLimit
		}
		if bytes == 0 {
			bytes = nats.DefaultSubPendingBytesLimit
		}
		if err := sub.SetPendingLimits(msgs, bytes); err != nil {
			_ = sub.Unsubscribe()
			return nil, fmt.Errorf("bus: pending limits of %s: %w", subject, err)
		}
	}
	return sub, nil
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

// tickLoop steps the engine with a Tick every cfg.Tick. Before each, it
// reports input drops (checkDrops) and estimates how far each input is
// handled (inputAsOf), so that the engine judges silence only up to then.
func (s *SelectorService) tickLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	s.mu.Lock()
	watches := []dropWatch{
		{sub: s.hbSub, ev: selector.InputDropped{Source: selector.InputHeartbeats}},
		{sub: s.hostSub, ev: selector.InputDropped{Source: selector.InputHostStatuses}},
	}
	s.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for i := range watches {
				s.checkDrops(&watches[i])
			}
			s.tickEv.HeartbeatsAsOf = s.inputAsOf(s.hbLag)
			s.tickEv.HostStatusesAsOf = s.inputAsOf(s.hostLag)
			s.step(&s.tickEv, nil)
		}
	}
}

// dropWatch follows the drops of one input subscription.
type dropWatch struct {
	sub  *nats.Subscription
	seen int // drops already reported
	ev   selector.InputDropped
}

// checkDrops tells the engine when w's subscription has dropped messages
// since the last check (it hit its pending limit): the silence of the
// tasks or hosts whose messages were lost is then no evidence.
func (s *SelectorService) checkDrops(w *dropWatch) {
	if w.sub == nil {
		return
	}
	n, err := w.sub.Dropped()
	if err != nil || n <= w.seen {
		return
	}
	s.dropLog.Log(s.log, slog.LevelWarn, "slow consumer: input dropped; staleness is measured afresh", "source", w.ev.Source,
		"subject", w.sub.Subject, "dropped", n-w.seen, "dropped_total", n)
	w.seen = n
	s.step(&w.ev, nil)
}

// inputAsOf returns the time up to which l's input is known to be handled
// (the zero time: up to now), for the Tick. It logs when the input starts to
// be handled more than half a heartbeat-stale threshold late, and when it
// catches up again: silence is then judged that much later.
func (s *SelectorService) inputAsOf(l *inputLag) time.Time {
	if l == nil {
		return time.Time{}
	}
	asOf := l.asOf()
	lag := time.Duration(0)
	if !asOf.IsZero() {
		lag = time.Since(asOf)
	}
	switch late := lag > s.cfg.Engine.HeartbeatStale/2; {
	case late && !l.lagging:
		l.lagging = true
		s.lagLog.Log(s.log, slog.LevelWarn, "input handled late; silence is judged as of the oldest message waiting", "source", l.source,
			"subject", l.sub.Subject, "lag", lag.Round(time.Millisecond))
	case !late && l.lagging:
		l.lagging = false
		s.lagLog.Log(s.log, slog.LevelInfo, "input caught up", "source", l.source, "subject", l.sub.Subject)
	}
	return asOf
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

// outCmd is a command copied out of the engine, its message already encoded.
type outCmd struct {
	kind   selector.CommandKind
	host   string
	target string
	taskID string  // launch, kill
	epoch  uint64  // launch
	pid    int64   // kill
	pids   []int64 // ps: the PIDs it asks about (nil: every task)
	fence  bool    // kill of a task that is not its target's
	data   []byte
}

// batch holds one Step's commands in order.
type batch struct {
	cmds  []outCmd
	store bool // some command writes the store
}

// collect copies cmds (valid only until the next Step) and encodes their
// messages, under the engine lock. It does not allocate when cmds is empty.
func (s *SelectorService) collect(cmds []selector.Command) batch {
	if len(cmds) == 0 {
		return batch{}
	}
	b := batch{cmds: make([]outCmd, 0, len(cmds))}
	for i := range cmds {
		c := &cmds[i]
		o := outCmd{kind: c.Kind, host: c.Host, target: c.Target}
		var v schemas.Message
		switch c.Kind {
		case selector.CmdLaunch:
			v, o.taskID, o.epoch = c.Launch, c.Launch.TaskID, c.Launch.Epoch
		case selector.CmdKill:
			v, o.taskID, o.pid = c.Kill, c.Kill.TaskID, c.Kill.PID
			o.fence = c.Fence
		case selector.CmdPs:
			v = c.Ps
			if len(c.Ps.PIDs) > 0 {
				o.pids = slices.Clone(c.Ps.PIDs)
			}
		case selector.CmdPersist:
			v, b.store = c.State, true
			if o.target == "" {
				o.target = c.State.Target
			}
		case selector.CmdDelete:
			b.store = true
		default:
			s.log.Error("engine returned an unknown command; ignored", "kind", c.Kind)
			continue
		}
		if v != nil {
			data, err := schemas.Marshal(v)
			if err != nil {
				s.log.Error("cannot encode command; dropped", "kind", c.Kind, "target", c.Target, "host", c.Host, "err", err)
				continue
			}
			o.data = data
		}
		b.cmds = append(b.cmds, o)
	}
	return b
}

// dispatch carries out a batch. Without writes, its requests go out at once;
// with writes, the whole batch goes through the store writer, which sends
// the requests once the writes before them are stored. An ack always goes
// through the store writer's queue: it leaves only once every write queued
// before it is stored (a duplicate event, whose step writes nothing, must
// not be acked while the first delivery's writes wait).
func (s *SelectorService) dispatch(b batch, ack func()) {
	if b.store {
		s.writer.enqueue(writeItem{cmds: b.cmds, ack: ack})
		return
	}
	for _, c := range b.cmds {
		s.request(c)
	}
	if ack != nil {
		s.writer.enqueue(writeItem{ack: ack})
	}
}

// request queues one launch, kill or ps request for its host (see
// requestQueue); a sender carries it out and feeds the reply, or its
// absence, back to the engine.
func (s *SelectorService) request(c outCmd) {
	switch c.kind {
	case selector.CmdLaunch, selector.CmdKill, selector.CmdPs:
		s.reqs.enqueue(c)
	}
}

// send sends one request and steps the engine with its reply, or with its
// absence. The reply timeout starts now. A launch is reported as sent
// (LaunchSent) first, so that its launch timeout starts now too.
func (s *SelectorService) send(c outCmd) {
	var subject string
	switch c.kind {
	case selector.CmdLaunch:
		subject = s.subj.Launch(c.host)
		s.step(&selector.LaunchSent{TaskID: c.taskID}, nil)
	case selector.CmdKill:
		subject = s.subj.Kill(c.host)
	case selector.CmdPs:
		subject = s.subj.Ps(c.host)
	default:
		return
	}
	ctx, cancel := context.WithTimeout(s.reqCtx, s.cfg.RequestTimeout)
	msg, err := s.nc.RequestWithContext(ctx, subject, c.data)
	cancel()
	if err != nil {
		noResp := errors.Is(err, nats.ErrNoResponders)
		if !noResp && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			s.logLimit.Log("request", s.log, slog.LevelWarn, "request failed", "subject", subject, "err", err)
		}
		s.step(unanswered(&c, noResp), nil)
		return
	}
	s.step(s.decodeReply(&c, msg.Data), nil)
}

// RequestsDropped counts the requests dropped because too many were queued
// (fence kills beyond MaxQueuedFencesPerHost included).
func (s *SelectorService) RequestsDropped() uint64 { return s.reqs.dropped.Load() }

// RequestsMerged counts the kill and ps requests absorbed by an identical
// one that was still waiting to be sent.
func (s *SelectorService) RequestsMerged() uint64 { return s.reqs.merged.Load() }

// ReplyErrors counts the ps and kill replies that carried an error (the
// worker refused or could not read the request); each was fed to the engine
// as unanswered.
func (s *SelectorService) ReplyErrors() uint64 { return s.replyErrors.Load() }

// BacklogEvents is the number of task events read at start from the
// durable consumer's ack floor and stepped before anything else.
func (s *SelectorService) BacklogEvents() uint64 { return s.backlogEvents.Load() }

func unanswered(c *outCmd, noResponders bool) selector.Event {
	switch c.kind {
	case selector.CmdLaunch:
		return &selector.LaunchUnanswered{Host: c.host, Target: c.target, TaskID: c.taskID, NoResponders: noResponders}
	case selector.CmdKill:
		return &selector.KillUnanswered{Host: c.host, TaskID: c.taskID, NoResponders: noResponders}
	default:
		return &selector.PsUnanswered{Host: c.host, NoResponders: noResponders}
	}
}

// decodeReply turns a reply into its event. A malformed reply is counted and
// treated as a lost one: the worker may have acted on the request. A ps or
// kill reply with its error set (the worker refused the request or could
// not read it) says nothing of the tasks: it is logged and treated as a lost
// one too, so that the engine asks again, but not counted as malformed.
func (s *SelectorService) decodeReply(c *outCmd, data []byte) selector.Event {
	var err error
	var source string
	switch c.kind {
	case selector.CmdLaunch:
		var r schemas.LaunchReply
		if r, err = decodeLaunchReply(data); err == nil {
			return &selector.LaunchReplied{Host: c.host, Target: c.target, Epoch: c.epoch, Reply: r}
		}
		source = SourceLaunchReply
	case selector.CmdKill:
		var r schemas.KillReply
		if r, err = decodeKillReply(data); err == nil {
			if r.Error != nil {
				s.replyError(c, r.Error)
				return unanswered(c, false)
			}
			return &selector.KillReplied{Host: c.host, Reply: r}
		}
		source = SourceKillReply
	default:
		var r schemas.PsReply
		if r, err = decodePsReply(data); err == nil {
			if r.Error != nil {
				s.replyError(c, r.Error)
				return unanswered(c, false)
			}
			return &selector.PsReplied{Host: c.host, PIDs: c.pids, Reply: r}
		}
		source = SourcePsReply
	}
	s.countMalformed(source, c.host, err)
	return unanswered(c, false)
}

// replyError counts and (rate-limited) logs a ps or kill reply that carries
// an error.
func (s *SelectorService) replyError(c *outCmd, re *schemas.ReplyError) {
	s.replyErrors.Add(1)
	s.replyErrLog.Log(s.log, slog.LevelWarn, "worker answered with an error; taken as unanswered", "kind", c.kind, "host", c.host,
		"task_id", c.taskID, "code", re.Code, "message", re.Message)
}

// onHeartbeat is the hot path: decode into the subscription's scratch
// heartbeat, check it against its subject, step. No allocation beyond the
// decoder's.
func (s *SelectorService) onHeartbeat(m *nats.Msg) {
	s.cfg.Faults.beforeInput(selector.InputHeartbeats)
	defer s.heartbeats.Add(1)
	if err := decodeHeartbeat(m.Data, &s.hb); err != nil {
		s.malformedMsg(SourceHeartbeat, m.Subject, err)
		return
	}
	host, target, err := s.subj.ParseHeartbeat(m.Subject)
	if err != nil {
		s.malformedMsg(SourceHeartbeat, m.Subject, err)
		return
	}
	if host != s.hb.Host || target != s.hb.Target {
		s.malformedMsg(SourceHeartbeat, m.Subject, fmt.Errorf("body names host %q target %q", s.hb.Host, s.hb.Target))
		return
	}
	s.step(&s.hbEv, nil)
}

// onHostStatus decodes and checks a host status, and steps it. It counts
// every message handled (malformed ones included) once its step is done, for
// inputLag.
func (s *SelectorService) onHostStatus(m *nats.Msg) {
	s.cfg.Faults.beforeInput(selector.InputHostStatuses)
	defer s.hostStatuses.Add(1)
	hs, err := decodeHostStatus(m.Data)
	if err == nil {
		err = checkToken(m.Subject, s.subj.Prefix+".host.", hs.Host)
	}
	if err != nil {
		s.malformedMsg(SourceHost, m.Subject, err)
		return
	}
	s.step(&selector.HostStatusReceived{Status: hs}, nil)
}

func (s *SelectorService) onEvent(m jetstream.Msg) {
	ev, err := s.parseEvent(m.Subject(), m.Data())
	if err != nil {
		s.malformedMsg(SourceEvent, m.Subject(), err)
		// Redelivering it would not make it any better.
		if terr := m.Term(); terr != nil {
			s.logLimit.Log("term", s.log, slog.LevelWarn, "cannot terminate malformed event", "err", terr)
		}
		return
	}
	s.step(&selector.TaskEventReceived{Event: ev}, func() {
		if err := m.Ack(); err != nil {
			// It will be redelivered and handled again, idempotently.
			s.logLimit.Log("ack", s.log, slog.LevelWarn, "cannot ack event", "target", ev.Target, "task_id", ev.TaskID, "err", err)
		}
	})
}

// checkToken checks that the last token of subject, after prefix, encodes name.
func checkToken(subject, prefix, name string) error {
	tok, ok := strings.CutPrefix(subject, prefix)
	if !ok || strings.Contains(tok, ".") {
		return fmt.Errorf("unexpected subject %q", subject)
	}
	if protocol.EncodeName(name) != tok {
		return fmt.Errorf("subject %q does not match the name %q in the body", subject, name)
	}
	return nil
}

func (s *SelectorService) onStatus(m *nats.Msg) {
	st := s.Status()
	data, err := encodeStatus(st)
	if err == nil && len(data) > int(s.nc.MaxPayload()) {
		// Too big for one message: answer the summary without the
		// per-target and per-host lines.
		s.logLimit.Log("status-size", s.log, slog.LevelWarn, "status too large for one message; answering without targets and hosts",
			"bytes", len(data), "max_payload", s.nc.MaxPayload())
		st.Targets, st.Hosts = nil, nil
		data, err = encodeStatus(st)
	}
	if err != nil {
		s.log.Error("cannot encode status", "err", err)
		return
	}
	if err := m.Respond(data); err != nil {
		s.logLimit.Log("status-respond", s.log, slog.LevelWarn, "cannot answer status request", "err", err)
	}
}

// encodeStatus encodes st through the schema's validating encoder, falling
// back to plain JSON if the snapshot is too large or fails validation: an
// operator is better served by an imperfect status than by none.
func encodeStatus(st schemas.SelectorStatus) ([]byte, error) {
	if data, err := schemas.Marshal(&st); err == nil {
		return data, nil
	}
	return json.Marshal(st)
}

// malformedMsg counts and (rate-limited) logs a dropped message, and tells
// the engine, whose status counts it.
func (s *SelectorService) malformedMsg(source, subject string, err error) {
	c := s.countMalformed(source, subject, err)
	s.step(&c.ev, nil)
}

func (s *SelectorService) countMalformed(source, where string, err error) *sourceCounter {
	c := s.malformed[source]
	c.n.Add(1)
	c.limit.Log(s.log, slog.LevelWarn, "malformed message dropped", "source", source, "where", where, "err", err)
	return c
}

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

// sourceCounter counts one source's malformed messages.
type sourceCounter struct {
	n     atomic.Uint64
	limit ratelog.Limiter
	ev    selector.Malformed
}

// inflight counts pending work (the request queue's queued and in-flight
// requests and events to feed back) and lets shutdown wait for none.
type inflight struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed while n == 0
}

func (f *inflight) add() {
	f.mu.Lock()
	if f.n == 0 || f.idle == nil {
		f.idle = make(chan struct{})
	}
	f.n++
	f.mu.Unlock()
}

func (f *inflight) done() {
	f.mu.Lock()
	f.n--
	if f.n == 0 {
		close(f.idle)
	}
	f.mu.Unlock()
}

func (f *inflight) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// wait returns once no request is in flight, or ctx's error.
func (f *inflight) wait(ctx context.Context) error {
	for {
		f.mu.Lock()
		if f.n == 0 {
			f.mu.Unlock()
			return nil
		}
		idle := f.idle
		f.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
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
