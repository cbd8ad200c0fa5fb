package selector

import "time"

// helperState is where one fleet helper stands: helper RAM the engine, as
// the fleet's memory manager, granted to a task on some host (see
// helpers.go). It changes only through Engine.helperTransition, along the
// helper table in the package doc (helperTransitions).
type helperState uint8

const (
	// helperNone is the zero value: a helper being built, or one that is
	// gone from the ledger.
	helperNone helperState = iota
	// helperStarting: its start was sent; no reply says it runs yet.
	helperStarting
	// helperRunning: its host's worker said it runs (or, after a restart,
	// its host's status listed it for its target's current task).
	helperRunning
	// helperStopping: it belongs to no task any more; a stop was sent, or
	// is sent once its start is answered, and repeated until confirmed.
	helperStopping

	numHelperStates
)

// helperTrigger is what moves a helper from one state to another.
type helperTrigger uint8

const (
	hOnGrant       helperTrigger = iota // RAM is granted to a task and the start sent
	hOnStarted                          // the start's reply says it runs
	hOnStartFailed                      // the start's reply says it does not run, or nobody listens
	hOnLearn                            // a host's first status lists it for its target's current task
	hOnOrphan                           // a host status lists it, and no live task owns it
	hOnStop                             // its task released it or closed, its start timed out, or it is stopped again
	hOnStopped                          // its stop is confirmed, or nobody listens on its host's helper subject
	hOnLost                             // its host is lost

	numHelperTriggers
)

// helperStates is a set of helper states, one bit each.
type helperStates uint8

func (s helperStates) has(st helperState) bool { return s&(1<<st) != 0 }

// liveHelperStates are the states of a helper the ledger holds.
const liveHelperStates helperStates = 1<<helperStarting | 1<<helperRunning | 1<<helperStopping

// helperTransitions is the helper transition table; the package doc shows
// the same table, and a test checks that they agree.
var helperTransitions = [numHelperTriggers]struct {
	from helperStates
	to   helperState
}{
	hOnGrant:       {from: 1 << helperNone, to: helperStarting},
	hOnStarted:     {from: 1 << helperStarting, to: helperRunning},
	hOnStartFailed: {from: 1<<helperStarting | 1<<helperStopping, to: helperNone},
	hOnLearn:       {from: 1 << helperNone, to: helperRunning},
	hOnOrphan:      {from: 1 << helperNone, to: helperStopping},
	hOnStop:        {from: liveHelperStates, to: helperStopping},
	hOnStopped:     {from: 1 << helperStopping, to: helperNone},
	hOnLost:        {from: liveHelperStates, to: helperNone},
}

// helperTransition moves x along trigger by and counts the move.
func (e *Engine) helperTransition(x *helper, by helperTrigger) {
	e.helperMoves[x.state][by]++
	x.state = helperTransitions[by].to
}

// helper is helper RAM granted to a task on one host: a process the host's
// worker runs for a task that may run elsewhere.
type helper struct {
	id     string
	taskID string
	epoch  uint64
	target string
	typ    string
	host   *host
	mib    int64
	owner  *task // the task it belongs to; nil once stopping
	state  helperState

	alloc  *allocReq // the request it was granted for, while that waits on its start
	op     string    // the request outstanding (schemas.HelperStart or HelperStop), "" when none
	sentAt time.Time // when the last start or stop was sent
	stopAt time.Time // when it began stopping

	hidx int // index in host.helpers
	oidx int // index in owner.helpers
}

// allocReq is a task's helper RAM request whose grants are being started.
type allocReq struct {
	id      uint64
	k       *task
	min     int64
	want    int64 // the MiB granted (the request, cut to the budget)
	waiting int   // starts not answered yet
	grants  []*helper
	done    bool // answered
}
