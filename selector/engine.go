// Package selector is taskselector's decision engine: a deterministic state
// machine that decides which tasks run, and where, on hosts whose RAM is
// scarce.
//
// The engine has no goroutines, no I/O and no clock. The edge feeds it events
// (heartbeats, replies, task events, host statuses, ticks) together with the
// current time, and carries out the commands it returns (launch, kill, ps,
// persist, delete), feeding the results back as events. The same sequence of
// events and times always yields the same commands. Every timeout is measured
// between the times the edge passes in, so a monotonic clock at the edge
// makes every timeout monotonic.
package selector

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

// Snapshot is what a starting engine rebuilds from: the declared targets and
// the task states persisted by an earlier run.
type Snapshot struct {
	Targets map[string]schemas.TargetSpec
	Tasks   []schemas.TaskState
}

// Target states shown in status.
const (
	StatePending   = "pending"
	StateLaunching = "launching"
	StateActive    = "active"
	StateSuspect   = "suspect"
	StateBlocked   = "blocked"
	StateComplete  = "complete"
)

// Failure causes counted in status.
const (
	FailInsufficientRAM    = schemas.CodeInsufficientRAM
	FailUnknownType        = schemas.CodeUnknownType
	FailInvalid            = schemas.CodeInvalid
	FailDraining           = schemas.CodeDraining
	FailNoResponders       = "no_responders"
	FailLaunchTimeout      = "launch_timeout"
	FailSilent             = "silent"
	FailStale              = "stale"
	FailHelpersUnavailable = schemas.ReasonHelpersUnavailable
	FailExited             = schemas.ReasonExited
	FailKilled             = schemas.ReasonKilled
	FailCrashed            = schemas.ReasonCrashed
	FailHostLost           = "host_lost"
	FailGoneAfterRestart   = "gone_after_restart"
	FailOther              = "other"
)

// taskPhase is where a task stands in its life.
type taskPhase uint8

const (
	// tLaunching: launch sent; neither its reply nor its first heartbeat came.
	tLaunching taskPhase = iota + 1
	// tLaunched: the reply gave a PID; no heartbeat yet.
	tLaunched
	// tActive: confirmed by a heartbeat.
	tActive
	// tSuspect: timed out, stale or unconfirmed after a restart; a ps of
	// its host decides.
	tSuspect
	// tKilling: a kill was sent; the target is requeued once it is confirmed.
	tKilling
)

// why a task became suspect or is being killed.
type suspicion uint8

const (
	suspectLaunch    suspicion = iota + 1 // no first heartbeat within LaunchTimeout
	suspectStale                          // active, then no heartbeat within HeartbeatStale
	suspectRecovered                      // recorded by an earlier run and not yet confirmed
	suspectDeleted                        // its target was deleted
)

type task struct {
	id      string
	epoch   uint64
	t       *target
	host    *host
	typ     string
	pid     int64
	budget  int64
	wrapper int64
	used    int64

	phase      taskPhase
	why        suspicion
	confirmed  bool // a heartbeat has been seen (or it was adopted)
	countedPen bool // counts against MaxPendingLaunches
	placed     bool // placed by this engine (not restored, not adopted)

	launchedAt  time.Time
	confirmedAt time.Time
	lastHB      time.Time

	probeOut  bool      // a ps or kill request is outstanding
	probeAt   time.Time // when the last ps or kill was sent
	psMissing bool      // the last ps of this task went unanswered

	idx     int // index in Engine.tasks
	hostIdx int // index in host.tasks
}

// accounted is the RAM a task holds in the ledger: the larger of its budget
// and what it reports using.
func (k *task) accounted() int64 { return max(k.budget, k.used) }

type target struct {
	name     string
	declared schemas.TargetSpec // as the operator declared it
	spec     schemas.TargetSpec // declared, with metrics learned from done events
	hasSpec  bool
	phase    string
	est      workload.Estimate
	estErr   error
	priority float64

	epoch       uint64 // the last epoch issued (or recorded)
	closedEpoch uint64 // every epoch up to this one is closed
	task        *task

	blocked  string // reason; launches wait until the spec changes
	complete bool
	deleted  bool // deleted while its task still runs

	restartDelay time.Duration
	readyAt      time.Time

	qidx, didx int
}

type host struct {
	name       string
	total      int64
	used       int64 // reported by the host
	reserved   int64 // sum of accounted() of its tasks
	taskUsed   int64 // sum of used of its tasks
	foreignMiB int64 // use no task accounts for, as of the last status
	seen       bool  // a HostStatus has arrived
	lastStatus time.Time
	draining   bool
	avoided    bool // a launch found no responders; until the next status
	lost       bool
	lostAt     time.Time
	strayPsAt  time.Time // last ps sent because a status named an unknown task
	tasks      []*task
}

// foreign is the RAM in use on h that none of the engine's tasks accounts for.
// It is worked out when a status arrives, from the tasks that status lists
// (see hostStatus), and held until the next one: tasks started since are
// booked by their reservations, not subtracted from a stale figure.
func (h *host) foreign() int64 { return h.foreignMiB }

// free is the RAM a new task may take on h.
func (h *host) free(headroom int64) int64 {
	return h.total - headroom - h.reserved - h.foreign()
}

