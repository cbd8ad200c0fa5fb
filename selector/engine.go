package selector

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// Snapshot is what a starting engine rebuilds from: the declared targets and
// the task states persisted by an earlier run.
type Snapshot struct {
	Targets map[string]schemas.TargetSpec
	Tasks   []schemas.TaskState
}

// Engine is the decision engine. It is not safe for concurrent use: the edge
// serializes every call.
type Engine struct {
	unmet map[*task]struct{} // running tasks with unmet helper RAM (task.unmet)
	cfg   Config

	targets map[string]*target
	hosts   map[string]*host
	hostSeq []*host   // in order of first sight, for deterministic placement
	tasks   []*task   // every live task
	hot     []taskHot // what a tick reads of each task, at the same index as tasks
	byID    map[string]*task
	tombs   map[string]tomb // last epoch of deleted targets, so epochs never repeat

	pending targetHeap
	delayed targetHeap

	pendingLaunches int
	pendingByPID    map[pidKey]*task // pending launches by host and PID (once the reply gives it)

	backoff launchGate
	ids     *rand.Rand // task id suffixes

	start         time.Time
	graceUntil    time.Time // no launches and no staleness before this
	recovering    bool      // the start-up grace is running
	recorded      int       // tasks recorded at start
	recordedOK    int       // of those, confirmed by a heartbeat
	connected     bool
	staleBase     time.Time // task staleness is measured from no earlier than this
	hostStaleBase time.Time // host silence is measured from no earlier than this
	hbDropAt      time.Time // when the edge last reported dropped heartbeats
	hbAsOf        time.Time // heartbeats are handled up to this time (zero: now); see Tick
	hostAsOf      time.Time // host statuses are handled up to this time (zero: now); see Tick
	disruption    string    // DisruptionNormal, DisruptionPartial or DisruptionFull
	degraded      string    // why the disruption mode is not normal
	lossTokens    float64   // host losses allowed now in partial disruption (token bucket)
	lossTokensAt  time.Time // when lossTokens was last refilled
	partialSince  time.Time // when the partial disruption began; zero outside one
	nextPrune     time.Time // when tombs, fences and forgotten hosts are next pruned
	lastNow       time.Time // the time of the Step (or New) running now
	conflict      string
	shutdown      bool
	started       bool // the first Step has run (it emits the start-up commands)

	fenced   map[string]time.Time // fenced task ids, when last killed
	counters schemas.Counters
	// transitions counts the task state transitions made, by from-state
	// and trigger. No decision reads it: the tests check it against
	// taskTransitions.
	transitions [numTaskStates][numTaskTriggers]uint64
	// helpers are the fleet helpers in the ledger, by id; helperMoves
	// counts their transitions as transitions counts the tasks'.
	helpers map[string]*helper
	// focus is the hacking target the fleet's RAM goes to (Config.Horizon),
	// chosen again no sooner than focusAt.
	focus       *target
	focusAt     time.Time
	helperMoves [numHelperStates][numHelperTriggers]uint64
	out         []Command
	skipped     []*target
	elig        []hostFree // scratch for feasible
	stale       []*host    // scratch for checkHosts
	slab        []task     // New allocates recorded tasks from this
}

