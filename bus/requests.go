package bus

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/internal/ratelog"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// requestQueue schedules the service's launch, kill and ps requests. Work is
// bounded before any goroutine is involved:
//
//   - requests wait in a FIFO per host; a fixed pool of senders (one per
//     ServiceConfig.MaxInFlightRequests) carries them out, taking the hosts
//     with work in turn, with at most MaxInFlightPerHost requests of one host
//     awaiting a reply, so that a host that never answers holds only its own
//     slots and delays only its own requests;
//   - a kill or ps that is already waiting for the same host, task and PIDs
//     absorbs a repeat of itself (counted as merged);
//   - fence kills wait in a lower-priority FIFO of their own per host, at
//     most MaxQueuedFencesPerHost; more are dropped (the engine fences again
//     on the impostor's next message);
//   - at most MaxQueuedRequests wait over all hosts; a ps or kill beyond that
//     is dropped and fed back to the engine as unanswered, so that it
//     retries. Launches are never dropped for room (the engine bounds them by
//     MaxPendingLaunches);
//   - a launch that is not sent because the service shuts down is fed back
//     as LaunchUnanswered{NotSent: true}.
//
// A host's state is removed as soon as it has nothing queued or in flight.
// Events fed back are stepped by the senders, never by the caller of
// enqueue, which may be inside a step's dispatch.
type requestQueue struct {
	s         *SelectorService
	perHost   int
	maxQueued int
	maxFences int

	mu       sync.Mutex
	cond     *sync.Cond // signalled when a job is ready or the queue closes
	hosts    map[string]*hostQueue
	runq     fifo[*hostQueue] // hosts with a queued request and a free slot, in turn
	feedback fifo[selector.Event]
	queued   int  // requests waiting, over all hosts
	noLaunch bool // launches are fed back as not sent
	closed   bool // nothing more is sent

	busy    inflight // requests queued or in flight, and events to feed back
	senders sync.WaitGroup

	merged  atomic.Uint64
	dropped atomic.Uint64
	dropLog ratelog.Limiter
}

// hostQueue is one host's waiting requests.
type hostQueue struct {
	name     string
	main     fifo[outCmd] // launches, ps, and kills of the engine's own tasks
	fences   fifo[outCmd] // kills of impostor tasks
	keys     map[string]struct{}
	inflight int
	inRunq   bool
}

func (h *hostQueue) queued() int { return h.main.len() + h.fences.len() }

// requestJob is a sender's next piece of work: a request to send (host set)
// or an event to feed back to the engine (ev set).
type requestJob struct {
	cmd  outCmd
	host *hostQueue
	ev   selector.Event
}

func newRequestQueue(s *SelectorService, perHost, maxQueued, maxFences int) *requestQueue {
	q := &requestQueue{s: s, perHost: perHost, maxQueued: maxQueued, maxFences: maxFences, hosts: make(map[string]*hostQueue)}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// start starts n senders.
func (q *requestQueue) start(n int) {
	for range n {
		q.senders.Go(q.runSender)
	}
}

func (q *requestQueue) runSender() {
	for {
		j, ok := q.next()
		if !ok {
			return
		}
		if j.ev != nil {
			q.s.step(j.ev, nil)
		} else {
			q.s.send(j.cmd)
		}
		q.done(j)
	}
}

// mergeKey identifies requests that one send answers for: kills of one task
// (and PID), ps of one PID list, and helper starts or stops of one helper.
// Launches are never merged.
func mergeKey(c *outCmd) string {
	switch c.kind {
	case selector.CmdKill:
		return "k\x00" + c.taskID + "\x00" + strconv.FormatInt(c.pid, 10)
	case selector.CmdHelper:
		return "h\x00" + c.helper.Op + "\x00" + c.helper.HelperID
	case selector.CmdPs:
		var b strings.Builder
		b.WriteString("p")
		for _, p := range c.pids {
			b.WriteByte(0)
			b.WriteString(strconv.FormatInt(p, 10))
		}
		return b.String()
	}
	return ""
}

// enqueue queues c for its host. It never blocks on the network.
func (q *requestQueue) enqueue(c outCmd) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		if c.kind == selector.CmdLaunch {
			q.s.log.Debug("shutdown: launch not sent", "target", c.target, "host", c.host, "task_id", c.taskID)
			q.s.step(notSent(&c), nil)
		}
		return
	}
	if c.kind == selector.CmdLaunch && q.noLaunch {
		q.pushFeedbackLocked(notSent(&c), true)
		q.mu.Unlock()
		return
	}
	h := q.hosts[c.host]
	if h == nil {
		h = &hostQueue{name: c.host, keys: make(map[string]struct{})}
		q.hosts[c.host] = h
	}
	key := mergeKey(&c)
	if _, dup := h.keys[key]; key != "" && dup {
		q.mu.Unlock()
		q.merged.Add(1)
		return
	}
	drop := false
	switch {
	case c.fence:
		drop = h.fences.len() >= q.maxFences || q.queued >= q.maxQueued
	case c.kind != selector.CmdLaunch:
		drop = q.queued >= q.maxQueued
	}
	if drop {
		q.forgetIfIdleLocked(h)
		if !c.fence {
			// A request for one of the engine's tasks: it retries.
			q.pushFeedbackLocked(unanswered(&c, false), true)
		}
		q.mu.Unlock()
		q.logDrop(&c)
		return
	}
	if key != "" {
		h.keys[key] = struct{}{}
	}
	if c.fence {
		h.fences.push(c)
	} else {
		h.main.push(c)
	}
	q.queued++
	q.busy.add()
	q.scheduleLocked(h)
	q.mu.Unlock()
}