// Engine is the decision engine. It is not safe for concurrent use: the edge
// serializes every call.
type Engine struct {
	cfg Config

	targets map[string]*target
	hosts   map[string]*host
	hostSeq []*host   // in order of first sight, for deterministic placement
	tasks   []*task   // every live task
	hot     []taskHot // what a tick reads of each task, at the same index as tasks
	byID    map[string]*task
	tombs   map[string]uint64 // last epoch of deleted targets, so epochs never repeat

	pending targetHeap
	delayed targetHeap

	pendingLaunches int
	pendingByPID    map[pidKey]*task // pending launches by host and PID (once the reply gives it)

	backoff backoff
	ids     *rand.Rand // task id suffixes

	start        time.Time
	graceUntil   time.Time // no launches and no staleness before this
	recovering   bool      // the start-up grace is running
	recorded     int       // tasks recorded at start
	recordedOK   int       // of those, confirmed by a heartbeat
	connected    bool
	staleBase    time.Time // staleness is measured from no earlier than this
	degraded     string
	degradedExit time.Time // when the degraded condition cleared; zero while it holds
	conflict     string
	shutdown     bool
	started      bool // the first Step has run (it emits the start-up commands)

	fenced   map[string]time.Time // fenced task ids, when last killed
	counters schemas.Counters
	out      []Command
	skipped  []*target
	elig     []hostFree // scratch for launchOne
	stale    []*host    // scratch for checkHosts
	slab     []task     // New allocates recorded tasks from this
}

// taskHot is the part of a task a tick reads for every task, kept in one
// contiguous slice so that a tick over many tasks stays in cache.
type taskHot struct {
	phase  taskPhase
	lastHB time.Duration // since Engine.start; noHeartbeat when none came
}

const noHeartbeat = time.Duration(math.MinInt64)

// since is t as an offset from the engine's start (monotonic when the edge
// passes monotonic times).
func (e *Engine) since(t time.Time) time.Duration {
	if t.IsZero() {
		return noHeartbeat
	}
	return t.Sub(e.start)
}

// setPhase moves task k to phase p.
func (e *Engine) setTaskPhase(k *task, p taskPhase) {
	k.phase = p
	e.hot[k.idx].phase = p
}

type pidKey struct {
	host string
	pid  int64
}

type hostFree struct {
	h    *host
	free int64
}

// New builds an engine at time now from a snapshot of declared targets and
// persisted task states. The engine takes ownership of the snapshot's specs
// (their Phases, Value and Metrics): the caller must not change them later. Recorded tasks start unconfirmed; launches wait for
// the recovery grace. Commands that the rebuild itself calls for (a ps of
// every host named by a record, the deletion of records whose target is no
// longer declared) are returned by the first Step.
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
		tombs:        make(map[string]uint64),
		pending:      newPendingQueue(),
		delayed:      newDelayQueue(),
		pendingByPID: make(map[pidKey]*task),
		backoff:      newBackoff(cfg),
		// Task ids must not repeat across restarts, even when the same
		// seed is configured: the start time is part of the id seed.
		ids:        rand.New(rand.NewPCG(cfg.Seed, uint64(now.UnixNano())^0x6a09e667f3bcc909)),
		start:      now,
		graceUntil: now.Add(cfg.RecoveryGrace),
		recovering: true,
		connected:  true,
		staleBase:  now,
		fenced:     make(map[string]time.Time),
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
	e.slab = nil
	// Hosts are placed on in order of first sight: make that order the
	// names', whatever order the store listed the records in.
	slices.SortFunc(e.hostSeq, func(a, b *host) int { return strings.Compare(a.name, b.name) })
	slices.SortFunc(e.out, func(a, b Command) int { return strings.Compare(a.Target, b.Target) }) // deletions
	e.pending.items = slices.Grow(e.pending.items, len(ts))
	for i := range ts {
		if t := &ts[i]; t.task == nil {
			e.requeue(now, t)
		}
	}
	return e, nil
}

func (e *Engine) newTarget(name string) *target {
	t := &target{name: name, qidx: -1, didx: -1}
	if ep, ok := e.tombs[name]; ok {
		// Declared again after a deletion: its epochs continue, so that a
		// late message from a task of its earlier life is still fenced.
		t.epoch, t.closedEpoch = ep, ep
		delete(e.tombs, name)
	}
	e.targets[name] = t
	return t
}

// forget removes a deleted target whose task is gone and deletes its state.
func (e *Engine) forget(t *target) {
	e.pending.remove(t)
	e.delayed.remove(t)
	delete(e.targets, t.name)
	e.tombs[t.name] = max(t.epoch, t.closedEpoch)
	e.emit(Command{Kind: CmdDelete, Target: t.name})
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
		budget:     max(r.BudgetMiB, 0),
		wrapper:    min(max(r.WrapperMiB, 0), max(r.BudgetMiB, 0)),
		phase:      tSuspect,
		why:        suspectRecovered,
		launchedAt: now,
	})
	e.attach(&e.slab[len(e.slab)-1], h)
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

// setPhase moves t to phase if its spec has an estimate for it, and reports
// whether it did.
func (e *Engine) setPhase(t *target, phase string) bool {
	est, err := e.cfg.Workload.Estimate(&t.spec, phase)
	if err != nil {
		return false
	}
	t.phase = phase
	t.est, t.estErr = est, nil
	t.priority = priorityOf(est)
	return true
}

// hostNamed returns the host called name, creating it unseen.
func (e *Engine) hostNamed(now time.Time, name string) *host {
	h := e.hosts[name]
	if h == nil {
		h = &host{name: name, lastStatus: now}
		e.hosts[name] = h
		e.hostSeq = append(e.hostSeq, h)
	}
	return h
}

// attach makes k its target's task, on host h, and books its RAM.
func (e *Engine) attach(k *task, h *host) {
	k.host = h
	k.t.task = k
	k.idx = len(e.tasks)
	e.tasks = append(e.tasks, k)
	e.hot = append(e.hot, taskHot{phase: k.phase, lastHB: e.since(k.lastHB)})
	k.hostIdx = len(h.tasks)
	h.tasks = append(h.tasks, k)
	h.reserved += k.accounted()
	h.taskUsed += k.used
	e.byID[k.id] = k
	if k.pid != 0 && k.countedPen {
		e.pendingByPID[pidKey{h.name, k.pid}] = k
	}
}

