package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

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
	Malformed       map[string]uint64 // undecodable requests by kind: launch, kill, ps
	HeartbeatsSent  uint64
	EventsQueued    uint64
	EventsPublished uint64
	EventsDropped   uint64 // refused by a full outbox
	PublishFailures uint64 // failed JetStream publish attempts (retried)
	OutboxLen       int    // events awaiting an ack
	Running         int    // tasks running now
}

// entry is one running task.
type entry struct {
	spec      LaunchSpec
	task      Task
	pid       int64
	seq       uint64
	startedAt time.Time // taken before the executor started it
	hbSubject string
}

// TaskSpan is one task's life on an agent, as the agent saw it: Start is
// taken before the executor starts the task and End once it is gone, so
// that the task ran within [Start, End]. Spans judge, from the workers'
// side, whether two tasks ever overlapped in time.
type TaskSpan struct {
	TaskID string
	Target string
	Epoch  uint64
	PID    int64
	Start  time.Time
	End    time.Time // zero while the task runs
	Kind   string    // how it ended: done or failed; "" while it runs or when it vanished
	Reason string    // the reason of a failed end, such as killed or fenced
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

	ready     chan struct{}
	readyOnce sync.Once

	launches, relaunches, kills, hbSent, queued atomic.Uint64
	fences, fencedTasks                         atomic.Uint64
	refusedMu                                   sync.Mutex
	refused                                     map[string]uint64
	malformed                                   [3]atomic.Uint64
	malformedLog                                [3]ratelog.Limiter
}

const (
	kindLaunch = iota
	kindKill
	kindPs
)

var kindNames = [3]string{"launch", "kill", "ps"}

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
// launches), kills the tasks when Config.KillOnShutdown is set, waits up to
// Config.FlushTimeout for unacked events, unsubscribes and closes the
// executor. It returns nil after a clean shutdown. With Config.FenceAfter
// set, it also probes the connection and fences the agent while NATS does
// not answer (see fence.go).
func (a *Agent) Run(ctx context.Context) error {
	var subs []*nats.Subscription
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	for _, h := range []struct {
		subject string
		fn      nats.MsgHandler
	}{
		{a.subj.Launch(a.cfg.Host), a.handleLaunch},
		{a.subj.Kill(a.cfg.Host), a.handleKill},
		{a.subj.Ps(a.cfg.Host), a.handlePs},
	} {
		s, err := a.nc.Subscribe(h.subject, h.fn)
		if err != nil {
			return fmt.Errorf("worker: subscribe %s: %w", h.subject, err)
		}
		subs = append(subs, s)
	}
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
	a.Drain()
	if a.cfg.KillOnShutdown {
		a.killAll()
	}
	a.publishHostStatus()
	flush := time.NewTimer(a.cfg.FlushTimeout)
	select {
	case <-a.out.idleCh():
	case <-flush.C:
		a.log.Error("shutdown: event outbox not flushed in time", "unacked", a.out.len(), "timeout", a.cfg.FlushTimeout)
	}
	flush.Stop()
	stopOut()
	<-outDone
	for _, s := range subs {
		_ = s.Unsubscribe()
	}
	subs = nil
	if err := a.exec.Close(); err != nil {
		a.log.Warn("closing executor", "err", err)
	}
	if err := a.nc.FlushTimeout(time.Second); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		a.log.Warn("final flush", "err", err)
	}
	a.log.Info("worker agent stopped")
	return nil
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
	a.mu.Unlock()
	return st
}

// Spans lists the running tasks and the last Config.EndedMemory ended ones,
// ordered by start.
func (a *Agent) Spans() []TaskSpan {
	a.mu.Lock()
	out := make([]TaskSpan, 0, len(a.tasks)+len(a.ended.spans))
	for _, e := range a.tasks {
		out = append(out, e.span())
	}
	for _, sp := range a.ended.spans {
		out = append(out, sp)
	}
	a.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Start.Equal(out[j].Start) {
			return out[i].Start.Before(out[j].Start)
		}
		return out[i].TaskID < out[j].TaskID
	})
	return out
}