// New builds an engine at time now from a snapshot of declared targets and
// persisted task states. The engine takes ownership of the snapshot's specs
// (their Phases, Value and Metrics): the caller must not change them later.
// Recorded tasks start unconfirmed; launches wait for the recovery grace.
// Commands that the rebuild itself calls for (a ps of every host named by a
// record, the deletion of records whose target is no longer declared) are
// returned by the first Step.
func New(cfg Config, now time.Time, snap Snapshot) (*Engine, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:          cfg,
		targets:      make(map[string]*target, len(snap.Targets)),
		hosts:        make(map[string]*host),
		byID:         make(map[string]*task, len(snap.Tasks)),
		unmet:        make(map[*task]struct{}),
		tombs:        make(map[string]tomb),
		pending:      newPendingQueue(),
		delayed:      newDelayQueue(),
		pendingByPID: make(map[pidKey]*task),
		backoff:      newBackoff(cfg),
		// Task ids must not repeat across restarts, even when the same
		// seed is configured: the start time is part of the id seed.
		ids:           rand.New(rand.NewPCG(cfg.Seed, uint64(now.UnixNano())^0x6a09e667f3bcc909)),
		start:         now,
		lastNow:       now,
		graceUntil:    now.Add(cfg.RecoveryGrace),
		recovering:    true,
		connected:     true,
		staleBase:     now,
		hostStaleBase: now,
		disruption:    DisruptionNormal,
		lossTokens:    1,
		lossTokensAt:  now,
		nextPrune:     now.Add(pruneEvery),
		fenced:        make(map[string]time.Time),
		helpers:       make(map[string]*helper),
		counters: schemas.Counters{
			Failures:          map[string]uint64{},
			MalformedMessages: map[string]uint64{},
		},
	}
	// One allocation for all targets and one for all recorded tasks. The
	// order targets are built in does not matter: the queue orders them.
	ts := make([]target, len(snap.Targets))
	i := 0
	for name, spec := range snap.Targets {
		t := &ts[i]
		i++
		t.name, t.qidx, t.didx = name, -1, -1
		e.targets[name] = t
		e.setSpec(t, spec)
	}
	e.slab = make([]task, 0, len(snap.Tasks))
	e.tasks = make([]*task, 0, len(snap.Tasks))
	e.hot = make([]taskHot, 0, len(snap.Tasks))
	for i := range snap.Tasks {
		e.restore(now, &snap.Tasks[i])
	}
	for _, t := range e.targets {
		// What an earlier run closed is not known to have run the
		// current phase: no late done event of it is taken.
		t.doneFloor = t.closedEpoch
	}
	e.slab = nil
	// Hosts are placed on in order of first sight: make that order the
	// names', whatever order the store listed the records in.
	slices.SortFunc(e.hostSeq, func(a, b *host) int { return strings.Compare(a.name, b.name) })
	for i, h := range e.hostSeq {
		h.seq = i
	}
	slices.SortFunc(e.out, func(a, b Command) int { return strings.Compare(a.Target, b.Target) }) // deletions
	e.pending.items = slices.Grow(e.pending.items, len(ts))
	for i := range ts {
		if t := &ts[i]; t.task == nil {
			e.requeue(now, t)
		}
	}
	return e, nil
}

// restore rebuilds one target's persisted state.
func (e *Engine) restore(now time.Time, st *schemas.TaskState) {
	if st.Target == "" {
		return
	}
	t := e.targets[st.Target]
	if t == nil {
		// State for a target that is no longer declared: its task must go.
		t = e.newTarget(st.Target)
		t.deleted = true
	}
	t.epoch = max(t.epoch, st.Epoch)
	if st.Phase != "" && t.hasSpec && st.Phase != t.phase && t.task == nil {
		e.setPhase(t, st.Phase)
	}
	if st.Complete && st.Task == nil && t.hasSpec && t.blocked == "" {
		t.complete = true // finished before the restart: no task until the spec changes
	}
	if st.Blocked != "" && t.hasSpec && t.blocked == "" && st.BlockedSpec == specHash(&t.declared) {
		// Refused for good before the restart, and the spec is the one
		// that was refused: do not try it again.
		t.blocked = st.Blocked
	}
	if t.task != nil {
		return // a second record for one target: the first one stands
	}
	r := st.Task
	if r == nil || r.TaskID == "" || r.Host == "" || st.Epoch == 0 {
		// No task (or a record this engine cannot use): every epoch so far
		// is closed.
		t.closedEpoch = max(t.closedEpoch, st.Epoch)
		if t.deleted {
			e.forget(t)
		}
		return
	}
	t.closedEpoch = max(t.closedEpoch, st.Epoch-1)
	n := len(e.byID)
	e.byID[r.TaskID] = nil // attach sets it
	if len(e.byID) == n {
		// Two records name one task id: the first stands. (Checked by
		// the map's size, so that a rebuild does one map operation per
		// record here, not two.)
		e.byID[r.TaskID] = e.findTask(r.TaskID)
		t.closedEpoch = max(t.closedEpoch, st.Epoch)
		if t.deleted {
			e.forget(t)
		}
		return
	}
	h := e.hostNamed(now, r.Host)
	e.slab = append(e.slab, task{
		id:         r.TaskID,
		epoch:      st.Epoch,
		t:          t,
		typ:        r.Type,
		pid:        max(r.PID, 0),
		budget:     clampMiB(r.BudgetMiB),
		wrapper:    min(clampMiB(r.WrapperMiB), clampMiB(r.BudgetMiB)),
		why:        suspectRecovered,
		launchedAt: now,
	})
	k := &e.slab[len(e.slab)-1]
	e.attach(k, h)
	e.transition(k, onRestore)
	e.recorded++
}

// findTask finds a task by id the slow way, for the rare case where byID
// cannot be trusted.
func (e *Engine) findTask(id string) *task {
	for _, k := range e.tasks {
		if k.id == id {
			return k
		}
	}
	return nil
}