// detach removes k from every index and frees its RAM.
func (e *Engine) detach(k *task) {
	h := k.host
	h.reserved -= k.accounted()
	h.taskUsed -= k.used
	last := len(h.tasks) - 1
	h.tasks[k.hostIdx] = h.tasks[last]
	h.tasks[k.hostIdx].hostIdx = k.hostIdx
	h.tasks[last] = nil
	h.tasks = h.tasks[:last]
	last = len(e.tasks) - 1
	e.tasks[k.idx] = e.tasks[last]
	e.tasks[k.idx].idx = k.idx
	e.tasks[last] = nil
	e.tasks = e.tasks[:last]
	e.hot[k.idx] = e.hot[last]
	e.hot = e.hot[:last]
	delete(e.byID, k.id)
	if k.countedPen {
		if k.pid != 0 && e.pendingByPID[pidKey{h.name, k.pid}] == k {
			delete(e.pendingByPID, pidKey{h.name, k.pid})
		}
		k.countedPen = false
		e.pendingLaunches--
	}
	if k.t.task == k {
		k.t.task = nil
	}
	if k.epoch > k.t.closedEpoch {
		k.t.closedEpoch = k.epoch
	}
}

// setUsed changes the RAM a task reports using, keeping the ledger in step.
func (e *Engine) setUsed(k *task, used int64) {
	used = max(used, 0)
	if used == k.used {
		return
	}
	h := k.host
	h.reserved -= k.accounted()
	h.taskUsed += used - k.used
	k.used = used
	h.reserved += k.accounted()
}

// setSpec records a target's spec, its phase and its estimate. A spec equal
// to the one declared before changes nothing (the targets bucket may replay
// it), so a hacking target keeps the metrics its done events taught it.
func (e *Engine) setSpec(t *target, spec schemas.TargetSpec) {
	if t.hasSpec && specEqual(t.declared, spec) {
		return
	}
	wasComplete := t.complete
	t.declared = spec
	t.spec = spec // shared: the engine changes neither in place, it only replaces them
	t.hasSpec = true
	t.blocked = ""
	t.complete = false
	phase, err := workload.InitialPhase(&t.spec) // validates the spec too
	if err != nil {
		t.blocked = "invalid spec: " + err.Error()
		return
	}
	if t.spec.Profile == schemas.ProfileDeclared && !wasComplete && t.phase != "" && hasPhase(&t.spec, t.phase) {
		phase = t.phase // a declared target keeps its place in the lifecycle
	}
	t.phase = phase
	e.estimate(t)
}

// specEqual reports whether two specs declare the same thing.
func specEqual(a, b schemas.TargetSpec) bool { return reflect.DeepEqual(a, b) }

func hasPhase(spec *schemas.TargetSpec, typ string) bool {
	for _, p := range spec.Phases {
		if p.Type == typ {
			return true
		}
	}
	return false
}

const blockedNoEstimate = "no estimate: "

// estimate refreshes a target's estimate and priority for its phase.
func (e *Engine) estimate(t *target) {
	t.est, t.estErr = e.cfg.Workload.Estimate(&t.spec, t.phase)
	if t.estErr != nil {
		t.blocked = blockedNoEstimate + t.estErr.Error()
		t.priority = 0
		return
	}
	t.priority = priorityOf(t.est)
}

// priorityOf is a target's value per MiB: the estimate's Priority (see
// workload.Estimate), or its value per MiB at full size when that is unset.
func priorityOf(est workload.Estimate) float64 {
	if est.Priority > 0 {
		return est.Priority
	}
	if full := est.FullMiB(); full > 0 {
		return est.Value / float64(full)
	}
	return est.Value
}

// Step applies one event at time now and returns the commands it leads to.
// The returned slice is reused by the next call.
func (e *Engine) Step(now time.Time, ev Event) []Command {
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
		e.tick(now)
	case *TargetUpserted:
		e.upsertTarget(now, ev)
	case *TargetDeleted:
		e.deleteTarget(now, ev.Target)
	case *LaunchReplied:
		e.launchReplied(now, ev)
	case *LaunchUnanswered:
		e.launchUnanswered(now, ev)
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
	case *Reconnected:
		e.connected = true
		e.staleBase = now
		e.graceUntil = maxTime(e.graceUntil, now.Add(e.cfg.RecoveryGrace))
	case *StoreConflict:
		if e.conflict == "" {
			e.conflict = fmt.Sprintf("compare-and-swap on %q failed: another writer exists (%s)", ev.Target, ev.Err)
		}
	case *Malformed:
		e.counters.MalformedMessages[ev.Source]++
	case *ShutdownRequested:
		e.shutdown = true
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
	switch k.phase {
	case tLaunching, tLaunched:
		return schemas.TaskLaunching
	case tActive:
		return schemas.TaskActive
	}
	return schemas.TaskSuspect
}

// ----- targets -----

func (e *Engine) upsertTarget(now time.Time, ev *TargetUpserted) {
	t := e.targets[ev.Target]
	if t == nil {
		t = e.newTarget(ev.Target)
	}
	wasDeleted := t.deleted
	t.deleted = false
	e.setSpec(t, ev.Spec)
	if k := t.task; k != nil && wasDeleted && k.why == suspectDeleted && (k.phase == tLaunching || k.phase == tLaunched) {
		// Declared again before its kill was sent: keep the task.
		k.why = 0
	}
	// Take it out of line and put it back: its priority may have changed,
	// or it may now be blocked or complete.
	e.pending.remove(t)
	e.delayed.remove(t)
	e.requeue(now, t)
}

func (e *Engine) queued(t *target) bool { return e.pending.contains(t) || e.delayed.contains(t) }