func (q *requestQueue) logDrop(c *outCmd) {
	q.dropped.Add(1)
	q.dropLog.Log(q.s.log, slog.LevelWarn, "request dropped: too many requests queued", "kind", c.kind, "host", c.host,
		"task_id", c.taskID, "fence", c.fence)
}

// pushFeedbackLocked queues ev for a sender to step; count says whether it
// is new work (false: it replaces a queued request already counted).
func (q *requestQueue) pushFeedbackLocked(ev selector.Event, count bool) {
	q.feedback.push(ev)
	if count {
		q.busy.add()
	}
	q.cond.Signal()
}

// scheduleLocked puts h in the run queue if it has a queued request and a
// free slot.
func (q *requestQueue) scheduleLocked(h *hostQueue) {
	if !h.inRunq && h.queued() > 0 && h.inflight < q.perHost {
		h.inRunq = true
		q.runq.push(h)
		q.cond.Signal()
	}
}

// forgetIfIdleLocked removes h once nothing of it is queued or in flight.
func (q *requestQueue) forgetIfIdleLocked(h *hostQueue) {
	if h.queued() == 0 && h.inflight == 0 && !h.inRunq && q.hosts[h.name] == h {
		delete(q.hosts, h.name)
	}
}

// next blocks until there is a job, or returns false once the queue is
// closed and no event is left to feed back.
func (q *requestQueue) next() (requestJob, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		if q.feedback.len() > 0 {
			return requestJob{ev: q.feedback.pop()}, true
		}
		if q.closed {
			return requestJob{}, false
		}
		if q.runq.len() > 0 {
			h := q.runq.pop()
			h.inRunq = false
			if h.queued() == 0 || h.inflight >= q.perHost {
				q.forgetIfIdleLocked(h)
				continue
			}
			var c outCmd
			if h.main.len() > 0 {
				c = h.main.pop()
			} else {
				c = h.fences.pop()
			}
			if key := mergeKey(&c); key != "" {
				delete(h.keys, key)
			}
			q.queued--
			h.inflight++
			q.scheduleLocked(h) // more of h go after the other hosts' turn
			return requestJob{cmd: c, host: h}, true
		}
		q.cond.Wait()
	}
}

// done ends a job taken from next.
func (q *requestQueue) done(j requestJob) {
	if h := j.host; h != nil {
		q.mu.Lock()
		h.inflight--
		q.scheduleLocked(h)
		q.forgetIfIdleLocked(h)
		q.mu.Unlock()
	}
	q.busy.done()
}

// stopLaunches makes every launch, queued or to come, be fed back as not
// sent; ps and kills still go out.
func (q *requestQueue) stopLaunches() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.noLaunch = true
	for _, h := range q.hosts {
		for range h.main.len() {
			c := h.main.pop()
			if c.kind != selector.CmdLaunch {
				h.main.push(c)
				continue
			}
			q.queued--
			q.pushFeedbackLocked(notSent(&c), false)
		}
		q.forgetIfIdleLocked(h)
	}
}

// close stops sending: queued launches are fed back as not sent, other
// queued requests are dropped. Senders finish the request they are sending
// (cancel the service's request context to end it), feed back what is left,
// and exit; wait for them with wait.
func (q *requestQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	q.closed = true
	q.runq = fifo[*hostQueue]{}
	for _, h := range q.hosts {
		h.inRunq = false
		for _, f := range []*fifo[outCmd]{&h.main, &h.fences} {
			for f.len() > 0 {
				c := f.pop()
				q.queued--
				if c.kind == selector.CmdLaunch {
					q.pushFeedbackLocked(notSent(&c), false)
				} else {
					q.busy.done()
				}
			}
		}
		clear(h.keys)
		q.forgetIfIdleLocked(h)
	}
	q.cond.Broadcast()
}

