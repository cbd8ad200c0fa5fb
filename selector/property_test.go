package selector

import (
	"container/heap"
	"flag"
	"fmt"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// TestPropertyRandomClusters drives the engine through a simulated fleet (see
// world) with seeded random faults, in three stages:
//
//  1. Chaos: hosts die and come back (their PIDs start over), partitions
//     start and heal (some past the workers' fence time), the selector
//     disconnects, pauses (a long GC, a stopped VM) and restarts from a
//     store that lacks its unwritten tail (sometimes taking the embedded bus,
//     and so every worker's connection, with it), the store and the
//     selector's subscriptions turn slow, messages to the selector are late,
//     reordered and duplicated (heartbeats also lost), replies are lost,
//     workers drop task events, tasks crash, hang, finish or fail to get
//     their helpers, foreign processes take RAM, and targets come, change
//     (phases too) and go (names are reused).
//  2. Permanent faults: the transient faults end, and then hosts die or are
//     partitioned for good, sometimes followed by a selector restart whose
//     records name them. Message faults and task crashes go on.
//  3. Calm: every remaining transient fault stops; the permanent ones stay.
//
// Throughout, it fails the run on:
//
//   - any overlap in time of two live processes of one target, judged from
//     the workers' side (the processes the simulated hosts really run,
//     partitioned ones included), with no exemption: a worker fences itself
//     after wFenceAfter without a round trip, and that is the only thing
//     that stops a partitioned host's processes;
//   - any break of the engine's own invariants (checkInvariants) or of the
//     commands' sanity (checkCommands), after every step;
//   - a target that stays without a live process on a reachable host for
//     longer than wStallBound while some reachable host has room for it.
//
// In stage 2, while the permanent faults are active, every target that ran
// on a host struck for good must run again on a surviving host within
// HostStale + (hosts struck - 1) × 60 s / LostHostsPerMin + 5 s + 3 s per
// pending-launch round (from the last strike, or the restart after it). At
// the end of stage 3 every declared target runs exactly one process, the
// engine's active task, on a surviving host (or is complete), and the
// engine's reservations equal what those processes hold.
//
// The engine runs with the defaults (HostStale 10 s against the workers' 8 s
// fence time, heartbeats and statuses every second), LaunchSentReported and
// MaxStepGap set as the service sets them, and 1 to 3 pending launches.
// -world.seeds=N runs N seeds; -world.seed=S replays seed S alone.
func TestPropertyRandomClusters(t *testing.T) {
	first, seeds := 1, 64
	if testing.Short() {
		seeds = 8
	}
	if *worldSeeds > 0 {
		seeds = *worldSeeds
	}
	if *worldSeed > 0 {
		first, seeds = *worldSeed, 1
	}
	for seed := first; seed < first+seeds; seed++ {
		t.Run("seed="+strconv.Itoa(seed), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, rand.New(rand.NewPCG(uint64(seed), uint64(seed)*7919)), uint64(seed))
			w.run(defaultPlan)
		})
	}
}

var (
	worldSeeds = flag.Int("world.seeds", 0, "how many seeds TestPropertyRandomClusters runs (0: its default)")
	worldSeed  = flag.Int("world.seed", 0, "run TestPropertyRandomClusters for this seed alone")
)

// TestPropertyWorldSeesOverlapWithoutFence checks the checker: with the
// workers' fence turned off (the trade-off the README documents), a worker
// partitioned past HostStale keeps its tasks while the selector relaunches
// them elsewhere, and the world must report the overlap.
func TestPropertyWorldSeesOverlapWithoutFence(t *testing.T) {
	for seed := uint64(1); seed <= 16; seed++ {
		w := newWorld(t, rand.New(rand.NewPCG(seed, seed*7919)), seed)
		w.fenceAfter = 0
		var msg string
		w.failed = func(m string) { msg = m }
		w.run(defaultPlan)
		if strings.Contains(msg, "runs twice") {
			return
		}
	}
	t.Fatal("no seed saw a target run twice with the fence off")
}

// wPlan is how long each stage of a world's run lasts.
type wPlan struct {
	chaos  time.Duration // stage 1
	settle time.Duration // transient faults healed, before the permanent faults
	calm   time.Duration // stage 3
}

var defaultPlan = wPlan{chaos: 4 * time.Minute, settle: 40 * time.Second, calm: 80 * time.Second}

// Constants of the simulated fleet.
const (
	// wFenceAfter is the workers' fence time: a worker without a round trip
	// to its NATS server for this long stops its tasks. The engine's
	// HostStale (10 s) exceeds it by two beat periods, as the README asks.
	wFenceAfter = 8 * time.Second
	// wBeat is the period of heartbeats, host statuses and fence probes.
	wBeat = time.Second
	// wTick is the selector's tick period.
	wTick = 50 * time.Millisecond
	// wAckWait is how long the event stream waits for an ack before it
	// delivers an event again.
	wAckWait = 5 * time.Second
	// wStallBound is the longest a target may wait without a live process
	// on a reachable host while one of them has room for it. It covers the
	// longest legitimate waits: a crash-looping target's restart delay
	// (capped at 20 s here), the launch backoff (10 s), a host-stale window
	// (10 s) and the rate-limited host losses of a partial disruption.
	wStallBound = 90 * time.Second
)

// wFaults sets how often each fault strikes; zero turns it off.
type wFaults struct {
	msgLoss, msgLate, msgDup float64 // messages to the selector (loss: heartbeats only)
	replyLoss                float64 // replies lost on their way back
	eventLoss                float64 // a worker's outbox is full and drops a task event
	silent, crash, helpers   float64 // a started task hangs, crashes, or fails to get its helpers
	refuse                   float64 // a launch is refused with unknown_type (the target is blocked)
	finish                   bool    // tasks end (done or failed) on their own
	host                     bool    // transient host, bus, store and selector faults, and target churn
	// alloc is the chance per heartbeat that a task asks for fleet helper
	// RAM (releasing some of what it holds, now and then).
	alloc float64
}

var chaosFaults = wFaults{msgLoss: 0.01, msgLate: 0.02, msgDup: 0.02, replyLoss: 0.01, eventLoss: 0.01,
	silent: 0.08, crash: 0.1, helpers: 0.04, refuse: 0.01, finish: true, host: true, alloc: 0.15}

// wProc is a process that a simulated worker runs.
type wProc struct {
	id, target, typ string
	epoch           uint64
	pid             int64
	budget, used    int64
	silent          bool
	host            *wHost
	started         time.Time
	grants          []string  // the fleet helpers it holds, as its last alloc reply said
	allocAt         time.Time // when its outstanding alloc request left (zero: none)
}

// wHelper is a fleet helper a worker runs for a task on any host.
type wHelper struct {
	id, taskID, target string
	epoch              uint64
	mib                int64
}

// wHost is a simulated host and its worker agent.
type wHost struct {
	name         string
	total        int64
	foreign      int64
	procs        map[string]*wProc
	ended        map[string]int64 // task ids that ended here, with their PIDs: a repeated launch starts nothing
	nextPID      int64
	dead         bool      // the host is down: its processes died with it
	cut          bool      // partitioned: its connection to the bus stalls
	serverDropAt time.Time // when the server gives up the stalled connection
	forever      bool      // struck for good: it never comes back
	lastOK       time.Time // the last successful round trip of its fence probe
	fenced       bool      // it stopped its tasks and refuses launches until it reconnects
	inbox        []func()  // requests the server holds for the stalled connection
	held         []func()  // messages published while cut, sent late when it heals
	outbox       []*schemas.TaskEvent
	lastIn       time.Time // requests reach the worker in the order they were sent
	life         int       // bumps when it dies: the dead worker's requests are void
	helpers      map[string]*wHelper
	v1           bool // its worker does not run fleet helpers: nobody listens on its helper subject
}