func (e *entry) span() TaskSpan {
	return TaskSpan{TaskID: e.spec.TaskID, Target: e.spec.Target, Epoch: e.spec.Epoch, PID: e.pid, Start: e.startedAt}
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

// freeLocked is the RAM a launch may still take: capacity minus every task
// counted at the larger of its budget and its use, minus RAM used by
// anything else on the host.
func (a *Agent) freeLocked() int64 {
	var committed, tasksUsed int64
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

func (a *Agent) handleLaunch(m *nats.Msg) {
	launch, stale := a.passBarrier(m)
	if !launch {
		return
	}
	req, err := schemas.DecodeLaunchRequest(m.Data)
	if err != nil {
		a.malformedRequest(kindLaunch, m, err)
		if m.Reply != "" {
			a.respondJSON(m, schemas.LaunchReply{
				V: schemas.Version, TaskID: bestEffortTaskID(m.Data),
				Error: replyError(schemas.CodeInvalid, err.Error()),
			}, false)
		}
		return
	}
	var reply schemas.LaunchReply
	if key := commandKey(m.Data); key != "" {
		reply = a.refuseLaunch(&req, schemas.CodeInvalid, fmt.Sprintf(
			"the launch names a command (field %q): a launch names a task type, and only the worker's own configuration says what runs", key))
	} else if stale {
		reply = a.refuseLaunch(&req, schemas.CodeDraining,
			"sent before the host's fence lifted: the selector gave it up long ago")
	} else {
		var killed *entry
		reply, killed = a.launch(&req)
		if killed != nil {
			// A kill came while it was being started: it is stopped now.
			defer a.killStarted(killed)
		}
	}
	if m.Reply != "" {
		a.respondJSON(m, reply, true)
	}
}

// killStarted stops e, whose kill came while it was being started.
func (a *Agent) killStarted(e *entry) {
	stopped, err := a.stop(e, schemas.ReasonKilled)
	if err != nil || !stopped {
		return // a retried kill tries again, or it ended on its own
	}
	a.kills.Add(1)
	a.log.Info("task killed as it started", "task_id", e.spec.TaskID, "pid", e.pid, "target", e.spec.Target)
}

// commandFields are the top-level fields by which a launch request could
// try to say what to run. The schema has none of them, and unknown fields are
// otherwise ignored; a launch that carries one is refused, so that no
// sender can believe it chose a command.
var commandFields = []string{"command", "cmd", "argv", "path", "exec", "executable", "program", "script", "shell", "dir", "env"}

// commandKey returns the first field of commandFields in the launch request
// data, or "". The data decoded already, so it is a JSON object.
func commandKey(data []byte) string {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return ""
	}
	for _, k := range commandFields {
		if _, ok := top[k]; ok {
			return k
		}
	}
	return ""
}

// refuseLaunch counts and logs the refusal of req and returns its reply.
func (a *Agent) refuseLaunch(req *schemas.LaunchRequest, code, msg string) schemas.LaunchReply {
	a.refusedMu.Lock()
	a.refused[code]++
	a.refusedMu.Unlock()
	a.log.Info("launch refused", "task_id", req.TaskID, "target", req.Target, "type", req.Type, "code", code, "reason", msg)
	return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, Error: replyError(code, msg)}
}

// starting is a launch whose executor Start is under way. Start runs
// without the agent's lock, so that a slow one (a process that takes long to
// exec, a memory group that takes long to make) holds up neither the
// heartbeats of the other tasks nor ps, kill or other launches. Its budget
// counts as committed meanwhile.
type starting struct {
	spec LaunchSpec
	done chan struct{} // closed once Start returned and the outcome is recorded
	// exit is the task's end when its Exited hook ran before Start's
	// outcome was recorded; the launch reports it then.
	exit *Exit
	// killed is set when a kill request came during the start: the task is
	// stopped as soon as it is recorded.
	killed bool
}

// waitStartLocked waits, without the lock (which the caller holds, and
// holds again on return), for the start of the task taskID if one is under
// way, and reports whether it waited.
func (a *Agent) waitStartLocked(taskID string) bool {
	s, ok := a.starts[taskID]
	if !ok {
		return false
	}
	a.mu.Unlock()
	<-s.done
	a.mu.Lock()
	return true
}

// waitStarts waits until every start under way when it is called has ended.
func (a *Agent) waitStarts() {
	a.mu.Lock()
	var done []chan struct{}
	for _, s := range a.starts {
		done = append(done, s.done)
	}
	a.mu.Unlock()
	for _, d := range done {
		<-d
	}
}

