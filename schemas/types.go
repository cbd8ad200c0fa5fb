// Package schemas holds taskselector's wire format, version 1: the Go types of
// every message that crosses NATS or is stored in JetStream KV, strict decoders
// for them, and a JSON Schema file per message.
//
// All messages are JSON and carry "v": 1. RAM is an integer number of MiB in
// fields ending in _mib. Times are RFC 3339 UTC with nanoseconds. Host, target
// and type names are UTF-8 strings of 1 to 256 bytes.
//
// # Decoding
//
// DecodeLaunchRequest, DecodeHeartbeat and the other Decode functions are
// strict where it matters and lenient where forward compatibility needs it:
//   - a message over MaxMessageBytes (MaxStatusBytes for SelectorStatus), or
//     that is not a JSON object, is refused;
//   - "v" must be Version;
//   - every field whose json tag has no omitempty is required: a missing key
//     is an error even when the zero value would be valid; null stands for
//     "none" only in pointer, slice and map fields;
//   - integers are written without fraction or exponent and are never
//     negative; RAM figures (fields ending in _mib) are at most MaxMiB;
//     floats are finite (1e400 is refused); names are 1 to
//     MaxNameBytes bytes of valid UTF-8; enums (code, kind, state, profile,
//     disruption) take only their known values; each message's Validate method lists its
//     own rules (epoch, pid and seq >= 1, progress in 0..1, and so on);
//   - unknown fields are ignored, and of duplicate keys the last one counts.
//
// Every error is a *FieldError naming the message and the field, such as
// `schemas: heartbeat: field "ram.used_mib": negative`.
//
// DecodeHeartbeatInto applies the same rules as DecodeHeartbeat without
// encoding/json and, for a task's successive heartbeats, without allocating;
// it is the selector's hot path. AppendHeartbeat is its allocation-free
// counterpart for workers.
//
// # Encoding
//
// Marshal sets a zero "v" to Version, writes every time in UTC, validates the
// message and refuses one over its size limit.
//
// # JSON Schemas
//
// Schema returns the JSON Schema (draft 2020-12) of each message, with
// examples; the files live in schemas/json and tests keep them in step with
// the Go types.
package schemas

import "time"

// Version is the wire format version every message carries in its "v" field.
const Version = 1

// MaxMessageBytes is the largest message a decoder accepts.
const MaxMessageBytes = 64 << 10

// MaxNameBytes is the longest host, target or type name, in bytes.
const MaxNameBytes = 256

// Reply error codes. A LaunchReply carries insufficient_ram, unknown_type,
// invalid or draining; a KillReply or PsReply carries invalid or failed. The
// memory-manager replies' codes are in alloc.go.
const (
	CodeInsufficientRAM = "insufficient_ram"
	CodeUnknownType     = "unknown_type"
	CodeInvalid         = "invalid"
	CodeDraining        = "draining"
	// CodeFailed: the worker tried to carry out a kill or ps and could not
	// (the executor failed); the request may be retried.
	CodeFailed = "failed"
)

// Task event kinds.
const (
	EventDone   = "done"
	EventFailed = "failed"
)

// Failure reasons carried by a failed TaskEvent. Other reasons are allowed.
const (
	ReasonHelpersUnavailable = "helpers_unavailable"
	ReasonExited             = "exited"
	ReasonKilled             = "killed"
	ReasonCrashed            = "crashed"
	// ReasonFenced: the worker stopped the task itself because it was cut
	// off from NATS for longer than its fence time.
	ReasonFenced = "fenced"
	// ReasonOOM: the task's memory limit (its budget plus the worker's
	// slack) stopped it. The selector takes it for RAM pressure.
	ReasonOOM = "oom"
)

// MaxMiB is the largest RAM figure, in MiB, that any message may carry
// (1 EiB). Every *_mib field of every message is checked against it: the
// decoders (DecodeHeartbeatInto included), Validate and Marshal refuse larger
// values, so that sums of them in the selector's ledger cannot overflow.
const MaxMiB = 1 << 40

// Target profiles.
const (
	ProfileDeclared = "declared"
	ProfileHacking  = "hacking"
)

// Persisted task states.
const (
	TaskLaunching = "launching"
	TaskActive    = "active"
	TaskSuspect   = "suspect"
)

// TaskRAM is the RAM a launch asks for: the wrapper and its helpers.
type TaskRAM struct {
	WrapperMiB int64 `json:"wrapper_mib"`
	HelpersMiB int64 `json:"helpers_mib"`
}

