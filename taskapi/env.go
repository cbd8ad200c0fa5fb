package taskapi

// Names of the environment variables the exec executor gives every task.
const (
	// EnvTaskID is the task's id (the selector's task_id).
	EnvTaskID = "TASK_ID"
	// EnvTaskEpoch is the task's epoch, a positive decimal integer.
	EnvTaskEpoch = "TASK_EPOCH"
	// EnvTaskTarget is the name of the target the task works on.
	EnvTaskTarget = "TASK_TARGET"
	// EnvTaskType is the task type, the key of its entry in the tasks file.
	EnvTaskType = "TASK_TYPE"
	// EnvTaskHost is the worker host running the task.
	EnvTaskHost = "TASK_HOST"
	// EnvTaskBudgetMiB is the task's whole RAM budget in MiB (wrapper plus
	// helpers), a non-negative decimal integer.
	EnvTaskBudgetMiB = "TASK_BUDGET_MIB"
	// EnvTaskHelpersMiB is the helper part of the budget in MiB: the most
	// helper RAM the task may be granted through the API.
	EnvTaskHelpersMiB = "TASK_HELPERS_MIB"
	// EnvTaskAPI is the path of the agent's task API Unix socket.
	EnvTaskAPI = "TASK_API"
	// EnvTaskToken is the task's secret for the task API (a bearer token).
	EnvTaskToken = "TASK_TOKEN"
	// EnvTaskArgs holds the target spec's args as a JSON object. It may be
	// empty or absent (no args). Args never appear in argv.
	EnvTaskArgs = "TASK_ARGS"
)