// launch carries out one decoded launch request and returns the reply, and
// the task it started if a kill of it came while it was being started.
func (a *Agent) launch(req *schemas.LaunchRequest) (_ schemas.LaunchReply, killed *entry) {
	refuse := func(code, msg string) (schemas.LaunchReply, *entry) { return a.refuseLaunch(req, code, msg), nil }
	spec := LaunchSpec{TaskID: req.TaskID, Epoch: req.Epoch, Target: req.Target, Type: req.Type, RAM: req.RAM, Args: req.Args}

	a.mu.Lock()
	defer a.mu.Unlock()
	// A retried request while the first one's Start is under way is answered
	// from its outcome.
	for a.waitStartLocked(req.TaskID) {
	}
	if e, ok := a.tasks[req.TaskID]; ok {
		if e.spec.Target != req.Target || e.spec.Epoch != req.Epoch {
			return refuse(schemas.CodeInvalid, fmt.Sprintf("task_id %s already runs for target %q epoch %d", req.TaskID, e.spec.Target, e.spec.Epoch))
		}
		a.relaunches.Add(1)
		return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: e.pid}, nil
	}
	if pid, ok := a.ended.get(req.TaskID); ok {
		// Ended already (its event is on its way or delivered): answer with
		// its PID and start nothing, so a retried request never runs twice.
		a.relaunches.Add(1)
		return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: pid}, nil
	}
	if a.draining {
		return refuse(schemas.CodeDraining, "host is draining")
	}
	if a.fence.fenced.Load() {
		// Not a code of its own: the selector takes unknown codes for a
		// permanent refusal of the target, and this one passes.
		return refuse(schemas.CodeDraining, "host is fenced: cut off from NATS, it stopped its tasks and takes no launches until NATS answers again")
	}
	if err := a.exec.Check(&spec); err != nil {
		return refuse(launchCode(err), err.Error())
	}
	budget := spec.BudgetMiB()
	if free := a.freeLocked(); budget > free {
		return refuse(schemas.CodeInsufficientRAM, fmt.Sprintf("needs %d MiB, %d MiB free of %d", budget, max(free, 0), a.cfg.RAMMiB))
	}
	var hooks Hooks
	hooks.Exited = func(t Task, ex Exit) { a.exited(spec.TaskID, t, ex) }
	st := &starting{spec: spec, done: make(chan struct{})}
	a.starts[spec.TaskID] = st
	startedAt := a.cfg.Now()
	a.mu.Unlock()
	task, err := a.exec.Start(&spec, hooks)
	a.mu.Lock()
	delete(a.starts, spec.TaskID)
	defer close(st.done) // after the outcome is recorded, before the unlock
	if err != nil {
		return refuse(launchCode(err), err.Error())
	}
	e := &entry{
		spec:      spec,
		task:      task,
		pid:       task.PID(),
		startedAt: startedAt,
		hbSubject: a.subj.Heartbeat(a.cfg.Host, spec.Target),
	}
	a.launches.Add(1)
	if st.exit != nil {
		// It ended before its start was recorded: it is reported as any
		// task that ended, and the reply gives its PID.
		ex := *st.exit
		a.removeLocked(e, ex.Kind, ex.Reason)
		if ex.Kind != "" {
			a.log.Info("task ended as it started", "task_id", spec.TaskID, "pid", e.pid, "target", spec.Target,
				"kind", ex.Kind, "reason", ex.Reason)
			a.emit(e, ex)
		}
		return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: e.pid}, nil
	}
	a.tasks[spec.TaskID] = e
	// The first heartbeat goes out before the reply, not at the next tick.
	a.heartbeatLocked(e)
	a.log.Info("task started", "task_id", spec.TaskID, "pid", e.pid, "target", spec.Target, "type", spec.Type,
		"epoch", spec.Epoch, "budget_mib", budget)
	if st.killed {
		killed = e
	}
	return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: e.pid}, killed
}

func launchCode(err error) string {
	switch {
	case errors.Is(err, ErrUnknownType):
		return schemas.CodeUnknownType
	case errors.Is(err, ErrInsufficientRAM):
		return schemas.CodeInsufficientRAM
	default:
		return schemas.CodeInvalid
	}
}

