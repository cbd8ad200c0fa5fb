package selector

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// FuzzEngine decodes the fuzzer's bytes into a sequence of events and time
// advances, feeds them to an engine, and after every step checks the
// engine's invariants (checkInvariants), its commands (checkCommands) and
// its status (schemas validation).
//
// The bytes play both the workers and an attacker. Workers carry out the
// engine's requests (or lose them, or answer late), run the processes they
// start, report them by heartbeats, events and statuses, and fence
// themselves when their statuses have stopped for wFenceAfter. The attacker
// sends heartbeats, replies, events and statuses with arbitrary fields (RAM
// figures up to and past schemas.MaxMiB), replays old messages, changes and
// deletes targets, disconnects the bus, drops input, and restarts the
// selector from the state its commands persisted.
//
// The fuzzer also keeps the workers' truth: which processes run. Whatever a
// message claims about a process that the engine could take as its end (a
// done or failed event, a kill or ps reply that no longer lists it, a
// refused or unsent launch) is made true: the process ends. So the engine
// is never lied to about a live process, and the auditor's invariant must
// hold: a process never starts while another of its target runs.
func FuzzEngine(f *testing.F) {
	for _, seed := range fuzzEngineSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		z := newEngineFuzz(t, data)
		z.run()
	})
}

// Fuzz operations, one byte each (taken modulo fzOps), followed by their
// argument bytes.
const (
	fzAdvance    = iota // small time step, then a tick
	fzJump              // a long time step, then a tick
	fzTick              // a tick
	fzBeat              // statuses of the reporting hosts and heartbeats of their processes
	fzExec              // a worker carries out a request and answers
	fzExecLate          // ... and its answer waits in the queue
	fzDrop              // a request never arrives
	fzSent              // a launch leaves the edge
	fzQueued            // a queued message arrives
	fzReplay            // an old message arrives again
	fzEnd               // a process ends and reports it
	fzEvilHB            // an arbitrary heartbeat
	fzEvilEvent         // an arbitrary task event
	fzEvilStatus        // an arbitrary host status
	fzEvilPs            // an arbitrary ps reply
	fzEvilKill          // an arbitrary kill reply
	fzEvilLaunch        // an arbitrary launch reply, unanswered or sent event
	fzUpsert            // declare or change a target
	fzDelete            // delete a target
	fzBus               // disconnect or reconnect
	fzDropped           // the edge dropped input
	fzRestart           // the selector restarts from its persisted state
	fzSilence           // a host stops (or resumes) reporting
	fzOther             // malformed, shutdown, store conflict
	fzRound             // one healthy second (see round)
	fzOps
)

// Launch states in the workers' truth.
const (
	fzRequested = iota // the engine asked; nothing ran yet
	fzRunning
	fzEnded   // ran, and ended
	fzRefused // never ran, and never will
)

// fzLaunch is one launch the engine asked for, and what became of it.
type fzLaunch struct {
	req    schemas.LaunchRequest
	host   string
	state  int
	pid    int64
	silent bool // runs without heartbeats
	sent   bool // LaunchSent was fed
	sentAt time.Time
}

// fzRequest is a request the engine emitted and the edge has not settled.
type fzRequest struct {
	cmd    Command
	gen    int
	sentAt time.Time // zero while a launch waits to be sent
	answer Event     // the worker's answer, on its way; nil until it acted
	seq    int       // order of sending, among those sent at one time
}

type engineFuzz struct {
	t   *testing.T
	in  []byte
	pos int
	// zeros makes every choice take the zero byte (the healthy path),
	// without reading the input: the prelude runs so.
	zeros bool
	cfg   Config
	e     *Engine
	gen   int
	now   time.Time
	ok    bool // connected, as the fuzzer last told the engine

	hosts    []string
	silent   map[string]bool      // hosts whose statuses stop
	reported map[string]time.Time // the last status fed per host: its worker fences wFenceAfter later
	specs    map[string]schemas.TargetSpec
	store    map[string]schemas.TaskState

	launches []*fzLaunch
	byID     map[string]*fzLaunch
	reqs     []*fzRequest
	queued   []Event // heartbeats and events waiting to arrive
	past     []Event // heartbeats, statuses and events fed, for replays
	nextPID  int64
	seq      int
	helpers  []*schemas.HelperRequest // every helper start the engine sent
	allocID  uint64
	steps    int
	log      []string
}

var fzTargets = []string{"a", "b", "c", "d", "I.I", strings.Repeat("x", 200)}

func newEngineFuzz(t *testing.T, data []byte) *engineFuzz {
	z := &engineFuzz{t: t, in: data, now: t0, ok: true,
		hosts:  []string{"h0", "h1", "h2", "h.3"},
		silent: map[string]bool{}, reported: map[string]time.Time{},
		specs: map[string]schemas.TargetSpec{}, store: map[string]schemas.TaskState{},
		byID: map[string]*fzLaunch{}, nextPID: 100}
	cfg := DefaultConfig()
	flags := z.byte()
	cfg.Seed = uint64(z.byte())
	cfg.MaxPendingLaunches = 1 + int(flags%3)
	cfg.HostHeadroomMiB = int64(flags>>2&3) * 64
	cfg.LaunchSentReported = flags&16 != 0
	cfg.LaunchAtMinimum = cfg.Seed&1 != 0 // tasks then ask the memory manager for the rest
	if flags&32 != 0 {
		cfg.MaxStepGap = time.Second
	}
	z.cfg = cfg
	for _, name := range fzTargets[:2+int(flags>>6)] {
		z.specs[name] = z.spec(z.byte())
	}
	z.boot()
	// Start from a running fleet: hosts report, the recovery grace
	// passes, launches go out and run.
	z.zeros = true
	for range 8 {
		z.round()
	}
	z.zeros = false
	return z
}

