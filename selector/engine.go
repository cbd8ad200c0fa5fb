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
	"encoding/json"
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
	FailNotSent            = "not_sent"
	FailFenced             = schemas.ReasonFenced
	FailOOM                = schemas.ReasonOOM
	FailOther              = "other"
)

// Disruption modes, after the Kubernetes node lifecycle controller's zone
// states. See checkHosts.
const (
	// DisruptionNormal: a host silent for HostStale is declared lost.
	DisruptionNormal = "normal"
	// DisruptionPartial: more than UnhealthyHostFraction of the hosts went
	// silent within one HostStale window while others still report; silent
	// hosts are declared lost at LostHostsPerMin.
	DisruptionPartial = "partial"
	// DisruptionFull: the selector is disconnected, or no host reports. The
	// fault is most likely the selector's own: nothing is declared lost and
	// nothing is launched.
	DisruptionFull = "full"
)

// Retention of what the engine remembers about things that are gone.
const (
	// tombTTL is how long the last epoch of a deleted target is kept, so
	// that a late message of its old tasks is still fenced if it is
	// declared again.
	tombTTL = time.Hour
	// forgetHostAfter is how long a lost host without tasks stays in
	// status before it is forgotten.
	forgetHostAfter = 10 * time.Minute
	// pruneEvery is how often the engine looks for what to forget.
	pruneEvery = time.Minute
)

// tomb is what remains of a deleted target.
type tomb struct {
	epoch uint64
	at    time.Time
}

// clampMiB bounds a RAM figure from the outside to 0..schemas.MaxMiB, so that
// the ledger's sums cannot overflow whatever a message claims.
func clampMiB(v int64) int64 { return min(max(v, 0), schemas.MaxMiB) }

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
	// suspectSuperseded: a late done event of an earlier epoch finished the
	// phase this task runs, and the target moved on: the task must stop
	// before the target's next phase is launched.
	suspectSuperseded
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
	sent       bool // the launch has left (see Config.LaunchSentReported)

	launchedAt  time.Time
	confirmedAt time.Time
	lastHB      time.Time

	suspectAt time.Time // when it last became suspect
	// awaitDoneAt is when a ps reply said the task ended done; its done
	// event is awaited until HostStale after that (zero: not awaited).
	awaitDoneAt time.Time
	probeOut    bool      // a ps or kill request is outstanding
	probeAt     time.Time // when the last ps or kill was sent
	psMissing   bool      // the last ps of this task went unanswered

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
	// doneFloor is the last epoch issued when the target last completed a
	// phase or changed its phase. Every epoch above it ran the current
	// phase, so a late done event of a closed epoch above it still
	// completes the phase (see lateDone).
	doneFloor uint64
	task      *task

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
	seq        int       // index in Engine.hostSeq
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