// LaunchRequest asks a worker, on tasks.launch.<host>, to start a task.
type LaunchRequest struct {
	V      int            `json:"v"`
	TaskID string         `json:"task_id"`
	Epoch  uint64         `json:"epoch"`
	Target string         `json:"target"`
	Type   string         `json:"type"`
	RAM    TaskRAM        `json:"ram"`
	Args   map[string]any `json:"args"`
}

// ReplyError is the error half of a reply.
type ReplyError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// LaunchReply answers a LaunchRequest: a PID on success, or an error.
type LaunchReply struct {
	V      int         `json:"v"`
	TaskID string      `json:"task_id"`
	PID    int64       `json:"pid,omitempty"`
	Error  *ReplyError `json:"error,omitempty"`
}

// HeartbeatRAM is a task's budget and what it really uses.
type HeartbeatRAM struct {
	BudgetMiB int64 `json:"budget_mib"`
	UsedMiB   int64 `json:"used_mib"`
	// FleetHelpersMiB is the helper RAM granted to the task on hosts
	// anywhere in the fleet (the memory-manager protocol), outside its
	// budget on its own host. 0 (omitted) from workers that do not know it.
	FleetHelpersMiB int64 `json:"fleet_helpers_mib,omitempty"`
}

// Heartbeat is published by a running task (or its worker) on
// tasks.heartbeat.<host>.<target>. Every heartbeat carries enough to restore
// the task after a selector restart.
type Heartbeat struct {
	V        int          `json:"v"`
	TaskID   string       `json:"task_id"`
	Epoch    uint64       `json:"epoch"`
	PID      int64        `json:"pid"`
	Host     string       `json:"host"`
	Target   string       `json:"target"`
	Type     string       `json:"type"`
	Seq      uint64       `json:"seq"`
	RAM      HeartbeatRAM `json:"ram"`
	Progress *float64     `json:"progress,omitempty"`
	SentAt   time.Time    `json:"sent_at"`
}

// TaskEvent reports that a task finished (done) or failed. Events go through
// the TASK_EVENTS stream so that none is lost.
type TaskEvent struct {
	V      int    `json:"v"`
	TaskID string `json:"task_id"`
	Epoch  uint64 `json:"epoch"`
	PID    int64  `json:"pid"`
	Host   string `json:"host"`
	Target string `json:"target"`
	Type   string `json:"type"`
	Kind   string `json:"kind"`
	Reason string `json:"reason,omitempty"`
	// ExitCode is the exit status of a task process that exited non-zero
	// (reason exited), when the worker runs real processes.
	ExitCode *int           `json:"exit_code,omitempty"`
	Metrics  map[string]any `json:"metrics,omitempty"`
	At       time.Time      `json:"at"`
}

// KillRequest asks a worker to stop a task.
type KillRequest struct {
	V      int    `json:"v"`
	TaskID string `json:"task_id"`
	PID    int64  `json:"pid"`
	Reason string `json:"reason"`
}

// KillReply reports whether the task still runs; Running is false once it is gone.
// A worker that could not act on the request (it did not decode, or the
// host refuses) sets Error, and Running says nothing then.
type KillReply struct {
	V       int         `json:"v"`
	TaskID  string      `json:"task_id"`
	PID     int64       `json:"pid"`
	Running bool        `json:"running"`
	Error   *ReplyError `json:"error,omitempty"`
}

// PsRequest asks a worker which tasks it runs, optionally only the given PIDs.
type PsRequest struct {
	V    int     `json:"v"`
	PIDs []int64 `json:"pids,omitempty"`
}

// PsTask is one running task in a PsReply.
type PsTask struct {
	TaskID    string    `json:"task_id"`
	Epoch     uint64    `json:"epoch"`
	PID       int64     `json:"pid"`
	Target    string    `json:"target"`
	Type      string    `json:"type"`
	RAM       TaskRAM   `json:"ram"`
	StartedAt time.Time `json:"started_at"`
	// Log is the path of the task's output log on its host, for executors
	// that keep one.
	Log string `json:"log,omitempty"`
}

// PsEnded is a task that ended recently, as a PsReply names it: its event
// (Kind done or failed) is on its way to the selector, or already there.
type PsEnded struct {
	TaskID string `json:"task_id"`
	Epoch  uint64 `json:"epoch"`
	Kind   string `json:"kind"`
}

