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
//
// # Layout
//
//   - api.go: the events the engine takes and the commands it returns.
//   - engine.go: the Engine, New and the rebuild from persisted state, Step,
//     and persisting a target's state.
//   - state.go: the task, target and host types, and the ledger of the RAM
//     each host has booked.
//   - taskstate.go: a task's states and their transitions (see below).
//   - targets.go: declared targets, their specs, lifecycle phases and
//     estimates, and the queue of targets waiting for a task.
//   - placement.go: the launch gates and where a new task goes.
//   - lifecycle.go: a task's life: launch, confirm, adopt, suspect, probe
//     (ps), kill and close.
//   - taskevents.go: the done and failed events of tasks, and how a done
//     event moves its target to its next phase.
//   - fencing.go: answering tasks that are not their target's with a kill.
//   - health.go: ticks, the silence of tasks and hosts, lost hosts and the
//     disruption modes.
//   - status.go: the status shown to operators.
//
// # Task states
//
// A target has at most one task, one launch of it. A task's state
// (taskState) is where that launch stands; it is not the target's lifecycle
// phase (the phase of its spec, such as "build" or "serve", that the task
// runs), though the state shown in status (StateLaunching, StateActive,
// StateSuspect) and the state persisted in its record (schemas.TaskLaunching,
// schemas.TaskActive, schemas.TaskSuspect) are both derived from it. A task's
// state changes only along this table, where "-" is no task (not yet built,
// or closed) and "any" is any of the five states:
//
//	from                          event           to
//	-                             launch          launching
//	-                             restore         suspect
//	-                             adopt           active
//	launching                     reply           launched
//	launching, launched, suspect  heartbeat       active
//	suspect                       revive          active
//	launching, launched           launch-timeout  suspect
//	active                        stale           suspect
//	any                           kill            killing
//	any                           close           -
//
// The states:
//
//   - launching: the launch was sent; neither its reply nor its first
//     heartbeat came.
//   - launched: the launch reply came; no heartbeat yet.
//   - active: a heartbeat confirmed it.
//   - suspect: it timed out, went stale, or was recorded by an earlier run
//     and is not confirmed yet; a ps of its host decides.
//   - killing: a kill was sent; the task closes once the kill is confirmed.
//
// The events:
//
//   - launch: the engine places a pending target on a host and launches it.
//   - restore: at start, a record persisted by an earlier run names the task.
//   - adopt: a heartbeat names a running task of a newer epoch that no record
//     names (the tasks bucket was lost, or the launch was sent just before a
//     crash).
//   - reply: the launch reply came without an error.
//   - heartbeat: a heartbeat of a task not yet active (unless its target was
//     deleted, or its phase was done by an earlier task: then it is killed;
//     a task being killed stays so).
//   - revive: a ps shows a task that went stale running, and the edge
//     dropped heartbeats since: its silence may be the selector's own.
//   - launch-timeout: no first heartbeat within LaunchTimeout of the launch
//     leaving.
//   - stale: no heartbeat within HeartbeatStale.
//   - kill: a kill is sent (the target was deleted, the phase was done by an
//     earlier task, or a ps found a suspect task running), or sent again
//     after ReplyTimeout.
//   - close: the task ends: its done or failed event came, its kill was
//     confirmed, a ps found it gone, its launch was refused or never sent,
//     or its host was lost. Its RAM is freed, its epoch closed and its target
//     requeued, advanced, blocked or forgotten.
//
// Beside its state, a task has sub-states that the table leaves out: why it
// is suspect or killed (suspicion), whether a heartbeat confirmed it, whether
// it holds a pending-launch slot, whether this engine placed it, whether its
// launch has left the edge, and whether a ps or kill of it is outstanding,
// went unanswered, or found it finished with its done event still to come.
package selector
