package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// ServiceConfig configures a SelectorService. Zero fields take the defaults
// in brackets.
type ServiceConfig struct {
	// Prefix of every subject [DefaultPrefix].
	Prefix string
	// Engine holds the decision engine's timers and limits (zero fields take
	// the engine's defaults).
	Engine selector.Config
	// Store sizes the buckets and the event stream.
	Store StoreConfig
	// Tick is how often time is let pass in the engine [50ms].
	Tick time.Duration
	// RequestTimeout bounds each launch, kill and ps request
	// [Engine.ReplyTimeout].
	RequestTimeout time.Duration
	// MaxInFlightRequests bounds the requests awaiting a reply; more wait
	// their turn [64].
	MaxInFlightRequests int
	// WriteTimeout bounds one KV write attempt; failed attempts are retried
	// with backoff until they succeed or lose a compare-and-swap [5s].
	WriteTimeout time.Duration
	// ShutdownTimeout bounds each wait of the graceful shutdown: for the
	// in-flight requests, then for the store writer to flush [5s].
	ShutdownTimeout time.Duration
	// StartedAt is when the process began connecting to NATS; the
	// restart-to-ready time is measured from it [the start of Run].
	StartedAt time.Time
}

func (c ServiceConfig) withDefaults() ServiceConfig {
	c.Engine = c.Engine.WithDefaults()
	if c.Tick <= 0 {
		c.Tick = 50 * time.Millisecond
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = c.Engine.ReplyTimeout
	}
	if c.MaxInFlightRequests <= 0 {
		c.MaxInFlightRequests = 64
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
// by one ordered store writer, requests by bounded goroutines. A Step's
// writes are stored before that Step's launch is sent (write-ahead), and a
// task event is acked only once the writes it caused are stored.
type SelectorService struct {
	nc   *nats.Conn
	cfg  ServiceConfig
	subj Subjects
	log  *slog.Logger

	mu  sync.Mutex
	eng *selector.Engine // nil until Run has rebuilt the state

	store   *Store
	tasks   *TaskStore
	targets *TargetsWatcher
	writer  *storeWriter

	reqCtx    context.Context
	reqCancel context.CancelFunc
	reqSem    chan struct{}
	inflight  inflight
	stopping  atomic.Bool

	ready     chan struct{}
	statusSub *nats.Subscription
	hbSub     *nats.Subscription
	hostSub   *nats.Subscription

	// Heartbeat scratch, owned by hbSub's callback goroutine: the messages
	// of one subscription are delivered one at a time.
	hb   schemas.Heartbeat
	hbEv selector.HeartbeatReceived

	tickEv selector.Tick

	heartbeats     atomic.Uint64
	storeErrors    atomic.Uint64
	restartToReady atomic.Int64
	malformed      map[string]*sourceCounter // fixed keys; values are safe for concurrent use
	logLimit       rateLimiter               // for repeated bus errors

	runOnce atomic.Bool

	beforeWrite func() // test hook: runs before each store write
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
		nc:     nc,
		cfg:    cfg,
		subj:   NewSubjects(cfg.Prefix),
		log:    log,
		reqSem: make(chan struct{}, cfg.MaxInFlightRequests),
		ready:  make(chan struct{}),
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

	consume, err := s.start(ctx)
	if err != nil {
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

	// Let in-flight requests settle; their replies may still cause writes.
	waitCtx, cancelWait := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	if err := s.inflight.wait(waitCtx); err != nil {
		s.log.Warn("shutdown: in-flight requests did not settle in time; abandoning them", "in_flight", s.inflight.count())
	}
	cancelWait()
	s.stopping.Store(true)
	s.reqCancel()

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
// "listening": store, replay, engine, subscriptions, then status.
func (s *SelectorService) start(ctx context.Context) (jetstream.ConsumeContext, error) {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	var specs map[string]schemas.TargetSpec
	var states []schemas.TaskState
	loadStart := time.Now()
	for attempt := 1; ; attempt++ {
		err = s.loadState(ctx, js, &specs, &states)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("bus: selector start: %w", err)
		}
		wait := ReconnectDelay(attempt)
		s.log.Warn("selector start: loading state failed; retrying", "attempt", attempt, "wait", wait, "err", err)
		if !sleepCtx(ctx, wait) {
			return nil, fmt.Errorf("bus: selector start: %w", ctx.Err())
		}
	}
	s.malformed[SourceTargets].n.Add(s.targets.Malformed())
	s.malformed[SourceTasks].n.Add(s.tasks.Malformed())

	loaded := time.Now()
	eng, err := selector.New(s.cfg.Engine, loaded, selector.Snapshot{Targets: specs, Tasks: states})
	if err != nil {
		_ = s.targets.Stop()
		return nil, fmt.Errorf("bus: build engine: %w", err)
	}
	s.mu.Lock()
	s.eng = eng
	s.mu.Unlock()
	if !s.nc.IsConnected() {
		s.step(&selector.Disconnected{}, nil)
	}
	s.log.Info("selector state rebuilt", "targets", len(specs), "tasks", len(states),
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
	hbSub, err := s.nc.Subscribe(s.subj.Heartbeats(), s.onHeartbeat)
	if err != nil {
		return fail(fmt.Errorf("bus: subscribe %s: %w", s.subj.Heartbeats(), err))
	}
	s.setSub(&s.hbSub, hbSub)
	hostSub, err := s.nc.Subscribe(s.subj.Hosts(), s.onHostStatus)
	if err != nil {
		return fail(fmt.Errorf("bus: subscribe %s: %w", s.subj.Hosts(), err))
	}
	s.setSub(&s.hostSub, hostSub)
	consume, err := s.store.Consumer.Consume(s.onEvent,
		jetstream.PullMaxMessages(256),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if s.logLimit.allow("consume") {
				s.log.Warn("event consumer error", "err", err)
			}
		}))
	if err != nil {
		return fail(fmt.Errorf("bus: consume %s: %w", EventStream, err))
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
		tw     *TargetsWatcher
		sp     map[string]schemas.TargetSpec
		twErr  error
		tasks  = NewTaskStore(store.Tasks, s.log)
		st     []schemas.TaskState
		stErr  error
		replay sync.WaitGroup
	)
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

func (s *SelectorService) tickLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.step(&s.tickEv, nil)
		}
	}
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
	taskID string
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
			v, o.taskID = c.Launch, c.Launch.TaskID
		case selector.CmdKill:
			v, o.taskID = c.Kill, c.Kill.TaskID
		case selector.CmdPs:
			v = c.Ps
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
// the requests once the writes before them are stored.
func (s *SelectorService) dispatch(b batch, ack func()) {
	if !b.store {
		for _, c := range b.cmds {
			s.request(c)
		}
		if ack != nil {
			ack()
		}
		return
	}
	s.writer.enqueue(writeItem{cmds: b.cmds, ack: ack})
}

// request sends one launch, kill or ps request in its own goroutine, bounded
// by the in-flight semaphore, and feeds the reply (or its absence) back.
func (s *SelectorService) request(c outCmd) {
	if s.stopping.Load() {
		s.log.Debug("shutdown: request not sent", "kind", c.kind, "host", c.host)
		return
	}
	var subject string
	switch c.kind {
	case selector.CmdLaunch:
		subject = s.subj.Launch(c.host)
	case selector.CmdKill:
		subject = s.subj.Kill(c.host)
	case selector.CmdPs:
		subject = s.subj.Ps(c.host)
	default:
		return
	}
	s.inflight.add()
	go func() {
		defer s.inflight.done()
		select {
		case s.reqSem <- struct{}{}:
		case <-s.reqCtx.Done():
			s.step(unanswered(c, false), nil)
			return
		}
		ctx, cancel := context.WithTimeout(s.reqCtx, s.cfg.RequestTimeout)
		msg, err := s.nc.RequestWithContext(ctx, subject, c.data)
		cancel()
		<-s.reqSem
		if err != nil {
			noResp := errors.Is(err, nats.ErrNoResponders)
			if !noResp && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) && s.logLimit.allow("request") {
				s.log.Warn("request failed", "subject", subject, "err", err)
			}
			s.step(unanswered(c, noResp), nil)
			return
		}
		s.step(s.decodeReply(c, msg.Data), nil)
	}()
}