// free is the RAM a launch may take, as the worker agent counts it.
func (h *wHost) free() int64 {
	used := h.foreign
	for _, p := range h.procs {
		used += max(p.budget, p.used)
	}
	for _, x := range h.helpers {
		used += x.mib
	}
	return h.total - used
}

func (h *wHost) reachable() bool { return !h.dead && !h.cut }

// wWrite is one batch of commands waiting in the store writer: its writes
// are stored in order, then its requests sent, then the event that caused it
// acked. A batch without writes that only waits to ack has no commands.
type wWrite struct {
	cmds []Command
	ack  func()
}

// wPaused is an event that reached a paused selector.
type wPaused struct {
	ev  Event
	ack func()
}

// wStreamEvent is a task event in the TASK_EVENTS stream.
type wStreamEvent struct {
	ev        *schemas.TaskEvent
	delivered bool
	acked     bool
}

type wTimer struct {
	at  time.Time
	seq int
	fn  func()
}

type wQueue []*wTimer

func (q wQueue) Len() int { return len(q) }
func (q wQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q wQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *wQueue) Push(x any)   { *q = append(*q, x.(*wTimer)) }
func (q *wQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}

// wStall tracks how long a target has waited for a process.
type wStall struct {
	roomSince time.Time // zero while it runs, or while no reachable host has room for it
}

// world is a simulated fleet around one engine: worker agents on hosts that
// die and get partitioned, a bus that delays, reorders, duplicates and (for
// heartbeats) loses messages to the selector, a store whose writes take
// time, an event stream that delivers at least once, and the selector's edge,
// which carries out the engine's commands as bus.SelectorService does:
// requests only after the writes before them are stored, LaunchSent when a
// launch leaves, one outcome per request (a reply, or "unanswered" after the
// reply timeout, or at once without responders), acks after every earlier
// write, InputDropped for what a slow subscription drops, and the unacked
// event backlog first after a restart.
//
// A worker takes its requests in the order they were sent. A partitioned
// worker's connection stalls: the server holds requests for it for a few
// seconds (then answers "no responders"), the worker holds what it
// publishes and sends it late when it heals, and its fence probe fails, so
// that after wFenceAfter it stops its tasks, reports them fenced, and
// refuses launches until it is back.
//
// Every random choice is drawn from rng, in a deterministic order, so that a
// seed (or a fuzzer's bytes) replays exactly.
type world struct {
	tb   testing.TB
	rng  *rand.Rand
	cfg  Config
	f    wFaults
	now  time.Time
	q    wQueue
	seq  int
	tick time.Duration
	// fenceAfter is the workers' fence time (wFenceAfter); 0 turns
	// fencing off.
	fenceAfter time.Duration
	// failed, when set, receives a failure instead of tb.Fatalf: the
	// world stops at the first one (see runUntil).
	failed  func(msg string)
	stopped bool

	e         *Engine
	gen       int  // bumps at every selector restart: replies to an earlier run are void
	up        bool // the selector process runs
	connected bool // its bus connection is up

	hosts  []*wHost
	byName map[string]*wHost

	specs   map[string]schemas.TargetSpec // the targets bucket
	created int
	retired []string // names of deleted targets, for reuse

	stored     map[string]schemas.TaskState // the tasks bucket
	writer     []*wWrite
	writing    bool
	slowStore  time.Time // writes are slow until then
	clientBuf  []func()  // requests published while the selector is disconnected
	specBuf    []func()  // target changes the watcher delivers once connected
	specAt     time.Time // target changes are delivered in order
	stream     []*wStreamEvent
	consumerAt time.Time // the consumer delivers in stream order
	dropUntil  map[string]time.Time
	dropReport map[string]bool
	// pausedUntil: the selector process is paused (a long GC, a stopped
	// VM) until then; the events that reach it meanwhile wait in paused.
	pausedUntil time.Time
	paused      []wPaused

	stalls   map[string]*wStall
	struck   map[string]bool // targets that ran on a host struck for good
	restored map[string]bool // of those, the ones that ran again on a surviving host
	strikeAt time.Time

	steps, starts int
	faults        map[string]int // how often each fault struck, for the log
	log           []string

	allocs   map[uint64]*wProc // outstanding alloc requests, by the edge's id
	allocSeq uint64
	granted  int // helpers started, for the log
}

func newWorld(tb testing.TB, rng *rand.Rand, seed uint64) *world {
	cfg := DefaultConfig()
	cfg.Seed = seed
	cfg.LaunchSentReported = true
	cfg.MaxStepGap = 20 * wTick
	cfg.RestartDelayMax = 20 * time.Second
	cfg.RestartDelayReset = time.Minute
	cfg.MaxPendingLaunches = 1 + rng.IntN(3)
	cfg.HostHeadroomMiB = int64(rng.IntN(3)) * 32
	// Half the worlds launch tasks at their minimum size, so that they
	// ask the memory manager for the rest of their helpers.
	cfg.LaunchAtMinimum = seed%2 == 0
	w := &world{
		tb: tb, rng: rng, cfg: cfg, f: chaosFaults, now: t0, tick: wTick, fenceAfter: wFenceAfter,
		byName: map[string]*wHost{}, specs: map[string]schemas.TargetSpec{},
		stored: map[string]schemas.TaskState{}, dropUntil: map[string]time.Time{}, dropReport: map[string]bool{},
		stalls: map[string]*wStall{}, struck: map[string]bool{}, restored: map[string]bool{},
		faults: map[string]int{}, allocs: map[uint64]*wProc{},
	}
	// h0 alone holds every target at full size with room to spare, so
	// that any other host may be struck for good.
	n := 3 + rng.IntN(4)
	for i := range n {
		total := int64(500 + rng.IntN(1000))
		if i == 0 {
			total = 2600
		}
		h := &wHost{name: "h" + strconv.Itoa(i), total: total, procs: map[string]*wProc{}, ended: map[string]int64{}, nextPID: 100,
			helpers: map[string]*wHelper{}, v1: i == 2 && seed%3 == 0}
		w.hosts = append(w.hosts, h)
		w.byName[h.name] = h
	}
	for range 6 + rng.IntN(6) {
		name, spec := w.newSpec()
		w.specs[name] = spec
	}
	return w
}

// newSpec makes a target of one to three phases, at most 150 MiB each; its
// name is fresh or, now and then, one that was deleted.
func (w *world) newSpec() (string, schemas.TargetSpec) {
	var name string
	if len(w.retired) > 0 && w.rng.IntN(3) == 0 {
		i := w.rng.IntN(len(w.retired))
		name = w.retired[i]
		w.retired = slices.Delete(w.retired, i, i+1)
	} else {
		name = "t" + strconv.Itoa(w.created)
		w.created++
	}
	return name, w.randomSpec()
}