// PsStarting is a task whose launch a worker is carrying out: its process
// is being started and has no PID yet.
type PsStarting struct {
	TaskID string `json:"task_id"`
	Epoch  uint64 `json:"epoch"`
	Target string `json:"target"`
}

// PsReply lists the tasks a host runs; in Starting, the tasks it is
// starting (only when the request names no PID); and in Ended, tasks that
// ended recently (those the request names by PID, or the most recent ones),
// so that a task that finished is not taken for one that vanished while its
// done event is still on its way, nor one being started for one that never
// came. A worker that could not answer the request sets Error, and Tasks
// says nothing then.
type PsReply struct {
	V        int          `json:"v"`
	Host     string       `json:"host"`
	Tasks    []PsTask     `json:"tasks"`
	Starting []PsStarting `json:"starting,omitempty"`
	Ended    []PsEnded    `json:"ended,omitempty"`
	Error    *ReplyError  `json:"error,omitempty"`
}

// HostRAM is a host's capacity and current use.
type HostRAM struct {
	TotalMiB int64 `json:"total_mib"`
	UsedMiB  int64 `json:"used_mib"`
}

// HostStatus is published by every worker on tasks.host.<host> each interval.
type HostStatus struct {
	V        int      `json:"v"`
	Host     string   `json:"host"`
	RAM      HostRAM  `json:"ram"`
	Tasks    []string `json:"tasks"`
	Draining bool     `json:"draining"`
	// Memory says how the worker measures and limits its tasks' RAM:
	// cgroup2, cgroup1, proc (a /proc walk, no limit enforced) or sim.
	// Empty from workers that do not say.
	Memory string `json:"memory,omitempty"`
	// Helpers are the fleet helpers the host runs for tasks on any host
	// (the memory-manager protocol). Their RAM is part of RAM.UsedMiB.
	Helpers []HelperStatus `json:"helpers,omitempty"`
	SentAt  time.Time      `json:"sent_at"`
}

// Phase is one lifecycle phase of a declared target.
type Phase struct {
	Type           string  `json:"type"`
	WrapperMiB     int64   `json:"wrapper_mib"`
	HelpersMinMiB  int64   `json:"helpers_min_mib"`
	HelpersFullMiB int64   `json:"helpers_full_mib"`
	WorkS          float64 `json:"work_s"`
	Repeat         bool    `json:"repeat,omitempty"`
	// Args are what the phase's task program gets (TASK_ARGS with the exec
	// executor): the launch request carries them instead of the spec.
	Args map[string]any `json:"args,omitempty"`
}

// HackingMetrics describe a target of the hacking profile
// (see the hacking model reference).
type HackingMetrics struct {
	Security              float64 `json:"security"`
	MinSecurity           float64 `json:"min_security"`
	Money                 float64 `json:"money"`
	MaxMoney              float64 `json:"max_money"`
	GrowthLogPerThread    float64 `json:"growth_log_per_thread"`
	HackFractionPerThread float64 `json:"hack_fraction_per_thread"`
	HackChance            float64 `json:"hack_chance"`
	HackTimeMS            float64 `json:"hack_time_ms"`
}

// TargetSpec is what an operator declares for a target, stored in the
// targets KV bucket under the target's key.
type TargetSpec struct {
	V       int             `json:"v"`
	Profile string          `json:"profile"`
	Value   *float64        `json:"value,omitempty"`
	Phases  []Phase         `json:"phases,omitempty"`
	Metrics *HackingMetrics `json:"metrics,omitempty"`
}

// TaskRecord is the task half of a TaskState.
type TaskRecord struct {
	TaskID      string     `json:"task_id"`
	PID         int64      `json:"pid"`
	Type        string     `json:"type"`
	Host        string     `json:"host"`
	State       string     `json:"state"`
	BudgetMiB   int64      `json:"budget_mib"`
	WrapperMiB  int64      `json:"wrapper_mib,omitempty"`
	LaunchedAt  time.Time  `json:"launched_at"`
	ConfirmedAt *time.Time `json:"confirmed_at,omitempty"`
}