func (e *Engine) deleteTarget(now time.Time, name string) {
	t := e.targets[name]
	if t == nil {
		return
	}
	e.pending.remove(t)
	e.delayed.remove(t)
	t.deleted = true
	k := t.task
	if k == nil {
		e.forget(t)
		return
	}
	switch k.phase {
	case tLaunching:
		// No PID yet: the reply, a heartbeat or the launch timeout brings it.
		k.why = suspectDeleted
	case tKilling:
	default:
		k.why = suspectDeleted
		e.kill(now, k, "target deleted")
	}
}

// requeue puts a target without a task back in line, unless it waits for a
// spec change or has been deleted.
func (e *Engine) requeue(now time.Time, t *target) {
	if t.task != nil || !t.hasSpec || t.blocked != "" || t.complete || t.deleted || e.queued(t) {
		return
	}
	if t.readyAt.After(now) {
		e.delayed.push(t)
		return
	}
	e.pending.push(t)
}

// ----- launches -----

// canLaunch reports whether the global gates allow a launch now.
func (e *Engine) canLaunch(now time.Time) bool {
	return e.connected && !e.recovering && !now.Before(e.graceUntil) && e.degraded == "" &&
		e.conflict == "" && !e.shutdown && e.pendingLaunches < e.cfg.MaxPendingLaunches &&
		e.backoff.open(now)
}

// schedule launches as many pending targets as the gates and RAM allow.
func (e *Engine) schedule(now time.Time) {
	for e.pending.len() > 0 && e.canLaunch(now) {
		if !e.launchOne(now) {
			return
		}
	}
}

// eligible reports whether a new task may be placed on h.
func (e *Engine) eligible(now time.Time, h *host) bool {
	return h.seen && !h.lost && !h.draining && !h.avoided && now.Sub(h.lastStatus) < e.cfg.HostStale
}

// launchOne takes the best pending target that fits somewhere and launches
// it. Targets that fit nowhere even at their minimum wait; up to MaxSkips of
// them are passed over so that a large target does not hold back small ones.
// It costs one pass over the hosts, one over the eligible ones, and
// O(log targets) per target it looks at.
func (e *Engine) launchOne(now time.Time) bool {
	elig := e.elig[:0]
	var most *host
	mostFree := int64(-1)
	for _, h := range e.hostSeq {
		if !e.eligible(now, h) {
			continue
		}
		f := h.free(e.cfg.HostHeadroomMiB)
		if f < 0 {
			continue
		}
		elig = append(elig, hostFree{h, f})
		if f > mostFree {
			most, mostFree = h, f
		}
	}
	e.elig = elig
	if most == nil {
		return false
	}
	launched := false
	for e.pending.len() > 0 && len(e.skipped) <= e.cfg.MaxSkips {
		t := e.pending.pop()
		lo, full := t.est.MinMiB(), t.est.FullMiB()
		if lo > mostFree {
			e.skipped = append(e.skipped, t)
			continue
		}
		h, budget := most, mostFree
		if full <= mostFree {
			// Best fit: the host with the least free RAM that holds it all.
			bestFree := mostFree
			for _, c := range elig {
				if c.free >= full && c.free < bestFree {
					h, bestFree = c.h, c.free
				}
			}
			budget = full
		}
		e.launch(now, t, h, budget)
		launched = true
		break
	}
	for _, t := range e.skipped {
		e.pending.push(t)
	}
	clear(e.skipped)
	e.skipped = e.skipped[:0]
	return launched
}

// maxTaskIDPrefix bounds the target-name part of a task id, so that the id
// stays within schemas.MaxNameBytes.
const maxTaskIDPrefix = 160

// taskID names a new task: the target, its epoch and a random suffix. A long
// target name is cut (on a rune boundary) and followed by a hash of the whole
// name.
func taskID(name string, epoch, rnd uint64) string {
	prefix := name
	if len(prefix) > maxTaskIDPrefix {
		cut := maxTaskIDPrefix
		for cut > 0 && !utf8.RuneStart(prefix[cut]) {
			cut--
		}
		h := fnv.New64a()
		h.Write([]byte(name))
		prefix = prefix[:cut] + "~" + strconv.FormatUint(h.Sum64(), 36)
	}
	return prefix + "#" + strconv.FormatUint(epoch, 10) + "." + strconv.FormatUint(rnd>>16, 36)
}

func (e *Engine) launch(now time.Time, t *target, h *host, budget int64) {
	t.epoch++
	wrapper := min(t.est.WrapperMiB, budget)
	k := &task{
		id:         taskID(t.name, t.epoch, e.ids.Uint64()),
		epoch:      t.epoch,
		t:          t,
		typ:        t.phase,
		budget:     budget,
		wrapper:    wrapper,
		phase:      tLaunching,
		launchedAt: now,
		countedPen: true,
		placed:     true,
	}
	e.pendingLaunches++
	e.attach(k, h)
	e.counters.Launches++
	spec := t.spec
	e.persist(now, t) // write-ahead: the state names the task before it exists
	e.emit(Command{
		Kind:   CmdLaunch,
		Host:   h.name,
		Target: t.name,
		Launch: &schemas.LaunchRequest{
			V:      schemas.Version,
			TaskID: k.id,
			Epoch:  k.epoch,
			Target: t.name,
			Type:   k.typ,
			RAM:    schemas.TaskRAM{WrapperMiB: wrapper, HelpersMiB: budget - wrapper},
			Args:   map[string]any{"spec": &spec},
		},
	})
}