// Step applies one event at time now and returns the commands it leads to.
// The returned slice is reused by the next call.
func (e *Engine) Step(now time.Time, ev Event) []Command {
	if e.cfg.MaxStepGap > 0 && now.Sub(e.lastNow) > e.cfg.MaxStepGap {
		// The selector was away (see Config.MaxStepGap): nothing was
		// heard meanwhile because nothing listened.
		e.counters.InputGaps++
		e.staleBase, e.hostStaleBase, e.hbDropAt = now, now, now
	}
	e.lastNow = now
	if e.started {
		e.out = e.out[:0]
	} else {
		// The first Step also returns what New queued.
		e.started = true
		e.probeRecordedHosts(now)
	}
	switch ev := ev.(type) {
	case *HeartbeatReceived:
		if e.heartbeat(now, ev.Heartbeat) {
			e.schedule(now)
		}
		return e.out
	case *Tick:
		e.hbAsOf, e.hostAsOf = ev.HeartbeatsAsOf, ev.HostStatusesAsOf
		e.tick(now)
	case *TargetUpserted:
		e.upsertTarget(now, ev)
	case *TargetDeleted:
		e.deleteTarget(now, ev.Target)
	case *LaunchReplied:
		e.launchReplied(now, ev)
	case *LaunchUnanswered:
		e.launchUnanswered(now, ev)
	case *LaunchSent:
		e.launchSent(now, ev)
	case *InputDropped:
		e.inputDropped(now, ev)
	case *PsReplied:
		e.psReplied(now, ev)
	case *PsUnanswered:
		e.psUnanswered(now, ev)
	case *KillReplied:
		e.killReplied(now, ev)
	case *KillUnanswered:
		e.killUnanswered(now, ev)
	case *TaskEventReceived:
		e.taskEvent(now, ev.Event)
	case *HostStatusReceived:
		e.hostStatus(now, ev.Status)
	case *Disconnected:
		e.connected = false
		e.setDisruption(DisruptionFull, "disconnected from NATS")
	case *Reconnected:
		e.connected = true
		e.staleBase = now
		e.hostStaleBase = now
		e.graceUntil = maxTime(e.graceUntil, now.Add(e.cfg.RecoveryGrace))
		e.setDisruption(DisruptionNormal, "")
	case *StoreConflict:
		if e.conflict == "" {
			e.conflict = fmt.Sprintf("compare-and-swap on %q failed: another writer exists (%s)", ev.Target, ev.Err)
		}
	case *Malformed:
		e.counters.MalformedMessages[ev.Source]++
	case *ShutdownRequested:
		e.shutdown = true
	case *AllocRequested:
		e.allocRequested(now, ev)
	case *HelperReplied:
		e.helperReplied(now, ev)
	case *HelperUnanswered:
		e.helperUnanswered(now, ev)
	default:
		panic(fmt.Sprintf("selector: unknown event %T", ev))
	}
	e.schedule(now)
	return e.out
}

func (e *Engine) emit(c Command) { e.out = append(e.out, c) }

// probeRecordedHosts asks every host of a recorded task what it runs, so that
// dead tasks are found before the recovery grace ends.
func (e *Engine) probeRecordedHosts(now time.Time) {
	for _, h := range e.hostSeq {
		if len(h.tasks) == 0 {
			continue
		}
		for _, k := range h.tasks {
			k.probeOut = true
			k.probeAt = now
		}
		e.emit(Command{Kind: CmdPs, Host: h.name, Ps: &schemas.PsRequest{V: schemas.Version}})
	}
}

// persist records t's current state.
func (e *Engine) persist(now time.Time, t *target) {
	st := &schemas.TaskState{
		V:         schemas.Version,
		Target:    t.name,
		Phase:     t.phase,
		Complete:  t.complete,
		Epoch:     t.epoch,
		UpdatedAt: now.UTC(),
	}
	if t.blocked != "" && t.hasSpec {
		st.Blocked = t.blocked
		st.BlockedSpec = specHash(&t.declared)
	}
	if k := t.task; k != nil {
		r := &schemas.TaskRecord{
			TaskID:     k.id,
			PID:        k.pid,
			Type:       k.typ,
			Host:       k.host.name,
			State:      persistedState(k),
			BudgetMiB:  k.budget,
			WrapperMiB: k.wrapper,
			LaunchedAt: k.launchedAt.UTC(),
		}
		if k.confirmed && !k.confirmedAt.IsZero() {
			c := k.confirmedAt.UTC()
			r.ConfirmedAt = &c
		}
		st.Task = r
	}
	e.emit(Command{Kind: CmdPersist, Target: t.name, State: st})
}

func persistedState(k *task) string {
	switch k.state {
	case taskLaunching, taskLaunched:
		return schemas.TaskLaunching
	case taskActive:
		return schemas.TaskActive
	}
	return schemas.TaskSuspect
}
