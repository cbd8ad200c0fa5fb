package selector

// taskState is where one task stands in its life. It is not a target's
// lifecycle phase ("build", "serve": target.phase, task.typ). It changes only
// through Engine.transition, along the table in the package doc
// (taskTransitions).
type taskState uint8

const (
	// taskNone is the zero value: a task being built, before its first
	// transition, or one that is closed.
	taskNone taskState = iota
	// taskLaunching: launch sent; neither its reply nor its first heartbeat came.
	taskLaunching
	// taskLaunched: the reply gave a PID; no heartbeat yet.
	taskLaunched
	// taskActive: confirmed by a heartbeat.
	taskActive
	// taskSuspect: timed out, stale or unconfirmed after a restart; a ps of
	// its host decides.
	taskSuspect
	// taskKilling: a kill was sent; the target is requeued once it is confirmed.
	taskKilling

	numTaskStates
)

// taskTrigger is what moves a task from one state to another: the event
// column of the transition table.
type taskTrigger uint8

const (
	onLaunch        taskTrigger = iota // the engine places the task and sends its launch
	onRestore                          // a record of an earlier run names the task
	onAdopt                            // a heartbeat names a running task that no record names
	onReply                            // a launch reply without error
	onHeartbeat                        // a heartbeat confirms the task
	onRevive                           // a ps finds a stale task running, and heartbeats were dropped since it went stale
	onLaunchTimeout                    // no first heartbeat within LaunchTimeout of the launch
	onStale                            // an active task had no heartbeat within HeartbeatStale
	onKill                             // a kill is sent, or sent again
	onClose                            // the task ends: its RAM is freed and its epoch closed

	numTaskTriggers
)

// stateSet is a set of task states, one bit each.
type stateSet uint8

// has reports whether s holds st.
func (s stateSet) has(st taskState) bool { return s&(1<<st) != 0 }

// liveStates are the states of a task the engine holds.
const liveStates stateSet = 1<<taskLaunching | 1<<taskLaunched | 1<<taskActive | 1<<taskSuspect | 1<<taskKilling

// taskTransitions is the transition table: for each trigger, the states it
// may move a task from and the state it moves it to. The package doc shows
// the same table; a test checks that they agree, and the invariant check
// that the engine makes no other move.
var taskTransitions = [numTaskTriggers]struct {
	from stateSet
	to   taskState
}{
	onLaunch:        {from: 1 << taskNone, to: taskLaunching},
	onRestore:       {from: 1 << taskNone, to: taskSuspect},
	onAdopt:         {from: 1 << taskNone, to: taskActive},
	onReply:         {from: 1 << taskLaunching, to: taskLaunched},
	onHeartbeat:     {from: 1<<taskLaunching | 1<<taskLaunched | 1<<taskSuspect, to: taskActive},
	onRevive:        {from: 1 << taskSuspect, to: taskActive},
	onLaunchTimeout: {from: 1<<taskLaunching | 1<<taskLaunched, to: taskSuspect},
	onStale:         {from: 1 << taskActive, to: taskSuspect},
	onKill:          {from: liveStates, to: taskKilling},
	onClose:         {from: liveStates, to: taskNone},
}

// transition moves k to the state that trigger by leads to, and counts the
// move in Engine.transitions. A move the table does not declare is made all
// the same, so that a gap in the table cannot change a decision; the tests'
// invariant check fails on it.
func (e *Engine) transition(k *task, by taskTrigger) {
	e.transitions[k.state][by]++
	to := taskTransitions[by].to
	k.state = to
	e.hot[k.idx].state = to
}

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
	// suspectPreempted: a hacking task of a target the engine does not
	// focus on, killed so that the focus target gets its RAM (see
	// focus.go); requeued without penalty.
	suspectPreempted
)
