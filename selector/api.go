package selector

import (
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

// Event is an input to the Engine. The concrete types below are the only
// events; pass them as pointers.
type Event interface{ isEvent() }

// TargetUpserted declares a target or changes its spec. The engine takes
// ownership of Spec (its Phases, Value and Metrics): do not change it later.
type TargetUpserted struct {
	Target string
	Spec   schemas.TargetSpec
}

// TargetDeleted removes a target: its task is killed and its state deleted.
type TargetDeleted struct{ Target string }

// HeartbeatReceived carries one decoded heartbeat.
type HeartbeatReceived struct{ Heartbeat *schemas.Heartbeat }

// LaunchReplied carries a worker's answer to a Launch command. Target and
// Epoch are copied from the request the edge sent.
type LaunchReplied struct {
	Host   string
	Target string
	Epoch  uint64
	Reply  schemas.LaunchReply
}

// LaunchUnanswered reports that a Launch command got no reply: either the
// reply timed out (the worker may still have started the task), NATS had
// no responders for the host (nothing started), or the edge never sent it
// because the state written ahead of it could not be stored (NotSent:
// nothing started either).
type LaunchUnanswered struct {
	Host         string
	Target       string
	TaskID       string
	NoResponders bool
	NotSent      bool
}

// LaunchSent reports that a Launch command has left for its worker. With
// Config.LaunchSentReported set, a launch's timeout counts from this event,
// not from the Step that emitted the command: the edge may hold a launch
// while the state written ahead of it is stored.
type LaunchSent struct {
	TaskID string
}

// Input sources whose drops the edge reports with InputDropped.
const (
	InputHeartbeats   = "heartbeats"
	InputHostStatuses = "host_statuses"
)

// InputDropped reports that the edge lost messages of one source (the
// subscription hit its pending limit). Silence of that kind since the last
// message is no evidence any more: staleness of tasks (for heartbeats) or of
// hosts (for host statuses) is measured afresh from now, as after a
// reconnect, and a task that went stale before the drop is not killed on
// its account.
type InputDropped struct {
	Source string // InputHeartbeats or InputHostStatuses
}

// PsReplied carries a worker's answer to a Ps command. PIDs is copied from
// the request (nil when it asked for every task): a task whose PID the request
// did not name is not judged by the reply.
type PsReplied struct {
	Host  string
	PIDs  []int64
	Reply schemas.PsReply
}

// PsUnanswered reports that a Ps command timed out or found no responders.
type PsUnanswered struct {
	Host         string
	NoResponders bool
}

// KillReplied carries a worker's answer to a Kill command.
type KillReplied struct {
	Host  string
	Reply schemas.KillReply
}

// KillUnanswered reports that a Kill command timed out or found no responders.
type KillUnanswered struct {
	Host         string
	TaskID       string
	NoResponders bool
}

// TaskEventReceived carries a task's done or failed event.
type TaskEventReceived struct{ Event *schemas.TaskEvent }

// HostStatusReceived carries a worker's periodic status.
type HostStatusReceived struct{ Status *schemas.HostStatus }

// Tick lets time pass: timeouts, staleness and launches are evaluated.
//
// HeartbeatsAsOf and HostStatusesAsOf tell how far the edge has handled each
// input: every heartbeat (host status) that reached the selector before that
// time has been stepped into the engine, while later ones may still wait in
// the edge's own queue. A message that waits there is no silence of its
// sender, so the silence of tasks (heartbeat staleness, the launch timeout
// that awaits a first heartbeat) and of hosts (host staleness, the
// disruption modes, whether a host may take a launch) is judged as of
// min(now, as-of time) instead of now. The zero time means the input is
// handled up to now. The estimate must not be later than the arrival of the
// oldest message not yet handled; an earlier one only delays a judgement.
// Reply timeouts, backoff, restart delays and kill rounds stay on now. The
// as-of times hold until the next Tick.
type Tick struct {
	HeartbeatsAsOf   time.Time
	HostStatusesAsOf time.Time
}

// Disconnected reports that the bus connection is down: nothing is declared
// stale and nothing is launched until Reconnected.
type Disconnected struct{}

// Reconnected reports that the bus connection is back; a grace period of
// RecoveryGrace follows before anything is declared stale.
type Reconnected struct{}

// StoreConflict reports that a compare-and-swap write of a target's state
// failed: another writer exists, so the engine stops launching.
type StoreConflict struct {
	Target string
	Err    string
}

// Malformed reports a message that could not be decoded, for the counters.
type Malformed struct{ Source string }

// ShutdownRequested stops all further launches; in-flight work still settles.
type ShutdownRequested struct{}

// AllocRequested carries a task's request for helper RAM anywhere in the
// fleet (or its release of some). The engine answers it with one
// CmdAllocReply carrying the same ID, once the helpers it grants have been
// started (or could not be).
type AllocRequested struct {
	ID  uint64 // the edge's handle on the request, echoed in CmdAllocReply
	Req *schemas.AllocRequest
}

// HelperReplied carries a worker's answer to a CmdHelper; Req is the request
// the edge sent.
type HelperReplied struct {
	Host  string
	Req   *schemas.HelperRequest
	Reply schemas.HelperReply
}

// HelperUnanswered reports that a CmdHelper got no reply: it timed out (the
// worker may have acted), or NATS had no responders for the host's helper
// subject (a worker that does not run fleet helpers, or no worker at all).
type HelperUnanswered struct {
	Host         string
	Req          *schemas.HelperRequest
	NoResponders bool
}

func (*AllocRequested) isEvent()   {}
func (*HelperReplied) isEvent()    {}
func (*HelperUnanswered) isEvent() {}

func (*TargetUpserted) isEvent()     {}
func (*TargetDeleted) isEvent()      {}
func (*HeartbeatReceived) isEvent()  {}
func (*LaunchReplied) isEvent()      {}
func (*LaunchUnanswered) isEvent()   {}
func (*LaunchSent) isEvent()         {}
func (*InputDropped) isEvent()       {}
func (*PsReplied) isEvent()          {}
func (*PsUnanswered) isEvent()       {}
func (*KillReplied) isEvent()        {}
func (*KillUnanswered) isEvent()     {}
func (*TaskEventReceived) isEvent()  {}
func (*HostStatusReceived) isEvent() {}
func (*Tick) isEvent()               {}
func (*Disconnected) isEvent()       {}
func (*Reconnected) isEvent()        {}
func (*StoreConflict) isEvent()      {}
func (*Malformed) isEvent()          {}
func (*ShutdownRequested) isEvent()  {}

// CommandKind names what a Command asks the edge to do.
type CommandKind uint8

// Command kinds.
const (
	// CmdLaunch: send Launch to tasks.launch.<Host>, then feed back
	// LaunchReplied or LaunchUnanswered.
	CmdLaunch CommandKind = iota + 1
	// CmdKill: send Kill to tasks.kill.<Host>, then feed back KillReplied or
	// KillUnanswered.
	CmdKill
	// CmdPs: send Ps to tasks.ps.<Host>, then feed back PsReplied or PsUnanswered.
	CmdPs
	// CmdPersist: write State to the tasks bucket under State.Target
	// (compare-and-swap on the last revision seen); on failure feed back
	// StoreConflict.
	CmdPersist
	// CmdDelete: delete Target's key from the tasks bucket.
	CmdDelete
	// CmdAllocReply: answer the AllocRequested event AllocID with Alloc.
	CmdAllocReply
	// CmdHelper: send Helper to tasks.helper.<Host>, then feed back
	// HelperReplied or HelperUnanswered.
	CmdHelper
)

func (k CommandKind) String() string {
	switch k {
	case CmdLaunch:
		return "launch"
	case CmdKill:
		return "kill"
	case CmdPs:
		return "ps"
	case CmdPersist:
		return "persist"
	case CmdDelete:
		return "delete"
	case CmdAllocReply:
		return "alloc_reply"
	case CmdHelper:
		return "helper"
	}
	return "unknown"
}

// Command is an output of the Engine. Exactly the fields of its Kind are set.
// Commands that address one key (a target's state) must be carried out in the
// order they are returned.
type Command struct {
	Kind   CommandKind
	Host   string                 // launch, kill, ps
	Target string                 // persist, delete, and the target of launch/kill
	Launch *schemas.LaunchRequest // CmdLaunch
	Kill   *schemas.KillRequest   // CmdKill
	Ps     *schemas.PsRequest     // CmdPs
	State  *schemas.TaskState     // CmdPersist
	// AllocID and Alloc answer an AllocRequested event (CmdAllocReply).
	AllocID uint64
	Alloc   *schemas.AllocReply
	Helper  *schemas.HelperRequest // CmdHelper
	// Fence marks a CmdKill of a task that is not its target's (an
	// impostor found through a heartbeat, a ps reply or a late launch
	// reply). Such kills follow what other parties publish, so a flood of
	// them is possible: the edge may merge or drop surplus ones, since the
	// impostor's next message is fenced again.
	Fence bool
}

// Config holds every timer and limit of the engine. Zero fields take the
// defaults of DefaultConfig when passed through WithDefaults.
type Config struct {
	LaunchTimeout      time.Duration // no first heartbeat by then: ps the host [3s]
	ReplyTimeout       time.Duration // a request reply is late after this [1s]; also the ps/kill retry period
	HeartbeatStale     time.Duration // an active task is stale after this without a heartbeat [5s]
	HostStale          time.Duration // a host is stale after this without a HostStatus [10s]
	RecoveryGrace      time.Duration // no launches and no staleness after a start or reconnect [= HeartbeatStale]
	BackoffBase        time.Duration // first global backoff wait [500ms]
	BackoffFactor      float64       // growth per level [2]
	BackoffMax         time.Duration // cap on any wait [10s]
	BackoffJitter      float64       // ± fraction applied before the cap [0.2]
	MaxPendingLaunches int           // launches awaiting a first heartbeat [1]
	HostHeadroomMiB    int64         // RAM kept free on every host [0]
	RestartDelayBase   time.Duration // first per-target delay after a crash [1s]
	RestartDelayMax    time.Duration // cap of the per-target crash delay [5m]
	RestartDelayReset  time.Duration // healthy run that resets the crash delay [10m]
	MaxSkips           int           // pending targets passed over per decision when the best does not fit [64]
	LaunchSentReported bool          // the edge feeds LaunchSent; launch timeouts count from it
	// LaunchAtMinimum places every task with its minimum budget (wrapper
	// plus helpers_min_mib) on its host, the best fit for that size; the
	// task gets the rest of its full size as fleet helpers from the
	// memory manager. Off, a task gets its full size on one host when
	// one holds it [false].
	LaunchAtMinimum bool
	// HelperGrainMiB is the unit of fleet helper grants: each grant is a
	// whole number of grains, so that helpers made of fixed-size threads
	// (1792 MiB in the hacking model) waste none of it [0: 1 MiB].
	HelperGrainMiB int64
	// Horizon is how far ahead, from the engine's start, the hacking
	// targets are planned: the engine focuses the fleet's RAM on the
	// target that brings the most income by then, its preparation
	// included (see focus.go). 0 plans nothing: every target ranks by its
	// estimate's priority [0].
	Horizon time.Duration
	// MaxStepGap is the longest the edge lets pass between two steps: its
	// ticker steps the engine every tick. A longer gap means the selector
	// itself was not running (a long GC pause, a stopped VM or process):
	// silence up to then is no evidence, so task and host staleness are
	// measured afresh, as after a reconnect. The service sets it to a
	// number of ticks; 0 turns the check off [0].
	MaxStepGap time.Duration
	// UnhealthyHostFraction: when more than this fraction of the hosts went
	// silent within one HostStale window while others still report, the
	// selector is in partial disruption and declares silent hosts lost at
	// LostHostsPerMin only [0.55].
	UnhealthyHostFraction float64
	// LostHostsPerMin is the rate at which hosts are declared lost in
	// partial disruption [6].
	LostHostsPerMin float64
	Seed            uint64          // seed of the jitter and task-id sources; pass a random one per process start
	Workload        workload.Params // estimator constants [workload.DefaultParams()]
}