// TaskState is what the selector persists per target in the tasks KV bucket.
type TaskState struct {
	V        int         `json:"v"`
	Target   string      `json:"target"`
	Phase    string      `json:"phase"`
	Complete bool        `json:"complete,omitempty"` // the last phase finished; no task until the spec changes
	Epoch    uint64      `json:"epoch"`
	Task     *TaskRecord `json:"task"`
	// Blocked is why launches of this target were refused for good; it
	// holds while the target's declared spec hashes to BlockedSpec.
	Blocked     string    `json:"blocked,omitempty"`
	BlockedSpec string    `json:"blocked_spec,omitempty"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// Backoff is the global launch backoff as status shows it.
type Backoff struct {
	Level        int       `json:"level"`
	NextLaunchAt time.Time `json:"next_launch_at"`
}

// TargetStatus is one target's line in SelectorStatus.
type TargetStatus struct {
	Target         string `json:"target"`
	Phase          string `json:"phase"`
	State          string `json:"state"`
	TaskID         string `json:"task_id,omitempty"`
	Epoch          uint64 `json:"epoch"`
	PID            int64  `json:"pid,omitempty"`
	Host           string `json:"host,omitempty"`
	BudgetMiB      int64  `json:"budget_mib,omitempty"`
	FullMiB        int64  `json:"full_mib,omitempty"`
	HeartbeatAgeMS int64  `json:"heartbeat_age_ms"`
	Reason         string `json:"reason,omitempty"`
	// Helpers are the fleet helpers its task holds (the memory-manager
	// protocol), starting or running, on any host.
	Helpers []HelperGrant `json:"helpers,omitempty"`
}

// HostStatusLine is one host's line in SelectorStatus.
type HostStatusLine struct {
	Host        string `json:"host"`
	TotalMiB    int64  `json:"total_mib"`
	UsedMiB     int64  `json:"used_mib"`
	ReservedMiB int64  `json:"reserved_mib"`
	FreeMiB     int64  `json:"free_mib"`
	Tasks       int    `json:"tasks"`
	Stale       bool   `json:"stale"`
	Lost        bool   `json:"lost,omitempty"`
	Draining    bool   `json:"draining,omitempty"`
	Avoided     bool   `json:"avoided,omitempty"`
	// HelpersMiB is the RAM of the fleet helpers booked on the host (part
	// of ReservedMiB); NoHelpers says its worker does not run fleet
	// helpers (a helper request found no responders).
	HelpersMiB int64 `json:"helpers_mib,omitempty"`
	NoHelpers  bool  `json:"no_helpers,omitempty"`
}

// Counters are the selector's cumulative counts since it started.
type Counters struct {
	Launches          uint64            `json:"launches"`
	Confirmed         uint64            `json:"confirmed"`
	Failures          map[string]uint64 `json:"failures"`
	Timeouts          uint64            `json:"timeouts"`
	Stale             uint64            `json:"stale"`
	Kills             uint64            `json:"kills"`
	Requeues          uint64            `json:"requeues"`
	Adoptions         uint64            `json:"adoptions"`
	FencedHeartbeats  uint64            `json:"fenced_heartbeats"`    // heartbeats answered with a kill
	Fences            uint64            `json:"fences,omitempty"`     // kills sent to tasks that are not their target's, from any cause
	InputGaps         uint64            `json:"input_gaps,omitempty"` // times the edge reported dropped heartbeats or host statuses
	Heartbeats        uint64            `json:"heartbeats"`
	Events            uint64            `json:"events"`
	DuplicateEvents   uint64            `json:"duplicate_events"`
	PhasesCompleted   uint64            `json:"phases_completed"`
	HostsLost         uint64            `json:"hosts_lost"`
	MalformedMessages map[string]uint64 `json:"malformed_messages"`
	// HostMismatches counts, by source, the messages among
	// MalformedMessages whose body named another host than their subject.
	HostMismatches    map[string]uint64 `json:"host_mismatches,omitempty"`
	SlowConsumerDrops uint64            `json:"slow_consumer_drops,omitempty"`
	StoreErrors       uint64            `json:"store_errors,omitempty"`
}

// SelectorStatus is the snapshot the selector answers on tasks.selector.status.
type SelectorStatus struct {
	V              int    `json:"v"`
	Ready          bool   `json:"ready"`
	Connected      bool   `json:"connected"`
	Degraded       bool   `json:"degraded"`
	DegradedReason string `json:"degraded_reason,omitempty"`
	// Disruption is the mass-failure mode: normal, partial (many hosts went
	// silent at once: they are declared lost at a limited rate) or full (no
	// host reports, or the selector is disconnected: nothing is declared
	// lost and nothing is launched).
	Disruption      string           `json:"disruption,omitempty"`
	Recovering      bool             `json:"recovering"`
	LaunchesStopped string           `json:"launches_stopped,omitempty"`
	Backoff         Backoff          `json:"backoff"`
	PendingLaunches int              `json:"pending_launches"`
	Targets         []TargetStatus   `json:"targets"`
	Hosts           []HostStatusLine `json:"hosts"`
	Counters        Counters         `json:"counters"`
	At              time.Time        `json:"at"`
	// Role is RoleLeader or RoleStandby with a leader lease, and empty
	// without one (a lone selector).
	Role string `json:"role,omitempty"`
	// Term is the lease's term (the lease key's revision when it was
	// taken) this selector last saw held; 0 when none.
	Term uint64 `json:"term,omitempty"`
	// Leader is the id of the lease holder this selector last saw; empty
	// when none.
	Leader string `json:"leader,omitempty"`
}

// Roles shown in SelectorStatus.Role.
const (
	RoleLeader  = "leader"
	RoleStandby = "standby"
)

// The memory-manager protocol: a running task may ask the selector for helper
// RAM anywhere in the fleet. The selector books it in its ledger, starts the
// helpers through their hosts' workers (tasks.helper.<host>) and answers with
// the grants. Helpers belong to their task: they carry its epoch, and they
// are stopped when it ends.

// Helper request operations (HelperRequest.Op).
const (
	HelperStart = "start"
	HelperStop  = "stop"
)

// AllocRequest asks the selector, on tasks.alloc (request/reply), for more
// helper RAM for a running task, or gives some back. The task's own worker
// sends it on the task's behalf.
type AllocRequest struct {
	V      int    `json:"v"`
	TaskID string `json:"task_id"`
	Epoch  uint64 `json:"epoch"`
	Target string `json:"target"`
	// Host is the task's (its wrapper's) host.
	Host string `json:"host"`
	// MiB is the helper RAM wanted beyond what the task holds; MinMiB the
	// least worth having: a grant below it is a refusal. Both may be 0 in a
	// request that only releases.
	MiB    int64 `json:"mib"`
	MinMiB int64 `json:"min_mib"`
	// Release names helpers (by HelperID) the task gives back.
	Release []string `json:"release,omitempty"`
}

// HelperGrant is helper RAM granted to a task on one host.
type HelperGrant struct {
	HelperID string `json:"helper_id"`
	Host     string `json:"host"`
	MiB      int64  `json:"mib"`
}

// AllocReply answers an AllocRequest with the grants made (their sum is
// between the request's MinMiB and MiB), or an error: insufficient_ram (the
// fleet has no room for the helpers: the task could not allocate RAM for
// them), unknown_task, or over_budget.
//
// Held lists every grant the task holds after the call, new ones included,
// so that a request for 0 MiB tells a task which of its helpers still stand
// (a helper on a host that was lost is gone from it).
type AllocReply struct {
	V      int           `json:"v"`
	TaskID string        `json:"task_id"`
	Grants []HelperGrant `json:"grants,omitempty"`
	Held   []HelperGrant `json:"held,omitempty"`
	Error  *ReplyError   `json:"error,omitempty"`
}

// HelperRequest asks a worker, on tasks.helper.<host>, to start or stop one
// helper of a task that may run on another host (TaskHost).
type HelperRequest struct {
	V        int    `json:"v"`
	Op       string `json:"op"`
	HelperID string `json:"helper_id"`
	TaskID   string `json:"task_id"`
	Epoch    uint64 `json:"epoch"`
	Target   string `json:"target"`
	Type     string `json:"type"`
	TaskHost string `json:"task_host"`
	MiB      int64  `json:"mib"`
}

// HelperReply answers a HelperRequest: whether the helper runs after it.
// A worker that could not act sets Error, and Running says nothing then.
type HelperReply struct {
	V        int         `json:"v"`
	HelperID string      `json:"helper_id"`
	Running  bool        `json:"running"`
	Error    *ReplyError `json:"error,omitempty"`
}

// HelperStatus is one fleet helper as its host lists it in HostStatus.
type HelperStatus struct {
	HelperID string `json:"helper_id"`
	TaskID   string `json:"task_id"`
	Epoch    uint64 `json:"epoch"`
	Target   string `json:"target"`
	MiB      int64  `json:"mib"`
}