func (e *Engine) newTarget(name string) *target {
	t := &target{name: name, qidx: -1, didx: -1}
	if tb, ok := e.tombs[name]; ok {
		// Declared again after a deletion: its epochs continue, so that a
		// late message from a task of its earlier life is still fenced.
		t.epoch, t.closedEpoch, t.doneFloor = tb.epoch, tb.epoch, tb.epoch
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
	e.tombs[t.name] = tomb{epoch: max(t.epoch, t.closedEpoch), at: e.lastNow}
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
	if phase != t.phase {
		t.doneFloor = t.epoch
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
		h.seq = len(e.hostSeq)
		e.hostSeq = append(e.hostSeq, h)
	}
	return h
}

// dropHost forgets h, which is lost and holds no task.
func (e *Engine) dropHost(h *host) {
	delete(e.hosts, h.name)
	e.hostSeq = slices.Delete(e.hostSeq, h.seq, h.seq+1)
	for i := h.seq; i < len(e.hostSeq); i++ {
		e.hostSeq[i].seq = i
	}
}

// attach makes k its target's task, on host h, and books its RAM.
func (e *Engine) attach(k *task, h *host) {
	k.host = h
	k.t.task = k
	if k.t.phase == "" {
		// A target without a phase of its own (its spec is invalid, or
		// it is not declared) is in its task's: every state persisted
		// for it names a phase, as the tasks bucket requires.
		k.t.phase = k.typ
	}
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
	used = clampMiB(used)
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
	if phase != t.phase {
		t.doneFloor = t.epoch
	}
	t.phase = phase
	e.estimate(t)
}

// specHash is a short digest of a declared spec, persisted with a target's
// blocked reason so that a restart can tell whether the spec it finds is the
// one that was refused.
func specHash(spec *schemas.TargetSpec) string {
	b, err := json.Marshal(spec)
	if err != nil {
		return ""
	}
	h := fnv.New64a()
	h.Write(b)
	return strconv.FormatUint(h.Sum64(), 36)
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
	return e.connected && !e.recovering && !now.Before(e.graceUntil) && e.disruption != DisruptionFull &&
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

// eligible reports whether a new task may be placed on h: among other
// things, h has not been silent for HostStale as of the time host statuses
// are handled up to (see hostsHeard).
func (e *Engine) eligible(now time.Time, h *host) bool {
	return h.seen && !h.lost && !h.draining && !h.avoided && e.hostsHeard(now).Sub(h.lastStatus) < e.cfg.HostStale
}

// heardAsOf returns the time up to which an input whose edge reported asOf
// (see Tick) is known to be handled: asOf, or now when asOf is zero or later.
func heardAsOf(now, asOf time.Time) time.Time {
	if asOf.IsZero() || asOf.After(now) {
		return now
	}
	return asOf
}

// heartbeatsHeard is the time up to which heartbeats are known to be
// handled: the silence of a task is judged as of then, since heartbeats that
// arrived later may still wait in the edge's queue.
func (e *Engine) heartbeatsHeard(now time.Time) time.Time { return heardAsOf(now, e.hbAsOf) }

// hostsHeard is the time up to which host statuses are known to be handled:
// the silence of a host is judged as of then.
func (e *Engine) hostsHeard(now time.Time) time.Time { return heardAsOf(now, e.hostAsOf) }

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
		sent:       !e.cfg.LaunchSentReported,
	}
	e.pendingLaunches++
	e.attach(k, h)
	e.counters.Launches++
	spec := t.spec
	args := map[string]any{"spec": &spec}
	if pa := phaseArgs(&spec, k.typ); pa != nil {
		args = pa // a real task program gets its phase's args, not the spec
	}
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
			Args:   args,
		},
	})
}

// phaseArgs returns the args of spec's phase typ, or nil when it declares
// none.
func phaseArgs(spec *schemas.TargetSpec, typ string) map[string]any {
	for i := range spec.Phases {
		if spec.Phases[i].Type == typ {
			return spec.Phases[i].Args
		}
	}
	return nil
}

func (e *Engine) launchReplied(now time.Time, ev *LaunchReplied) {
	k := e.byID[ev.Reply.TaskID]
	if k != nil && k.host.name != ev.Host {
		return // not from the task's host: it says nothing of the task
	}
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
			if !t.deleted {
				// Blocked before close persists, so that a restart does
				// not try the refused spec again.
				t.blocked = fmt.Sprintf("launch refused: %s: %s", re.Code, re.Message)
			}
			e.close(now, k, closeRequeue, code)
		}
		return
	}
	k.sent = true // a reply came, so it left
	if k.pid == 0 && ev.Reply.PID > 0 {
		k.pid = ev.Reply.PID
		if k.countedPen {
			e.pendingByPID[pidKey{k.host.name, k.pid}] = k
		}
	}
	if k.phase == tLaunching {
		e.setTaskPhase(k, tLaunched)
	}
	if (k.why == suspectDeleted || k.why == suspectSuperseded) && k.phase != tKilling && k.phase != tSuspect {
		e.kill(now, k, silentReason(k.why))
	}
}

