// Package worker is the worker agent: one Agent per host answers the
// selector's launch, kill and ps requests for that host over NATS, sends a
// heartbeat for each of its tasks, publishes the host's HostStatus and reports
// every task's end as a TaskEvent on JetStream. Tasks are run by an Executor,
// chosen by name (WORKER_EXECUTOR); this package has the "sim" executor, which
// simulates tasks with the workload model.
//
// # Agent behaviour
//
//   - Launch (tasks.launch.<host>). The request is strictly decoded; a
//     malformed one is counted (Stats.Malformed), logged at most once per
//     5 s per kind, and answered with error code invalid (carrying the
//     task_id when one can be read). A launch is refused with draining while
//     the agent drains or is fenced, with unknown_type or invalid when the executor cannot
//     run the type or its args, and with insufficient_ram when wrapper +
//     helpers does not fit the free RAM: the capacity minus every task counted
//     at the larger of its budget and its use, minus RAM used by anything else.
//     A started task's first heartbeat (seq 1) is published before the reply.
//   - Idempotence. A launch whose task_id runs already is answered with that
//     task's PID and starts nothing (invalid if it names another target or
//     epoch). The last Config.EndedMemory ended task_ids are remembered too: a
//     repeated launch for one of them is answered with the old PID and starts
//     nothing, so a retried request whose first reply was lost never runs the
//     work twice; the task's event tells the selector how it ended, and a ps
//     shows it gone. Refused launches are not remembered: a retry is a new
//     attempt.
//   - Heartbeats (tasks.heartbeat.<host>.<target>) every HeartbeatInterval for
//     every task that is not silent, with seq counting from 1, the budget
//     (wrapper + helpers asked), the RAM really used and the progress.
//     HostStatus (tasks.host.<host>) is published at start, every interval and
//     at shutdown, with used_mib including helpers and foreign RAM.
//   - Kill (tasks.kill.<host>) stops the task named by task_id (and by PID
//     when it is not 0), frees its RAM, publishes a failed event with reason
//     killed and replies running=false. A task that is not there is answered
//     running=false too. A kill the agent cannot carry out is answered with
//     an error and running=true, never with a "gone" that could be wrong:
//     invalid when the task runs with another PID than the one named, failed
//     when the executor could not stop it.
//   - Ps (tasks.ps.<host>) lists the running tasks (silent ones included),
//     only those with the requested PIDs when there are any, ordered by PID.
//   - Events (tasks.event.<host>.<target>) go to the TASK_EVENTS stream through an
//     outbox that publishes them in order with a Nats-Msg-Id of
//     "<task_id>:<kind>" (so a retry is deduplicated by the stream) and
//     retries each with backoff until it is acked, also while the stream
//     does not exist yet. The outbox is bounded (Config.OutboxSize); when it
//     is full an event is dropped with an error log, and the selector finds
//     the task by its missing heartbeats instead.
//   - Shutdown, when Run's context ends: drain (refuse launches), kill every
//     task if Config.KillOnShutdown, publish a last HostStatus, wait for the
//     outbox, stop the micro service (requests already delivered are still
//     handled, and waited for; a kill delivered after that is answered
//     failed, running true), wait for the outbox again and close the
//     executor; the waits share one Config.FlushTimeout.
//     Tasks that are not killed are left running; the sim executor's tasks
//     then die with the process without an event.
//   - Service discovery. The launch, kill and ps subjects are the endpoints
//     of an instance of the NATS micro service taskselector-worker, with
//     the host in its metadata, so that `nats micro ls`, `info` and `stats`
//     list the workers with per-endpoint request and error counts. A reply
//     that carries an error also carries the headers Nats-Service-Error and
//     Nats-Service-Error-Code (ServiceErrorCode; service.go has the details).
//   - Malformed kill and ps requests are answered with a KillReply (running
//     true, so that a reader that ignores the error does not take the task
//     for gone) or a PsReply (no tasks) carrying error code invalid.
//   - Self-fencing (Config.FenceAfter, WORKER_FENCE_AFTER). The agent probes
//     its connection with a round trip to the server every half heartbeat
//     interval (or quarter fence time, if shorter). When no probe sent in
//     the last FenceAfter has succeeded, whether the client noticed a
//     disconnect or the connection merely stalls, the agent fences itself:
//     it stops every task, reports each as a failed event with reason
//     fenced through the outbox (published once the connection is back),
//     refuses launches with draining and publishes draining=true. The first
//     probe that succeeds lifts the fence. A host the selector declares lost
//     has then stopped its tasks, provided the selector's host-stale time is
//     at least FenceAfter + 2 × HeartbeatInterval (CheckFenceMargin);
//     fence.go gives the reasoning.
//   - Fleet helpers (the memory-manager protocol). With an executor that
//     runs them (HelperExecutor: the sim executor), the agent serves
//     tasks.helper.<host>: the selector starts and stops there helpers of
//     tasks that run on any host. Starts are idempotent by helper_id,
//     fenced by epoch per target, admitted against the host's RAM like
//     launches (helpers count in the free RAM both ways), and refused
//     draining while the agent drains or is fenced. Helpers are listed in
//     HostStatus.Helpers and stopped when the agent fences itself and at
//     shutdown with KillOnShutdown. An agent whose executor runs none, or
//     with Config.NoHelpers, does not serve the subject: the selector gets
//     no responders, as from a v1 worker. helpers.go has the rules.
//   - Fleet helper RAM for this host's tasks. A task that implements
//     FleetHelperTask (the sim executor's tasks do) and wants more helper
//     RAM than its local budget makes the agent ask the selector on
//     tasks.alloc, with a backoff after refusals (Config.AllocRetry); what
//     it holds goes back to the task and into its heartbeats
//     (ram.fleet_helpers_mib). The agent never releases a task's fleet
//     helpers: the selector stops them when the task ends. fleet.go has the
//     rules.
//
// # Launch args of the sim executor
//
// The sim executor needs the target's spec to model a task. The selector puts
// it in the launch request's args under "spec" (ArgSpec), as the TargetSpec
// JSON object exactly as stored in the targets bucket:
//
//	"args": {"spec": {"v": 1, "profile": "hacking", "metrics": {...}}}
//
// The task's type must be one of the spec's phases (till, sow or harvest for
// hacking; a phase type for declared), or the launch is refused with
// unknown_type. Without "spec", a declared task can be described by
// "work_s" (ArgWorkS, game seconds at full size, required) and optionally
// "helpers_full_mib" and "helpers_min_mib" (defaulting to the request's
// helpers_mib); the type is then any name. With neither, the launch is
// refused with invalid.
//
// # The sim executor
//
// One ticker per executor advances every task by the real time elapsed times
// SIM_SPEED, in game time. The wrapper takes its RAM from the host's pool at
// launch; at the task's first tick its helpers take what the model uses
// (at most the request's helpers_mib) from the pool, or the task fails with
// helpers_unavailable. Progress is proportional to the helper RAM (see
// workload.Run), so a scaled-down task takes longer. A done event of a
// hacking task carries the target's new metrics (workload.MetricsMap); a
// harvest task never ends by itself. PIDs count up from SIM_FIRST_PID, unique
// per host and worker process. Faults (Faults, SIM_* variables in
// SimEnvVars) make tasks crash, hang or fail to get helpers, at random with a
// seed or for named targets, and let foreign processes hold host RAM.
//
// The sim executor runs fleet helpers: a helper holds its RAM in the host's
// pool until stopped. Its tasks ask for fleet helper RAM when their local
// helper budget is below their phase's full need (FleetWant: the
// difference), and their model works with what they hold: local budget
// plus fleet helpers (workload.Run.SetHelpers), the local pool holding only
// the local part.
package worker