func (e *Engine) launchReplied(now time.Time, ev *LaunchReplied) {
	k := e.byID[ev.Reply.TaskID]
	if k == nil {
		// A reply for a task already closed. If it started after all, it
		// is an impostor now.
		if ev.Reply.Error == nil && ev.Reply.PID > 0 {
			e.fence(now, ev.Host, ev.Target, ev.Reply.TaskID, ev.Reply.PID, "late launch reply")
		}
		return
	}
	if re := ev.Reply.Error; re != nil {
		if k.confirmed {
			return // it heartbeats: the error is stale
		}
		t := k.t
		switch re.Code {
		case schemas.CodeInsufficientRAM:
			e.close(now, k, closeRAM, FailInsufficientRAM)
		case schemas.CodeDraining:
			k.host.draining = true
			e.close(now, k, closeRequeue, FailDraining)
		default: // unknown_type, invalid, or a code this version does not know
			code := re.Code
			if code != schemas.CodeUnknownType && code != schemas.CodeInvalid {
				code = FailOther
			}
			e.close(now, k, closeRequeue, code)
			if !t.deleted {
				t.blocked = fmt.Sprintf("launch refused: %s: %s", re.Code, re.Message)
				e.pending.remove(t)
				e.delayed.remove(t)
			}
		}
		return
	}
	if k.pid == 0 && ev.Reply.PID > 0 {
		k.pid = ev.Reply.PID
		if k.countedPen {
			e.pendingByPID[pidKey{k.host.name, k.pid}] = k
		}
	}
	if k.phase == tLaunching {
		e.setTaskPhase(k, tLaunched)
	}
	if k.why == suspectDeleted && k.phase != tKilling && k.phase != tSuspect {
		e.kill(now, k, "target deleted")
	}
}

func (e *Engine) launchUnanswered(now time.Time, ev *LaunchUnanswered) {
	k := e.byID[ev.TaskID]
	if k == nil || k.confirmed {
		return
	}
	if ev.NoResponders {
		// Nobody received the request, so nothing started.
		k.host.avoided = true
		e.close(now, k, closeRequeue, FailNoResponders)
	}
	// A timed-out reply leaves the launch pending: the worker may have
	// started it and lost only the reply. The launch timeout decides.
}

// ----- heartbeats -----

// heartbeat handles one heartbeat and reports whether it may enable a launch.
func (e *Engine) heartbeat(now time.Time, hb *schemas.Heartbeat) bool {
	e.counters.Heartbeats++
	t := e.targets[hb.Target]
	if t == nil {
		e.fence(now, hb.Host, hb.Target, hb.TaskID, hb.PID, "target not declared")
		return false
	}
	k := t.task
	if k == nil {
		if !t.deleted && hb.Epoch > t.epoch && hb.TaskID != "" && hb.Host != "" {
			if h := e.hosts[hb.Host]; h == nil || !h.lost {
				e.adopt(now, t, hb)
				return true
			}
		}
		e.fence(now, hb.Host, hb.Target, hb.TaskID, hb.PID, "stale epoch")
		return false
	}
	if k.id != hb.TaskID || k.epoch != hb.Epoch || k.host.name != hb.Host {
		e.fence(now, hb.Host, hb.Target, hb.TaskID, hb.PID, "not the target's task")
		return false
	}
	k.lastHB = now
	e.hot[k.idx].lastHB = now.Sub(e.start)
	if hb.RAM.UsedMiB != k.used {
		e.setUsed(k, hb.RAM.UsedMiB)
	}
	if k.phase == tActive && !t.deleted {
		return false
	}
	return e.confirm(now, k, hb.PID)
}

// confirm handles the first heartbeat of a task that was not active.
func (e *Engine) confirm(now time.Time, k *task, pid int64) bool {
	if k.pid == 0 && pid > 0 {
		k.pid = pid
	}
	if k.phase == tKilling {
		return false // it was judged already; the kill stands
	}
	if k.t.deleted {
		e.kill(now, k, "target deleted")
		return false
	}
	first := !k.confirmed
	e.setTaskPhase(k, tActive)
	k.probeOut = false
	k.psMissing = false
	if first {
		k.confirmed = true
		k.confirmedAt = now
		if k.why == suspectRecovered {
			e.recordedOK++
		}
		if k.countedPen {
			if k.pid != 0 && e.pendingByPID[pidKey{k.host.name, k.pid}] == k {
				delete(e.pendingByPID, pidKey{k.host.name, k.pid})
			}
			k.countedPen = false
			e.pendingLaunches--
			e.counters.Confirmed++
			e.backoff.reset()
		}
	}
	k.why = 0
	e.persist(now, k.t)
	return true
}

// adopt takes over a running task that no record names: the tasks bucket
// was lost, or the launch was sent just before a crash.
func (e *Engine) adopt(now time.Time, t *target, hb *schemas.Heartbeat) {
	e.pending.remove(t)
	e.delayed.remove(t)
	t.epoch = hb.Epoch
	if hb.Type != "" && hb.Type != t.phase && t.hasSpec && e.setPhase(t, hb.Type) &&
		strings.HasPrefix(t.blocked, blockedNoEstimate) {
		t.blocked = "" // the old phase had no estimate; the task's phase has one
	}
	k := &task{
		id:          hb.TaskID,
		epoch:       hb.Epoch,
		t:           t,
		typ:         hb.Type,
		pid:         hb.PID,
		budget:      max(hb.RAM.BudgetMiB, 0),
		used:        max(hb.RAM.UsedMiB, 0),
		phase:       tActive,
		confirmed:   true,
		launchedAt:  now,
		confirmedAt: now,
		lastHB:      now,
	}
	k.wrapper = min(t.est.WrapperMiB, k.budget)
	e.attach(k, e.hostNamed(now, hb.Host))
	e.counters.Adoptions++
	e.persist(now, t)
}

// fence answers an impostor with a kill, at most once per reply timeout per
// task.
func (e *Engine) fence(now time.Time, hostName, targetName, taskID string, pid int64, reason string) {
	e.counters.FencedHeartbeats++
	if last, ok := e.fenced[taskID]; ok && now.Sub(last) < e.cfg.ReplyTimeout {
		return
	}
	e.fenced[taskID] = now
	e.counters.Kills++
	e.emit(Command{Kind: CmdKill, Host: hostName, Target: targetName, Kill: &schemas.KillRequest{
		V: schemas.Version, TaskID: taskID, PID: pid, Reason: "fenced: " + reason,
	}})
}

