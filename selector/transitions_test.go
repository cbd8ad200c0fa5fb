package selector

import (
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
)

// stateNames are the names of the task states in the package doc's table.
var stateNames = [numTaskStates]string{
	taskNone:      "-",
	taskLaunching: "launching",
	taskLaunched:  "launched",
	taskActive:    "active",
	taskSuspect:   "suspect",
	taskKilling:   "killing",
}

// triggerNames are the names of the triggers in the package doc's table.
var triggerNames = [numTaskTriggers]string{
	onLaunch:        "launch",
	onRestore:       "restore",
	onAdopt:         "adopt",
	onReply:         "reply",
	onHeartbeat:     "heartbeat",
	onRevive:        "revive",
	onLaunchTimeout: "launch-timeout",
	onStale:         "stale",
	onKill:          "kill",
	onClose:         "close",
}

// helperStateNames and helperTriggerNames name the helper states and events
// as the package doc's helper table does.
var helperStateNames = [numHelperStates]string{
	helperNone:     "-",
	helperStarting: "starting",
	helperRunning:  "running",
	helperStopping: "stopping",
}

var helperTriggerNames = [numHelperTriggers]string{
	hOnGrant:       "grant",
	hOnStarted:     "started",
	hOnStartFailed: "start-failed",
	hOnLearn:       "learn",
	hOnOrphan:      "orphan",
	hOnStop:        "stop",
	hOnStopped:     "stopped",
	hOnLost:        "lost",
}

// helperRow renders the row of the package doc's helper table for by.
func helperRow(by helperTrigger) string {
	tr := helperTransitions[by]
	from := "any"
	if tr.from != liveHelperStates {
		var names []string
		for st := range numHelperStates {
			if tr.from.has(st) {
				names = append(names, helperStateNames[st])
			}
		}
		from = strings.Join(names, ", ")
	}
	return from + " | " + helperTriggerNames[by] + " | " + helperStateNames[tr.to]
}

// docTable returns the rows of the table in the package doc whose header is
// header, with columns joined by " | ".
func docTable(t *testing.T, header ...string) []string {
	t.Helper()
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var doc []string
	in := false
	for line := range strings.Lines(string(src)) {
		line = strings.TrimRight(line, "\n")
		cols := strings.Fields(strings.TrimPrefix(line, "//\t"))
		switch {
		case !in && strings.HasPrefix(line, "//\t") && slices.Equal(cols, header):
			in = true
		case in && !strings.HasPrefix(line, "//\t"):
			in = false
		case in:
			// Columns are separated by two spaces or more.
			var parts []string
			for p := range strings.SplitSeq(strings.TrimPrefix(line, "//\t"), "  ") {
				if p = strings.TrimSpace(p); p != "" {
					parts = append(parts, p)
				}
			}
			doc = append(doc, strings.Join(parts, " | "))
		}
	}
	return doc
}

// TestHelperTableInDoc checks that the helper table in the package doc is
// helperTransitions, row for row.
func TestHelperTableInDoc(t *testing.T) {
	doc := docTable(t, "from", "helper", "event", "to")
	var code []string
	for by := range numHelperTriggers {
		code = append(code, helperRow(by))
	}
	if !slices.Equal(doc, code) {
		t.Errorf("the package doc's helper table:\n  %s\nhelperTransitions:\n  %s",
			strings.Join(doc, "\n  "), strings.Join(code, "\n  "))
	}
}

// transitionRow renders the row of the package doc's table for trigger by.
func transitionRow(by taskTrigger) string {
	tr := taskTransitions[by]
	from := "any"
	if tr.from != liveStates {
		var names []string
		for st := range numTaskStates {
			if tr.from.has(st) {
				names = append(names, stateNames[st])
			}
		}
		from = strings.Join(names, ", ")
	}
	return from + " | " + triggerNames[by] + " | " + stateNames[tr.to]
}

// TestTransitionTableInDoc checks that the table in the package doc is
// taskTransitions, row for row.
func TestTransitionTableInDoc(t *testing.T) {
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var doc []string
	in := false
	for line := range strings.Lines(string(src)) {
		line = strings.TrimRight(line, "\n")
		cols := strings.Fields(strings.TrimPrefix(line, "//\t"))
		switch {
		case !in && strings.HasPrefix(line, "//\t") && slices.Equal(cols, []string{"from", "event", "to"}):
			in = true
		case in && !strings.HasPrefix(line, "//\t"):
			in = false
		case in:
			// Columns are separated by two spaces or more.
			var parts []string
			for p := range strings.SplitSeq(strings.TrimPrefix(line, "//\t"), "  ") {
				if p = strings.TrimSpace(p); p != "" {
					parts = append(parts, p)
				}
			}
			doc = append(doc, strings.Join(parts, " | "))
		}
	}
	var code []string
	for by := range numTaskTriggers {
		code = append(code, transitionRow(by))
	}
	if !slices.Equal(doc, code) {
		t.Errorf("the package doc's transition table:\n  %s\ntaskTransitions:\n  %s",
			strings.Join(doc, "\n  "), strings.Join(code, "\n  "))
	}
}

// TestTransitionsMade runs seeded worlds, the fuzz corpus and the tests of
// the rarer transitions, whose invariant checks fail on any transition the
// table does not declare, and checks that together they make every
// transition it declares. (Every other test that checks the invariants
// fails on an undeclared transition too.)
func TestTransitionsMade(t *testing.T) {
	transitionsMade.Lock()
	transitionsMade.made = [numTaskStates][numTaskTriggers]bool{}
	transitionsMade.Unlock()
	for seed := uint64(1); seed <= 16; seed++ {
		w := newWorld(t, rand.New(rand.NewPCG(seed, seed*7919)), seed)
		w.run(defaultPlan)
	}
	for _, data := range fuzzEngineSeeds() {
		newEngineFuzz(t, data).run()
	}
	t.Run("adopt", TestRestartWithLiveDeadAndUnknownTasks)
	t.Run("revive", TestDroppedHeartbeatsKillNoHealthyTask)
	transitionsMade.Lock()
	defer transitionsMade.Unlock()
	for by := range numTaskTriggers {
		for from := range numTaskStates {
			if taskTransitions[by].from.has(from) && !transitionsMade.made[from][by] {
				t.Errorf("no run made the declared transition from %s on %s", stateNames[from], triggerNames[by])
			}
		}
	}
}