func unanswered(c outCmd, noResponders bool) selector.Event {
	switch c.kind {
	case selector.CmdLaunch:
		return &selector.LaunchUnanswered{Host: c.host, TaskID: c.taskID, NoResponders: noResponders}
	case selector.CmdKill:
		return &selector.KillUnanswered{Host: c.host, TaskID: c.taskID, NoResponders: noResponders}
	default:
		return &selector.PsUnanswered{Host: c.host, NoResponders: noResponders}
	}
}

// decodeReply turns a reply into its event. A malformed reply is counted and
// treated as a lost one: the worker may have acted on the request.
func (s *SelectorService) decodeReply(c outCmd, data []byte) selector.Event {
	var err error
	var source string
	switch c.kind {
	case selector.CmdLaunch:
		var r schemas.LaunchReply
		if r, err = decodeLaunchReply(data); err == nil {
			return &selector.LaunchReplied{Host: c.host, Reply: r}
		}
		source = SourceLaunchReply
	case selector.CmdKill:
		var r schemas.KillReply
		if r, err = decodeKillReply(data); err == nil {
			return &selector.KillReplied{Host: c.host, Reply: r}
		}
		source = SourceKillReply
	default:
		var r schemas.PsReply
		if r, err = decodePsReply(data); err == nil {
			return &selector.PsReplied{Host: c.host, Reply: r}
		}
		source = SourcePsReply
	}
	s.countMalformed(source, c.host, err)
	return unanswered(c, false)
}