// wouldFence reports whether a message from the given task is answered with
// a kill: it is neither the target's task nor a task the engine would adopt.
func (e *Engine) wouldFence(targetName, taskID string, epoch uint64) bool {
	t := e.targets[targetName]
	switch {
	case t == nil:
		return true
	case t.task != nil:
		return t.task.id != taskID || t.task.epoch != epoch
	}
	return t.deleted || epoch <= t.epoch
}

// ----- probes: ps and kill -----

// suspect marks k suspect and asks its host whether it runs.
func (e *Engine) suspect(now time.Time, k *task, why suspicion) {
	e.setTaskPhase(k, tSuspect)
	k.why = why
	e.ps(now, k)
	e.persist(now, k.t)
}

func (e *Engine) ps(now time.Time, k *task) {
	k.probeOut = true
	k.probeAt = now
	req := &schemas.PsRequest{V: schemas.Version}
	if k.pid != 0 {
		req.PIDs = []int64{k.pid}
	}
	e.emit(Command{Kind: CmdPs, Host: k.host.name, Target: k.t.name, Ps: req})
}

func (e *Engine) kill(now time.Time, k *task, reason string) {
	e.setTaskPhase(k, tKilling)
	k.probeOut = true
	k.probeAt = now
	e.counters.Kills++
	e.emit(Command{Kind: CmdKill, Host: k.host.name, Target: k.t.name, Kill: &schemas.KillRequest{
		V: schemas.Version, TaskID: k.id, PID: k.pid, Reason: reason,
	}})
}

func (e *Engine) psReplied(now time.Time, ev *PsReplied) {
	h := e.hosts[ev.Host]
	if h == nil {
		return
	}
	running := make(map[string]*schemas.PsTask, len(ev.Reply.Tasks))
	for i := range ev.Reply.Tasks {
		p := &ev.Reply.Tasks[i]
		running[p.TaskID] = p
		if e.byID[p.TaskID] == nil && e.wouldFence(p.Target, p.TaskID, p.Epoch) {
			// A task that is not its target's: a leftover of a lost host,
			// a late launch, or another selector's. It must go.
			e.fence(now, ev.Host, p.Target, p.TaskID, p.PID, "not the target's task")
		}
	}
	for _, k := range slices.Clone(h.tasks) {
		if k.phase != tSuspect || !k.probeOut {
			continue
		}
		if ev.PIDs != nil && (k.pid == 0 || !slices.Contains(ev.PIDs, k.pid)) {
			continue // this reply does not speak of k
		}
		k.probeOut = false
		k.psMissing = false
		if p := running[k.id]; p != nil {
			if k.pid == 0 && p.PID > 0 {
				k.pid = p.PID
			}
			switch {
			case k.why == suspectRecovered && e.recovering:
				continue // alive; its heartbeat will confirm it
			case e.degraded != "" && k.why != suspectDeleted:
				// Heartbeats may be what is failing: do not kill a
				// running task on their account; ask again later.
				continue
			}
			e.kill(now, k, silentReason(k.why))
			continue
		}
		cause, fail := goneCause(k)
		e.close(now, k, cause, fail)
	}
}

func silentReason(w suspicion) string {
	switch w {
	case suspectLaunch:
		return "no first heartbeat"
	case suspectDeleted:
		return "target deleted"
	case suspectRecovered:
		return "no heartbeat since restart"
	}
	return "heartbeat stale"
}

func (e *Engine) psUnanswered(now time.Time, ev *PsUnanswered) {
	h := e.hosts[ev.Host]
	if h == nil {
		return
	}
	for _, k := range h.tasks {
		if k.phase == tSuspect && k.probeOut {
			k.probeOut = false
			k.psMissing = true
		}
	}
}

func (e *Engine) killReplied(now time.Time, ev *KillReplied) {
	k := e.byID[ev.Reply.TaskID]
	if k == nil || k.phase != tKilling {
		return
	}
	k.probeOut = false
	if ev.Reply.Running {
		return // retried after ReplyTimeout
	}
	cause, fail := killedCause(k)
	e.close(now, k, cause, fail)
}

func (e *Engine) killUnanswered(now time.Time, ev *KillUnanswered) {
	if k := e.byID[ev.TaskID]; k != nil && k.phase == tKilling {
		k.probeOut = false
	}
}

// ----- closing tasks -----

type closeCause uint8

const (
	closeRequeue closeCause = iota + 1 // requeue at once, no penalty
	closeRAM                           // RAM pressure: raise the global backoff
	closeCrash                         // the target's task died: per-target restart delay
	closeDone                          // finished its phase
)

// goneCause is how a suspect task that its host says is gone is closed, and
// the failure it counts as.
func goneCause(k *task) (closeCause, string) {
	switch k.why {
	case suspectLaunch:
		if k.confirmed {
			return closeCrash, FailCrashed
		}
		return closeRAM, FailLaunchTimeout // a launch that died before its first heartbeat
	case suspectStale:
		return closeCrash, FailCrashed
	case suspectRecovered:
		return closeRequeue, FailGoneAfterRestart
	}
	return closeRequeue, ""
}

// killedCause is how a task killed for its silence is closed.
func killedCause(k *task) (closeCause, string) {
	switch k.why {
	case suspectDeleted:
		return closeRequeue, ""
	case suspectLaunch:
		return closeCrash, FailSilent
	}
	return closeCrash, FailStale
}