// round is one healthy second: launches leave, workers carry out every
// request and answer, hosts report, and time passes with a tick.
func (z *engineFuzz) round() {
	z.settle()
	z.beat()
	z.settle()
	z.advance(time.Second)
	z.feed(&Tick{})
}

// settle sends every launch the edge holds and lets the workers carry out
// every request, in the order sent, answering each.
func (z *engineFuzz) settle() {
	for _, r := range slices.Clone(z.reqs) {
		if r.sentAt.IsZero() {
			r.sentAt = z.now
			z.seq++
			r.seq = z.seq
			l := z.byID[r.cmd.Launch.TaskID]
			l.sent, l.sentAt = true, z.now
			if r.gen == z.gen {
				z.feed(&LaunchSent{TaskID: l.req.TaskID})
			}
		}
	}
	slices.SortStableFunc(z.reqs, func(a, b *fzRequest) int {
		if c := a.sentAt.Compare(b.sentAt); c != 0 {
			return c
		}
		return a.seq - b.seq
	})
	reqs := z.reqs
	z.reqs = nil
	for _, r := range reqs {
		ans := r.answer
		if ans == nil {
			ans = z.exec(r)
		}
		if r.gen == z.gen && z.ok {
			z.feed(ans)
		}
	}
}

// ----- decoding -----

func (z *engineFuzz) byte() byte {
	if z.zeros || z.pos >= len(z.in) {
		return 0
	}
	b := z.in[z.pos]
	z.pos++
	return b
}

func (z *engineFuzz) intn(n int) int { return int(z.byte()) % n }

func (z *engineFuzz) pick(list []string) string { return list[z.intn(len(list))] }

// mib is a RAM figure: small, typical, at the bounds or past them.
func (z *engineFuzz) mib() int64 {
	switch b := z.byte(); b % 8 {
	case 0:
		return 0
	case 1:
		return int64(b)
	case 2:
		return int64(b) * 16
	case 3:
		return schemas.MaxMiB
	case 4:
		return schemas.MaxMiB + int64(b)
	case 5:
		return math.MaxInt64 - int64(b)
	case 6:
		return -int64(b) - 1
	default:
		return 1000 + int64(b)*8
	}
}

// spec is a target spec of a small family: ordinary, scaled, zero-sized,
// huge, several phases, invalid ones and hacking ones.
func (z *engineFuzz) spec(b byte) schemas.TargetSpec {
	v := 0.25 + float64(b>>4)/4
	var s schemas.TargetSpec
	switch b % 8 {
	case 0, 1:
		s = simple(10, 10, int64(20+b%64))
	case 2:
		s = declared(phase("x", 10, 20, 200), phase("y", 5, 5, 5), phase("z", 1, 1, 50))
		s.Phases[2].Repeat = b&1 == 0
	case 3:
		s = simple(0, 0, 0)
	case 4:
		s = simple(schemas.MaxMiB, schemas.MaxMiB, schemas.MaxMiB)
	case 5:
		s = declared() // invalid: no phases
	case 6:
		s = hacking(z.t, "n00dles")
	default:
		s = simple(1, 1, 1)
		s.Phases[0].HelpersMinMiB = 2 // invalid: min above full
	}
	if b&0x80 != 0 {
		s.Value = &v
	}
	return s
}

// ----- stepping -----

func (z *engineFuzz) fail(format string, args ...any) {
	z.t.Helper()
	z.t.Fatalf("step %d at +%v: %s\nlast steps:\n  %s", z.steps, z.now.Sub(t0), fmt.Sprintf(format, args...),
		strings.Join(z.log, "\n  "))
}

func (z *engineFuzz) record(s string) {
	if len(z.log) >= 60 {
		z.log = z.log[1:]
	}
	z.log = append(z.log, fmt.Sprintf("+%v %s", z.now.Sub(t0), s))
}

// step feeds ev and checks everything; it returns the commands.
func (z *engineFuzz) step(ev Event) {
	z.steps++
	cmds := slices.Clone(z.e.Step(z.now, ev))
	z.record(fmt.Sprintf("%T%s -> %s", ev, describe(ev), describeCmds(cmds)))
	if err := z.e.checkInvariants(); err != nil {
		z.fail("engine invariant: %v", err)
	}
	if err := checkCommands(z.e, cmds); err != nil {
		z.fail("%v", err)
	}
	if z.steps%16 == 0 {
		st := z.e.Status(z.now)
		if err := st.Validate(); err != nil {
			z.fail("status fails its schema: %v", err)
		}
	}
	for _, c := range cmds {
		z.carryOut(c)
	}
}

