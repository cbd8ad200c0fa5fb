package integration

import (
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
)

// Chaos fault 12: duplicate, late, reordered and replayed messages.

// chaosRecorder records, on the test's connection, every message on the
// subjects of the system (heartbeats, host statuses, launch, ps and kill
// requests, task events as they are published) and every reply (on the
// _INBOX.> subjects), in the order they arrive.
type chaosRecorder struct {
	mu   sync.Mutex
	on   bool
	msgs []*nats.Msg
}

// record starts recording; it ends with the test or at stop.
func (w *chaosWorld) record() *chaosRecorder {
	w.t.Helper()
	r := &chaosRecorder{on: true}
	for _, pattern := range []string{w.subj.Prefix + ".>", "_INBOX.>"} {
		sub, err := w.nc.Subscribe(pattern, func(m *nats.Msg) {
			r.mu.Lock()
			defer r.mu.Unlock()
			if r.on && !strings.HasPrefix(m.Subject, w.subj.Status()) {
				r.msgs = append(r.msgs, &nats.Msg{Subject: m.Subject, Reply: m.Reply, Data: m.Data})
			}
		})
		if err != nil {
			w.t.Fatalf("record %s: %v", pattern, err)
		}
		w.t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := w.nc.Flush(); err != nil {
		w.t.Fatal(err)
	}
	return r
}

// stop ends the recording and returns what was recorded, by kind: the
// second part of the subject ("heartbeat", "host", "launch", "ps", "kill",
// "event"), or "reply".
func (r *chaosRecorder) stop(prefix string) map[string][]*nats.Msg {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on = false
	out := map[string][]*nats.Msg{}
	for _, m := range r.msgs {
		kind := "reply"
		if rest, ok := strings.CutPrefix(m.Subject, prefix+"."); ok {
			kind, _, _ = strings.Cut(rest, ".")
		}
		out[kind] = append(out[kind], m)
	}
	return out
}

// TestChaosDuplicateLateReorderedReplayed (fault 12): the system runs (its
// targets go through their short phases; one task crashes and one hangs, so
// that ps and kill requests flow too) while everything on the bus is
// recorded. Then every recorded message is sent again, twice, in a random
// order, on its own subject: heartbeats and host statuses of every earlier
// epoch, late and out of order; every task event, published into the stream
// again with no message id (so that the stream keeps the duplicates); every
// launch, ps and kill request, to the workers; every reply, to the inbox it
// went to. None of it changes anything: every target keeps its task, no
// process starts, no phase is counted twice, no finished phase runs again.
func TestChaosDuplicateLateReorderedReplayed(t *testing.T) {
	w := newChaosWorld(t, false)
	faults := worker.Faults{CrashTargets: []string{"q4:1"}, CrashAfter: 200 * time.Millisecond,
		HangTargets: []string{"q5:1"}, HangAfter: 200 * time.Millisecond}
	ws := []*workerProc{
		w.startAuditedWorker("a", 4096, chaosWorkerOpts{faults: faults}),
		w.startAuditedWorker("b", 4096, chaosWorkerOpts{faults: faults}),
	}
	rec := w.record()
	sel := w.startSelector(serviceConfig(engineConfig()))
	for _, name := range edgeTargetNames("q", 5) {
		spec := chaosSpec(2, 0.3)
		if name == "q4" || name == "q5" {
			spec.Phases[0].WorkS = 3 // the crash and the hang come in mid-phase
		}
		w.declare(name, spec)
	}
	before := w.settle(chaosSettle, chaosBoth(w.allActive(), w.inPhase("last")))
	waitMoreHeartbeats(t, sel, 20) // some current heartbeats and statuses, to be late later
	got := rec.stop(w.subj.Prefix)
	counts := map[string]int{}
	for kind, ms := range got {
		counts[kind] = len(ms)
	}
	t.Logf("recorded %v", counts)
	for _, kind := range []string{"heartbeat", "host", "launch", "ps", "kill", "event", "reply"} {
		if counts[kind] == 0 {
			t.Fatalf("nothing of kind %s recorded (%v)", kind, counts)
		}
	}
	procs := map[string]int{}
	for _, name := range w.desiredTargets() {
		procs[name] = len(w.aud.Procs(name))
	}
	var starts uint64
	for _, p := range ws {
		starts += p.agent.Stats().Launches
	}

	// Everything again, twice, shuffled.
	type replay struct {
		m     *nats.Msg
		event bool
	}
	var all []replay
	for kind, ms := range got {
		for _, m := range ms {
			for range 2 {
				all = append(all, replay{m: m, event: kind == "event"})
			}
		}
	}
	rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	inbox := nats.NewInbox() // where the workers' answers to replayed requests go
	for _, r := range all {
		var err error
		switch {
		case r.event:
			_, err = w.js.Publish(w.ctx(10*time.Second), r.m.Subject, r.m.Data)
		case r.m.Reply != "":
			err = w.nc.PublishRequest(r.m.Subject, inbox, r.m.Data)
		default:
			err = w.nc.Publish(r.m.Subject, r.m.Data)
		}
		if err != nil {
			t.Fatalf("replay on %s: %v", r.m.Subject, err)
		}
	}
	if err := w.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c0 := before.Counters
	st := w.waitStatus(chaosSettle, func(st *schemas.SelectorStatus) (bool, string) {
		c := st.Counters
		return c.Events >= c0.Events+2*uint64(counts["event"]), describe(st)
	})
	st = w.settle(chaosSettle, w.allActive())
	c := st.Counters
	t.Logf("after the replay: events %d (duplicates %d), fenced heartbeats %d, fences %d, kills %d",
		c.Events-c0.Events, c.DuplicateEvents-c0.DuplicateEvents, c.FencedHeartbeats-c0.FencedHeartbeats, c.Fences-c0.Fences, c.Kills-c0.Kills)
	if c.PhasesCompleted != c0.PhasesCompleted || c.Launches != c0.Launches || c.HostsLost != 0 {
		t.Errorf("phases completed %d → %d, launches %d → %d, hosts lost %d: the replay changed something",
			c0.PhasesCompleted, c.PhasesCompleted, c0.Launches, c.Launches, c.HostsLost)
	}
	for _, old := range before.Targets {
		if ts, _ := targetLine(&st, old.Target); ts.TaskID != old.TaskID || ts.Phase != old.Phase {
			t.Errorf("%s: %s, was %s", old.Target, describeLine(ts), describeLine(old))
		}
		if n := len(w.aud.Procs(old.Target)); n != procs[old.Target] {
			t.Errorf("%s: %d processes, %d before the replay", old.Target, n, procs[old.Target])
		}
	}
	var after uint64
	for _, p := range ws {
		after += p.agent.Stats().Launches
	}
	if after != starts {
		t.Errorf("the workers started %d tasks during the replay", after-starts)
	}
	for _, old := range before.Hosts {
		if h, _ := chaosHostLine(&st, old.Host); h.ReservedMiB != old.ReservedMiB || h.TotalMiB != old.TotalMiB || h.Lost {
			t.Errorf("host %s: %+v, was %+v", old.Host, h, old)
		}
	}
	w.checkAudit()
}
