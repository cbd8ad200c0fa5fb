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

	"github.com/taskselector/taskselector/bus"
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
)

// Config configures an Agent. Zero fields take the defaults in brackets.
type Config struct {
	// Host is the host's name (required).
	Host string
	// RAMMiB is the host's RAM capacity in MiB (required, > 0).
	RAMMiB int64
	// HeartbeatInterval is the period of task heartbeats and HostStatus [1s].
	HeartbeatInterval time.Duration
	// Prefix of every subject [bus.DefaultPrefix].
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
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (c *Config) withDefaults() error {
	if c.Host == "" || len(c.Host) > schemas.MaxNameBytes {
		return fmt.Errorf("worker: host name must be 1-%d bytes, got %q", schemas.MaxNameBytes, c.Host)
	}
	if c.RAMMiB <= 0 {
		return fmt.Errorf("worker: RAM must be a positive number of MiB, got %d", c.RAMMiB)
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.Prefix == "" {
		c.Prefix = bus.DefaultPrefix
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
	return nil
}

// Stats are an agent's cumulative counters.
type Stats struct {
	Launches        uint64            // tasks started
	Relaunches      uint64            // launches answered from an existing or ended task
	Refused         map[string]uint64 // launch refusals by reply code
	Kills           uint64            // tasks stopped by a kill request
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
	startedAt time.Time
	hbSubject string
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
	subj bus.Subjects
	out  *outbox

	mu       sync.Mutex
	tasks    map[string]*entry // by task_id
	ended    endedCache
	draining bool
	hbBuf    []byte
	hb       schemas.Heartbeat
	progress float64

	ready     chan struct{}
	readyOnce sync.Once

	launches, relaunches, kills, hbSent, queued atomic.Uint64
	refusedMu                                   sync.Mutex
	refused                                     map[string]uint64
	malformed                                   [3]atomic.Uint64
	malformedLog                                [3]rateLog
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
		subj:    bus.NewSubjects(cfg.Prefix),
		tasks:   make(map[string]*entry),
		ended:   newEndedCache(cfg.EndedMemory),
		ready:   make(chan struct{}),
		refused: make(map[string]uint64),
	}
	a.out = newOutbox(js, log, cfg.OutboxSize, cfg.PublishTimeout, cfg.RetryBase, cfg.RetryMax)
	return a, nil
}

// Ready is closed once Run has subscribed and published the first HostStatus.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Run serves until ctx ends, then shuts down gracefully: it drains (refuses
// launches), kills the tasks when Config.KillOnShutdown is set, waits up to
// Config.FlushTimeout for unacked events, unsubscribes and closes the
// executor. It returns nil after a clean shutdown.
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

	a.tick()
	a.readyOnce.Do(func() { close(a.ready) })
	a.log.Info("worker agent ready", "ram_mib", a.cfg.RAMMiB, "executor", a.cfg.Executor,
		"heartbeat_interval", a.cfg.HeartbeatInterval, "prefix", a.cfg.Prefix)

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

// tick sends every task's heartbeat and the HostStatus.
func (a *Agent) tick() {
	a.mu.Lock()
	for _, e := range a.tasks {
		a.heartbeatLocked(e)
	}
	a.mu.Unlock()
	a.publishHostStatus()
}

// heartbeatLocked publishes one heartbeat for e unless the task is silent.
func (a *Agent) heartbeatLocked(e *entry) {
	s := e.task.Sample()
	if s.Silent {
		return
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
	a.hbBuf = schemas.AppendHeartbeat(a.hbBuf[:0], h)
	if err := a.nc.Publish(e.hbSubject, a.hbBuf); err != nil {
		a.log.Warn("heartbeat publish failed", "task_id", e.spec.TaskID, "err", err)
		return
	}
	a.hbSent.Add(1)
}

// publishHostStatus sends the host's RAM, tasks and draining flag.
func (a *Agent) publishHostStatus() {
	a.mu.Lock()
	st := schemas.HostStatus{
		V:        schemas.Version,
		Host:     a.cfg.Host,
		RAM:      schemas.HostRAM{TotalMiB: a.cfg.RAMMiB, UsedMiB: min(a.exec.UsedMiB(), a.cfg.RAMMiB)},
		Tasks:    make([]string, 0, len(a.tasks)),
		Draining: a.draining,
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
	committed += max(a.exec.UsedMiB()-tasksUsed, 0)
	return a.cfg.RAMMiB - committed
}

func (a *Agent) handleLaunch(m *nats.Msg) {
	req, err := schemas.DecodeLaunchRequest(m.Data)
	if err != nil {
		a.malformedRequest(kindLaunch, m, err)
		if m.Reply != "" {
			a.respondJSON(m, schemas.LaunchReply{
				V: schemas.Version, TaskID: bestEffortTaskID(m.Data),
				Error: &schemas.ReplyError{Code: schemas.CodeInvalid, Message: truncate(err.Error(), 512)},
			}, false)
		}
		return
	}
	reply := a.launch(&req)
	if m.Reply != "" {
		a.respondJSON(m, reply, true)
	}
}

// launch carries out one decoded launch request and returns the reply.
func (a *Agent) launch(req *schemas.LaunchRequest) schemas.LaunchReply {
	refuse := func(code, msg string) schemas.LaunchReply {
		a.refusedMu.Lock()
		a.refused[code]++
		a.refusedMu.Unlock()
		a.log.Info("launch refused", "task_id", req.TaskID, "target", req.Target, "type", req.Type, "code", code, "reason", msg)
		return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID,
			Error: &schemas.ReplyError{Code: code, Message: truncate(msg, 512)}}
	}
	spec := LaunchSpec{TaskID: req.TaskID, Epoch: req.Epoch, Target: req.Target, Type: req.Type, RAM: req.RAM, Args: req.Args}

	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.tasks[req.TaskID]; ok {
		if e.spec.Target != req.Target || e.spec.Epoch != req.Epoch {
			return refuse(schemas.CodeInvalid, fmt.Sprintf("task_id %s already runs for target %q epoch %d", req.TaskID, e.spec.Target, e.spec.Epoch))
		}
		a.relaunches.Add(1)
		return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: e.pid}
	}
	if pid, ok := a.ended.get(req.TaskID); ok {
		// Ended already (its event is on its way or delivered): answer with
		// its PID and start nothing, so a retried request never runs twice.
		a.relaunches.Add(1)
		return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: pid}
	}
	if a.draining {
		return refuse(schemas.CodeDraining, "host is draining")
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
	task, err := a.exec.Start(&spec, hooks)
	if err != nil {
		return refuse(launchCode(err), err.Error())
	}
	e := &entry{
		spec:      spec,
		task:      task,
		pid:       task.PID(),
		startedAt: a.cfg.Now(),
		hbSubject: a.subj.Heartbeat(a.cfg.Host, spec.Target),
	}
	a.tasks[spec.TaskID] = e
	a.launches.Add(1)
	// The first heartbeat goes out before the reply, not at the next tick.
	a.heartbeatLocked(e)
	a.log.Info("task started", "task_id", spec.TaskID, "pid", e.pid, "target", spec.Target, "type", spec.Type,
		"epoch", spec.Epoch, "budget_mib", budget)
	return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: e.pid}
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
		a.mu.Unlock()
		return
	}
	a.removeLocked(e)
	a.mu.Unlock()
	if ex.Kind == "" {
		a.log.Warn("task vanished", "task_id", taskID, "pid", e.pid, "target", e.spec.Target)
		return
	}
	a.log.Info("task ended", "task_id", taskID, "pid", e.pid, "target", e.spec.Target, "kind", ex.Kind, "reason", ex.Reason)
	a.emit(e, ex)
}