// exited is the executor's hook for a task that ended on its own.
func (a *Agent) exited(taskID string, t Task, ex Exit) {
	a.mu.Lock()
	e, ok := a.tasks[taskID]
	if !ok || e.task != t {
		if st, ok := a.starts[taskID]; ok && st.exit == nil {
			st.exit = &ex // its launch reports it
		}
		a.mu.Unlock()
		return
	}
	a.removeLocked(e, ex.Kind, ex.Reason)
	a.mu.Unlock()
	if ex.Kind == "" {
		a.log.Warn("task vanished", "task_id", taskID, "pid", e.pid, "target", e.spec.Target)
		return
	}
	a.log.Info("task ended", "task_id", taskID, "pid", e.pid, "target", e.spec.Target, "kind", ex.Kind, "reason", ex.Reason)
	a.emit(e, ex)
}

// removeLocked forgets e, which has ended (how: kind and reason), and
// remembers its span among the ended ones.
func (a *Agent) removeLocked(e *entry, kind, reason string) {
	delete(a.tasks, e.spec.TaskID)
	sp := e.span()
	sp.End, sp.Kind, sp.Reason = a.cfg.Now(), kind, reason
	a.ended.add(sp)
}

// emit queues e's task event for JetStream.
func (a *Agent) emit(e *entry, ex Exit) {
	ev := schemas.TaskEvent{
		V:        schemas.Version,
		TaskID:   e.spec.TaskID,
		Epoch:    e.spec.Epoch,
		PID:      e.pid,
		Host:     a.cfg.Host,
		Target:   e.spec.Target,
		Type:     e.spec.Type,
		Kind:     ex.Kind,
		Reason:   ex.Reason,
		ExitCode: ex.ExitCode,
		Metrics:  ex.Metrics,
		At:       a.cfg.Now().UTC(),
	}
	b, err := schemas.Marshal(&ev)
	if err != nil {
		a.log.Error("encoding task event; dropped", "task_id", ev.TaskID, "kind", ev.Kind, "err", err)
		return
	}
	it := outItem{subject: a.subj.Event(e.spec.Target), msgID: ev.TaskID + ":" + ev.Kind, data: b}
	if !a.out.put(it) {
		a.log.Error("EVENT OUTBOX FULL: task event dropped; the selector will find the task by staleness",
			"task_id", ev.TaskID, "target", ev.Target, "kind", ev.Kind, "reason", ev.Reason, "outbox_size", a.cfg.OutboxSize)
		return
	}
	a.queued.Add(1)
}

func (a *Agent) handleKill(m *nats.Msg) {
	req, err := schemas.DecodeKillRequest(m.Data)
	if err != nil {
		a.malformedRequest(kindKill, m, err)
		if m.Reply != "" {
			// Running true: a reader that ignores the error must not take
			// the task for gone.
			a.respondJSON(m, schemas.KillReply{V: schemas.Version, TaskID: bestEffortTaskID(m.Data), Running: true,
				Error: replyError(schemas.CodeInvalid, err.Error())}, false)
		}
		return
	}
	reply := a.kill(&req)
	if m.Reply != "" {
		a.respondJSON(m, reply, true)
	}
}

// kill stops the task req names (by task_id, and by PID when it is not 0)
// and reports whether it still runs. A task that is not there is gone. A
// request whose PID is not the task's, or a stop that fails, is answered
// with an error (and running true), never with a "gone" that could be wrong.
func (a *Agent) kill(req *schemas.KillRequest) schemas.KillReply {
	reply := schemas.KillReply{V: schemas.Version, TaskID: req.TaskID, PID: req.PID}
	a.mu.Lock()
	if st, ok := a.starts[req.TaskID]; ok {
		// Answering "gone" now would let it run unknown, and waiting for
		// its start would hold up every other kill: it is stopped once it
		// runs, and this reply says it still runs.
		st.killed = true
		a.mu.Unlock()
		reply.Running = true
		reply.Error = replyError(schemas.CodeFailed, "the task is being started; it is stopped as soon as it runs")
		return reply
	}
	e, ok := a.tasks[req.TaskID]
	a.mu.Unlock()
	if !ok {
		return reply
	}
	if req.PID != 0 && e.pid != req.PID {
		reply.Running = true
		reply.Error = replyError(schemas.CodeInvalid, fmt.Sprintf("task %s runs with pid %d, not %d", req.TaskID, e.pid, req.PID))
		return reply
	}
	stopped, err := a.stop(e, schemas.ReasonKilled)
	if err != nil {
		reply.Running = true
		reply.Error = replyError(schemas.CodeFailed, err.Error())
		return reply
	}
	if stopped {
		a.kills.Add(1)
		a.log.Info("task killed", "task_id", req.TaskID, "pid", e.pid, "target", e.spec.Target, "reason", req.Reason)
	}
	return reply
}