// randomSpec is a declared spec of one to three phases, at most 150 MiB each.
func (w *world) randomSpec() schemas.TargetSpec {
	var phases []schemas.Phase
	for i := range 1 + w.rng.IntN(3) {
		mn := int64(5 + w.rng.IntN(40))
		phases = append(phases, schemas.Phase{
			Type: "p" + strconv.Itoa(i), WrapperMiB: int64(w.rng.IntN(15)),
			HelpersMinMiB: mn, HelpersFullMiB: mn + int64(w.rng.IntN(90)), WorkS: 1,
		})
	}

	phases[len(phases)-1].Repeat = w.rng.IntN(4) != 0
	spec := declared(phases...)
	v := 0.5 + w.rng.Float64()
	spec.Value = &v
	return spec
}

// ----- scheduling and reporting -----

func (w *world) at(d time.Duration, fn func()) {
	w.seq++
	heap.Push(&w.q, &wTimer{at: w.now.Add(d), seq: w.seq, fn: fn})
}

func (w *world) chance(p float64) bool { return p > 0 && w.rng.Float64() < p }

// delay is a message's ordinary transit time.
func (w *world) delay() time.Duration { return time.Duration(1+w.rng.IntN(150)) * time.Millisecond }

func (w *world) fail(format string, args ...any) {
	w.tb.Helper()
	msg := fmt.Sprintf("at +%v (step %d): %s\n%s\nlast steps:\n  %s", w.now.Sub(t0), w.steps, fmt.Sprintf(format, args...),
		w.summary(), strings.Join(w.log, "\n  "))
	if w.failed != nil {
		if !w.stopped {
			w.stopped = true
			w.failed(msg)
		}
		return
	}
	w.tb.Fatal(msg)
}

// count counts a fault for the log.
func (w *world) count(kind string, forever bool) {
	if forever {
		kind += " for good"
	}
	w.faults[kind]++
}

func (w *world) record(format string, args ...any) {
	if len(w.log) >= 120 {
		w.log = w.log[1:]
	}
	w.log = append(w.log, fmt.Sprintf("+%v ", w.now.Sub(t0))+fmt.Sprintf(format, args...))
}

// runUntil carries out every timer due by end, in time order.
func (w *world) runUntil(end time.Time) {
	for !w.stopped && w.q.Len() > 0 && !w.q[0].at.After(end) {
		x := heap.Pop(&w.q).(*wTimer)
		w.now = x.at
		x.fn()
	}
	w.now = end
}

// ----- the selector's edge -----

// step feeds one event to the engine, checks it, and dispatches the commands;
// ack, when set, is called once every write before it is stored.
func (w *world) step(ev Event, ack func()) {
	if !w.up {
		return
	}
	if w.now.Before(w.pausedUntil) {
		if _, tick := ev.(*Tick); !tick {
			w.paused = append(w.paused, wPaused{ev, ack})
		}
		return
	}
	w.steps++
	cmds := slices.Clone(w.e.Step(w.now, ev))
	if _, tick := ev.(*Tick); !tick || len(cmds) > 0 {
		w.record("%T%s -> %s", ev, describe(ev), describeCmds(cmds))
	}
	if err := w.e.checkInvariants(); err != nil {
		w.fail("engine invariant: %v", err)
	}
	if err := checkCommands(w.e, cmds); err != nil {
		w.fail("%v", err)
	}
	w.checkPlaced()
	w.dispatch(cmds, ack)
}

// describeCmds lists a step's requests for the log.
func describeCmds(cmds []Command) string {
	var out []string
	for _, c := range cmds {
		switch c.Kind {
		case CmdLaunch:
			out = append(out, fmt.Sprintf("launch %s on %s", c.Launch.TaskID, c.Host))
		case CmdKill:
			out = append(out, fmt.Sprintf("kill %s on %s", c.Kill.TaskID, c.Host))
		case CmdPs:
			out = append(out, fmt.Sprintf("ps %s %v", c.Host, c.Ps.PIDs))
		case CmdPersist:
			out = append(out, "persist "+c.Target)
		case CmdDelete:
			out = append(out, "delete "+c.Target)
		}
	}
	return strings.Join(out, ", ")
}

func describe(ev Event) string {
	switch ev := ev.(type) {
	case *HeartbeatReceived:
		return " " + ev.Heartbeat.TaskID + " on " + ev.Heartbeat.Host
	case *LaunchReplied:
		if ev.Reply.Error != nil {
			return " " + ev.Reply.TaskID + " " + ev.Reply.Error.Code
		}
		return fmt.Sprintf(" %s pid %d", ev.Reply.TaskID, ev.Reply.PID)
	case *LaunchUnanswered:
		return fmt.Sprintf(" %s noresp=%v", ev.TaskID, ev.NoResponders)
	case *LaunchSent:
		return " " + ev.TaskID
	case *TaskEventReceived:
		return " " + ev.Event.TaskID + " " + ev.Event.Kind + " " + ev.Event.Reason
	case *KillReplied:
		return fmt.Sprintf(" %s running=%v", ev.Reply.TaskID, ev.Reply.Running)
	case *KillUnanswered:
		return fmt.Sprintf(" %s noresp=%v", ev.TaskID, ev.NoResponders)
	case *PsReplied:
		ids := make([]string, 0, len(ev.Reply.Tasks))
		for _, p := range ev.Reply.Tasks {
			ids = append(ids, p.TaskID)
		}
		return fmt.Sprintf(" %s pids=%v: %v", ev.Host, ev.PIDs, ids)
	case *PsUnanswered:
		return fmt.Sprintf(" %s noresp=%v", ev.Host, ev.NoResponders)
	case *HostStatusReceived:
		return fmt.Sprintf(" %s %v", ev.Status.Host, ev.Status.Tasks)
	case *TargetUpserted:
		return " " + ev.Target
	case *TargetDeleted:
		return " " + ev.Target
	case *InputDropped:
		return " " + ev.Source
	}
	return ""
}

// checkPlaced checks that the budgets this engine placed on each host fit the
// host's real capacity.
func (w *world) checkPlaced() {
	for _, h := range w.e.hostSeq {
		var placed int64
		for _, k := range h.tasks {
			if k.placed {
				placed += k.budget
			}
		}
		for _, x := range h.helpers {
			if x.state == helperStarting {
				placed += x.mib // granted by this engine
			}
		}
		if wh := w.byName[h.name]; wh != nil && placed > wh.total-w.cfg.HostHeadroomMiB {
			w.fail("host %s: placed budgets and granted helpers %d exceed its %d MiB minus headroom", h.name, placed, wh.total)
		}
	}
}

// dispatch carries out a step's commands as the service does: a batch
// without writes sends its requests at once; a batch with writes waits in the
// store writer, which sends its requests once its writes are stored. An ack
// waits for every write before it.
func (w *world) dispatch(cmds []Command, ack func()) {
	write := slices.ContainsFunc(cmds, func(c Command) bool { return c.Kind == CmdPersist || c.Kind == CmdDelete })
	if !write {
		for _, c := range cmds {
			w.send(c)
		}
		if ack != nil {
			if len(w.writer) == 0 {
				ack()
			} else {
				w.writer = append(w.writer, &wWrite{ack: ack})
			}
		}
		return
	}
	w.writer = append(w.writer, &wWrite{cmds: cmds, ack: ack})
	w.pumpWriter()
}