// onHeartbeat is the hot path: decode into the subscription's scratch
// heartbeat, check it against its subject, step. No allocation beyond the
// decoder's.
func (s *SelectorService) onHeartbeat(m *nats.Msg) {
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

func (s *SelectorService) onHostStatus(m *nats.Msg) {
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
	ev, err := decodeTaskEvent(m.Data())
	if err == nil {
		err = checkToken(m.Subject(), s.subj.Prefix+".event.", ev.Target)
	}
	if err != nil {
		s.malformedMsg(SourceEvent, m.Subject(), err)
		// Redelivering it would not make it any better.
		if terr := m.Term(); terr != nil && s.logLimit.allow("term") {
			s.log.Warn("cannot terminate malformed event", "err", terr)
		}
		return
	}
	s.step(&selector.TaskEventReceived{Event: ev}, func() {
		if err := m.Ack(); err != nil && s.logLimit.allow("ack") {
			// It will be redelivered and handled again, idempotently.
			s.log.Warn("cannot ack event", "target", ev.Target, "task_id", ev.TaskID, "err", err)
		}
	})
}

// checkToken checks that the last token of subject, after prefix, encodes name.
func checkToken(subject, prefix, name string) error {
	tok, ok := strings.CutPrefix(subject, prefix)
	if !ok || strings.Contains(tok, ".") {
		return fmt.Errorf("unexpected subject %q", subject)
	}
	if EncodeName(name) != tok {
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
		if s.logLimit.allow("status-size") {
			s.log.Warn("status too large for one message; answering without targets and hosts", "bytes", len(data), "max_payload", s.nc.MaxPayload())
		}
		st.Targets, st.Hosts = nil, nil
		data, err = encodeStatus(st)
	}
	if err != nil {
		s.log.Error("cannot encode status", "err", err)
		return
	}
	if err := m.Respond(data); err != nil && s.logLimit.allow("status-respond") {
		s.log.Warn("cannot answer status request", "err", err)
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
	if ok, suppressed := c.limit.allowCount(); ok {
		s.log.Warn("malformed message dropped", "source", source, "where", where, "err", err, "suppressed", suppressed)
	}
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
	limit rateLimiter
	ev    selector.Malformed
}

// rateLimiter lets through at most one event per second per key, and counts
// those it suppressed.
type rateLimiter struct {
	mu         sync.Mutex
	last       map[string]time.Time
	suppressed uint64
	lastOne    time.Time
}

// allowCount is the single-key form: whether to log now, and how many were
// suppressed since the last line.
func (r *rateLimiter) allowCount() (bool, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if !r.lastOne.IsZero() && now.Sub(r.lastOne) < time.Second {
		r.suppressed++
		return false, 0
	}
	n := r.suppressed
	r.suppressed, r.lastOne = 0, now
	return true, n
}

// allow is the keyed form, for assorted bus errors.
func (r *rateLimiter) allow(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.last == nil {
		r.last = make(map[string]time.Time)
	}
	if t, ok := r.last[key]; ok && now.Sub(t) < time.Second {
		return false
	}
	r.last[key] = now
	return true
}

// inflight counts running requests and lets shutdown wait for none.
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