// stop kills e's task; once it is gone, it forgets the task and queues its
// failed event with reason. stopped is false when the task had ended on its
// own already (its Exited hook reports it); err is set when the executor
// could not stop it, and the task is kept.
func (a *Agent) stop(e *entry, reason string) (stopped bool, err error) {
	switch err := e.task.Kill(); {
	case errors.Is(err, ErrGone):
		return false, nil
	case err != nil:
		a.log.Error("stopping task failed", "task_id", e.spec.TaskID, "pid", e.pid, "target", e.spec.Target, "reason", reason, "err", err)
		return false, fmt.Errorf("stop task %s (pid %d): %w", e.spec.TaskID, e.pid, err)
	}
	a.mu.Lock()
	if cur, ok := a.tasks[e.spec.TaskID]; ok && cur == e {
		a.removeLocked(e, schemas.EventFailed, reason)
	}
	a.mu.Unlock()
	a.emit(e, Exit{Kind: schemas.EventFailed, Reason: reason})
	return true, nil
}

// entries returns the running tasks, ordered by task_id.
func (a *Agent) entries() []*entry {
	a.mu.Lock()
	out := make([]*entry, 0, len(a.tasks))
	for _, e := range a.tasks {
		out = append(out, e)
	}
	a.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].spec.TaskID < out[j].spec.TaskID })
	return out
}

// killAll kills every task (shutdown with KillOnShutdown), those being
// started included.
func (a *Agent) killAll() {
	a.waitStarts()
	for _, e := range a.entries() {
		a.kill(&schemas.KillRequest{TaskID: e.spec.TaskID, PID: e.pid, Reason: "worker shutdown"})
	}
}

func (a *Agent) handlePs(m *nats.Msg) {
	req, err := schemas.DecodePsRequest(m.Data)
	if err != nil {
		a.malformedRequest(kindPs, m, err)
		if m.Reply != "" {
			a.respondJSON(m, schemas.PsReply{V: schemas.Version, Host: a.cfg.Host,
				Error: replyError(schemas.CodeInvalid, err.Error())}, true)
		}
		return
	}
	if m.Reply != "" {
		a.respondJSON(m, a.ps(&req), true)
	}
}

// psEndedMax bounds the ended tasks a ps reply that names no PID lists:
// the most recent ones.
const psEndedMax = 64

// ps lists the running tasks (hung ones included), only those with the
// requested PIDs when there are any, ordered by PID; when there are none,
// it lists in Starting the tasks being started. It also lists, in
// Ended, the tasks that ended on their own with those PIDs (or the most
// recent ones), so that the selector can tell a task whose done event is
// on its way from one that vanished.
func (a *Agent) ps(req *schemas.PsRequest) schemas.PsReply {
	a.mu.Lock()
	reply := schemas.PsReply{V: schemas.Version, Host: a.cfg.Host, Tasks: make([]schemas.PsTask, 0, len(a.tasks))}
	for _, e := range a.tasks {
		if len(req.PIDs) > 0 && !slices.Contains(req.PIDs, e.pid) {
			continue
		}
		pt := schemas.PsTask{
			TaskID: e.spec.TaskID, Epoch: e.spec.Epoch, PID: e.pid, Target: e.spec.Target,
			Type: e.spec.Type, RAM: e.spec.RAM, StartedAt: e.startedAt.UTC(),
		}
		if l, ok := e.task.(TaskLogger); ok {
			pt.Log = l.LogPath()
		}
		reply.Tasks = append(reply.Tasks, pt)
	}
	if len(req.PIDs) == 0 {
		for _, st := range a.starts {
			reply.Starting = append(reply.Starting, schemas.PsStarting{TaskID: st.spec.TaskID, Epoch: st.spec.Epoch, Target: st.spec.Target})
		}
		slices.SortFunc(reply.Starting, func(x, y schemas.PsStarting) int { return strings.Compare(x.TaskID, y.TaskID) })
	}
	a.ended.recent(func(sp TaskSpan) bool {
		if sp.Kind == "" || sp.Epoch == 0 {
			return true // vanished without a word: no event will come
		}
		if len(req.PIDs) > 0 {
			if slices.Contains(req.PIDs, sp.PID) {
				reply.Ended = append(reply.Ended, schemas.PsEnded{TaskID: sp.TaskID, Epoch: sp.Epoch, Kind: sp.Kind})
			}
			return true
		}
		reply.Ended = append(reply.Ended, schemas.PsEnded{TaskID: sp.TaskID, Epoch: sp.Epoch, Kind: sp.Kind})
		return len(reply.Ended) < psEndedMax
	})
	a.mu.Unlock()
	sort.Slice(reply.Tasks, func(i, j int) bool { return reply.Tasks[i].PID < reply.Tasks[j].PID })
	return reply
}