// pumpWriter stores the writer's next batch. The store is reachable only
// while the selector is connected; a write cut short by a restart is lost.
func (w *world) pumpWriter() {
	if w.writing || len(w.writer) == 0 || !w.up || !w.connected {
		return
	}
	if w.now.Before(w.pausedUntil) {
		return // resumed when the pause ends
	}
	it := w.writer[0]
	var lat time.Duration
	if it.cmds != nil {
		lat = time.Duration(2+w.rng.IntN(20)) * time.Millisecond
		if w.now.Before(w.slowStore) {
			lat = time.Duration(300+w.rng.IntN(3500)) * time.Millisecond
		}
	}
	w.writing = true
	gen := w.gen
	w.at(lat, func() {
		if w.gen != gen {
			return
		}
		w.writing = false
		if !w.connected {
			return // retried once the bus is back
		}
		w.writer = w.writer[1:]
		for _, c := range it.cmds {
			switch c.Kind {
			case CmdPersist:
				w.stored[c.Target] = *c.State
			case CmdDelete:
				delete(w.stored, c.Target)
			}
		}
		for _, c := range it.cmds {
			w.send(c)
		}
		if it.ack != nil {
			it.ack()
		}
		w.pumpWriter()
	})
}

func unansweredEvent(c Command, noResponders bool) Event {
	switch c.Kind {
	case CmdLaunch:
		return &LaunchUnanswered{Host: c.Host, Target: c.Target, TaskID: c.Launch.TaskID, NoResponders: noResponders}
	case CmdKill:
		return &KillUnanswered{Host: c.Host, TaskID: c.Kill.TaskID, NoResponders: noResponders}
	case CmdHelper:
		return &HelperUnanswered{Host: c.Host, Req: c.Helper, NoResponders: noResponders}
	}
	return &PsUnanswered{Host: c.Host, NoResponders: noResponders}
}

// send carries out one launch, kill or ps request: exactly one outcome is fed
// back to the engine that sent it, a reply or, after ReplyTimeout (or at once
// without responders), its absence.
func (w *world) send(c Command) {
	if c.Kind == CmdAllocReply {
		w.allocReplied(c)
		return
	}
	if c.Kind != CmdLaunch && c.Kind != CmdKill && c.Kind != CmdPs && c.Kind != CmdHelper {
		return
	}
	if c.Kind == CmdLaunch {
		w.step(&LaunchSent{TaskID: c.Launch.TaskID}, nil)
	}
	gen := w.gen
	answered := false
	feed := func(ev Event) {
		if answered || w.gen != gen || !w.up || !w.connected {
			return
		}
		answered = true
		w.step(ev, nil)
	}
	w.at(w.cfg.ReplyTimeout, func() { feed(unansweredEvent(c, false)) })
	deliver := func() { w.toWorker(c, feed) }
	if !w.connected {
		// The client buffers it and sends it once reconnected, long after
		// the request has timed out.
		w.clientBuf = append(w.clientBuf, deliver)
		return
	}
	deliver()
}

// toWorker takes a request from the server to its worker: at once without
// responders when no worker listens, held while the worker's connection
// stalls, else in the order the requests were sent.
func (w *world) toWorker(c Command, feed func(Event)) {
	h := w.byName[c.Host]
	if h == nil || h.dead || (h.cut && !w.now.Before(h.serverDropAt)) || (c.Kind == CmdHelper && h.v1) {
		w.at(time.Millisecond, func() { feed(unansweredEvent(c, true)) })
		return
	}
	handle := func() { w.handle(h, c, feed) }
	if h.cut {
		h.inbox = append(h.inbox, handle)
		return
	}
	at := maxTime(h.lastIn, w.now.Add(w.delay()))
	h.lastIn = at
	life := h.life
	w.at(at.Sub(w.now), func() {
		switch {
		case h.life != life:
			// The worker died with the request.
		case h.cut:
			h.inbox = append(h.inbox, handle)
		default:
			handle()
		}
	})
}

// handle lets the worker act on a request and sends its reply back.
func (w *world) handle(h *wHost, c Command, feed func(Event)) {
	var reply Event
	switch c.Kind {
	case CmdLaunch:
		r := w.workerLaunch(h, c.Launch)
		reply = &LaunchReplied{Host: h.name, Target: c.Launch.Target, Epoch: c.Launch.Epoch, Reply: r}
	case CmdKill:
		reply = &KillReplied{Host: h.name, Reply: w.workerKill(h, c.Kill)}
	case CmdPs:
		pids := slices.Clone(c.Ps.PIDs)
		reply = &PsReplied{Host: h.name, PIDs: pids, Reply: w.workerPs(h, pids)}
	case CmdHelper:
		reply = &HelperReplied{Host: h.name, Req: c.Helper, Reply: w.workerHelper(h, c.Helper)}
	}
	if w.chance(w.f.replyLoss) {
		return
	}
	w.at(w.delay(), func() { feed(reply) })
}

// toSelector carries a message published by a worker to the selector: late
// now and then, sometimes twice, and lost while the selector is away or
// drops its source as a slow consumer (which the edge reports). Heartbeats
// are also lost now and then, unreported. Host statuses are not: a status
// published before a worker's last successful round trip has reached the
// server (the round trip flushes the connection), which is what the fence
// margin rests on; those published later are held with the connection (see
// publish).
func (w *world) toSelector(src string, fn func()) {
	if src == InputHeartbeats && w.chance(w.f.msgLoss) {
		return
	}
	d := w.delay()
	if w.chance(w.f.msgLate) {
		d += time.Duration(500+w.rng.IntN(2000)) * time.Millisecond
	}
	deliver := func() {
		if !w.up || !w.connected {
			return
		}
		if w.now.Before(w.dropUntil[src]) {
			w.reportDrop(src)
			return
		}
		fn()
	}
	w.at(d, deliver)
	if w.chance(w.f.msgDup) {
		w.at(d+time.Duration(w.rng.IntN(5000))*time.Millisecond, deliver)
	}
}

// reportDrop tells the engine, within one tick, that a source dropped
// messages.
func (w *world) reportDrop(src string) {
	if w.dropReport[src] {
		return
	}
	w.dropReport[src] = true
	w.at(w.tick, func() {
		w.dropReport[src] = false
		w.step(&InputDropped{Source: src}, nil)
	})
}

// publish sends a worker's heartbeat or status: a cut-off worker's client
// holds the last few and sends them, late, when the connection heals.
func (w *world) publish(h *wHost, src string, fn func()) {
	switch {
	case h.dead:
	case h.cut:
		h.held = append(h.held, func() { w.toSelector(src, fn) })
		if len(h.held) > 8 {
			h.held = h.held[1:]
		}
	default:
		w.toSelector(src, fn)
	}
}

// ----- the event stream -----

// emitEvent queues a task event in the worker's outbox, which publishes it
// to the stream while the worker is connected.
func (w *world) emitEvent(h *wHost, p *wProc, kind, reason string) {
	if w.chance(w.f.eventLoss) {
		w.record("fault: %s drops the event of %s", h.name, p.id)
		w.count("event dropped", false)
		return
	}
	h.outbox = append(h.outbox, &schemas.TaskEvent{V: schemas.Version, TaskID: p.id, Epoch: p.epoch, PID: p.pid,
		Host: h.name, Target: p.target, Type: p.typ, Kind: kind, Reason: reason, At: w.now})
	w.flushOutbox(h)
}

