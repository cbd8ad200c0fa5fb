package integration

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// Chaos fault 13: hostile input.

// Literals that no integer field of the wire format accepts: one past the
// largest RAM figure, the largest int64 (a RAM figure far past the limit), one
// past it and one past the largest uint64 (overflows), a negative, numbers
// with a fraction or an exponent, one that overflows float64, a string and
// null.
var (
	chaosBadMiB = []string{fmt.Sprint(int64(schemas.MaxMiB) + 1), "9223372036854775807", "9223372036854775808",
		"18446744073709551616", "-1", "1.5", "1e3", "1e400", `"12"`, "null"}
	// chaosBadCount is refused by uint64 fields (epoch, seq) and int64 ones (pid).
	chaosBadCount = []string{"18446744073709551616", "-1", "1.5", "1e3", "1e400", `"12"`, "null", "0"}
	// chaosBadFloat is refused by float fields (work_s).
	chaosBadFloat = []string{"1e400", "-1", `"3"`, "null"}
)

// chaosHostile builds hostile variants of a message: template holds one %s
// per field, fields names them, and each variant puts one bad literal in
// one field, the good value in the others.
func chaosHostile(template string, good []string, bad [][]string) [][]byte {
	var out [][]byte
	for i := range good {
		for _, lit := range bad[i] {
			args := make([]any, len(good))
			for j := range good {
				args[j] = good[j]
			}
			args[i] = lit
			out = append(out, []byte(fmt.Sprintf(template, args...)))
		}
	}
	return out
}

// chaosEvilHost is a fake host: it reports itself with valid host statuses,
// so that the selector places a task on it, but answers every launch, ps and
// kill with a reply whose figures overflow.
type chaosEvilHost struct {
	mu      sync.Mutex
	answers map[string]int
}

// startEvilHost runs a chaosEvilHost named host on its own connection.
func (w *chaosWorld) startEvilHost(host string, ramMiB int64) *chaosEvilHost {
	w.t.Helper()
	nc := w.connect("evil-" + host)
	ev := &chaosEvilHost{answers: map[string]int{}}
	replies := map[string][]byte{
		w.subj.Launch(host): []byte(`{"v":1,"task_id":"x","pid":9223372036854775808}`),
		w.subj.Ps(host): []byte(`{"v":1,"host":"` + host + `","tasks":[{"task_id":"x","epoch":1,"pid":1,"target":"x","type":"p1",` +
			`"ram":{"wrapper_mib":4611686018427387904,"helpers_mib":1},"started_at":"2030-01-01T00:00:00Z"}]}`),
		w.subj.Kill(host): []byte(`{"v":1,"task_id":"x","pid":-1,"running":false}`),
	}
	for subject, data := range replies {
		kind := subject[len(w.subj.Prefix)+1:]
		kind = kind[:strings.IndexByte(kind, '.')]
		sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
			ev.mu.Lock()
			ev.answers[kind]++
			ev.mu.Unlock()
			_ = m.Respond(data)
		})
		if err != nil {
			w.t.Fatalf("evil host: subscribe: %v", err)
		}
		w.t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(hbInterval)
		defer tk.Stop()
		for {
			st := schemas.HostStatus{V: schemas.Version, Host: host, RAM: schemas.HostRAM{TotalMiB: ramMiB}, Tasks: []string{}, SentAt: time.Now().UTC()}
			if data, err := schemas.Marshal(&st); err == nil {
				_ = nc.Publish(w.subj.Host(host), data)
			}
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	w.t.Cleanup(func() { close(stop); <-done })
	if err := nc.Flush(); err != nil {
		w.t.Fatal(err)
	}
	w.mu.Lock()
	w.fake[host] = true
	w.mu.Unlock()
	return ev
}

func (ev *chaosEvilHost) count(kind string) int {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return ev.answers[kind]
}