// wait waits for the senders to exit (after close).
func (q *requestQueue) wait() { q.senders.Wait() }

// stats returns the number of requests waiting and the number of hosts with
// state, for tests.
func (q *requestQueue) stats() (queued, hosts int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queued, len(q.hosts)
}

func notSent(c *outCmd) selector.Event {
	return &selector.LaunchUnanswered{Host: c.host, Target: c.target, TaskID: c.taskID, NotSent: true}
}

// fifo is a first-in first-out queue.
type fifo[T any] struct {
	items []T
	head  int
}

func (f *fifo[T]) len() int { return len(f.items) - f.head }

func (f *fifo[T]) push(v T) { f.items = append(f.items, v) }

func (f *fifo[T]) pop() T {
	var zero T
	v := f.items[f.head]
	f.items[f.head] = zero
	f.head++
	switch {
	case f.head == len(f.items):
		f.items, f.head = f.items[:0], 0
	case f.head >= 64 && 2*f.head >= len(f.items):
		// Compact, so that a queue that never empties does not grow.
		n := copy(f.items, f.items[f.head:])
		clear(f.items[n:])
		f.items, f.head = f.items[:n], 0
	}
	return v
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
	// CmdAllocReply: the request it answers, and the reply's error.
	allocID  uint64
	allocErr *schemas.ReplyError
	helper   *schemas.HelperRequest // CmdHelper: a copy of the request
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
		case selector.CmdAllocReply:
			if c.Alloc == nil {
				s.log.Error("engine returned an alloc reply without a message; dropped", "alloc_id", c.AllocID)
				continue
			}
			v, o.allocID, o.taskID = c.Alloc, c.AllocID, c.Alloc.TaskID
			if c.Alloc.Error != nil {
				e := *c.Alloc.Error
				o.allocErr = &e
			}
		case selector.CmdHelper:
			if c.Helper == nil {
				s.log.Error("engine returned a helper command without a request; dropped", "host", c.Host)
				continue
			}
			h := *c.Helper
			v, o.helper, o.taskID, o.target = &h, &h, h.TaskID, h.Target
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
	case selector.CmdLaunch, selector.CmdKill, selector.CmdPs, selector.CmdHelper:
		s.reqs.enqueue(c)
	case selector.CmdAllocReply:
		s.answerAlloc(c)
	}
}

// send sends one request and steps the engine with its reply, or with its
// absence. The reply timeout starts now. A launch is reported as sent
// (LaunchSent) first, so that its launch timeout starts now too.
func (s *SelectorService) send(c outCmd) {
	if (c.kind == selector.CmdLaunch || c.kind == selector.CmdKill) && !s.mayAct() {
		// Fenced: a selector that does not hold the leader lease neither
		// launches nor kills.
		s.logLimit.Log("request-fenced", s.log, slog.LevelWarn, "request not sent: the leader lease is not held", "op", c.kind, "host", c.host, "target", c.target)
		if c.kind == selector.CmdLaunch {
			s.step(notSent(&c), nil)
		} else {
			s.step(unanswered(&c, false), nil)
		}
		return
	}
	var subject string
	switch c.kind {
	case selector.CmdLaunch:
		subject = s.subj.Launch(c.host)
		s.step(&selector.LaunchSent{TaskID: c.taskID}, nil)
	case selector.CmdKill:
		subject = s.subj.Kill(c.host)
	case selector.CmdPs:
		subject = s.subj.Ps(c.host)
	case selector.CmdHelper:
		subject = s.subj.Helper(c.host)
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

func unanswered(c *outCmd, noResponders bool) selector.Event {
	switch c.kind {
	case selector.CmdLaunch:
		return &selector.LaunchUnanswered{Host: c.host, Target: c.target, TaskID: c.taskID, NoResponders: noResponders}
	case selector.CmdKill:
		return &selector.KillUnanswered{Host: c.host, TaskID: c.taskID, NoResponders: noResponders}
	case selector.CmdHelper:
		return &selector.HelperUnanswered{Host: c.host, Req: c.helper, NoResponders: noResponders}
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
	case selector.CmdHelper:
		return s.decodeHelperReply(c, data)
	default:
		var r schemas.PsReply
		if r, err = decodePsReply(data); err == nil {
			err = checkHost(c.host, r.Host)
		}
		if err == nil {
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