func (w *world) flushOutbox(h *wHost) {
	if !h.reachable() {
		return
	}
	for _, ev := range h.outbox {
		se := &wStreamEvent{ev: ev}
		w.stream = append(w.stream, se)
		w.deliver(se)
	}
	h.outbox = nil
}

// deliver hands a stream event to the selector's consumer, in stream order,
// and again after wAckWait while it is not acked.
func (w *world) deliver(se *wStreamEvent) {
	if !w.up || !w.connected || se.acked {
		return
	}
	se.delivered = true
	at := maxTime(w.consumerAt, w.now.Add(w.delay()))
	w.consumerAt = at
	gen := w.gen
	w.at(at.Sub(w.now), func() {
		if w.gen != gen || !w.up || !w.connected || se.acked {
			se.delivered = false
			return
		}
		w.step(&TaskEventReceived{Event: se.ev}, func() { se.acked = true })
		if w.chance(w.f.msgDup) {
			w.at(time.Duration(w.rng.IntN(3000))*time.Millisecond, func() {
				if w.gen == gen && w.up && w.connected {
					w.step(&TaskEventReceived{Event: se.ev}, func() { se.acked = true })
				}
			})
		}
		w.at(wAckWait, func() {
			if w.gen == gen && !se.acked {
				w.deliver(se)
			}
		})
	})
}

// ----- the workers -----

// workerLaunch is the worker agent's launch: idempotent per task id, refused
// while fenced or without room, else the process starts and heartbeats at
// once.
func (w *world) workerLaunch(h *wHost, req *schemas.LaunchRequest) schemas.LaunchReply {
	rep := schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID}
	if p := h.procs[req.TaskID]; p != nil {
		rep.PID = p.pid
		return rep
	}
	if pid, ok := h.ended[req.TaskID]; ok {
		rep.PID = pid
		return rep
	}
	budget := req.RAM.WrapperMiB + req.RAM.HelpersMiB
	switch {
	case h.fenced:
		rep.Error = &schemas.ReplyError{Code: schemas.CodeDraining, Message: "fenced"}
		return rep
	case budget > h.free():
		rep.Error = &schemas.ReplyError{Code: schemas.CodeInsufficientRAM, Message: "no room"}
		return rep
	case w.chance(w.f.refuse):
		rep.Error = &schemas.ReplyError{Code: schemas.CodeUnknownType, Message: "no such type"}
		return rep
	}
	h.nextPID++
	p := &wProc{id: req.TaskID, target: req.Target, typ: req.Type, epoch: req.Epoch, pid: h.nextPID,
		budget: budget, used: budget * int64(50+w.rng.IntN(51)) / 100, host: h, started: w.now,
		silent: w.chance(w.f.silent)}
	w.startProc(p)
	rep.PID = p.pid
	if !p.silent {
		w.heartbeat(p)
	}
	switch {
	case w.chance(w.f.helpers):
		w.endAfter(p, time.Duration(100+w.rng.IntN(900))*time.Millisecond, schemas.EventFailed, schemas.ReasonHelpersUnavailable)
	case w.chance(w.f.crash):
		reason := schemas.ReasonCrashed
		if w.rng.IntN(3) == 0 {
			reason = schemas.ReasonExited
		}
		w.endAfter(p, time.Duration(1+w.rng.IntN(20))*time.Second, schemas.EventFailed, reason)
	case w.f.finish && w.rng.IntN(3) != 0:
		w.endAfter(p, time.Duration(2+w.rng.IntN(30))*time.Second, schemas.EventDone, "")
	}
	return rep
}

// startProc starts p on its host: no other process of its target may live
// anywhere at that moment.
func (w *world) startProc(p *wProc) {
	w.starts++
	for _, h := range w.hosts {
		for _, id := range slices.Sorted(maps.Keys(h.procs)) {
			if q := h.procs[id]; q.target == p.target {
				state := "reachable"
				switch {
				case h.dead:
					state = "dead"
				case h.cut:
					state = fmt.Sprintf("partitioned, fenced=%v", h.fenced)
				}
				w.fail("target %s runs twice: %s (epoch %d) starts on %s while %s (epoch %d, up since +%v) runs on %s (%s)",
					p.target, p.id, p.epoch, p.host.name, q.id, q.epoch, q.started.Sub(t0), h.name, state)
			}
		}
	}
	p.host.procs[p.id] = p
	w.record("  started %s (epoch %d) on %s pid %d", p.id, p.epoch, p.host.name, p.pid)
	if w.struck[p.target] && !p.host.forever {
		w.restored[p.target] = true
	}
}

// endAfter ends p after d, unless it is gone by then.
func (w *world) endAfter(p *wProc, d time.Duration, kind, reason string) {
	w.at(d, func() {
		h := p.host
		if h.procs[p.id] != p {
			return
		}
		w.stop(p)
		w.emitEvent(h, p, kind, reason)
	})
}

// stop removes a live process.
func (w *world) stop(p *wProc) {
	delete(p.host.procs, p.id)
	p.host.ended[p.id] = p.pid
}

func (w *world) workerKill(h *wHost, req *schemas.KillRequest) schemas.KillReply {
	if p := h.procs[req.TaskID]; p != nil && (req.PID == 0 || req.PID == p.pid) {
		w.stop(p)
		w.emitEvent(h, p, schemas.EventFailed, schemas.ReasonKilled)
	}
	return schemas.KillReply{V: schemas.Version, TaskID: req.TaskID, PID: req.PID}
}

func (w *world) workerPs(h *wHost, pids []int64) schemas.PsReply {
	rep := schemas.PsReply{V: schemas.Version, Host: h.name, Tasks: []schemas.PsTask{}}
	for _, p := range h.procs {
		if len(pids) > 0 && !slices.Contains(pids, p.pid) {
			continue
		}
		rep.Tasks = append(rep.Tasks, schemas.PsTask{TaskID: p.id, Epoch: p.epoch, PID: p.pid, Target: p.target, Type: p.typ,
			RAM: schemas.TaskRAM{HelpersMiB: p.budget}, StartedAt: p.started})
	}
	slices.SortFunc(rep.Tasks, func(a, b schemas.PsTask) int { return int(a.PID - b.PID) })
	return rep
}

func (w *world) heartbeat(p *wProc) {
	hb := &schemas.Heartbeat{V: schemas.Version, TaskID: p.id, Epoch: p.epoch, PID: p.pid, Host: p.host.name, Target: p.target,
		Type: p.typ, Seq: 1, RAM: schemas.HeartbeatRAM{BudgetMiB: p.budget, UsedMiB: p.used}, SentAt: w.now}
	w.publish(p.host, InputHeartbeats, func() { w.step(&HeartbeatReceived{Heartbeat: hb}, nil) })
}

