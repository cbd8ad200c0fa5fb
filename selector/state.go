package selector

import (
	"math"
	"slices"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

// tomb is what remains of a deleted target.
type tomb struct {
	epoch uint64
	at    time.Time
}

// clampMiB bounds a RAM figure from the outside to 0..schemas.MaxMiB, so that
// the ledger's sums cannot overflow whatever a message claims.
func clampMiB(v int64) int64 { return min(max(v, 0), schemas.MaxMiB) }

// task is one launch of a target, from the launch (or the record or
// heartbeat it was taken over from) until it is closed.
type task struct {
	unmet   int64     // helper RAM its last refused request asked for (0: none; see reserved)
	unmetAt time.Time // when that request was refused
	id      string
	epoch   uint64
	t       *target
	host    *host
	typ     string
	pid     int64
	budget  int64
	wrapper int64
	used    int64

	state      taskState // changed only by Engine.transition
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

	helpers []*helper   // its fleet helpers that are starting or running
	allocs  []*allocReq // its helper RAM requests still waiting on starts
}

// accounted is the RAM a task holds in the ledger: the larger of its budget
// and what it reports using.
func (k *task) accounted() int64 { return max(k.budget, k.used) }

// target is a declared target, or one deleted while its task still runs.
type target struct {
	name     string
	declared schemas.TargetSpec // as the operator declared it
	spec     schemas.TargetSpec // declared, with metrics learned from done events
	hasSpec  bool
	phase    string // its lifecycle phase: the phase of its spec it is in, which its next launch runs
	est      workload.Estimate
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

// host is a worker host, as its statuses describe it, with the RAM its
// tasks book (the ledger).
type host struct {
	name       string
	total      int64
	used       int64 // reported by the host
	reserved   int64 // sum of accounted() of its tasks
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
	// helpers are the fleet helpers booked on the host, of tasks on any
	// host, and helperMiB their RAM: part of the ledger.
	helpers   []*helper
	helperMiB int64
	// noHelpers: a helper request found no responders: the host's worker
	// does not run fleet helpers (a v1 worker). No helper is granted
	// there until the host comes back from being lost or its status
	// lists helpers.
	noHelpers bool
}

// foreign is the RAM in use on h that none of the engine's tasks accounts for.
// It is worked out when a status arrives, from the tasks that status lists
// (see hostStatus), and held until the next one: tasks started since are
// booked by their reservations, not subtracted from a stale figure.
func (h *host) foreign() int64 { return h.foreignMiB }

// free is the RAM a new task may take on h.
func (h *host) free(headroom int64) int64 {
	return h.total - headroom - h.reserved - h.helperMiB - h.foreign()
}

// taskHot is the part of a task a tick reads for every task, kept in one
// contiguous slice so that a tick over many tasks stays in cache.
type taskHot struct {
	state  taskState
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

// pidKey names a process: its host and PID.
type pidKey struct {
	host string
	pid  int64
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
	e.hot = append(e.hot, taskHot{state: k.state, lastHB: e.since(k.lastHB)})
	k.hostIdx = len(h.tasks)
	h.tasks = append(h.tasks, k)
	h.reserved += k.accounted()
	e.byID[k.id] = k
	if k.pid != 0 && k.countedPen {
		e.pendingByPID[pidKey{h.name, k.pid}] = k
	}
}

// detach removes k from every index and frees its RAM.
func (e *Engine) detach(k *task) {
	h := k.host
	h.reserved -= k.accounted()
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
	k.used = used
	h.reserved += k.accounted()
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