func (a *Agent) removeLocked(e *entry) {
	delete(a.tasks, e.spec.TaskID)
	a.ended.add(e.spec.TaskID, e.pid)
}

// emit queues e's task event for JetStream.
func (a *Agent) emit(e *entry, ex Exit) {
	ev := schemas.TaskEvent{
		V:       schemas.Version,
		TaskID:  e.spec.TaskID,
		Epoch:   e.spec.Epoch,
		PID:     e.pid,
		Host:    a.cfg.Host,
		Target:  e.spec.Target,
		Type:    e.spec.Type,
		Kind:    ex.Kind,
		Reason:  ex.Reason,
		Metrics: ex.Metrics,
		At:      a.cfg.Now().UTC(),
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
		a.rejectMalformed(kindKill, m, err)
		return
	}
	running := a.kill(&req)
	if m.Reply != "" {
		a.respondJSON(m, schemas.KillReply{V: schemas.Version, TaskID: req.TaskID, PID: req.PID, Running: running}, true)
	}
}

// kill stops the task req names (by task_id, and by PID when it is not 0)
// and reports whether it still runs.
func (a *Agent) kill(req *schemas.KillRequest) bool {
	a.mu.Lock()
	e, ok := a.tasks[req.TaskID]
	a.mu.Unlock()
	if !ok || (req.PID != 0 && e.pid != req.PID) {
		return false
	}
	switch err := e.task.Kill(); {
	case errors.Is(err, ErrGone):
		return false
	case err != nil:
		a.log.Error("kill failed", "task_id", req.TaskID, "pid", e.pid, "err", err)
		return true
	}
	a.mu.Lock()
	if cur, ok := a.tasks[req.TaskID]; ok && cur == e {
		a.removeLocked(e)
	}
	a.mu.Unlock()
	a.kills.Add(1)
	a.log.Info("task killed", "task_id", req.TaskID, "pid", e.pid, "target", e.spec.Target, "reason", req.Reason)
	a.emit(e, Exit{Kind: schemas.EventFailed, Reason: schemas.ReasonKilled})
	return false
}