// beat is a worker's periodic work: its tasks' heartbeats and its status.
func (w *world) beat(h *wHost) {
	w.at(wBeat, func() { w.beat(h) })
	if h.dead {
		return
	}
	ids := slices.Sorted(maps.Keys(h.procs))
	used := h.foreign
	for _, id := range ids {
		p := h.procs[id]
		used += p.used
		if !p.silent {
			w.heartbeat(p)
			w.maybeAlloc(p)
		}
	}
	var helpers []schemas.HelperStatus
	for _, id := range slices.Sorted(maps.Keys(h.helpers)) {
		x := h.helpers[id]
		used += x.mib
		helpers = append(helpers, schemas.HelperStatus{HelperID: x.id, TaskID: x.taskID, Epoch: x.epoch, Target: x.target, MiB: x.mib})
	}
	st := &schemas.HostStatus{V: schemas.Version, Host: h.name, RAM: schemas.HostRAM{TotalMiB: h.total, UsedMiB: min(used, h.total)},
		Tasks: ids, SentAt: w.now, Helpers: helpers}
	w.publish(h, InputHostStatuses, func() { w.step(&HostStatusReceived{Status: st}, nil) })
}

// probe is a worker's fence probe: a round trip to its server every beat,
// which succeeds when it comes back before the connection is cut. The worker
// checks at each probe: cut off for the fence time, it stops its tasks and
// refuses launches. (So it fences up to one probe period after the fence
// time, the worst case the README's margin allows for.)
func (w *world) probe(h *wHost) {
	w.at(wBeat, func() { w.probe(h) })
	switch {
	case h.dead:
	case !h.cut:
		life := h.life
		w.at(time.Duration(1+w.rng.IntN(50))*time.Millisecond, func() {
			if h.life == life && !h.cut {
				h.lastOK = w.now
			}
		})
	case w.fenceAfter > 0 && !h.fenced && w.now.Sub(h.lastOK) >= w.fenceAfter:
		h.fenced = true
		w.record("fault: %s fences itself", h.name)
		w.count("worker fences", false)
		for _, id := range slices.Sorted(maps.Keys(h.procs)) {
			p := h.procs[id]
			w.stop(p)
			w.emitEvent(h, p, schemas.EventFailed, schemas.ReasonFenced)
		}
		clear(h.helpers) // the fence stops the host's fleet helpers too
	}
}

// ----- faults -----

// die takes h down with its processes; it comes back empty (its PIDs start
// over) after back, unless forever.
func (w *world) die(h *wHost, forever bool, back time.Duration) {
	w.record("fault: %s dies (forever=%v)", h.name, forever)
	w.count("host dies", forever)
	h.dead, h.cut, h.fenced, h.forever = true, false, false, forever
	h.life++
	clear(h.procs)
	clear(h.ended)
	clear(h.helpers)
	h.inbox, h.held, h.outbox = nil, nil, nil
	if forever {
		return
	}
	w.at(back, func() {
		w.record("fault: %s is back", h.name)
		h.dead = false
		h.nextPID = 100
		h.lastOK, h.lastIn = w.now, w.now
	})
}

// partition cuts h off the bus; it heals after heal, unless forever.
func (w *world) partition(h *wHost, forever bool, heal time.Duration) {
	w.record("fault: %s partitioned (forever=%v)", h.name, forever)
	w.count("partition", forever)
	h.cut, h.forever = true, forever
	h.serverDropAt = w.now.Add(time.Duration(1000+w.rng.IntN(5000)) * time.Millisecond)
	if forever {
		return
	}
	life := h.life
	w.at(heal, func() {
		if h.life == life && h.cut {
			w.heal(h)
		}
	})
}

// heal reconnects a partitioned worker: the requests the server held reach
// it first (while it is still fenced, if it fenced), then it takes launches
// again and sends what it held.
func (w *world) heal(h *wHost) {
	w.record("fault: %s heals", h.name)
	h.cut = false
	inbox := h.inbox
	h.inbox = nil
	if w.now.Before(h.serverDropAt) {
		for _, fn := range inbox {
			fn()
		}
	}
	h.fenced = false
	h.lastOK, h.lastIn = w.now, w.now
	held := h.held
	h.held = nil
	for _, fn := range held {
		fn()
	}
	w.flushOutbox(h)
}

// pause stops the selector process for d. When it resumes, the events that
// reached it meanwhile are handled in order, and its ticker fires once, at a
// random place among them (its goroutine races the subscriptions').
func (w *world) pause(d time.Duration) {
	if !w.up || w.now.Before(w.pausedUntil) {
		return
	}
	w.record("fault: selector paused for %v", d)
	w.count("selector pause", false)
	w.pausedUntil = w.now.Add(d)
	gen := w.gen
	w.at(d, func() {
		if w.gen != gen {
			return
		}
		backlog := w.paused
		w.paused = nil
		tick := w.rng.IntN(len(backlog) + 1)
		for i := 0; i <= len(backlog); i++ {
			if i == tick {
				w.step(&Tick{}, nil)
			}
			if i < len(backlog) {
				w.step(backlog[i].ev, backlog[i].ack)
			}
		}
		w.pumpWriter()
	})
}

func (w *world) disconnect(d time.Duration) {
	if !w.up || !w.connected {
		return
	}
	w.record("fault: bus disconnected for %v", d)
	w.count("selector disconnect", false)
	w.connected = false
	w.step(&Disconnected{}, nil)
	gen := w.gen
	w.at(d, func() {
		if w.gen == gen {
			w.reconnect()
		}
	})
}

func (w *world) reconnect() {
	if !w.up || w.connected {
		return
	}
	w.connected = true
	w.consumerAt = w.now
	w.step(&Reconnected{}, nil)
	buf := w.clientBuf
	w.clientBuf = nil
	for _, fn := range buf {
		fn()
	}
	specs := w.specBuf
	w.specBuf = nil
	for _, fn := range specs {
		fn()
	}
	for _, se := range w.stream {
		if !se.acked && !se.delivered {
			w.deliver(se)
		}
	}
	w.pumpWriter()
}

// restart stops the selector: its unwritten state and the requests waiting
// behind it are lost. It starts again after down.
func (w *world) restart(down time.Duration) {
	if !w.up {
		return
	}
	w.record("fault: selector restarts (down %v, %d batches unwritten)", down, len(w.writer))
	w.count("selector restart", false)
	if len(w.writer) > 0 {
		w.count("restart loses writes", false)
	}
	w.up = false
	w.gen++
	w.writer, w.writing, w.clientBuf, w.specBuf = nil, false, nil, nil
	w.pausedUntil, w.paused = time.Time{}, nil
	for _, se := range w.stream {
		se.delivered = false
	}
	gen := w.gen
	w.at(down, func() {
		if w.gen == gen {
			w.boot()
		}
	})
}

// boot starts an engine from the targets and tasks buckets, then applies the
// unacked event backlog before anything else.
func (w *world) boot() {
	snap := Snapshot{Targets: map[string]schemas.TargetSpec{}}
	for name, spec := range w.specs {
		snap.Targets[name] = cloneSpec(spec)
	}
	for _, name := range slices.Sorted(maps.Keys(w.stored)) {
		snap.Tasks = append(snap.Tasks, w.stored[name])
	}
	e, err := New(w.cfg, w.now, snap)
	if err != nil {
		w.fail("New: %v", err)
		return
	}
	w.e = e
	w.gen++
	w.up, w.connected = true, true
	w.consumerAt = w.now
	w.record("selector started (gen %d) from %d records", w.gen, len(snap.Tasks))
	if err := e.checkInvariants(); err != nil {
		w.fail("after New: %v", err)
	}
	for _, se := range w.stream {
		if !se.acked {
			w.step(&TaskEventReceived{Event: se.ev}, func() { se.acked = true })
		}
	}
	w.step(&Tick{}, nil)
}

