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
//   - helpers.go, helperstate.go: the memory manager: helper RAM granted
//     to tasks anywhere in the fleet, and the helpers' states.
//   - focus.go: with a planning horizon, the hacking target the fleet's
//     RAM goes to, and the preemption of the others for it.
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
//     earlier task, a ps found a suspect task running, or the task is
//     preempted for the focus target), or sent again after ReplyTimeout.
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
//
// # The memory manager
//
// The engine is the fleet's memory manager: a running task may ask it for
// helper RAM on any host (AllocRequested, from tasks.alloc). The rules:
//
//   - Who may ask: the target's current task, by its id, epoch, target and
//     host, while it runs (launched or active) and is not being stopped.
//     Anything else is answered unknown_task.
//   - The budget: a task may hold, on its own host and in fleet helpers
//     together, its phase's full size as estimated (wrapper plus
//     helpers_full_mib). A request whose least useful size (min_mib) is
//     above what that leaves is answered over_budget; a larger one is cut
//     to it.
//   - Where: hosts that may take a new task (seen, not stale, lost or
//     draining) and run fleet helpers, against the same ledger as
//     placement: on the host with the least RAM free that holds the whole
//     request, or else on the roomiest hosts, in as few pieces as may be.
//     Helpers count in their host's ledger, so every later placement and
//     grant sees them.
//   - The answer: each piece is a helper, booked at once and started
//     through its host's worker (CmdHelper start); the request is
//     answered (CmdAllocReply) once every start is answered, with the
//     pieces that started. A start that fails or finds no responders is
//     refunded; one that times out may have run, so it is stopped. Fewer
//     than min_mib MiB started, or none at all, is a refusal: what did
//     start is stopped and the reply is insufficient_ram. So is a request
//     the free RAM cannot cover at once. Every refusal is counted
//     (Failures["alloc_refused"]); the global backoff takes one step only
//     when the task needed the RAM to run: its budget and fleet helpers
//     together are below its phase's minimum (wrapper plus
//     helpers_min_mib, as estimated), so it could not allocate RAM for
//     its helpers. A task placed with its minimum is below it only when
//     its phase's estimate has grown or fleet helpers it held were lost.
//     A top-up of a task at or above its minimum fails nothing (the task
//     runs on), and takes no step.
//   - Top-ups before new tasks: a refused request (cut to the task's
//     budget) is the task's unmet helper RAM until a request of it is
//     granted, it closes, or unmetFor (a minute) passes without a new
//     refusal. While tasks have unmet RAM, a new task is launched only if
//     the RAM free for helpers, less all of it, still holds the new
//     task's minimum: the RAM that frees goes to the tasks that run, up
//     to their phase's full size, rather than to one more wrapper at its
//     minimum. Unmet RAM is not persisted.
//   - Release: helpers a request names in release leave the task at once
//     (they are no longer in its budget nor in held) and are stopped;
//     their RAM stays booked on their host until the stop is confirmed.
//   - Fencing: a helper carries its task's epoch. When the task closes,
//     for whatever reason, its helpers are stopped, and stops are sent
//     again every ReplyTimeout until confirmed, as kills are. A host that
//     is lost takes its helpers out of the ledger and out of held: they
//     no longer work for their task; should the host come back running
//     them, its status shows them as orphans, and they are stopped.
//   - v1 workers: a helper request that finds no responders marks its host
//     as running no fleet helpers; nothing is granted there until the
//     host comes back from being lost or lists helpers in its status.
//   - Restarts: grants are not persisted. What runs is what hosts say in
//     HostStatus.Helpers, and their RAM is part of the used RAM they
//     report, so until a helper is booked its RAM counts as foreign use and
//     is never granted twice. The first status of each host after a start
//     books its helpers of their target's current task (same id and epoch)
//     to that task; any helper the engine does not hold (on a later
//     status, or of another task or epoch) is an orphan and is stopped. A
//     request that was being answered when the selector stopped gets no
//     reply; the task asks again, and a helper started meanwhile is
//     learned from the next status or stopped as an orphan.
//
// A helper's state changes only along this table ("-": not in the ledger):
//
//	from                        helper event  to
//	-                           grant         starting
//	starting                    started       running
//	starting, stopping          start-failed  -
//	-                           learn         running
//	-                           orphan        stopping
//	any                         stop          stopping
//	stopping                    stopped       -
//	any                         lost          -
//
// The helper events:
//
//   - grant: RAM is granted to a task, booked, and the start sent.
//   - started: the start's reply says the helper runs.
//   - start-failed: the start's reply says it does not run, or nobody
//     listens on the host's helper subject; its RAM is refunded.
//   - learn: a host's first status since the engine started lists it for
//     its target's current task.
//   - orphan: a host status lists a helper that no task of the engine
//     holds.
//   - stop: its task released it or closed, or its start timed out; the
//     stop is sent (once the start is answered, if that is still out).
//   - stopped: its stop is confirmed (or finds no responders).
//   - lost: its host is lost.
package selector