// TestChaosHostileInput (fault 13): hostile input on every subject the
// selector and the workers read and in the targets bucket, above all figures
// that would overflow the RAM ledger (past 2^40 MiB, past int64, negative,
// fractional, not numbers at all): heartbeats of the running tasks, host
// statuses, task events of the running tasks (into the stream), launch, ps
// and kill requests to the workers, target specs, replies from a host that
// answers every request with such figures, and status requests with garbage
// bodies. Everything is dropped and counted, nothing crashes, and the ledger
// does not move: every host keeps its figures, every target its task, and
// no process starts. The host that only answers garbage keeps its one task
// booked (it may run), but holds up no other launch.
func TestChaosHostileInput(t *testing.T) {
	w := newChaosWorld(t, false)
	ws := []*workerProc{w.startAuditedWorker("a", 4096, chaosWorkerOpts{}), w.startAuditedWorker("b", 4096, chaosWorkerOpts{})}
	sel := w.startSelector(serviceConfig(engineConfig()))
	for _, name := range edgeTargetNames("v", 4) {
		w.declare(name, chaosSpec(1, 0.3))
	}
	w.settle(chaosSettle, chaosBoth(w.allActive(), w.inPhase("last")))

	// The evil host gets one task (the best fit for it), which it never
	// confirms and about which it answers only garbage.
	evil := w.startEvilHost("evil", chaosFullMiB+chaosMinMiB/2)
	w.putTarget("victim", chaosSpec(1, 0.3))
	w.waitTarget(20*time.Second, "victim", func(ts schemas.TargetStatus) bool { return ts.Host == "evil" })
	w.waitStatus(chaosSettle, func(st *schemas.SelectorStatus) (bool, string) {
		m := st.Counters.MalformedMessages
		return m[bus.SourceLaunchReply] >= 1 && m[bus.SourcePsReply] >= 1, fmt.Sprintf("malformed %v; %s", m, describe(st))
	})
	before := w.settle(chaosSettle, w.allActive())
	starts := map[string]uint64{}
	for _, p := range ws {
		starts[p.host] = p.agent.Stats().Launches
	}
	procs := map[string]int{}
	for _, name := range w.desiredTargets() {
		procs[name] = len(w.aud.Procs(name))
	}

	// Hostile copies of the running tasks' own heartbeats and events, of
	// the hosts' statuses, and of requests to the workers.
	var heartbeats, hosts, events [][]byte
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for _, ts := range before.Targets {
		if ts.Host == "evil" {
			continue
		}
		heartbeats = append(heartbeats, chaosHostile(
			`{"v":1,"task_id":"`+ts.TaskID+`","epoch":%s,"pid":%s,"host":"`+ts.Host+`","target":"`+ts.Target+`","type":"last",`+
				`"seq":%s,"ram":{"budget_mib":%s,"used_mib":%s},"progress":0.5,"sent_at":"`+now+`"}`,
			[]string{fmt.Sprint(ts.Epoch), fmt.Sprint(ts.PID), "999999", fmt.Sprint(ts.BudgetMiB), fmt.Sprint(ts.BudgetMiB)},
			[][]string{chaosBadCount, chaosBadCount, chaosBadCount, chaosBadMiB, chaosBadMiB})...)
		events = append(events, chaosHostile(
			`{"v":1,"task_id":"`+ts.TaskID+`","epoch":%s,"pid":%s,"host":"`+ts.Host+`","target":"`+ts.Target+`","type":"last",`+
				`"kind":"done","at":"`+now+`"}`,
			[]string{fmt.Sprint(ts.Epoch), fmt.Sprint(ts.PID)},
			[][]string{chaosBadCount, chaosBadCount})...)
	}
	for _, h := range []string{"a", "b", "ghost"} {
		hosts = append(hosts, chaosHostile(
			`{"v":1,"host":"`+h+`","ram":{"total_mib":%s,"used_mib":%s},"tasks":[],"draining":false,"sent_at":"`+now+`"}`,
			[]string{"4096", "0"}, [][]string{chaosBadMiB, chaosBadMiB})...)
	}
	launches := chaosHostile(
		`{"v":1,"task_id":"hostile#1.x","epoch":%s,"target":"hostile","type":"p1","ram":{"wrapper_mib":%s,"helpers_mib":%s},"args":{"work_s":1}}`,
		[]string{"1", "8", "16"}, [][]string{chaosBadCount, chaosBadMiB, chaosBadMiB})
	kills := chaosHostile(`{"v":1,"task_id":"x","pid":%s,"reason":"hostile"}`, []string{"1"}, [][]string{chaosBadCount[:7]})
	pss := chaosHostile(`{"v":1,"pids":[%s]}`, []string{"1"}, [][]string{chaosBadCount[:7]})
	specs := chaosHostile(
		`{"v":1,"profile":"declared","phases":[{"type":"p1","wrapper_mib":%s,"helpers_min_mib":%s,"helpers_full_mib":%s,"work_s":%s,"repeat":true}]}`,
		[]string{"8", "16", "64", "1"}, [][]string{chaosBadMiB, chaosBadMiB, chaosBadMiB, chaosBadFloat})

	publish := func(subject string, data []byte) {
		t.Helper()
		if err := w.nc.Publish(subject, data); err != nil {
			t.Fatalf("publish %s: %v", subject, err)
		}
	}
	for _, ts := range before.Targets {
		if ts.Host == "evil" {
			continue
		}
		for _, m := range heartbeats {
			if strings.Contains(string(m), `"target":"`+ts.Target+`"`) {
				publish(w.subj.Heartbeat(ts.Host, ts.Target), m)
			}
		}
	}
	for _, m := range hosts {
		var host string
		for _, h := range []string{"a", "b", "ghost"} {
			if strings.Contains(string(m), `"host":"`+h+`"`) {
				host = h
			}
		}
		publish(w.subj.Host(host), m)
	}
	for _, p := range ws {
		for _, m := range launches {
			publish(w.subj.Launch(p.host), m)
		}
		for _, m := range kills {
			publish(w.subj.Kill(p.host), m)
		}
		for _, m := range pss {
			publish(w.subj.Ps(p.host), m)
		}
	}
	for _, m := range events {
		var target string
		for _, ts := range before.Targets {
			if strings.Contains(string(m), `"target":"`+ts.Target+`"`) {
				target = ts.Target
			}
		}
		if _, err := w.js.Publish(w.ctx(10*time.Second), w.subj.Event(target), m); err != nil {
			t.Fatalf("publish event: %v", err)
		}
	}
	for i, m := range specs {
		if err := w.client.PutTargetRaw(w.ctx(10*time.Second), fmt.Sprintf("hostile-%d", i), m); err != nil {
			t.Fatalf("put spec: %v", err)
		}
	}
	// An operator's hostile overwrite of a running target's spec.
	if err := w.client.PutTargetRaw(w.ctx(10*time.Second), "v1", specs[0]); err != nil {
		t.Fatalf("put spec: %v", err)
	}
	for _, body := range [][]byte{[]byte(`{"v":1,"x":9223372036854775808}`), []byte("\x00\xff")} {
		if _, err := w.nc.Request(w.subj.Status(), body, 5*time.Second); err != nil {
			t.Fatalf("status request with a hostile body: %v", err)
		}
	}
	if err := w.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	m0 := before.Counters.MalformedMessages
	want := map[string]uint64{
		bus.SourceHeartbeat: m0[bus.SourceHeartbeat] + uint64(len(heartbeats)),
		bus.SourceHost:      m0[bus.SourceHost] + uint64(len(hosts)),
		bus.SourceEvent:     m0[bus.SourceEvent] + uint64(len(events)),
		bus.SourceTargets:   m0[bus.SourceTargets] + uint64(len(specs)+1),
	}
	st := w.waitStatus(chaosSettle, func(st *schemas.SelectorStatus) (bool, string) {
		for src, n := range want {
			if st.Counters.MalformedMessages[src] < n {
				return false, fmt.Sprintf("malformed %v, want %v", st.Counters.MalformedMessages, want)
			}
		}
		return true, ""
	})
	for src, n := range want {
		if got := st.Counters.MalformedMessages[src]; got != n {
			t.Errorf("malformed %s: %d counted, want %d", src, got, n)
		}
	}
	for _, p := range ws {
		s := p.agent.Stats()
		for kind, n := range map[string]int{"launch": len(launches), "kill": len(kills), "ps": len(pss)} {
			if s.Malformed[kind] < uint64(n) {
				t.Errorf("worker %s counted %d malformed %s requests, want %d", p.host, s.Malformed[kind], kind, n)
			}
		}
		if s.Launches != starts[p.host] {
			t.Errorf("worker %s started %d tasks on hostile requests", p.host, s.Launches-starts[p.host])
		}
	}
	t.Logf("malformed by source %v; the evil host answered %d launches, %d ps and %d kills",
		st.Counters.MalformedMessages, evil.count("launch"), evil.count("ps"), evil.count("kill"))

	// Nothing moved, and the selector still works.
	st = w.settle(chaosSettle, w.allActive())
	for _, old := range before.Hosts {
		if h, _ := chaosHostLine(&st, old.Host); h.TotalMiB != old.TotalMiB || h.ReservedMiB != old.ReservedMiB || h.Lost {
			t.Errorf("host %s: %+v, was %+v", old.Host, h, old)
		}
	}
	if _, ok := chaosHostLine(&st, "ghost"); ok {
		t.Errorf("a host that only ever sent hostile statuses is in the ledger")
	}
	for _, old := range before.Targets {
		if ts, _ := targetLine(&st, old.Target); ts.TaskID != old.TaskID || ts.Phase != old.Phase || ts.Epoch != old.Epoch {
			t.Errorf("%s: %s, was %s", old.Target, describeLine(ts), describeLine(old))
		}
		if old.Host != "evil" {
			if n := len(w.aud.Procs(old.Target)); n != procs[old.Target] {
				t.Errorf("%s: %d processes, %d before", old.Target, n, procs[old.Target])
			}
		}
	}
	for i := range specs {
		if ts, ok := targetLine(&st, fmt.Sprintf("hostile-%d", i)); ok {
			t.Errorf("hostile spec declared: %s", describeLine(ts))
		}
	}
	victim, _ := targetLine(&st, "victim")
	t.Logf("the evil host's task: %s", describeLine(victim))
	if victim.State != selector.StateSuspect && victim.State != selector.StateLaunching {
		t.Errorf("victim: %s; want its task held while its host answers nothing usable", describeLine(victim))
	}
	w.declare("after", chaosSpec(1, 0.3))
	w.settle(chaosSettle, w.allActive())
	if !sel.running() {
		t.Fatal("selector Run returned")
	}
	w.checkCapacity()
	w.checkAudit()
}