// changeSpec changes the targets bucket; the engine's watcher delivers the
// change in order once connected.
func (w *world) changeSpec(name string, spec *schemas.TargetSpec) {
	if spec == nil {
		delete(w.specs, name)
		w.retired = append(w.retired, name)
		delete(w.stalls, name)
	} else {
		w.specs[name] = *spec
	}
	gen := w.gen
	var ev Event = &TargetDeleted{Target: name}
	if spec != nil {
		ev = &TargetUpserted{Target: name, Spec: cloneSpec(*spec)}
	}
	deliver := func() {
		at := maxTime(w.specAt, w.now.Add(w.delay()))
		w.specAt = at
		w.at(at.Sub(w.now), func() {
			if w.gen == gen {
				w.step(ev, nil)
			}
		})
	}
	if !w.connected {
		w.specBuf = append(w.specBuf, deliver)
		return
	}
	deliver()
}

// chaos strikes one random transient fault and schedules the next.
func (w *world) chaos() {
	if !w.f.host {
		return
	}
	w.at(time.Duration(200+w.rng.IntN(1500))*time.Millisecond, w.chaos)
	h := w.hosts[w.rng.IntN(len(w.hosts))]
	switch r := w.rng.IntN(100); {
	case r < 3 && !h.dead:
		w.die(h, false, time.Duration(3+w.rng.IntN(30))*time.Second)
	case r < 8 && h.reachable():
		w.partition(h, false, time.Duration(1+w.rng.IntN(25))*time.Second)
	case r < 10:
		w.disconnect(time.Duration(1+w.rng.IntN(12)) * time.Second)
	case r < 12:
		w.restart(time.Duration(100+w.rng.IntN(3000)) * time.Millisecond)
	case r < 13:
		// The selector runs the embedded server: its restart takes the
		// bus away from every worker, past their fence time or not.
		down := time.Duration(1+w.rng.IntN(14)) * time.Second
		w.count("restart with the bus", false)
		for _, h := range w.hosts {
			if h.reachable() {
				w.partition(h, false, down+time.Duration(w.rng.IntN(1500))*time.Millisecond)
				h.serverDropAt = w.now // the server is gone: nothing is held
			}
		}
		w.restart(down)
	case r < 15:
		w.record("fault: slow store")
		w.count("slow store", false)
		w.slowStore = w.now.Add(time.Duration(2+w.rng.IntN(15)) * time.Second)
	case r < 17:
		src := InputHeartbeats
		if w.rng.IntN(2) == 0 {
			src = InputHostStatuses
		}
		w.record("fault: slow consumer of %s", src)
		w.count("slow consumer", false)
		w.dropUntil[src] = w.now.Add(time.Duration(500+w.rng.IntN(6000)) * time.Millisecond)
	case r < 19:
		w.pause(time.Duration(500+w.rng.IntN(14000)) * time.Millisecond)
	case r < 30:
		h.foreign = int64(w.rng.IntN(int(h.total) / 2))
	case r < 37 && len(w.specs) < 14:
		name, spec := w.newSpec()
		w.changeSpec(name, &spec)
	case r < 42 && len(w.specs) > 4:
		names := slices.Sorted(maps.Keys(w.specs))
		w.changeSpec(names[w.rng.IntN(len(names))], nil)
	case r < 48:
		names := slices.Sorted(maps.Keys(w.specs))
		name := names[w.rng.IntN(len(names))]
		spec := cloneSpec(w.specs[name])
		v := 0.5 + w.rng.Float64()
		spec.Value = &v
		w.changeSpec(name, &spec)
	case r < 50:
		// New phases for a declared name: its current phase may go.
		names := slices.Sorted(maps.Keys(w.specs))
		name := names[w.rng.IntN(len(names))]
		spec := w.randomSpec()
		w.changeSpec(name, &spec)
	}
}

// calmDown ends every transient fault: hosts heal and come back, the bus and
// the store recover, foreign use goes, and blocked targets get a new spec.
func (w *world) calmDown() {
	w.record("transient faults end")
	w.f.host = false
	w.f.silent, w.f.helpers, w.f.refuse = 0, 0, 0
	for _, h := range w.hosts {
		h.foreign = 0
		switch {
		case h.dead:
			h.dead = false
			h.nextPID = 100
			h.lastOK, h.lastIn = w.now, w.now
		case h.cut:
			w.heal(h)
		}
	}
	w.slowStore = time.Time{}
	clear(w.dropUntil)
	if !w.up {
		w.boot()
	}
	w.reconnect()
	w.unblock()
}

// unblock gives every target that a refusal blocked a new spec, as an
// operator would.
func (w *world) unblock() {
	for _, name := range slices.Sorted(maps.Keys(w.specs)) {
		if t := w.e.targets[name]; t != nil && t.blocked != "" {
			spec := cloneSpec(w.specs[name])
			v := *spec.Value + 1
			spec.Value = &v
			w.changeSpec(name, &spec)
		}
	}
}

// strike hits hosts for good: some die, some are partitioned, at once or a
// few seconds apart, and the selector may restart after them. It returns the
// time from which their loss is measured and how many hosts it struck.
func (w *world) strike() (time.Time, int) {
	var victims []*wHost
	for _, h := range w.hosts[1:] {
		if w.rng.IntN(2) == 0 {
			victims = append(victims, h)
		}
	}
	if len(victims) == 0 {
		victims = append(victims, w.hosts[1+w.rng.IntN(len(w.hosts)-1)])
	}
	base := w.now
	for _, h := range victims {
		w.runUntil(w.now.Add(time.Duration(w.rng.IntN(4000)) * time.Millisecond))
		for _, id := range slices.Sorted(maps.Keys(h.procs)) {
			w.struck[h.procs[id].target] = true
		}
		for _, k := range w.e.tasks {
			if k.host.name == h.name {
				w.struck[k.t.name] = true
			}
		}
		if w.rng.IntN(3) == 0 {
			w.partition(h, true, 0)
		} else {
			w.die(h, true, 0)
		}
		base = w.now
	}
	if w.rng.IntN(3) == 0 {
		w.runUntil(w.now.Add(time.Duration(w.rng.IntN(6000)) * time.Millisecond))
		down := time.Duration(100+w.rng.IntN(2000)) * time.Millisecond
		w.restart(down)
		base = w.now.Add(down)
	}
	w.strikeAt = base
	return base, len(victims)
}

// ----- checks -----