func (e *Engine) launchUnanswered(now time.Time, ev *LaunchUnanswered) {
	k := e.byID[ev.TaskID]
	if k == nil || k.confirmed || k.host.name != ev.Host {
		return
	}
	if ev.NotSent && !k.sent {
		// The edge never sent it: nothing started.
		e.close(now, k, closeRequeue, FailNotSent)
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

// launchSent starts a launch's timeout: the request has left.
func (e *Engine) launchSent(now time.Time, ev *LaunchSent) {
	k := e.byID[ev.TaskID]
	if k == nil || k.sent {
		return
	}
	k.sent = true
	k.launchedAt = now
}

// inputDropped handles the edge's report that it lost heartbeats or host
// statuses: silence up to now proves nothing, so it is measured afresh.
func (e *Engine) inputDropped(now time.Time, ev *InputDropped) {
	e.counters.InputGaps++
	switch ev.Source {
	case InputHeartbeats:
		e.staleBase = now
		e.hbDropAt = now
	case InputHostStatuses:
		e.hostStaleBase = now
	}
}

// releasePending stops counting k against MaxPendingLaunches. Its RAM stays
// booked: only its slot in the launch pipeline is given back.
func (e *Engine) releasePending(k *task) {
	if !k.countedPen {
		return
	}
	if k.pid != 0 && e.pendingByPID[pidKey{k.host.name, k.pid}] == k {
		delete(e.pendingByPID, pidKey{k.host.name, k.pid})
	}
	k.countedPen = false
	e.pendingLaunches--
}

// ----- heartbeats -----

// heartbeat handles one heartbeat and reports whether it may enable a launch.
func (e *Engine) heartbeat(now time.Time, hb *schemas.Heartbeat) bool {
	e.counters.Heartbeats++
	t := e.targets[hb.Target]
	if t == nil {
		e.fenceHeartbeat(now, hb, "target not declared")
		return false
	}
	k := t.task
	if k == nil {
		if !t.deleted && hb.Epoch > t.epoch && hb.TaskID != "" && hb.Host != "" && e.byID[hb.TaskID] == nil {
			if h := e.hosts[hb.Host]; h == nil || !h.lost {
				e.adopt(now, t, hb)
				return true
			}
		}
		e.fenceHeartbeat(now, hb, "stale epoch")
		return false
	}
	if k.id != hb.TaskID || k.epoch != hb.Epoch || k.host.name != hb.Host {
		e.fenceHeartbeat(now, hb, "not the target's task")
		return false
	}
	k.lastHB = now
	e.hot[k.idx].lastHB = now.Sub(e.start)
	if hb.RAM.UsedMiB != k.used {
		e.setUsed(k, hb.RAM.UsedMiB)
	}
	k.sent = true
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
	if k.why == suspectSuperseded {
		e.kill(now, k, silentReason(k.why))
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
		if k.placed {
			e.counters.Confirmed++
			e.backoff.reset()
		}
		e.releasePending(k)
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
		budget:      clampMiB(hb.RAM.BudgetMiB),
		used:        clampMiB(hb.RAM.UsedMiB),
		phase:       tActive,
		confirmed:   true,
		launchedAt:  now,
		confirmedAt: now,
		lastHB:      now,
		sent:        true,
	}
	k.wrapper = min(t.est.WrapperMiB, k.budget)
	e.attach(k, e.hostNamed(now, hb.Host))
	e.counters.Adoptions++
	e.persist(now, t)
}

// fenceHeartbeat answers a heartbeat from an impostor with a kill.
func (e *Engine) fenceHeartbeat(now time.Time, hb *schemas.Heartbeat, reason string) {
	e.counters.FencedHeartbeats++
	e.fence(now, hb.Host, hb.Target, hb.TaskID, hb.PID, reason)
}

// fence answers an impostor with a kill, at most once per reply timeout per
// task.
func (e *Engine) fence(now time.Time, hostName, targetName, taskID string, pid int64, reason string) {
	if last, ok := e.fenced[taskID]; ok && now.Sub(last) < e.cfg.ReplyTimeout {
		return
	}
	e.fenced[taskID] = now
	e.counters.Fences++
	e.counters.Kills++
	e.emit(Command{Kind: CmdKill, Host: hostName, Target: targetName, Fence: true, Kill: &schemas.KillRequest{
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
	k.suspectAt = now
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
	if ev.Reply.Error != nil {
		// The host could not answer: its (empty) list says nothing.
		e.psUnanswered(now, &PsUnanswered{Host: ev.Host})
		return
	}
	var ended map[string]schemas.PsEnded
	for _, d := range ev.Reply.Ended {
		if ended == nil {
			ended = make(map[string]schemas.PsEnded, len(ev.Reply.Ended))
		}
		ended[d.TaskID] = d
	}
	// A task being started runs as far as the engine is concerned: it may
	// be killed (the worker kills it once it runs), and it is not gone.
	starting := make(map[string]bool, len(ev.Reply.Starting))
	for _, st := range ev.Reply.Starting {
		starting[st.TaskID] = true
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
		if p := running[k.id]; p != nil || starting[k.id] {
			if p != nil && k.pid == 0 && p.PID > 0 {
				k.pid = p.PID
			}
			switch {
			case k.why == suspectRecovered && e.recovering:
				continue // alive; its heartbeat will confirm it
			case k.why == suspectRecovered && p == nil && now.Sub(k.launchedAt) < e.cfg.LaunchTimeout:
				// Still being started, as a launch the engine sent
				// itself would be: its first heartbeat has the
				// launch timeout, counted from the restart, to come.
				continue
			case k.why == suspectStale && e.hbDropAt.After(k.suspectAt):
				// Heartbeats were lost on the selector's side since it was
				// judged stale: its silence may be ours. It runs, so it is
				// active again, and stale once HeartbeatStale passes from
				// the loss.
				e.setTaskPhase(k, tActive)
				k.why = 0
				e.persist(now, k.t)
				continue
			case e.disruption == DisruptionFull && k.why != suspectDeleted && k.why != suspectSuperseded:
				// Heartbeats may be what is failing: do not kill a
				// running task on their account; ask again later.
				continue
			}
			e.kill(now, k, silentReason(k.why))
			continue
		}
		if d, ok := ended[k.id]; ok && d.Kind == schemas.EventDone && d.Epoch == k.epoch {
			// It finished, and its done event is on its way: closing
			// it as gone now would run its phase again.
			if k.awaitDoneAt.IsZero() {
				k.awaitDoneAt = now
			}
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
	case suspectSuperseded:
		return "phase already done"
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
			e.probeMissed(k)
		}
	}
}

// probeMissed records that a ps of suspect task k went unanswered. The task
// may still run, so k keeps its RAM and its target waits: a host that is
// silent altogether is declared lost in time, which settles k, and a host
// that still reports but answers no ps (its replies fail to decode, or it
// refuses them) may never settle it. Either way k no longer holds a
// pending-launch slot, so that one silent or broken host cannot stop every
// launch elsewhere until it is lost. A host that took such a launch and has
// not reported since the ps was sent gets no new launch until it reports
// again: the slot given back must not go to it.
func (e *Engine) probeMissed(k *task) {
	k.probeOut = false
	k.psMissing = true
	if k.countedPen && k.host.lastStatus.Before(k.probeAt) {
		k.host.avoided = true
	}
	e.releasePending(k)
}

func (e *Engine) killReplied(now time.Time, ev *KillReplied) {
	k := e.byID[ev.Reply.TaskID]
	if k == nil || k.phase != tKilling || k.host.name != ev.Host {
		return
	}
	k.probeOut = false
	if ev.Reply.Running || ev.Reply.Error != nil {
		return // retried after ReplyTimeout
	}
	cause, fail := killedCause(k)
	e.close(now, k, cause, fail)
}

func (e *Engine) killUnanswered(now time.Time, ev *KillUnanswered) {
	if k := e.byID[ev.TaskID]; k != nil && k.phase == tKilling && k.host.name == ev.Host {
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
	return closeRequeue, "" // deleted, or superseded: not the task's fault
}

// killedCause is how a task killed for its silence is closed.
func killedCause(k *task) (closeCause, string) {
	switch k.why {
	case suspectDeleted, suspectSuperseded:
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
	case schemas.ReasonHelpersUnavailable, schemas.ReasonExited, schemas.ReasonKilled, schemas.ReasonCrashed, schemas.ReasonFenced,
		schemas.ReasonOOM:
		return r
	}
	return FailOther
}

// ramPressure reports whether a task that failed for reason r failed for
// lack of RAM: it could not get its helpers, or its memory limit stopped it.
// Either raises the global backoff.
func ramPressure(r string) bool {
	return r == schemas.ReasonHelpersUnavailable || r == schemas.ReasonOOM
}

func (e *Engine) taskEvent(now time.Time, ev *schemas.TaskEvent) {
	e.counters.Events++
	t := e.targets[ev.Target]
	if t != nil && ev.Epoch <= t.closedEpoch && ev.Kind == schemas.EventDone && e.lateDone(now, t, ev) {
		return
	}
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
			if t.phase == "" {
				t.phase = ev.Type // as attach does: a state names a phase
			}
			e.persist(now, t)
			e.pending.remove(t)
			e.delayed.remove(t)
			e.requeue(now, t)
		}
		return
	}
	if ev.Kind == schemas.EventDone {
		if k.why != suspectSuperseded && k.typ == t.phase {
			e.advance(t, ev)
		}
		// Otherwise the phase it ran was completed already (see
		// lateDone), or the target has left it: the target is where it
		// should be.
		e.close(now, k, closeDone, "")
		return
	}
	reason := failReason(ev.Reason)
	switch {
	case k.why == suspectSuperseded && !ramPressure(reason):
		// Stopped, or ended, after its phase was done: nothing to
		// penalize.
		e.close(now, k, closeRequeue, reason)
	case ramPressure(reason):
		e.close(now, k, closeRAM, reason)
	case k.phase == tKilling:
		// The engine's own kill: count it as the kill reply would, so
		// that the cause does not depend on which message comes first.
		cause, fail := killedCause(k)
		e.close(now, k, cause, fail)
	case reason == schemas.ReasonKilled:
		cause, _ := killedCause(k)
		e.close(now, k, cause, reason)
	case reason == schemas.ReasonFenced:
		// Its worker lost the bus and stopped it: not the task's fault.
		e.close(now, k, closeRequeue, reason)
	default:
		// A crash, whether or not the task had heartbeated: the target
		// alone waits before its next launch.
		e.close(now, k, closeCrash, reason)
	}
}

// lateDone applies the done event ev of an epoch of t that is closed
// already, and reports whether it did. A task closed without its done event
// (its host was lost, it was killed or found gone, the done event was
// awaited too long) may have finished its phase all the same, its event
// held up in its worker's outbox: dropping the event would run the phase
// again. So a done event of a closed epoch completes t's phase if t has
// neither completed a phase nor changed phase since that epoch was issued
// (the epoch is above t.doneFloor), and it names t's phase.
//
// If t has no task, it moves on to its next phase. If t runs a later epoch
// of the same phase, that task is superseded: it is stopped (at once, or as
// soon as its launch is answered or times out) and t's next phase is
// launched only once it is closed, so that t never has two live tasks. A
// repeating phase whose next run is the one the live task already runs
// keeps that task.
func (e *Engine) lateDone(now time.Time, t *target, ev *schemas.TaskEvent) bool {
	if ev.Epoch <= t.doneFloor || ev.Type != t.phase || !t.hasSpec || t.blocked != "" || t.complete || t.deleted {
		return false
	}
	k := t.task
	if k != nil && (k.epoch <= ev.Epoch || k.typ != t.phase || k.why == suspectDeleted || k.why == suspectSuperseded) {
		return false
	}
	e.advance(t, ev)
	e.persist(now, t)
	if k == nil {
		// Its priority, readiness or completion changed: back in line.
		e.pending.remove(t)
		e.delayed.remove(t)
		e.requeue(now, t)
		return true
	}
	if !t.complete && t.blocked == "" && k.typ == t.phase {
		return true // the live task runs the next repetition
	}
	k.why = suspectSuperseded
	switch k.phase {
	case tLaunching:
		// No PID yet: its reply, heartbeat or launch timeout brings one.
	case tKilling:
	default:
		e.kill(now, k, silentReason(k.why))
	}
	return true
}

// advance moves t to the phase after the one its task finished.
func (e *Engine) advance(t *target, ev *schemas.TaskEvent) {
	e.counters.PhasesCompleted++
	t.doneFloor = t.epoch // no earlier epoch's done completes what comes next
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
	h.total = clampMiB(st.RAM.TotalMiB)
	h.used = clampMiB(st.RAM.UsedMiB)
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
	if !now.Before(e.nextPrune) {
		e.prune(now)
	}
	if !e.connected {
		return // nothing is declared stale while the bus is away
	}
	watch := !now.Before(e.graceUntil)
	lost := 2 * e.cfg.ReplyTimeout // a probe this old is taken as unanswered
	// Silence is judged only up to the time heartbeats are handled up to:
	// what waits in the edge's queue is no silence of the tasks.
	heard := e.heartbeatsHeard(now)
	// An active task is stale once max(lastHB, staleBase) is this old as of
	// heard; the common case, an active task heard from recently, is decided
	// from the hot slice alone.
	staleAt := heard.Sub(e.start) - e.cfg.HeartbeatStale
	checkStale := watch && e.since(e.staleBase) <= staleAt
	for i := 0; i < len(e.tasks); i++ {
		if hk := &e.hot[i]; hk.phase == tActive && (!checkStale || hk.lastHB > staleAt) {
			continue
		}
		k := e.tasks[i]
		switch k.phase {
		case tLaunching, tLaunched:
			if k.sent && heard.Sub(k.launchedAt) >= e.cfg.LaunchTimeout {
				e.counters.Timeouts++
				why := suspectLaunch
				if k.why == suspectDeleted || k.why == suspectSuperseded {
					why = k.why
				}
				e.suspect(now, k, why)
			}
		case tActive:
			if heard.Sub(maxTime(k.lastHB, e.staleBase)) >= e.cfg.HeartbeatStale {
				e.counters.Stale++
				e.suspect(now, k, suspectStale)
			}
		case tSuspect:
			if !k.awaitDoneAt.IsZero() {
				// Its host says it finished; its done event closes it.
				// Should the event never come, it is taken as gone.
				if now.Sub(k.awaitDoneAt) >= e.cfg.HostStale {
					cause, fail := goneCause(k)
					e.close(now, k, cause, fail)
				}
				continue
			}
			if k.probeOut && now.Sub(k.probeAt) >= lost {
				e.probeMissed(k)
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
	e.checkHosts(now)
	for _, h := range e.hostSeq {
		if h.lost && len(h.tasks) > 0 {
			e.closeLost(now, h)
		}
	}
	if len(e.fenced) >= 1024 {
		for id, at := range e.fenced {
			if now.Sub(at) >= e.cfg.ReplyTimeout {
				delete(e.fenced, id)
			}
		}
	}
}

// prune forgets what no longer matters: tombs of targets deleted more than
// tombTTL ago, fences older than a reply timeout, and hosts lost for
// forgetHostAfter that hold no task. It keeps memory bounded under churn of
// target and host names.
func (e *Engine) prune(now time.Time) {
	e.nextPrune = now.Add(pruneEvery)
	for name, tb := range e.tombs {
		if now.Sub(tb.at) >= tombTTL {
			delete(e.tombs, name)
		}
	}
	for id, at := range e.fenced {
		if now.Sub(at) >= e.cfg.ReplyTimeout {
			delete(e.fenced, id)
		}
	}
	for i := len(e.hostSeq) - 1; i >= 0; i-- {
		if h := e.hostSeq[i]; h.lost && len(h.tasks) == 0 && now.Sub(h.lostAt) >= forgetHostAfter {
			e.dropHost(h)
		}
	}
}

// setDisruption changes the disruption mode and its reason.
func (e *Engine) setDisruption(mode, reason string) {
	switch {
	case mode != DisruptionPartial:
		e.partialSince = time.Time{}
	case e.disruption != DisruptionPartial:
		e.partialSince = e.lastNow
	}
	e.disruption = mode
	if mode == DisruptionNormal {
		reason = ""
	}
	e.degraded = reason
}

// checkHosts sets the disruption mode and declares silent hosts lost
// accordingly. It is modelled on the Kubernetes node lifecycle controller:
//
//   - full disruption: no host has reported for most of a HostStale window
//     (the selector's own fault is likelier than every host failing at
//     once): nothing is declared lost, nothing is launched, and running
//     tasks found stale are not killed. When it ends, host and task silence
//     are measured afresh, as after a reconnect.
//   - partial disruption: more than UnhealthyHostFraction of the hosts went
//     silent within one HostStale window while others still report: silent
//     hosts are declared lost, the longest silent first, at LostHostsPerMin.
//   - normal: every host silent for HostStale is declared lost.
//
// Hosts report on their own clocks, so the statuses of a fleet that stops
// reporting at one moment run out over a spread of up to one status period.
// So that the first hosts to run out are not declared lost before the rest
// are seen to follow, a host silent for three quarters of HostStale counts
// as silent here. Every mode leads somewhere that does not depend on the
// fault healing: partial disruption loses hosts at a bounded rate, and full
// disruption ends as soon as one host reports.
//
// Silence is measured up to the time host statuses are handled up to (see
// Tick), not up to now: statuses that wait in the edge's own queue are no
// silence of their hosts.
func (e *Engine) checkHosts(now time.Time) {
	if now.Before(e.graceUntil) {
		return
	}
	near := e.cfg.HostStale - e.cfg.HostStale/4
	// Host silence is judged up to the time statuses are handled up to.
	heard := e.hostsHeard(now)
	stale := e.stale[:0]
	total, silent, reporting := 0, 0, 0
	for _, h := range e.hostSeq {
		if h.lost {
			if now.Sub(h.lostAt) < e.cfg.HostStale || (!e.partialSince.IsZero() && !h.lostAt.Before(e.partialSince)) {
				// Lost within the window, or during this partial
				// disruption: it still counts, so that losing hosts one
				// by one does not end the disruption.
				total++
				silent++
			}
			continue
		}
		total++
		quiet := heard.Sub(maxTime(h.lastStatus, e.hostStaleBase))
		if quiet >= e.cfg.HostStale {
			stale = append(stale, h)
		}
		switch {
		case quiet >= near:
			silent++
		case h.seen:
			reporting++
		}
	}
	e.stale = stale
	defer clear(e.stale)
	switch {
	case reporting == 0 && len(stale) > 0:
		if e.disruption != DisruptionFull {
			e.setDisruption(DisruptionFull, fmt.Sprintf("no host has reported for %v", near))
		}
		return
	case e.disruption == DisruptionFull:
		// A host reports again. Silence during the disruption proves
		// nothing (it was most likely the selector's own): measure afresh.
		e.setDisruption(DisruptionNormal, "")
		e.hostStaleBase = now
		e.staleBase = now
		e.hbDropAt = now // a task that went stale meanwhile and runs is not killed for it
		return
	case len(stale) > 0 && float64(silent) > e.cfg.UnhealthyHostFraction*float64(total):
		e.setDisruption(DisruptionPartial, fmt.Sprintf("%d of %d hosts went silent within %v; declaring them lost at %g per minute",
			silent, total, e.cfg.HostStale, e.cfg.LostHostsPerMin))
		e.refillLossTokens(now)
		// The longest silent first; ties by name, for determinism.
		slices.SortFunc(stale, func(a, b *host) int {
			if c := a.lastStatus.Compare(b.lastStatus); c != 0 {
				return c
			}
			return strings.Compare(a.name, b.name)
		})
		for _, h := range stale {
			if e.lossTokens < 1 {
				break
			}
			e.lossTokens--
			e.loseHost(now, h)
		}
		return
	}
	e.setDisruption(DisruptionNormal, "")
	e.refillLossTokens(now)
	for _, h := range stale {
		e.loseHost(now, h)
	}
}

// refillLossTokens adds the host losses that LostHostsPerMin allows since the
// last refill, up to a burst of one.
func (e *Engine) refillLossTokens(now time.Time) {
	if d := now.Sub(e.lossTokensAt); d > 0 {
		e.lossTokens = min(1, e.lossTokens+d.Minutes()*e.cfg.LostHostsPerMin)
	}
	e.lossTokensAt = now
}

// loseHost declares h lost: its tasks are gone and their targets requeued,
// except those that may still start or run unseen (see inFlight), which
// closeLost settles later.
func (e *Engine) loseHost(now time.Time, h *host) {
	h.lost = true
	h.lostAt = now
	e.counters.HostsLost++
	e.closeLost(now, h)
}

// closeLost closes the tasks of lost host h that are no longer in flight.
func (e *Engine) closeLost(now time.Time, h *host) {
	for i := len(h.tasks) - 1; i >= 0; i-- {
		// close moves the last task into the slot it frees: every task
		// from i on has been seen already.
		if k := h.tasks[i]; !e.inFlight(now, k) {
			e.close(now, k, closeRequeue, FailHostLost)
		}
	}
}

// inFlight reports whether k may still start, or run, on its host unseen
// even though the host has been silent for HostStale: its launch has not
// left yet (the edge holds it until the state written ahead of it is
// stored, and sends it whatever happens meanwhile); or it left, or k
// heartbeated, less than HostStale ago. A worker that takes the launch (at
// most a reply timeout after it left) or heartbeats is on the bus at that
// moment: cut off right after, it fences itself within the fence time plus
// one probe period, which HostStale exceeds. Before then, relaunching k's
// target elsewhere could run it twice.
func (e *Engine) inFlight(now time.Time, k *task) bool {
	switch {
	case k.placed && !k.sent:
		return true
	case k.confirmed:
		return now.Sub(k.lastHB) < e.cfg.HostStale
	}
	return now.Sub(k.launchedAt) < e.cfg.HostStale
}

// NextDeadline returns the earliest time at which a Tick may change
// something, or the zero time when nothing waits on time. It costs a pass
// over every task and host; call it when arming a timer, not per message.
// It assumes that the input is handled up to the Tick's time: while the
// edge's queues lag (see Tick), the deadlines of silence come later.
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
	if len(e.tombs) > 0 || len(e.fenced) > 0 {
		at(e.nextPrune)
	}
	if !e.connected {
		return next
	}
	for _, k := range e.tasks {
		switch k.phase {
		case tLaunching, tLaunched:
			if k.sent {
				at(k.launchedAt.Add(e.cfg.LaunchTimeout))
			}
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
	near := e.cfg.HostStale - e.cfg.HostStale/4
	for _, h := range e.hostSeq {
		if h.lost {
			at(h.lostAt.Add(e.cfg.HostStale))
			for _, k := range h.tasks {
				switch {
				case k.placed && !k.sent:
				case k.confirmed:
					at(k.lastHB.Add(e.cfg.HostStale))
				default:
					at(k.launchedAt.Add(e.cfg.HostStale))
				}
			}
			if len(h.tasks) == 0 {
				at(maxTime(e.nextPrune, h.lostAt.Add(forgetHostAfter)))
			}
			continue
		}
		base := maxTime(h.lastStatus, e.hostStaleBase)
		at(maxTime(base.Add(near), e.graceUntil))
		at(maxTime(base.Add(e.cfg.HostStale), e.graceUntil))
	}
	if e.disruption == DisruptionPartial && e.lossTokens < 1 && e.cfg.LostHostsPerMin > 0 {
		wait := time.Duration((1 - e.lossTokens) / e.cfg.LostHostsPerMin * float64(time.Minute))
		at(e.lossTokensAt.Add(wait))
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