// malformedRequest counts an undecodable request and logs it, at most once
// per malformedLogEvery per kind.
func (a *Agent) malformedRequest(kind int, m *nats.Msg, err error) {
	a.malformed[kind].Add(1)
	if ok, n := a.malformedLog[kind].Allow(); ok {
		a.log.Warn("malformed request", "kind", kindNames[kind], "subject", m.Subject, "bytes", len(m.Data),
			"err", truncate(err.Error(), 256), "suppressed", n)
	}
}

// replyError builds a reply's error, its message cut to 512 bytes.
func replyError(code, msg string) *schemas.ReplyError {
	return &schemas.ReplyError{Code: code, Message: truncate(msg, 512)}
}

// respondJSON answers m; strict replies go through schemas.Marshal (which
// validates), the others through encoding/json.
func (a *Agent) respondJSON(m *nats.Msg, v any, strict bool) {
	var b []byte
	var err error
	if msg, ok := v.(schemas.Message); ok && strict {
		b, err = schemas.Marshal(msg)
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		a.log.Error("encoding reply", "subject", m.Subject, "err", err)
		return
	}
	if err := m.Respond(b); err != nil {
		a.log.Warn("reply failed", "subject", m.Subject, "err", err)
	}
}

// bestEffortTaskID pulls a task_id out of a request that failed strict
// decoding, so that its error reply can still be matched; "" when none.
func bestEffortTaskID(b []byte) string {
	if len(b) > schemas.MaxMessageBytes {
		return ""
	}
	var v struct {
		TaskID string `json:"task_id"`
	}
	if json.Unmarshal(b, &v) != nil || len(v.TaskID) > schemas.MaxNameBytes {
		return ""
	}
	return v.TaskID
}

// truncate makes s valid UTF-8 and cuts it to at most n bytes (plus "...")
// at a rune boundary.
func truncate(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// malformedLogEvery is the shortest gap between two logs of one malformed
// kind.
const malformedLogEvery = 5 * time.Second

// endedCache remembers the spans of the last n ended task_ids, oldest out
// first.
type endedCache struct {
	ring  []string
	next  int
	spans map[string]TaskSpan
}

func newEndedCache(n int) endedCache {
	return endedCache{ring: make([]string, n), spans: make(map[string]TaskSpan, n)}
}

func (c *endedCache) add(sp TaskSpan) {
	if _, ok := c.spans[sp.TaskID]; ok {
		return
	}
	if old := c.ring[c.next]; old != "" {
		delete(c.spans, old)
	}
	c.ring[c.next] = sp.TaskID
	c.next = (c.next + 1) % len(c.ring)
	c.spans[sp.TaskID] = sp
}

// recent calls f with the ended spans, the most recent first, until f
// returns false.
func (c *endedCache) recent(f func(TaskSpan) bool) {
	for i := range len(c.ring) {
		id := c.ring[(c.next-1-i+2*len(c.ring))%len(c.ring)]
		if id == "" {
			return
		}
		if !f(c.spans[id]) {
			return
		}
	}
}

// get returns the PID of an ended task_id.
func (c *endedCache) get(id string) (int64, bool) {
	sp, ok := c.spans[id]
	return sp.PID, ok
}