// watch samples, every second, whether a target waits for a process while
// a reachable host has room for it.
func (w *world) watch() {
	w.at(time.Second, w.watch)
	if !w.up || !w.connected {
		clear(w.stalls)
		return
	}
	served := map[string]bool{}
	for _, h := range w.hosts {
		if h.reachable() {
			for _, p := range h.procs {
				served[p.target] = true
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(w.specs)) {
		st := w.stalls[name]
		if st == nil {
			st = &wStall{}
			w.stalls[name] = st
		}
		t := w.e.targets[name]
		if served[name] || t == nil || t.blocked != "" || t.complete || !w.room(t.est.MinMiB()) {
			st.roomSince = time.Time{}
			continue
		}
		if st.roomSince.IsZero() {
			st.roomSince = w.now
		}
		if w.now.Sub(st.roomSince) > wStallBound {
			w.fail("target %s stalls: no process for %v while a reachable host has room for its %d MiB; engine says %+v",
				name, w.now.Sub(st.roomSince), t.est.MinMiB(), w.e.targetStatus(w.now, t))
		}
	}
}

// room reports whether a reachable worker would take a launch of size MiB.
func (w *world) room(size int64) bool {
	for _, h := range w.hosts {
		if h.reachable() && !h.fenced && h.free()-w.cfg.HostHeadroomMiB >= size {
			return true
		}
	}
	return false
}

// summary describes the engine's state for a failure report.
func (w *world) summary() string {
	if w.e == nil {
		return "no engine"
	}
	st := w.e.Status(w.now)
	var b strings.Builder
	fmt.Fprintf(&b, "edge: up=%v connected=%v writer=%d writing=%v paused=%v\n    ", w.up, w.connected, len(w.writer), w.writing, w.now.Before(w.pausedUntil))
	for _, k := range w.e.tasks {
		if k.state != taskActive {
			fmt.Fprintf(&b, "task %s: state %d why %d sent=%v launched +%v probeOut=%v\n    ", k.id, k.state, k.why, k.sent, k.launchedAt.Sub(t0), k.probeOut)
		}
	}
	fmt.Fprintf(&b, "engine: ready=%v disruption=%s %q stopped=%q backoff=%d (next +%v) pending=%d",
		st.Ready, st.Disruption, st.DegradedReason, st.LaunchesStopped, st.Backoff.Level,
		w.e.backoff.next.Sub(t0), st.PendingLaunches)
	for _, h := range st.Hosts {
		fmt.Fprintf(&b, "\n    host %s: total %d used %d reserved %d free %d tasks %d stale=%v lost=%v avoided=%v",
			h.Host, h.TotalMiB, h.UsedMiB, h.ReservedMiB, h.FreeMiB, h.Tasks, h.Stale, h.Lost, h.Avoided)
	}
	for _, t := range st.Targets {
		fmt.Fprintf(&b, "\n    target %s: %s %s on %s epoch %d budget %d full %d: %s", t.Target, t.State, t.TaskID, t.Host,
			t.Epoch, t.BudgetMiB, t.FullMiB, t.Reason)
	}
	return b.String()
}

// checkRestored checks that every target that ran on a host struck for good
// has run again on a surviving host.
func (w *world) checkRestored(deadline time.Duration) {
	for _, name := range slices.Sorted(maps.Keys(w.struck)) {
		t := w.e.targets[name]
		if w.restored[name] || t == nil || t.complete || t.blocked != "" {
			continue
		}
		w.fail("target %s ran on a host struck for good and does not run again %v after the strike; engine says %+v",
			name, deadline, w.e.targetStatus(w.now, t))
	}
}

// checkSettled checks the end state: every declared target runs one process,
// the engine's active task, on a surviving host (or is complete), nothing
// else runs, and the engine's reservations equal what the processes hold.
func (w *world) checkSettled() {
	e := w.e
	st := e.Status(w.now)
	if !st.Ready || st.Disruption != DisruptionNormal || st.PendingLaunches != 0 {
		w.fail("not settled: ready=%v disruption=%s (%s) pending=%d", st.Ready, st.Disruption, st.DegradedReason, st.PendingLaunches)
	}
	live := map[string]*wProc{}
	for _, h := range w.hosts {
		for _, p := range h.procs {
			live[p.target] = p
		}
	}
	for _, ts := range st.Targets {
		if _, ok := w.specs[ts.Target]; !ok {
			w.fail("undeclared target %s still known: %+v", ts.Target, ts)
		}
		p := live[ts.Target]
		switch ts.State {
		case StateComplete:
			if p != nil {
				w.fail("complete target %s has a process %s", ts.Target, p.id)
			}
		case StateActive:
			if p == nil || p.id != ts.TaskID || p.host.name != ts.Host || !p.host.reachable() {
				w.fail("target %s: the engine runs %s on %s, the fleet %+v", ts.Target, ts.TaskID, ts.Host, p)
			}
		default:
			w.fail("target %s does not run: %+v", ts.Target, ts)
		}
		delete(live, ts.Target)
	}
	for name, p := range live {
		w.fail("process %s of %s runs on %s but is not its target's task", p.id, name, p.host.name)
	}
	if len(st.Targets) != len(w.specs) {
		w.fail("%d targets declared, the engine knows %d", len(w.specs), len(st.Targets))
	}
	for _, h := range e.hostSeq {
		wh := w.byName[h.name]
		var held int64
		for _, p := range wh.procs {
			held += max(p.budget, p.used)
		}
		if h.reserved != held {
			w.fail("host %s: the engine reserves %d MiB, its processes hold %d", h.name, h.reserved, held)
		}
	}
}

// run plays the three stages of plan.
func (w *world) run(plan wPlan) {
	w.boot()
	for _, h := range w.hosts {
		h.lastOK = w.now
		w.at(time.Duration(w.rng.IntN(1000))*time.Millisecond, func() { w.beat(h) })
		w.at(time.Duration(w.rng.IntN(1000))*time.Millisecond, func() { w.probe(h) })
	}
	var tick func()
	tick = func() {
		w.at(w.tick, tick)
		w.step(&Tick{}, nil)
	}
	w.at(w.tick, tick)
	w.at(time.Second, w.watch)
	w.at(time.Second, w.chaos)
	w.runUntil(w.now.Add(plan.chaos))

	w.calmDown()
	w.runUntil(w.now.Add(plan.settle))
	base, n := w.strike()
	pending := len(w.struck)
	rounds := (pending + w.cfg.MaxPendingLaunches - 1) / w.cfg.MaxPendingLaunches
	perHost := time.Duration(float64(time.Minute) / w.cfg.LostHostsPerMin)
	bound := w.cfg.HostStale + time.Duration(n-1)*perHost + 5*time.Second + time.Duration(rounds)*3*time.Second
	w.runUntil(base.Add(bound))
	w.checkRestored(w.now.Sub(base))

	w.f = wFaults{}
	w.unblock() // refusals that were still on their way at calmDown
	w.runUntil(w.now.Add(plan.calm))
	w.checkSettled()
	w.checkHelpersSettled()
	w.tb.Logf("%d steps, %d processes started, %d helpers granted, faults %v, %d hosts struck for good, %d targets restored within %v; last engine's counters %+v",
		w.steps, w.starts, w.granted, w.faults, n, len(w.restored), bound, w.e.Status(w.now).Counters)
}

// ----- randomness from a fuzzer's bytes -----

// byteSource is a rand.Source that draws each value from one byte of data
// (so that a fuzzer's mutations change single decisions), and from a PCG
// seeded by data once the bytes run out.
type byteSource struct {
	data []byte
	i    int
	pcg  *rand.PCG
}

func newByteSource(data []byte) *byteSource {
	h := fnv.New64a()
	h.Write(data)
	return &byteSource{data: data, pcg: rand.NewPCG(h.Sum64(), uint64(len(data)))}
}

// Uint64 spreads one byte over the whole range: b × 0x0101…01 maps byte b to
// about b/256 of the range, whatever the caller reduces it to.
func (s *byteSource) Uint64() uint64 {
	if s.i < len(s.data) {
		b := s.data[s.i]
		s.i++
		return uint64(b) * 0x0101010101010101
	}
	return s.pcg.Uint64()
}
