package selector

import (
	"container/heap"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// TestPropertyRandomClusters drives the engine through a simulated cluster
// with random faults: lost and late messages, silent, crashing and finishing
// tasks, hosts that crash or drop off the bus, foreign RAM use, spec changes,
// deletions, bus disconnects, and restarts of the selector from the last
// state it persisted. After every step it checks:
//
//   - the engine's own bookkeeping (checkInvariants: one task per target,
//     the ledger sums what its tasks hold, no target forgotten);
//   - in the simulated truth, at most one live process per target is one the
//     engine would accept: every other is one it answers with a kill the
//     moment it hears of it (a closed epoch, not the target's task, or a
//     target no longer declared);
//   - every launch fits its host: the host's reservations plus the RAM used
//     by others stay within capacity minus headroom, and the budgets of the
//     tasks this engine placed never exceed it;
//   - no command carries NaN or negative RAM;
//   - no launch of a target while a process of it that the engine would
//     accept has been reachable (heartbeating over a connected bus) for
//     five seconds: the engine had every chance to hear of it.
//
// A restarted selector reads the store as a watcher would: possibly missing
// its last few seconds of writes.
//
// Then the faults stop and RAM frees up, and it checks liveness: every
// declared target that is not complete runs exactly one confirmed task, every
// live process is its target's task, and nothing waits.
func TestPropertyRandomClusters(t *testing.T) {
	seeds := 24
	if testing.Short() {
		seeds = 6
	}
	for seed := 1; seed <= seeds; seed++ {
		t.Run("seed="+strconv.Itoa(seed), func(t *testing.T) {
			t.Parallel()
			s := newSim(t, uint64(seed))
			s.run()
		})
	}
}

type simProc struct {
	id, target, typ string
	epoch           uint64
	pid             int64
	budget, used    int64
	silent          bool
	host            *simHost
	started         time.Time
}

type simHost struct {
	name        string
	total       int64
	foreign     int64
	procs       map[string]*simProc
	nextPID     int64
	down        bool
	partitioned bool
	outbox      []*schemas.TaskEvent // events published while partitioned
	cut         time.Time            // the last time it was down or partitioned
}

type simEvent struct {
	at  time.Time
	seq int
	fn  func()
}

type simQueue []*simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q simQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)   { *q = append(*q, x.(*simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}

type kvVersion struct {
	at time.Time
	st *schemas.TaskState // nil: deleted
}

type sim struct {
	t         *testing.T
	rng       *rand.Rand
	cfg       Config
	e         *Engine
	gen       int
	now       time.Time
	q         simQueue
	seq       int
	specs     map[string]schemas.TargetSpec
	kv        map[string]schemas.TaskState
	kvHist    map[string][]kvVersion // every write, for stale reads
	cut       time.Time              // the last bus disconnect
	hosts     []*simHost
	hostByNm  map[string]*simHost
	connected bool
	faults    bool
	drop      float64
	steps     int
	created   int
	pending   []*schemas.TaskEvent // stream events not yet delivered (bus down)
	log       []string             // the last few steps, for failure reports
}

func newSim(t *testing.T, seed uint64) *sim {
	cfg := DefaultConfig()
	cfg.Seed = seed
	cfg.RestartDelayMax = 20 * time.Second
	cfg.RestartDelayReset = time.Minute
	rng := rand.New(rand.NewPCG(seed, seed*7919))
	cfg.MaxPendingLaunches = 1 + rng.IntN(3)
	cfg.HostHeadroomMiB = int64(rng.IntN(3)) * 32
	s := &sim{
		t: t, rng: rng, cfg: cfg, now: t0,
		specs: map[string]schemas.TargetSpec{}, kv: map[string]schemas.TaskState{}, kvHist: map[string][]kvVersion{},
		hostByNm: map[string]*simHost{}, connected: true, faults: true, drop: 0.05,
	}
	for i := range 3 + rng.IntN(3) {
		h := &simHost{name: "h" + strconv.Itoa(i), total: 1000, procs: map[string]*simProc{}, nextPID: 100}
		s.hosts = append(s.hosts, h)
		s.hostByNm[h.name] = h
	}
	for range 6 + rng.IntN(6) {
		s.newTarget()
	}
	return s
}

// newTarget declares a target with a fresh name (a deleted name is never
// reused, so that no process of an earlier life can pass for a new one).
func (s *sim) newTarget() string {
	name := "t" + strconv.Itoa(s.created)
	s.created++
	var phases []schemas.Phase
	for i := range 1 + s.rng.IntN(3) {
		mn := int64(5 + s.rng.IntN(40))
		phases = append(phases, schemas.Phase{
			Type: "p" + strconv.Itoa(i), WrapperMiB: int64(s.rng.IntN(15)),
			HelpersMinMiB: mn, HelpersFullMiB: mn + int64(s.rng.IntN(90)), WorkS: 1,
		})
	}
	phases[len(phases)-1].Repeat = s.rng.IntN(4) != 0
	spec := declared(phases...)
	v := 0.5 + s.rng.Float64()
	spec.Value = &v
	s.specs[name] = spec
	return name
}

func (s *sim) at(d time.Duration, fn func()) {
	s.seq++
	heap.Push(&s.q, &simEvent{at: s.now.Add(d), seq: s.seq, fn: fn})
}

func (s *sim) delay() time.Duration { return time.Duration(s.rng.IntN(200)) * time.Millisecond }

func (s *sim) lost() bool { return s.faults && s.rng.Float64() < s.drop }

func (s *sim) fatalf(format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf("at +%v step %d: %s\nlast steps:\n%s", s.now.Sub(t0), s.steps, fmt.Sprintf(format, args...),
		joinLines(s.log))
}

func joinLines(l []string) string {
	out := ""
	for _, x := range l {
		out += "  " + x + "\n"
	}
	return out
}

func (s *sim) record(line string) {
	if len(s.log) >= 30 {
		s.log = s.log[1:]
	}
	s.log = append(s.log, fmt.Sprintf("+%v %s", s.now.Sub(t0), line))
}

// start builds an engine from the declared targets and the store, as read
// lag behind the latest writes.
func (s *sim) start(lag time.Duration) {
	snap := Snapshot{Targets: maps.Clone(s.specs)}
	seen := s.now.Add(-lag)
	for _, name := range slices.Sorted(maps.Keys(s.kvHist)) {
		var last *schemas.TaskState
		for _, v := range s.kvHist[name] {
			if v.at.After(seen) {
				break
			}
			last = v.st
		}
		if last != nil {
			snap.Tasks = append(snap.Tasks, *last)
		}
	}
	e, err := New(s.cfg, s.now, snap)
	if err != nil {
		s.fatalf("New: %v", err)
	}
	s.e = e
	s.gen++
	s.connected = true
	s.record(fmt.Sprintf("engine started (gen %d) from %d records, %v behind", s.gen, len(snap.Tasks), lag))
	if err := e.checkInvariants(); err != nil {
		s.fatalf("after New: %v", err)
	}
}

// step feeds one event to the engine, checks every invariant and carries out
// the commands.
func (s *sim) step(ev Event) {
	s.steps++
	s.record(fmt.Sprintf("%T%s", ev, describe(ev)))
	reachable := s.reachableAccepted()
	cmds := slices.Clone(s.e.Step(s.now, ev))
	if err := s.e.checkInvariants(); err != nil {
		s.fatalf("engine invariant: %v", err)
	}
	for _, c := range cmds {
		s.checkCommand(c)
		if p := reachable[c.Target]; c.Kind == CmdLaunch && p != nil {
			s.fatalf("launched %s while %s (epoch %d, up since +%v) runs and would be accepted",
				c.Launch.TaskID, p.id, p.epoch, p.started.Sub(t0))
		}
	}
	s.checkTruth()
	for _, c := range cmds {
		s.carryOut(c)
	}
}

func describe(ev Event) string {
	switch ev := ev.(type) {
	case *HeartbeatReceived:
		return " " + ev.Heartbeat.TaskID
	case *LaunchReplied:
		if ev.Reply.Error != nil {
			return " " + ev.Reply.TaskID + " " + ev.Reply.Error.Code
		}
		return " " + ev.Reply.TaskID
	case *LaunchUnanswered:
		return fmt.Sprintf(" %s noresp=%v", ev.TaskID, ev.NoResponders)
	case *TaskEventReceived:
		return " " + ev.Event.TaskID + " " + ev.Event.Kind + " " + ev.Event.Reason
	case *KillReplied:
		return " " + ev.Reply.TaskID
	case *PsReplied:
		return " " + ev.Host
	case *HostStatusReceived:
		return " " + ev.Status.Host
	case *TargetUpserted:
		return " " + ev.Target
	case *TargetDeleted:
		return " " + ev.Target
	}
	return ""
}

func (s *sim) checkCommand(c Command) {
	b, err := json.Marshal(c)
	if err != nil {
		s.fatalf("command does not encode: %v", err)
	}
	switch c.Kind {
	case CmdLaunch:
		r := c.Launch.RAM
		if r.WrapperMiB < 0 || r.HelpersMiB < 0 {
			s.fatalf("negative RAM: %s", b)
		}
		h := s.e.hosts[c.Host]
		if h == nil || h.reserved+h.foreign() > h.total-s.cfg.HostHeadroomMiB {
			s.fatalf("launch over capacity: %s (host %+v)", b, h)
		}
	case CmdPersist:
		if c.State.Task != nil && c.State.Task.BudgetMiB < 0 {
			s.fatalf("negative budget: %s", b)
		}
	}
}

// reachableAccepted returns, per target, a live process the engine would
// accept and has had five seconds to hear from.
func (s *sim) reachableAccepted() map[string]*simProc {
	const quiet = 5 * time.Second
	var out map[string]*simProc
	if !s.connected || s.now.Sub(s.cut) < quiet {
		return nil
	}
	for _, h := range s.hosts {
		if h.down || h.partitioned || s.now.Sub(h.cut) < quiet {
			continue
		}
		for _, p := range h.procs {
			if p.silent || s.now.Sub(p.started) < quiet || s.e.wouldFence(p.target, p.id, p.epoch) {
				continue
			}
			if out == nil {
				out = map[string]*simProc{}
			}
			out[p.target] = p
		}
	}
	return out
}

// checkTruth checks the simulated cluster against the engine: at most one
// live process per target that the engine would not kill on sight, and the
// budgets this engine placed fit every host.
func (s *sim) checkTruth() {
	accepted := map[string]string{}
	for _, h := range s.hosts {
		if h.down {
			continue
		}
		for _, p := range h.procs {
			if s.e.wouldFence(p.target, p.id, p.epoch) {
				continue
			}
			if other, ok := accepted[p.target]; ok {
				s.fatalf("target %s has two live processes the engine accepts: %s and %s", p.target, other, p.id)
			}
			accepted[p.target] = p.id
		}
	}
	for _, h := range s.e.hostSeq {
		var placed int64
		for _, k := range h.tasks {
			if k.placed {
				placed += k.budget
			}
		}
		if sh := s.hostByNm[h.name]; sh != nil && placed > sh.total-s.cfg.HostHeadroomMiB {
			s.fatalf("host %s: placed budgets %d exceed capacity %d minus headroom", h.name, placed, sh.total)
		}
	}
}

// request models a NATS request to a worker: it is lost, answered, or times
// out; the edge feeds back exactly one outcome, to the engine that sent it.
func (s *sim) request(h *simHost, handle func() any, reply func(any), unanswered func(noResponders bool)) {
	gen := s.gen
	mine := func(f func()) func() {
		return func() {
			if s.gen == gen {
				f()
			}
		}
	}
	if !s.connected || h.down {
		s.at(time.Millisecond, mine(func() { unanswered(true) }))
		return
	}
	timeout := s.cfg.ReplyTimeout
	if h.partitioned || s.lost() {
		s.at(timeout, mine(func() { unanswered(false) }))
		return
	}
	d1 := s.delay()
	sent := s.now
	s.at(d1, func() {
		if h.down || h.partitioned {
			s.at(sent.Add(timeout).Sub(s.now), mine(func() { unanswered(false) }))
			return
		}
		r := handle() // the worker acts, whoever sent it
		d2 := s.delay()
		if d1+d2 >= timeout || s.lost() {
			s.at(sent.Add(timeout).Sub(s.now), mine(func() { unanswered(false) }))
			return
		}
		s.at(d2, mine(func() {
			if !s.connected {
				unanswered(false)
				return
			}
			reply(r)
		}))
	})
}

func (s *sim) carryOut(c Command) {
	switch c.Kind {
	case CmdPersist:
		s.kv[c.Target] = *c.State
		st := *c.State
		s.kvHist[c.Target] = append(s.kvHist[c.Target], kvVersion{at: s.now, st: &st})
	case CmdDelete:
		delete(s.kv, c.Target)
		s.kvHist[c.Target] = append(s.kvHist[c.Target], kvVersion{at: s.now})
	case CmdLaunch:
		h := s.hostByNm[c.Host]
		req := *c.Launch
		s.request(h, func() any { return s.workerLaunch(h, &req) },
			func(r any) {
				s.step(&LaunchReplied{Host: h.name, Target: req.Target, Epoch: req.Epoch, Reply: r.(schemas.LaunchReply)})
			},
			func(nr bool) {
				s.step(&LaunchUnanswered{Host: h.name, Target: req.Target, TaskID: req.TaskID, NoResponders: nr})
			})
	case CmdKill:
		h := s.hostByNm[c.Host]
		if h == nil {
			return // a fenced heartbeat named a host that does not exist
		}
		req := *c.Kill
		s.request(h, func() any { return s.workerKill(h, &req) },
			func(r any) { s.step(&KillReplied{Host: h.name, Reply: r.(schemas.KillReply)}) },
			func(nr bool) { s.step(&KillUnanswered{Host: h.name, TaskID: req.TaskID, NoResponders: nr}) })
	case CmdPs:
		h := s.hostByNm[c.Host]
		pids := slices.Clone(c.Ps.PIDs)
		s.request(h, func() any { return s.workerPs(h, pids) },
			func(r any) { s.step(&PsReplied{Host: h.name, PIDs: pids, Reply: r.(schemas.PsReply)}) },
			func(nr bool) { s.step(&PsUnanswered{Host: h.name, NoResponders: nr}) })
	}
}

// ----- the workers -----

func (s *sim) workerLaunch(h *simHost, req *schemas.LaunchRequest) any {
	budget := req.RAM.WrapperMiB + req.RAM.HelpersMiB
	used := h.foreign
	for _, p := range h.procs {
		used += p.budget
	}
	rep := schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID}
	switch {
	case used+budget > h.total:
		rep.Error = &schemas.ReplyError{Code: schemas.CodeInsufficientRAM, Message: "no room"}
		return rep
	case s.faults && s.rng.Float64() < 0.01:
		rep.Error = &schemas.ReplyError{Code: schemas.CodeUnknownType, Message: "no such type"}
		return rep
	}
	h.nextPID++
	p := &simProc{id: req.TaskID, target: req.Target, typ: req.Type, epoch: req.Epoch, pid: h.nextPID,
		budget: budget, used: budget * int64(50+s.rng.IntN(51)) / 100, host: h, started: s.now,
		silent: s.faults && s.rng.Float64() < 0.08}
	h.procs[p.id] = p
	rep.PID = p.pid
	if !p.silent {
		s.heartbeat(p) // workers heartbeat at once
	}
	// How it ends: never, done, or failed.
	if r := s.rng.Float64(); r < 0.6 {
		life := time.Duration(2+s.rng.IntN(30)) * time.Second
		kind, reason := schemas.EventDone, ""
		switch {
		case !s.faults:
		case r < 0.15:
			kind, reason = schemas.EventFailed, schemas.ReasonCrashed
		case r < 0.2:
			kind, reason = schemas.EventFailed, schemas.ReasonHelpersUnavailable
		case r < 0.25:
			kind, reason = schemas.EventFailed, schemas.ReasonExited
		}
		s.at(life, func() {
			if h.procs[p.id] != p || h.down {
				return
			}
			delete(h.procs, p.id)
			s.publish(h, p, kind, reason)
		})
	}
	return rep
}

func (s *sim) workerKill(h *simHost, req *schemas.KillRequest) any {
	if p := h.procs[req.TaskID]; p != nil {
		delete(h.procs, p.id)
		if s.rng.IntN(2) == 0 {
			s.publish(h, p, schemas.EventFailed, schemas.ReasonKilled)
		}
	}
	return schemas.KillReply{V: schemas.Version, TaskID: req.TaskID, PID: req.PID, Running: false}
}

func (s *sim) workerPs(h *simHost, pids []int64) any {
	rep := schemas.PsReply{V: schemas.Version, Host: h.name, Tasks: []schemas.PsTask{}}
	for _, id := range slices.Sorted(maps.Keys(h.procs)) {
		p := h.procs[id]
		if pids != nil && !slices.Contains(pids, p.pid) {
			continue
		}
		rep.Tasks = append(rep.Tasks, schemas.PsTask{TaskID: p.id, Epoch: p.epoch, PID: p.pid, Target: p.target, Type: p.typ,
			RAM: schemas.TaskRAM{HelpersMiB: p.budget}})
	}
	return rep
}

func (s *sim) heartbeat(p *simProc) {
	h := p.host
	if h.down || h.partitioned || !s.connected || s.lost() {
		return
	}
	hb := &schemas.Heartbeat{V: schemas.Version, TaskID: p.id, Epoch: p.epoch, PID: p.pid, Host: h.name, Target: p.target,
		Type: p.typ, Seq: 1, RAM: schemas.HeartbeatRAM{BudgetMiB: p.budget, UsedMiB: p.used}, SentAt: s.now}
	s.at(s.delay(), func() {
		if s.connected {
			s.step(&HeartbeatReceived{Heartbeat: hb})
		}
	})
}

// publish sends a task event through the stream: never lost, sometimes
// delivered twice, held while the worker or the selector is off the bus.
func (s *sim) publish(h *simHost, p *simProc, kind, reason string) {
	ev := &schemas.TaskEvent{V: schemas.Version, TaskID: p.id, Epoch: p.epoch, PID: p.pid, Host: h.name, Target: p.target,
		Type: p.typ, Kind: kind, Reason: reason, At: s.now}
	if h.partitioned {
		h.outbox = append(h.outbox, ev)
		return
	}
	s.deliverEvent(ev)
	if s.faults && s.rng.Float64() < 0.05 {
		s.at(time.Duration(1+s.rng.IntN(5))*time.Second, func() { s.deliverEvent(ev) })
	}
}

func (s *sim) deliverEvent(ev *schemas.TaskEvent) {
	s.at(s.delay(), func() {
		if !s.connected {
			s.pending = append(s.pending, ev)
			return
		}
		s.step(&TaskEventReceived{Event: ev})
	})
}

// beat is one host's periodic work: its status and its tasks' heartbeats.
func (s *sim) beat(h *simHost) {
	s.at(time.Second, func() { s.beat(h) })
	if h.down || h.partitioned || !s.connected {
		return
	}
	for _, id := range slices.Sorted(maps.Keys(h.procs)) {
		if p := h.procs[id]; !p.silent {
			s.heartbeat(p)
		}
	}
	if s.lost() {
		return
	}
	used := h.foreign
	ids := []string{}
	for _, id := range slices.Sorted(maps.Keys(h.procs)) {
		used += h.procs[id].used
		ids = append(ids, id)
	}
	st := &schemas.HostStatus{V: schemas.Version, Host: h.name, RAM: schemas.HostRAM{TotalMiB: h.total, UsedMiB: used}, Tasks: ids, SentAt: s.now}
	s.at(s.delay(), func() {
		if s.connected {
			s.step(&HostStatusReceived{Status: st})
		}
	})
}

// ----- faults -----

func (s *sim) fault() {
	if !s.faults {
		return
	}
	s.at(time.Duration(200+s.rng.IntN(1500))*time.Millisecond, s.fault)
	h := s.hosts[s.rng.IntN(len(s.hosts))]
	switch r := s.rng.IntN(100); {
	case r < 4 && !h.down:
		// The host dies with its processes, and comes back empty.
		h.down = true
		clear(h.procs)
		s.record("fault: " + h.name + " down")
		s.at(time.Duration(3+s.rng.IntN(25))*time.Second, func() { h.down = false; h.cut = s.now })
	case r < 9 && !h.partitioned:
		h.partitioned = true
		s.record("fault: " + h.name + " partitioned")
		s.at(time.Duration(2+s.rng.IntN(25))*time.Second, func() { s.heal(h) })
	case r < 12 && s.connected:
		s.record("fault: bus disconnected")
		s.step(&Disconnected{})
		s.connected = false
		s.at(time.Duration(1+s.rng.IntN(12))*time.Second, s.reconnect)
	case r < 15:
		s.record("fault: selector restart")
		s.start(time.Duration(s.rng.IntN(4000)) * time.Millisecond)
		s.flushPending()
	case r < 30:
		h.foreign = int64(s.rng.IntN(int(h.total) / 2))
	case r < 38 && len(s.specs) < 16:
		s.step(&TargetUpserted{Target: s.newTarget(), Spec: s.specs["t"+strconv.Itoa(s.created-1)]})
	case r < 44 && len(s.specs) > 4:
		names := slices.Sorted(maps.Keys(s.specs))
		name := names[s.rng.IntN(len(names))]
		delete(s.specs, name)
		s.step(&TargetDeleted{Target: name})
	case r < 52:
		names := slices.Sorted(maps.Keys(s.specs))
		name := names[s.rng.IntN(len(names))]
		spec := cloneSpec(s.specs[name])
		v := 0.5 + s.rng.Float64()
		spec.Value = &v
		s.specs[name] = spec
		s.step(&TargetUpserted{Target: name, Spec: spec})
	}
}

func (s *sim) heal(h *simHost) {
	h.partitioned = false
	h.cut = s.now
	out := h.outbox
	h.outbox = nil
	for _, ev := range out {
		s.deliverEvent(ev)
	}
}

func (s *sim) reconnect() {
	if s.connected {
		return
	}
	s.connected = true
	s.cut = s.now
	s.step(&Reconnected{})
	s.flushPending()
}

func (s *sim) flushPending() {
	p := s.pending
	s.pending = nil
	for _, ev := range p {
		s.deliverEvent(ev)
	}
}

func (s *sim) tick() {
	s.at(250*time.Millisecond, s.tick)
	s.step(&Tick{}) // the edge's timer runs whether or not the bus is up
}

// runUntil processes events in time order until the clock reaches end.
func (s *sim) runUntil(end time.Time) {
	for s.q.Len() > 0 && !s.q[0].at.After(end) {
		ev := heap.Pop(&s.q).(*simEvent)
		s.now = ev.at
		ev.fn()
	}
	s.now = end
}

func (s *sim) run() {
	s.start(0)
	for i, h := range s.hosts {
		s.at(time.Duration(i*137)*time.Millisecond, func() { s.beat(h) })
	}
	s.at(0, s.tick)
	s.at(time.Second, s.fault)
	// Faults until a few thousand steps have run.
	for s.steps < 3000 {
		s.runUntil(s.now.Add(time.Second))
	}
	// Faults stop; RAM frees up.
	s.faults = false
	s.record("faults stop")
	for _, h := range s.hosts {
		h.foreign = 0
		if h.partitioned {
			s.heal(h)
		}
	}
	s.reconnect()
	// Targets blocked by a refusal wait for a spec change: give them one.
	for _, name := range slices.Sorted(maps.Keys(s.specs)) {
		if t := s.e.targets[name]; t != nil && t.blocked != "" {
			spec := cloneSpec(s.specs[name])
			v := *spec.Value + 1
			spec.Value = &v
			s.specs[name] = spec
			s.step(&TargetUpserted{Target: name, Spec: spec})
		}
	}
	s.runUntil(s.now.Add(3 * time.Minute))
	s.checkLiveness()
}

func (s *sim) checkLiveness() {
	e := s.e
	st := e.Status(s.now)
	if !st.Ready || st.Degraded || st.PendingLaunches != 0 {
		s.fatalf("not settled: ready=%v degraded=%q pending=%d", st.Ready, st.DegradedReason, st.PendingLaunches)
	}
	live := map[string]*simProc{}
	for _, h := range s.hosts {
		for _, p := range h.procs {
			if live[p.target] != nil {
				s.fatalf("target %s has two live processes after the faults stopped", p.target)
			}
			live[p.target] = p
		}
	}
	for _, ts := range st.Targets {
		if _, declared := s.specs[ts.Target]; !declared {
			s.fatalf("undeclared target %s still known: %+v", ts.Target, ts)
		}
		p := live[ts.Target]
		switch ts.State {
		case StateComplete:
			if p != nil {
				s.fatalf("complete target %s has a process %s", ts.Target, p.id)
			}
		case StateActive:
			if p == nil || p.id != ts.TaskID {
				s.fatalf("target %s: engine runs %s, the cluster %v", ts.Target, ts.TaskID, p)
			}
		default:
			s.fatalf("target %s never launched once RAM freed up: %+v", ts.Target, ts)
		}
		delete(live, ts.Target)
	}
	for name, p := range live {
		s.fatalf("process %s of %s runs but is not its target's task", p.id, name)
	}
	if len(st.Targets) != len(s.specs) {
		s.fatalf("%d targets declared, engine knows %d", len(s.specs), len(st.Targets))
	}
	s.t.Logf("%d steps, %d targets, counters %+v", s.steps, len(st.Targets), st.Counters)
}