// TestChaosGarbledHostDoesNotHoldLaunches: a host that keeps reporting but
// answers every ps with a reply that does not decode cannot settle the task
// the selector launched there, which keeps its RAM booked. It must not keep
// the pending-launch slot too: a target declared afterwards is launched on
// a healthy host within the launch timeout and a few reply timeouts.
//
// The engine released the slot only when the ps went unanswered after a
// host status newer than the ps had arrived; a host that answers at once
// (with garbage) never gave it that, so every launch in the fleet waited.
func TestChaosGarbledHostDoesNotHoldLaunches(t *testing.T) {
	w := newChaosWorld(t, false)
	cfg := engineConfig()
	w.startAuditedWorker("a", 4096, chaosWorkerOpts{})
	w.startEvilHost("evil", chaosFullMiB+chaosMinMiB/2)
	w.startSelector(serviceConfig(cfg))
	w.putTarget("victim", chaosSpec(1, 30)) // the best fit is evil
	w.waitTarget(20*time.Second, "victim", func(ts schemas.TargetStatus) bool {
		return ts.Host == "evil" && ts.State == selector.StateSuspect
	})
	declared := time.Now()
	w.declare("after", chaosSpec(1, 30))
	bound := cfg.LaunchTimeout + 4*cfg.ReplyTimeout + 5*time.Second // slack for a loaded machine
	w.settle(bound, w.allActive())
	t.Logf("launched %v after it was declared, while the garbled host holds its task", time.Since(declared).Round(time.Millisecond))
	w.checkAudit()
}
