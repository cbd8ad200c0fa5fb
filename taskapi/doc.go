// Package taskapi is the local task API between the worker agent's exec
// executor and the task processes it runs: the wire protocol, the Server the
// agent runs, and the SDK (Task, FromEnv) that task programs use.
//
// # Environment
//
// The executor starts every task with its identity, budget and the API's
// address in the environment (see the Env* constants): TASK_ID, TASK_EPOCH,
// TASK_TARGET, TASK_TYPE, TASK_HOST, TASK_BUDGET_MIB, TASK_HELPERS_MIB,
// TASK_API (the Unix socket path), TASK_TOKEN (a per-task secret) and
// TASK_ARGS (the target spec's args as a JSON object; args never appear in
// argv).
//
// # Wire protocol
//
// HTTP/1.1 over the agent's Unix socket (one per agent, mode 0600 by default).
// Every request is a POST with a JSON body of at most MaxBodyBytes and two
// headers naming and authenticating the task:
//
//	Task-Id: <TASK_ID>
//	Authorization: Bearer <TASK_TOKEN>
//
// Endpoints, their bodies and their replies:
//
//	POST /v1/progress         {"progress": 0.5, "metrics": {...}}     → {"ok": true}
//	POST /v1/finish           {"done": true, "metrics": {...}}        → {"ok": true}
//	                          {"done": false, "reason": "..."}        → {"ok": true}
//	POST /v1/helpers/request  {"mib": 64}                             → {"granted_mib": 128}
//	POST /v1/helpers/release  {"mib": 64}                             → {"granted_mib": 64}
//	POST /v1/helpers/fleet    {"mib": 4096, "min_mib": 1024}          → {"fleet_mib": 4096, "grants": [...], "held": [...]}
//
// granted_mib is the task's helper RAM granted in total after the call, out
// of its own host's helper budget. /v1/helpers/fleet (added with the
// memory-manager protocol; the other endpoints are unchanged, so old clients
// keep working) asks the selector, through the agent and tasks.alloc, for
// helper RAM on other hosts beyond that budget; fleet.go has the details. An
// agent that cannot ask answers it 404, as an older agent does. A
// finish says the task is done (with metrics) or failed (with a reason such as
// helpers_unavailable); the task exits right after it.
//
// Bodies are decoded strictly: unknown fields, trailing data, a missing
// required field, a wrong type, a progress outside [0, 1], a negative or
// non-integral mib, a negative number anywhere in metrics, metrics nested
// deeper than MaxMetricsDepth or with more than MaxMetricsEntries values are
// all refused. Errors are a JSON object {"code": "...", "message": "..."}
// with these statuses:
//
//	400 bad_request    malformed body or header
//	401 unauthorized   Task-Id or bearer token missing
//	403 forbidden      the token does not match the task
//	404 not_found      unknown path
//	405 method_not_allowed
//	409 <refusal code> the backend refused (a Refusal: over_budget, no_host_ram, unknown_task, ...)
//	413 too_large      body over MaxBodyBytes
//	415 unsupported_media_type  a Content-Type other than application/json
//	500 internal       the backend failed
//
// A malformed request never crashes or blocks the server: it is counted
// (Server.Malformed), logged at most once per 5 s with the number of
// suppressed lines, and answered with an error. What net/http itself turns
// away before routing (bytes that are not HTTP, headers over 16 KiB) gets
// its plain 4xx reply and is not counted. Connections have read, write and
// idle timeouts, so a client that stalls holds only its own connection.
//
// # SDK
//
// A task program needs a few lines:
//
//	t, err := taskapi.FromEnv()
//	if err != nil { log.Fatal(err) }
//	ctx := t.Context() // cancelled on SIGTERM or SIGINT
//	_ = t.Progress(ctx, 0.5, map[string]any{"files": 10})
//	h, err := t.StartHelper(ctx, 64, exec.Command(self, "helper"))
//	var r *taskapi.Refusal
//	if errors.As(err, &r) { _ = t.Fail(ctx, schemas.ReasonHelpersUnavailable); os.Exit(2) }
//	err = h.Wait() // waits and releases the helper's 64 MiB
//	_ = t.Done(ctx, map[string]any{"files": 10})
//
// Helpers run in the task's own process group (the agent kills the group,
// so no helper outlives its task).
//
// Main does the usual start for a program: it runs the program as its own
// helper when so invoked, or connects with FromEnv, hands the task, a logger
// and a FailFunc to the program's body, and exits with the status the body
// returns (the examples in examples/ are written this way).
package taskapi