// killAll kills every task (shutdown with KillOnShutdown).
func (a *Agent) killAll() {
	a.mu.Lock()
	ids := make([]string, 0, len(a.tasks))
	for id := range a.tasks {
		ids = append(ids, id)
	}
	a.mu.Unlock()
	sort.Strings(ids)
	for _, id := range ids {
		a.kill(&schemas.KillRequest{TaskID: id, Reason: "worker shutdown"})
	}
}

func (a *Agent) handlePs(m *nats.Msg) {
	req, err := schemas.DecodePsRequest(m.Data)
	if err != nil {
		a.rejectMalformed(kindPs, m, err)
		return
	}
	if m.Reply != "" {
		a.respondJSON(m, a.ps(&req), true)
	}
}

// ps lists the running tasks (hung ones included), only those with the
// requested PIDs when there are any, ordered by PID.
func (a *Agent) ps(req *schemas.PsRequest) schemas.PsReply {
	a.mu.Lock()
	reply := schemas.PsReply{V: schemas.Version, Host: a.cfg.Host, Tasks: make([]schemas.PsTask, 0, len(a.tasks))}
	for _, e := range a.tasks {
		if len(req.PIDs) > 0 && !slices.Contains(req.PIDs, e.pid) {
			continue
		}
		reply.Tasks = append(reply.Tasks, schemas.PsTask{
			TaskID: e.spec.TaskID, Epoch: e.spec.Epoch, PID: e.pid, Target: e.spec.Target,
			Type: e.spec.Type, RAM: e.spec.RAM, StartedAt: e.startedAt.UTC(),
		})
	}
	a.mu.Unlock()
	sort.Slice(reply.Tasks, func(i, j int) bool { return reply.Tasks[i].PID < reply.Tasks[j].PID })
	return reply
}

// malformedRequest counts an undecodable request and logs it, at most once
// per rateLogEvery per kind.
func (a *Agent) malformedRequest(kind int, m *nats.Msg, err error) {
	a.malformed[kind].Add(1)
	if n, ok := a.malformedLog[kind].allow(a.cfg.Now()); ok {
		a.log.Warn("malformed request", "kind", kindNames[kind], "subject", m.Subject, "bytes", len(m.Data),
			"err", truncate(err.Error(), 256), "suppressed_since_last", n)
	}
}

// invalidReply answers an undecodable kill or ps request: KillReply and
// PsReply have no error field, so it carries the LaunchReply's error shape.
type invalidReply struct {
	V      int                 `json:"v"`
	TaskID string              `json:"task_id,omitempty"`
	Error  *schemas.ReplyError `json:"error"`
}

// rejectMalformed counts and logs an undecodable kill or ps request and,
// when it asks for a reply, answers it with an invalidReply.
func (a *Agent) rejectMalformed(kind int, m *nats.Msg, err error) {
	a.malformedRequest(kind, m, err)
	if m.Reply != "" {
		a.respondJSON(m, invalidReply{V: schemas.Version, TaskID: bestEffortTaskID(m.Data),
			Error: &schemas.ReplyError{Code: schemas.CodeInvalid, Message: truncate(err.Error(), 512)}}, false)
	}
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

// rateLogEvery is the shortest gap between two logs of one malformed kind.
const rateLogEvery = 5 * time.Second

// rateLog lets one log line through per rateLogEvery and counts the rest.
type rateLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (r *rateLog) allow(now time.Time) (suppressed int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && now.Sub(r.last) < rateLogEvery {
		r.suppressed++
		return 0, false
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	return n, true
}

// endedCache remembers the PIDs of the last n ended task_ids, oldest out first.
type endedCache struct {
	ring []string
	next int
	pids map[string]int64
}

func newEndedCache(n int) endedCache {
	return endedCache{ring: make([]string, n), pids: make(map[string]int64, n)}
}

func (c *endedCache) add(id string, pid int64) {
	if _, ok := c.pids[id]; ok {
		return
	}
	if old := c.ring[c.next]; old != "" {
		delete(c.pids, old)
	}
	c.ring[c.next] = id
	c.next = (c.next + 1) % len(c.ring)
	c.pids[id] = pid
}

func (c *endedCache) get(id string) (int64, bool) {
	pid, ok := c.pids[id]
	return pid, ok
}