// feed steps a message and remembers the kinds that the bus may deliver
// again, or late, for replays. (A reply is never late: the edge drops one
// that comes after its request timed out.)
func (z *engineFuzz) feed(ev Event) {
	switch ev.(type) {
	case *HeartbeatReceived, *HostStatusReceived, *TaskEventReceived:
		z.past = append(z.past, ev)
		if len(z.past) > 64 {
			z.past = z.past[1:]
		}
	}
	z.step(ev)
}

// carryOut stores persists and deletes at once (the store is never behind
// here), and keeps requests until the edge settles them.
func (z *engineFuzz) carryOut(c Command) {
	switch c.Kind {
	case CmdPersist:
		z.store[c.Target] = *c.State
	case CmdDelete:
		delete(z.store, c.Target)
	case CmdLaunch:
		l := &fzLaunch{req: *c.Launch, host: c.Host}
		z.launches = append(z.launches, l)
		z.byID[l.req.TaskID] = l
		r := &fzRequest{cmd: c, gen: z.gen}
		if !z.cfg.LaunchSentReported {
			l.sent, l.sentAt, r.sentAt = true, z.now, z.now
			z.seq++
			r.seq = z.seq
		}
		z.reqs = append(z.reqs, r)
	case CmdKill, CmdPs, CmdHelper:
		z.seq++
		z.reqs = append(z.reqs, &fzRequest{cmd: c, gen: z.gen, sentAt: z.now, seq: z.seq})
		if c.Kind == CmdHelper && c.Helper.Op == schemas.HelperStart {
			z.helpers = append(z.helpers, c.Helper)
		}
	}
}

// boot starts an engine from the declared targets and the persisted state.
func (z *engineFuzz) boot() {
	snap := Snapshot{Targets: map[string]schemas.TargetSpec{}}
	for name, spec := range z.specs {
		snap.Targets[name] = cloneSpec(spec)
	}
	for _, name := range slices.Sorted(maps.Keys(z.store)) {
		snap.Tasks = append(snap.Tasks, z.store[name])
	}
	e, err := New(z.cfg, z.now, snap)
	if err != nil {
		z.fail("New: %v", err)
	}
	// The launches the old run's edge still held die with it.
	kept := z.reqs[:0]
	for _, r := range z.reqs {
		if !r.sentAt.IsZero() {
			kept = append(kept, r)
		} else if l := z.launchOf(r); l.state == fzRequested {
			l.state = fzRefused
		}
	}
	z.reqs = kept
	z.e = e
	z.gen++
	z.ok = true
	if err := e.checkInvariants(); err != nil {
		z.fail("after New: %v", err)
	}
	z.record("engine started")
}

// ----- the workers' truth -----

// start starts l's process on its host, unless its worker has fenced itself:
// no other process of its target may run at that moment. It reports whether
// the process runs.
func (z *engineFuzz) start(l *fzLaunch) bool {
	if l.state != fzRequested {
		return l.state == fzRunning
	}
	if z.fenced(l.host) {
		l.state = fzRefused
		return false
	}
	for _, o := range z.launches {
		if o.state == fzRunning && o.req.Target == l.req.Target {
			z.fail("target %q runs twice: %s (epoch %d) starts on %s while %s (epoch %d) runs on %s",
				l.req.Target, l.req.TaskID, l.req.Epoch, l.host, o.req.TaskID, o.req.Epoch, o.host)
		}
	}
	z.nextPID++
	l.state, l.pid = fzRunning, z.nextPID
	z.record(fmt.Sprintf("  started %s on %s pid %d", l.req.TaskID, l.host, l.pid))
	return true
}

// fenced reports whether host's worker has fenced itself: no status of it
// reached the selector for wFenceAfter (a worker on the bus reports every
// second).
func (z *engineFuzz) fenced(host string) bool {
	at, ok := z.reported[host]
	return !ok || z.now.Sub(at) >= wFenceAfter
}

// end ends l's process, if it runs, and refuses it, if it waits.
func (z *engineFuzz) end(l *fzLaunch) {
	switch l.state {
	case fzRunning:
		l.state = fzEnded
	case fzRequested:
		l.state = fzRefused
	}
}

// claimEnded makes a message's claim that task id ended true.
func (z *engineFuzz) claimEnded(id string) {
	if l := z.byID[id]; l != nil {
		z.end(l)
	}
}

// fence ends the processes of every host that fenced itself.
func (z *engineFuzz) fence() {
	for _, l := range z.launches {
		if l.state == fzRunning && z.fenced(l.host) {
			l.state = fzEnded
		}
	}
}

// advance lets d pass; requests the edge has waited ReplyTimeout for are
// settled as unanswered (the workers may have got them: they are void now).
func (z *engineFuzz) advance(d time.Duration) {
	z.now = z.now.Add(d)
	z.fence()
	kept := z.reqs[:0]
	for _, r := range z.reqs {
		if r.sentAt.IsZero() || z.now.Sub(r.sentAt) < z.cfg.ReplyTimeout {
			kept = append(kept, r)
			continue
		}
		if l := z.launchOf(r); l != nil && l.state == fzRequested {
			// Requests reach their workers within the reply timeout or
			// never: this launch will not start.
			l.state = fzRefused
		}
		if r.gen == z.gen && z.ok {
			z.feed(unansweredEvent(r.cmd, false))
		}
	}
	z.reqs = kept
}