// close ends k: its RAM is freed, its epoch closed and its target requeued
// (or deleted, blocked, advanced) according to cause. fail, when set, is the
// failure counted.
func (e *Engine) close(now time.Time, k *task, cause closeCause, fail string) {
	t := k.t
	if fail != "" {
		e.counters.Failures[fail]++
	}
	e.detach(k)
	if cause != closeDone && !t.deleted {
		e.counters.Requeues++
	}
	switch cause {
	case closeRAM:
		e.backoff.raise(now)
	case closeCrash:
		switch {
		case k.confirmed && now.Sub(k.confirmedAt) >= e.cfg.RestartDelayReset:
			t.restartDelay = e.cfg.RestartDelayBase
		case t.restartDelay == 0:
			t.restartDelay = e.cfg.RestartDelayBase
		default:
			t.restartDelay = min(2*t.restartDelay, e.cfg.RestartDelayMax)
		}
		t.readyAt = now.Add(t.restartDelay)
	}
	if t.deleted {
		e.forget(t)
		return
	}
	e.persist(now, t)
	e.requeue(now, t)
}

// ----- task events -----

func failReason(r string) string {
	switch r {
	case schemas.ReasonHelpersUnavailable, schemas.ReasonExited, schemas.ReasonKilled, schemas.ReasonCrashed:
		return r
	}
	return FailOther
}

func (e *Engine) taskEvent(now time.Time, ev *schemas.TaskEvent) {
	e.counters.Events++
	t := e.targets[ev.Target]
	if t == nil || ev.Epoch <= t.closedEpoch {
		e.counters.DuplicateEvents++
		return
	}
	k := t.task
	if k == nil || k.id != ev.TaskID || k.epoch != ev.Epoch {
		if k == nil && ev.Epoch > t.epoch {
			// A task no record names ended: close its epoch and learn
			// from it, so that a replay of it changes nothing.
			t.epoch = ev.Epoch
			t.closedEpoch = ev.Epoch
			if ev.Kind == schemas.EventDone && ev.Type == t.phase && t.blocked == "" && !t.complete {
				e.advance(t, ev)
			}
			e.persist(now, t)
			e.pending.remove(t)
			e.delayed.remove(t)
			e.requeue(now, t)
		}
		return
	}
	if ev.Kind == schemas.EventDone {
		e.advance(t, ev)
		e.close(now, k, closeDone, "")
		return
	}
	reason := failReason(ev.Reason)
	switch {
	case reason == schemas.ReasonHelpersUnavailable:
		e.close(now, k, closeRAM, reason)
	case k.phase == tKilling:
		// The engine's own kill: count it as the kill reply would, so
		// that the cause does not depend on which message comes first.
		cause, fail := killedCause(k)
		e.close(now, k, cause, fail)
	case reason == schemas.ReasonKilled:
		cause, _ := killedCause(k)
		e.close(now, k, cause, reason)
	default:
		// A crash, whether or not the task had heartbeated: the target
		// alone waits before its next launch.
		e.close(now, k, closeCrash, reason)
	}
}

// advance moves t to the phase after the one its task finished.
func (e *Engine) advance(t *target, ev *schemas.TaskEvent) {
	e.counters.PhasesCompleted++
	next, complete, updated, err := workload.AfterDone(&t.spec, t.phase, ev.Metrics)
	if err != nil {
		t.blocked = "lifecycle: " + err.Error()
		return
	}
	if updated != nil {
		t.spec = *updated
	}
	t.restartDelay = 0
	t.readyAt = time.Time{}
	if complete {
		t.complete = true
		return
	}
	t.phase = next
	e.estimate(t)
}

// ----- hosts -----

func (e *Engine) hostStatus(now time.Time, st *schemas.HostStatus) {
	h := e.hostNamed(now, st.Host)
	back := h.lost || !h.seen
	h.seen = true
	h.lastStatus = now
	h.total = max(st.RAM.TotalMiB, 0)
	h.used = max(st.RAM.UsedMiB, 0)
	h.draining = st.Draining
	h.avoided = false
	h.lost = false
	var owned int64
	for _, id := range st.Tasks {
		if k := e.byID[id]; k != nil && k.host == h {
			owned += k.used
		}
	}
	h.foreignMiB = max(h.used-owned, 0)
	if !e.connected || len(st.Tasks) == 0 {
		return
	}
	// A task the engine does not know (left over from a time the host was
	// lost, or a launch whose reply never came) may never heartbeat: ask
	// the host, and fence what the reply shows.
	if !back && now.Sub(h.strayPsAt) < e.cfg.HeartbeatStale {
		return
	}
	for _, id := range st.Tasks {
		if e.byID[id] == nil {
			if last, ok := e.fenced[id]; ok && now.Sub(last) < e.cfg.ReplyTimeout {
				continue
			}
			h.strayPsAt = now
			e.emit(Command{Kind: CmdPs, Host: h.name, Ps: &schemas.PsRequest{V: schemas.Version}})
			return
		}
	}
}

// ----- time -----

