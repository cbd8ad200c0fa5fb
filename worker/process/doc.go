// Package process is the worker's "exec" executor (WORKER_EXECUTOR=exec): it
// runs each task as a real OS process tree, measures and limits its RAM with a
// memory group per task (internal/cgroup), and serves the local task API
// (taskapi) through which tasks report progress, their end and ask for helper
// RAM. Importing it registers it with worker.Register.
//
// # What runs
//
// Only the commands of the tasks file (WORKER_TASKS_FILE, TOML, see
// tasks.schema.json and LoadTasks) ever run: a launch names a type. The
// launch's args reach the task as JSON in TASK_ARGS, never in argv. The file
// is strict: unknown keys, duplicate types, an empty argv, a program that is
// not an absolute path or a name found in PATH at load time, all stop startup
// with an error naming the file, the entry and the accepted form.
//
// # Starting
//
// The command starts in its own process group (Setpgid), with PATH, HOME,
// USER, LOGNAME, LANG, LC_ALL, TZ and TMPDIR of the agent, the entry's env,
// and TASK_ID, TASK_EPOCH, TASK_TARGET, TASK_TYPE, TASK_HOST,
// TASK_BUDGET_MIB, TASK_HELPERS_MIB, TASK_API (the socket), TASK_TOKEN (a
// random per-task secret) and TASK_ARGS. Its stdout and stderr go to
// <state dir>/logs/<group>.log, capped at WORKER_TASK_LOG_MAX (past the cap
// the output is drained and discarded, and a closing line says how much).
// Each task gets its own memory group limited to its budget plus
// WORKER_MEMORY_SLACK_MIB. In cgroup v2 the process starts inside it
// (CLONE_INTO_CGROUP); in v1 and proc mode its pid is added right after the
// fork, so memory touched and children forked in that short window (before
// the wrapper's first instruction, in practice) stay outside the memory
// group, though still in the process group, which every kill signals too.
// Children forked later inherit the group.
//
// # Measuring
//
// Sample reads the group's usage (the whole tree; cgroup files, or a shared
// /proc walk in proc mode), at most every 200 ms per task. Executor.UsedMiB
// is the host's real used RAM (/proc/meminfo MemTotal - MemAvailable) seen
// through WORKER_RAM_MIB: the tasks count in full, other use only for what
// does not fit in MemTotal - WORKER_RAM_MIB (the part of the host that is not
// the agent's). The proc mode has no kernel limit: a monitor kills a task
// whose process group uses more than its limit and reports it oom.
//
// # Exits
//
// exit 0 → done, with the metrics the task reported through /v1/finish (none
// without a report); a reported failure → failed with its reason (such as
// helpers_unavailable); stopped by its memory limit → failed, oom; a signal
// → failed, crashed; another status → failed, exited, with the code. After
// the wrapper exits on its own, whatever is left of its process and memory
// groups is killed before the Exited hook runs: no helper outlives its task.
// Task.Kill sends SIGTERM to both groups, SIGKILL after the entry's
// kill_grace, and returns once both are empty and the group is removed.
//
// # Helper RAM
//
// A grant must fit the task's TASK_HELPERS_MIB and the host's real free RAM:
// MemAvailable minus the RAM granted but not yet used by live tasks (for each,
// wrapper budget + grant - measured use, at least 0). RAM in use is already
// gone from MemAvailable, so grants are counted against measured use and
// nothing is counted twice. Refusals are *taskapi.Refusal with the codes
// over_budget, no_host_ram, not_granted or unknown_task.
//
// # Restart
//
// <state dir>/tasks holds one JSON file per live task (task id, pid, pgid,
// group, start time, boot id). A new executor on the same state directory
// kills what an earlier agent left running, rather than re-adopting it: the
// old agent's exit status, log pipe and API tokens are gone, so a re-adopted
// task could be neither classified nor served. For each state file it
// SIGKILLs the process group (only processes started since the task, on the
// same boot) and the memory group, waits until both are empty, then removes
// the group and the file; then it does the same for any group left under the
// agent's parent without a state file. Each is logged. No process keeps RAM
// that nobody accounts for; the selector sees those tasks' heartbeats stop
// and requeues them.
package process