// launchOf returns the launch a request asks for, or nil.
func (z *engineFuzz) launchOf(r *fzRequest) *fzLaunch {
	if r.cmd.Kind != CmdLaunch {
		return nil
	}
	return z.byID[r.cmd.Launch.TaskID]
}

// take removes and returns the request chosen by the next byte, or nil:
// one the workers have not acted on (and that has left, if sentOnly), or
// one whose answer is on its way (if answered).
func (z *engineFuzz) take(sentOnly, answered bool) *fzRequest {
	var idx []int
	for i, r := range z.reqs {
		if (r.answer != nil) == answered && (!sentOnly || !r.sentAt.IsZero()) {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return nil
	}
	i := idx[z.intn(len(idx))]
	if sentOnly && !answered {
		// A worker takes its requests in the order they were sent (NATS
		// keeps the order of one connection's messages to another).
		for _, j := range idx {
			a, b := z.reqs[j], z.reqs[i]
			if a.cmd.Host == b.cmd.Host && (a.sentAt.Before(b.sentAt) || a.sentAt.Equal(b.sentAt) && a.seq < b.seq) {
				i = j
			}
		}
	}
	r := z.reqs[i]
	z.reqs = slices.Delete(z.reqs, i, i+1)
	return r
}

// exec lets a worker carry out r and returns its answer.
func (z *engineFuzz) exec(r *fzRequest) Event {
	c := r.cmd
	switch c.Kind {
	case CmdLaunch:
		l := z.byID[c.Launch.TaskID]
		rep := schemas.LaunchReply{V: schemas.Version, TaskID: l.req.TaskID}
		switch {
		case l.state == fzRequested && z.byte()%8 == 7: // (a zero byte, as past the input's end, is the healthy path)
			l.state = fzRefused
			rep.Error = &schemas.ReplyError{Code: []string{schemas.CodeInsufficientRAM, schemas.CodeUnknownType,
				schemas.CodeInvalid, schemas.CodeDraining}[z.intn(4)], Message: "refused"}
		case z.start(l):
			rep.PID = l.pid
			l.silent = z.byte()%4 == 3
			if !l.silent {
				z.queued = append(z.queued, z.heartbeat(l))
			}
		case l.state == fzEnded:
			rep.PID = l.pid // ran already: the worker answers with its PID
		default:
			rep.Error = &schemas.ReplyError{Code: schemas.CodeDraining, Message: "fenced"}
		}
		return &LaunchReplied{Host: c.Host, Target: l.req.Target, Epoch: l.req.Epoch, Reply: rep}
	case CmdKill:
		if l := z.byID[c.Kill.TaskID]; l != nil && l.host == c.Host && l.state == fzRunning && (c.Kill.PID == 0 || c.Kill.PID == l.pid) {
			l.state = fzEnded
			if z.byte()%2 == 0 {
				z.queued = append(z.queued, z.event(l, schemas.EventFailed, schemas.ReasonKilled))
			}
		}
		return &KillReplied{Host: c.Host, Reply: schemas.KillReply{V: schemas.Version, TaskID: c.Kill.TaskID, PID: c.Kill.PID}}
	case CmdHelper:
		rep := schemas.HelperReply{V: schemas.Version, HelperID: c.Helper.HelperID, Running: c.Helper.Op == schemas.HelperStart}
		switch z.byte() % 8 {
		case 5:
			rep.Running = !rep.Running
		case 6:
			rep.Error = &schemas.ReplyError{Code: "failed", Message: "cannot"}
		}
		return &HelperReplied{Host: c.Host, Req: c.Helper, Reply: rep}
	}
	rep := schemas.PsReply{V: schemas.Version, Host: c.Host, Tasks: []schemas.PsTask{}}
	for _, l := range z.launches {
		if l.state == fzRunning && l.host == c.Host && (len(c.Ps.PIDs) == 0 || slices.Contains(c.Ps.PIDs, l.pid)) {
			rep.Tasks = append(rep.Tasks, z.psTask(l))
		}
	}
	return &PsReplied{Host: c.Host, PIDs: slices.Clone(c.Ps.PIDs), Reply: rep}
}

func (z *engineFuzz) psTask(l *fzLaunch) schemas.PsTask {
	return schemas.PsTask{TaskID: l.req.TaskID, Epoch: l.req.Epoch, PID: l.pid, Target: l.req.Target,
		Type: l.req.Type, RAM: l.req.RAM, StartedAt: z.now}
}

func (z *engineFuzz) heartbeat(l *fzLaunch) Event {
	used := l.req.RAM.WrapperMiB + l.req.RAM.HelpersMiB
	if z.byte()%4 == 3 {
		used = z.mib()
	}
	return &HeartbeatReceived{Heartbeat: &schemas.Heartbeat{V: schemas.Version, TaskID: l.req.TaskID, Epoch: l.req.Epoch,
		PID: l.pid, Host: l.host, Target: l.req.Target, Type: l.req.Type, Seq: 1,
		RAM: schemas.HeartbeatRAM{BudgetMiB: l.req.RAM.WrapperMiB + l.req.RAM.HelpersMiB, UsedMiB: used}, SentAt: z.now}}
}

func (z *engineFuzz) event(l *fzLaunch, kind, reason string) Event {
	ev := &schemas.TaskEvent{V: schemas.Version, TaskID: l.req.TaskID, Epoch: l.req.Epoch, PID: l.pid, Host: l.host,
		Target: l.req.Target, Type: l.req.Type, Kind: kind, Reason: reason, At: z.now}
	if kind == schemas.EventDone && z.byte()%2 == 0 {
		ev.Metrics = map[string]any{"security": float64(z.byte()), "money": float64(z.byte()) * 1e6,
			"max_money": 1e9, "min_security": 1.0, "hack_chance": 0.5}
	}
	return &TaskEventReceived{Event: ev}
}

// launch picks one of the launches the engine asked for, or nil.
func (z *engineFuzz) launch() *fzLaunch {
	if len(z.launches) == 0 {
		return nil
	}
	// Mostly the recent ones.
	n := min(len(z.launches), 8)
	if z.byte()%4 == 0 {
		n = len(z.launches)
	}
	return z.launches[len(z.launches)-1-z.intn(n)]
}

// ----- the attacker -----

// taskID is a task id: one the engine made, or one it never saw.
func (z *engineFuzz) taskID() (string, *fzLaunch) {
	if l := z.launch(); l != nil && z.byte()%4 != 0 {
		return l.req.TaskID, l
	}
	return "evil#" + strconv.Itoa(z.intn(4)), nil
}

// ident fills a message's identity: mostly the launch's own, or not.
func (z *engineFuzz) ident(l *fzLaunch) (target, host string, epoch uint64, pid int64) {
	target, host, epoch, pid = z.pick(fzTargets), z.pick(z.hosts), uint64(z.intn(6)), int64(z.intn(4))*50
	if l == nil {
		return
	}
	b := z.byte()
	if b&1 == 0 {
		target = l.req.Target
	}
	if b&2 == 0 {
		host = l.host
	}
	if b&4 == 0 {
		epoch = l.req.Epoch
	} else if b&8 == 0 {
		epoch = l.req.Epoch + 1
	}
	if b&16 == 0 || (target == l.req.Target && host == l.host && epoch == l.req.Epoch) {
		// A message that names the task exactly comes from its worker:
		// its PID is the true one.
		pid = l.pid
	}
	return
}

func (z *engineFuzz) evilHeartbeat() Event {
	id, l := z.taskID()
	target, host, epoch, pid := z.ident(l)
	if l != nil && l.state == fzRequested && target == l.req.Target && host == l.host && epoch == l.req.Epoch {
		// The task heartbeats: its worker got the launch (if it left).
		if !l.sent || !z.start(l) {
			return &Tick{}
		}
		pid = l.pid
	}
	return &HeartbeatReceived{Heartbeat: &schemas.Heartbeat{V: schemas.Version, TaskID: id, Epoch: epoch, PID: pid,
		Host: host, Target: target, Type: z.pick([]string{"a", "x", "p0"}), Seq: uint64(z.byte()),
		RAM: schemas.HeartbeatRAM{BudgetMiB: z.mib(), UsedMiB: z.mib()}, SentAt: z.now}}
}

func (z *engineFuzz) evilEvent() Event {
	id, l := z.taskID()
	target, host, epoch, pid := z.ident(l)
	z.claimEnded(id)
	kind, reason := schemas.EventDone, ""
	if b := z.byte(); b%2 == 0 {
		kind = schemas.EventFailed
		reason = []string{schemas.ReasonCrashed, schemas.ReasonKilled, schemas.ReasonFenced, schemas.ReasonExited,
			schemas.ReasonHelpersUnavailable, "whatever"}[int(b/2)%6]
	}
	ev := &schemas.TaskEvent{V: schemas.Version, TaskID: id, Epoch: epoch, PID: pid, Host: host, Target: target,
		Type: z.pick([]string{"a", "x", "y", "z", "till"}), Kind: kind, Reason: reason, At: z.now}
	if z.byte()%3 == 0 {
		ev.Metrics = map[string]any{"security": float64(z.byte()), "money": math.Inf(1), "nested": map[string]any{"x": -1.0}}
	}
	return &TaskEventReceived{Event: ev}
}

func (z *engineFuzz) evilStatus() Event {
	host := z.pick(z.hosts)
	var tasks []string
	for range z.intn(4) {
		id, _ := z.taskID()
		tasks = append(tasks, id)
	}
	z.reported[host] = z.now // a worker that reports is on the bus
	return &HostStatusReceived{Status: &schemas.HostStatus{V: schemas.Version, Host: host,
		RAM: schemas.HostRAM{TotalMiB: z.mib(), UsedMiB: z.mib()}, Tasks: tasks, Draining: z.byte()%8 == 0, SentAt: z.now}}
}

func (z *engineFuzz) evilPs() Event {
	host := z.pick(z.hosts)
	if l := z.launch(); l != nil && z.byte()%4 != 3 {
		host = l.host // mostly a host where the engine has tasks
	}
	var pids []int64
	if b := z.byte(); b%3 != 0 {
		pids = []int64{int64(b % 4 * 50)}
		if l := z.launch(); l != nil && b%3 == 1 {
			pids = []int64{l.pid}
		}
	}
	rep := schemas.PsReply{V: schemas.Version, Host: host, Tasks: []schemas.PsTask{}}
	listed := map[string]bool{}
	for range z.intn(3) {
		id, l := z.taskID()
		target, _, epoch, pid := z.ident(l)
		rep.Tasks = append(rep.Tasks, schemas.PsTask{TaskID: id, Epoch: epoch, PID: pid, Target: target, Type: "a"})
		if l != nil && l.host == host && l.state == fzRunning && pid == l.pid {
			listed[id] = true
		}
	}
	if z.byte()%5 == 4 {
		rep.Error = &schemas.ReplyError{Code: "failed", Message: "cannot list"}
	}
	// Whatever runs on host and is not listed, the reply says is gone.
	for _, l := range z.launches {
		if l.host == host && !listed[l.req.TaskID] && (len(pids) == 0 || slices.Contains(pids, l.pid)) && rep.Error == nil {
			z.end(l)
		}
	}
	return &PsReplied{Host: host, PIDs: pids, Reply: rep}
}

func (z *engineFuzz) evilKill() Event {
	id, l := z.taskID()
	_, host, _, pid := z.ident(l)
	running := z.byte()%3 == 0
	var rerr *schemas.ReplyError
	if z.byte()%5 == 4 {
		rerr = &schemas.ReplyError{Code: "failed", Message: "cannot kill"}
	}
	if !running && rerr == nil {
		z.claimEnded(id)
	}
	return &KillReplied{Host: host, Reply: schemas.KillReply{V: schemas.Version, TaskID: id, PID: pid, Running: running, Error: rerr}}
}

func (z *engineFuzz) evilLaunch() Event {
	id, l := z.taskID()
	target, host, epoch, pid := z.ident(l)
	switch z.byte() % 4 {
	case 0:
		z.claimEnded(id)
		return &LaunchUnanswered{Host: host, Target: target, TaskID: id, NoResponders: true}
	case 1:
		if l != nil && l.state != fzRequested {
			return &LaunchSent{TaskID: id}
		}
		z.claimEnded(id)
		return &LaunchUnanswered{Host: host, Target: target, TaskID: id, NotSent: true}
	case 2:
		z.claimEnded(id)
		return &LaunchReplied{Host: host, Target: target, Epoch: epoch, Reply: schemas.LaunchReply{V: schemas.Version, TaskID: id,
			Error: &schemas.ReplyError{Code: z.pick([]string{"insufficient_ram", "unknown_type", "invalid", "draining", "new_code"}), Message: "no"}}}
	}
	if l != nil && host == l.host {
		// A reply with a PID from the task's host: the task runs (if its
		// launch left).
		if !l.sent || !z.start(l) {
			return &Tick{}
		}
		pid = l.pid
	}
	return &LaunchReplied{Host: host, Target: target, Epoch: epoch, Reply: schemas.LaunchReply{V: schemas.Version, TaskID: id, PID: pid}}
}

// ----- the run -----

func (z *engineFuzz) run() {
	for z.pos < len(z.in) {
		op := z.intn(fzOps)
		switch op {
		case fzAdvance:
			z.advance(time.Duration(1+z.byte()) * 20 * time.Millisecond)
			z.feed(&Tick{})
		case fzJump:
			z.advance([]time.Duration{2 * time.Second, 5 * time.Second, 9 * time.Second, 11 * time.Second,
				61 * time.Second, 11 * time.Minute, 2 * time.Hour, 3 * time.Second}[z.intn(8)])
			z.feed(&Tick{})
		case fzTick:
			z.feed(&Tick{})
		case fzBeat:
			z.beat()
		case fzExec, fzExecLate:
			r := z.take(true, false)
			if r == nil {
				continue
			}
			ans := z.exec(r)
			switch {
			case r.gen != z.gen || !z.ok:
			case op == fzExecLate:
				r.answer = ans
				z.reqs = append(z.reqs, r)
			case z.byte()%8 == 0:
				z.feed(unansweredEvent(r.cmd, false)) // the answer is lost
			default:
				z.feed(ans)
			}
		case fzDrop:
			r := z.take(false, false)
			if r == nil {
				continue
			}
			if r.cmd.Kind == CmdLaunch {
				z.byID[r.cmd.Launch.TaskID].state = fzRefused
			}
			if r.gen != z.gen || !z.ok {
				continue
			}
			ev := unansweredEvent(r.cmd, z.byte()%2 == 0)
			if r.sentAt.IsZero() {
				ev = &LaunchUnanswered{Host: r.cmd.Host, Target: r.cmd.Target, TaskID: r.cmd.Launch.TaskID, NotSent: true}
			}
			z.feed(ev)
		case fzSent:
			for _, r := range z.reqs {
				if r.sentAt.IsZero() {
					r.sentAt = z.now
					z.seq++
					r.seq = z.seq
					l := z.byID[r.cmd.Launch.TaskID]
					l.sent, l.sentAt = true, z.now
					if r.gen == z.gen {
						z.feed(&LaunchSent{TaskID: l.req.TaskID})
					}
					break
				}
			}
		case fzQueued:
			if r := z.take(true, true); r != nil && z.byte()%2 == 0 {
				if r.gen == z.gen && z.ok {
					z.feed(r.answer)
				}
			} else if r != nil {
				z.reqs = append(z.reqs, r)
			} else if len(z.queued) > 0 {
				i := z.intn(len(z.queued))
				ev := z.queued[i]
				z.queued = slices.Delete(z.queued, i, i+1)
				z.feed(ev)
			}
		case fzReplay:
			if len(z.past) > 0 {
				z.step(z.past[z.intn(len(z.past))])
			}
		case fzEnd:
			var running []*fzLaunch
			for _, l := range z.launches {
				if l.state == fzRunning {
					running = append(running, l)
				}
			}
			if len(running) == 0 {
				continue
			}
			l := running[z.intn(len(running))]
			l.state = fzEnded
			kind, reason := schemas.EventDone, ""
			if b := z.byte(); b%2 == 0 {
				kind, reason = schemas.EventFailed, []string{schemas.ReasonCrashed, schemas.ReasonExited,
					schemas.ReasonHelpersUnavailable, schemas.ReasonFenced}[int(b/2)%4]
			}
			switch ev := z.event(l, kind, reason); z.byte() % 4 {
			case 0:
				// The outbox was full: the event is lost, and the
				// selector finds the task gone by its silence.
			case 1:
				z.queued = append(z.queued, ev)
			default:
				z.feed(ev)
			}
		case fzEvilHB:
			z.feed(z.evilHeartbeat())
		case fzEvilEvent:
			z.feed(z.evilEvent())
		case fzEvilStatus:
			z.feed(z.evilStatus())
		case fzEvilPs:
			z.feed(z.evilPs())
		case fzEvilKill:
			z.feed(z.evilKill())
		case fzEvilLaunch:
			z.feed(z.evilLaunch())
		case fzUpsert:
			name := z.pick(fzTargets)
			z.specs[name] = z.spec(z.byte())
			z.feed(&TargetUpserted{Target: name, Spec: cloneSpec(z.specs[name])})
		case fzDelete:
			name := z.pick(fzTargets)
			delete(z.specs, name)
			z.feed(&TargetDeleted{Target: name})
		case fzBus:
			z.ok = !z.ok
			if z.ok {
				z.feed(&Reconnected{})
			} else {
				z.feed(&Disconnected{})
			}
		case fzDropped:
			z.feed(&InputDropped{Source: z.pick([]string{InputHeartbeats, InputHostStatuses, "other"})})
		case fzRestart:
			// Unsettled requests of the old run still reach their
			// workers, but their answers go nowhere.
			z.boot()
		case fzSilence:
			h := z.pick(z.hosts)
			z.silent[h] = !z.silent[h]
		case fzRound:
			z.round()
		case fzOther:
			switch z.byte() % 16 {
			case 0:
				z.feed(&ShutdownRequested{})
			case 1:
				z.feed(&StoreConflict{Target: z.pick(fzTargets), Err: "cas"})
			case 2, 3:
				z.feed(z.alloc())
			case 4:
				z.feed(z.evilHelper())
			case 5:
				z.feed(z.helperStatus())
			default:
				z.feed(&Malformed{Source: z.pick([]string{"heartbeat", "event", "ps_reply"})})
			}
		}
	}
}

// beat sends a status for every host that reports, and a heartbeat for each
// of its processes that is not silent; then one tick.
func (z *engineFuzz) beat() {
	for _, h := range z.hosts {
		if z.silent[h] {
			continue
		}
		var ids []string
		var used int64
		for _, l := range z.launches {
			if l.state == fzRunning && l.host == h {
				ids = append(ids, l.req.TaskID)
				used += l.req.RAM.WrapperMiB + l.req.RAM.HelpersMiB
			}
		}
		z.reported[h] = z.now
		z.feed(&HostStatusReceived{Status: &schemas.HostStatus{V: schemas.Version, Host: h,
			RAM: schemas.HostRAM{TotalMiB: 1000 + int64(z.intn(4))*500, UsedMiB: min(used, schemas.MaxMiB)}, Tasks: ids, SentAt: z.now}})
		for _, l := range z.launches {
			if l.state == fzRunning && l.host == h && !l.silent {
				z.feed(z.heartbeat(l))
			}
		}
	}
	z.feed(&Tick{})
}

// fuzzEngineSeeds are corpus entries that reach the interesting states
// within a few bytes; each starts after the prelude of newEngineFuzz (a
// running fleet).
func fuzzEngineSeeds() [][]byte {
	const round, jump = fzRound, fzJump
	return [][]byte{
		// A healthy fleet, a few more seconds.
		{0, 1, 0, 0, round, round, round},
		// A task falls silent and is probed; a ps reply races the probe;
		// the fleet goes on.
		{0, 1, 0, 0, jump, 1, fzEvilPs, 0, 0, 0, 0, 0, 0, 0, round, round, round},
		// A launch waits to be sent (LaunchSentReported) while its host
		// falls silent for good.
		{16 | 1, 2, 0, 0x81, fzSilence, 0, round, jump, 2, round, fzSent, round, jump, 3, round, round},
		// Restarts mid-launch, replays and late answers.
		{2, 3, 1, 2, jump, 1, fzExecLate, 0, fzRestart, fzReplay, 3, fzQueued, 0, round, fzRestart, round, round},
		// Hostile input of every kind, huge RAM figures among it.
		{0, 0, 4, 4, fzEvilStatus, 0, 3, 5, 0, fzEvilHB, 1, 0, 0, 3, 5, 1, 2, fzEvilEvent, 0, 0, 0, 1,
			fzEvilPs, 0, 1, fzEvilKill, 1, 0, fzEvilLaunch, 0, 0, 3, fzUpsert, 0, 4, fzDelete, 1, fzBus, fzBus,
			fzDropped, 0, fzOther, 5, round, round},
		// Tasks placed at their minimum ask for helper RAM, release some,
		// hear replies late or not at all, and hosts list helpers of every
		// kind; a restart learns or stops them.
		{0, 1, 0, 0, round, fzOther, 2, 0, 0, 7, 200, 1, 0, round, fzOther, 3, 1, 0, 2, 9, 2, 4, 0, fzExec, 0,
			fzOther, 4, 1, 1, 0, fzOther, 5, 2, 3, 1, 0, 0, 0, 5, round, fzRestart, round, fzOther, 5, 1, 1, 0, 0, 0,
			fzOther, 2, 0, 0, 7, 100, 7, 50, 0, 0, fzDrop, 0, 1, round, jump, 4, round},
		// The selector pauses (MaxStepGap) and the bus goes away.
		{32, 1, 0, 0, jump, 0, fzBus, jump, 2, fzBus, round, round},
	}
}

// alloc is a helper RAM request of a task the fuzzer knows of (or not), for
// any figures, releasing helpers of any task now and then.
func (z *engineFuzz) alloc() Event {
	id, l := z.taskID()
	target, host, epoch, _ := z.ident(l)
	z.allocID++
	req := &schemas.AllocRequest{V: schemas.Version, TaskID: id, Epoch: epoch, Target: target, Host: host, MiB: z.mib(), MinMiB: z.mib()}
	if z.byte()%2 == 0 {
		req.MinMiB = min(req.MinMiB, req.MiB/2)
	}
	if len(z.helpers) > 0 && z.byte()%3 == 0 {
		req.Release = append(req.Release, z.helpers[z.intn(len(z.helpers))].HelperID, "no-such-helper")
	}
	return &AllocRequested{ID: z.allocID, Req: req}
}

// evilHelper is a helper reply or its absence for a helper request the
// engine sent (a late one, a repeated one, or one from another host), or
// for none.
func (z *engineFuzz) evilHelper() Event {
	req := &schemas.HelperRequest{V: schemas.Version, Op: schemas.HelperStart, HelperID: "no-such-helper"}
	if len(z.helpers) > 0 {
		r := *z.helpers[z.intn(len(z.helpers))]
		req = &r
	}
	if z.byte()%2 == 0 {
		req.Op = schemas.HelperStop
	}
	host := z.pick(z.hosts)
	switch z.byte() % 3 {
	case 0:
		return &HelperUnanswered{Host: host, Req: req, NoResponders: z.byte()%2 == 0}
	case 1:
		return &HelperReplied{Host: host, Req: req, Reply: schemas.HelperReply{V: schemas.Version, HelperID: req.HelperID,
			Running: z.byte()%2 == 0}}
	}
	return &HelperReplied{Host: host, Req: nil}
}

// helperStatus is a host status that lists helpers: ones the engine started,
// made-up ones, and ones of any task and epoch, of any size.
func (z *engineFuzz) helperStatus() Event {
	host := z.pick(z.hosts)
	var hs []schemas.HelperStatus
	for range z.intn(4) {
		x := schemas.HelperStatus{HelperID: "made-up-" + strconv.Itoa(z.intn(4)), MiB: z.mib()}
		if len(z.helpers) > 0 && z.byte()%2 == 0 {
			r := z.helpers[z.intn(len(z.helpers))]
			x = schemas.HelperStatus{HelperID: r.HelperID, TaskID: r.TaskID, Epoch: r.Epoch, Target: r.Target, MiB: r.MiB}
		}
		if id, l := z.taskID(); l != nil && z.byte()%2 == 0 {
			x.TaskID, x.Epoch, x.Target = id, l.req.Epoch, l.req.Target
		}
		hs = append(hs, x)
	}
	return &HostStatusReceived{Status: &schemas.HostStatus{V: schemas.Version, Host: host,
		RAM: schemas.HostRAM{TotalMiB: 1000 + int64(z.intn(4))*500, UsedMiB: z.mib()}, Helpers: hs, SentAt: z.now}}
}