func (e *Engine) tick(now time.Time) {
	if e.recovering {
		// The grace ends early only when every recorded task is confirmed.
		early := e.recorded > 0 && e.recordedOK == e.recorded
		if early || !now.Before(e.graceUntil) {
			e.recovering = false
			if early {
				e.graceUntil = minTime(e.graceUntil, now)
			}
		}
	}
	for e.delayed.len() > 0 && !e.delayed.peek().readyAt.After(now) {
		e.requeue(now, e.delayed.pop())
	}
	if !e.connected {
		return // nothing is declared stale while the bus is away
	}
	watch := !now.Before(e.graceUntil)
	lost := 2 * e.cfg.ReplyTimeout // a probe this old is taken as unanswered
	// An active task is stale once max(lastHB, staleBase) is this old; the
	// common case, an active task heard from recently, is decided from the
	// hot slice alone.
	staleAt := now.Sub(e.start) - e.cfg.HeartbeatStale
	checkStale := watch && e.since(e.staleBase) <= staleAt
	suspectsMissing, watched := 0, 0
	for i := 0; i < len(e.tasks); i++ {
		if hk := &e.hot[i]; hk.phase == tActive {
			watched++
			if !checkStale || hk.lastHB > staleAt {
				continue
			}
		}
		k := e.tasks[i]
		switch k.phase {
		case tLaunching, tLaunched:
			if now.Sub(k.launchedAt) >= e.cfg.LaunchTimeout {
				e.counters.Timeouts++
				why := suspectLaunch
				if k.why == suspectDeleted {
					why = suspectDeleted
				}
				e.suspect(now, k, why)
			}
		case tActive:
			if now.Sub(maxTime(k.lastHB, e.staleBase)) >= e.cfg.HeartbeatStale {
				e.counters.Stale++
				e.suspect(now, k, suspectStale)
			}
		case tSuspect:
			watched++
			if k.probeOut && now.Sub(k.probeAt) >= lost {
				k.probeOut = false
				k.psMissing = true
			}
			if k.psMissing {
				suspectsMissing++
			}
			if k.why == suspectRecovered && e.recovering {
				continue
			}
			if !k.probeOut && now.Sub(k.probeAt) >= e.cfg.ReplyTimeout {
				e.ps(now, k)
			}
		case tKilling:
			if k.probeOut && now.Sub(k.probeAt) >= lost {
				k.probeOut = false
			}
			if !k.probeOut && now.Sub(k.probeAt) >= e.cfg.ReplyTimeout {
				e.kill(now, k, silentReason(k.why))
			}
		}
	}
	e.checkHosts(now, suspectsMissing, watched)
	if len(e.fenced) >= 1024 {
		for id, at := range e.fenced {
			if now.Sub(at) >= e.cfg.ReplyTimeout {
				delete(e.fenced, id)
			}
		}
	}
}

// checkHosts declares stale hosts lost, unless so many went stale at once
// that the fault is more likely the selector's own (the mass-stale guard).
//
// Hosts report on their own clocks, so the statuses of a fleet that stops
// reporting at one moment run out over a spread of up to one status period.
// So that the first hosts to run out are not declared lost before the rest
// are seen to follow, a host silent for three quarters of HostStale counts
// as going stale once some host is stale. Hosts known only from records and
// never heard from since the start count only while no host has reported.
func (e *Engine) checkHosts(now time.Time, suspectsMissing, watched int) {
	if now.Before(e.graceUntil) {
		return
	}
	stale := e.stale[:0]
	anySeen := false
	for _, h := range e.hostSeq {
		if h.seen && !h.lost {
			anySeen = true
			break
		}
	}
	near := e.cfg.HostStale - e.cfg.HostStale/4
	known, going, recent := 0, 0, 0
	for _, h := range e.hostSeq {
		if h.lost {
			if now.Sub(h.lostAt) < e.cfg.HostStale && (h.seen || !anySeen) {
				recent++
			}
			continue
		}
		silent := now.Sub(maxTime(h.lastStatus, e.staleBase))
		if silent >= e.cfg.HostStale {
			stale = append(stale, h)
		}
		if !h.seen && anySeen {
			continue // a dead record, not a sign of the selector's own fault
		}
		known++
		if silent >= near {
			going++
		}
	}
	e.stale = stale
	n, all := going+recent, known+recent
	reason := ""
	switch {
	case len(stale) > 0 && n >= 2 && 2*n > all:
		reason = fmt.Sprintf("%d of %d hosts went stale within %v", n, all, e.cfg.HostStale)
	case suspectsMissing >= 3 && 2*suspectsMissing > watched:
		reason = fmt.Sprintf("%d of %d tasks went stale and their hosts do not answer", suspectsMissing, watched)
	}
	if reason != "" {
		e.degraded = reason
		e.degradedExit = time.Time{}
		return
	}
	if e.degraded != "" {
		if e.degradedExit.IsZero() {
			e.degradedExit = now.Add(e.cfg.HeartbeatStale)
		}
		if now.Before(e.degradedExit) {
			return
		}
		e.degraded = ""
		e.degradedExit = time.Time{}
	}
	for _, h := range stale {
		e.loseHost(now, h)
	}
	clear(e.stale)
}

// loseHost declares h lost: all of its tasks are gone and their targets
// requeued.
func (e *Engine) loseHost(now time.Time, h *host) {
	h.lost = true
	h.lostAt = now
	e.counters.HostsLost++
	for len(h.tasks) > 0 {
		k := h.tasks[len(h.tasks)-1]
		e.close(now, k, closeRequeue, FailHostLost)
	}
}

// NextDeadline returns the earliest time at which a Tick may change
// something, or the zero time when nothing waits on time. It costs a pass
// over every task and host; call it when arming a timer, not per message.
func (e *Engine) NextDeadline() time.Time {
	var next time.Time
	at := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if e.recovering {
		at(e.graceUntil)
	}
	if e.pending.len() > 0 {
		at(e.graceUntil)
		at(e.backoff.next)
	}
	if e.delayed.len() > 0 {
		at(e.delayed.peek().readyAt)
	}
	at(e.degradedExit)
	if !e.connected {
		return next
	}
	for _, k := range e.tasks {
		switch k.phase {
		case tLaunching, tLaunched:
			at(k.launchedAt.Add(e.cfg.LaunchTimeout))
		case tActive:
			at(maxTime(maxTime(k.lastHB, e.staleBase).Add(e.cfg.HeartbeatStale), e.graceUntil))
		case tSuspect, tKilling:
			if k.probeOut {
				at(k.probeAt.Add(2 * e.cfg.ReplyTimeout))
			} else {
				at(k.probeAt.Add(e.cfg.ReplyTimeout))
			}
		}
	}
	for _, h := range e.hostSeq {
		if h.lost {
			if e.degraded != "" {
				at(h.lostAt.Add(e.cfg.HostStale))
			}
			continue
		}
		at(maxTime(maxTime(h.lastStatus, e.staleBase).Add(e.cfg.HostStale), e.graceUntil))
	}
	return next
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
