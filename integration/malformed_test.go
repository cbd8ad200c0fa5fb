package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
)

// TestMalformedFlood floods every subject and bucket the selector reads
// with malformed messages: heartbeats (bad bodies, bad subjects, oversize),
// host statuses, events into the stream, target specs into the targets
// bucket, and status requests with garbage bodies. The selector keeps
// running and working, a running task keeps its spec through an operator's
// typo, and status counts every malformed message by source.
func TestMalformedFlood(t *testing.T) {
	e := newEnv(t, false)
	e.startWorker("w1", 4096, 0, worker.Faults{})
	sel := e.startSelector(serviceConfig(engineConfig()))
	e.putTarget("real", longSpec())
	before := e.waitActive(15*time.Second, "real")

	p := e.subj.Prefix
	goodHB := func(host, target string) []byte {
		hb := schemas.Heartbeat{V: schemas.Version, TaskID: "x#1.a", Epoch: 1, PID: 9, Host: host, Target: target, Type: "work",
			Seq: 1, RAM: schemas.HeartbeatRAM{BudgetMiB: 1, UsedMiB: 1}, SentAt: time.Now().UTC()}
		return schemas.AppendHeartbeat(nil, &hb)
	}
	oversize := []byte(`{"v":1,"pad":"` + strings.Repeat("x", 70<<10) + `"}`)
	binary := []byte{0xff, 0xfe, 0x00, 0x01, '{', 0x80}

	type msg struct {
		subject string
		data    []byte
	}
	heartbeats := []msg{
		{e.subj.Heartbeat("h", "t"), []byte(`{not json`)},
		{e.subj.Heartbeat("h", "t"), nil},
		{e.subj.Heartbeat("h", "t"), binary},
		{e.subj.Heartbeat("h", "t"), oversize},
		{e.subj.Heartbeat("h", "t"), []byte(`{"v":2,"task_id":"x","epoch":1}`)},
		{e.subj.Heartbeat("h", "t"), []byte(`{"v":1,"task_id":"x#1.a","epoch":-1,"pid":9,"host":"h","target":"t","type":"work","seq":1,"ram":{"budget_mib":1,"used_mib":1},"sent_at":"2024-01-01T00:00:00Z"}`)},
		{e.subj.Heartbeat("h", "t"), []byte(`{"v":1,"task_id":"x#1.a","epoch":1,"pid":9,"host":"h","target":"t","type":"work","seq":1,"ram":{"budget_mib":1,"used_mib":1},"progress":1e400,"sent_at":"2024-01-01T00:00:00Z"}`)},
		{p + ".heartbeat.h", goodHB("h", "t")},             // one token short
		{p + ".heartbeat.h.t.extra", goodHB("h", "t")},     // one token too many
		{p + ".heartbeat.=!!.t", goodHB("h", "t")},         // not an encoded name
		{e.subj.Heartbeat("other", "t"), goodHB("h", "t")}, // body names another host
		{e.subj.Heartbeat("h", "real"), goodHB("h", "t")},  // body names another target
	}
	hosts := []msg{
		{e.subj.Host("h9"), []byte(`[]`)},
		{e.subj.Host("h9"), oversize},
		{e.subj.Host("h9"), binary},
		{e.subj.Host("h9"), []byte(`{"v":1,"host":"h9","ram":{"total_mib":-5,"used_mib":0},"tasks":[],"draining":false,"sent_at":"2024-01-01T00:00:00Z"}`)},
		{e.subj.Host("h9"), []byte(`{"v":1,"host":"elsewhere","ram":{"total_mib":5,"used_mib":0},"tasks":[],"draining":false,"sent_at":"2024-01-01T00:00:00Z"}`)},
		{p + ".host.=!!", []byte(`{"v":1,"host":"h9","ram":{"total_mib":5,"used_mib":0},"tasks":[],"draining":false,"sent_at":"2024-01-01T00:00:00Z"}`)},
	}
	goodEvent := `{"v":1,"task_id":"x#1.a","epoch":1,"pid":9,"host":"h","target":"t","type":"work","kind":"failed","reason":"crashed","at":"2024-01-01T00:00:00Z"}`
	events := []msg{
		{e.subj.Event("t"), []byte(`{not json`)},
		{e.subj.Event("t"), binary},
		{e.subj.Event("t"), []byte(strings.Replace(goodEvent, `"failed"`, `"exploded"`, 1))},
		{e.subj.Event("elsewhere"), []byte(goodEvent)}, // body names another target
		{p + ".event.t.extra", []byte(goodEvent)},
	}

	const rounds = 40
	for r := 0; r < rounds; r++ {
		for _, m := range heartbeats {
			if err := e.nc.Publish(m.subject, m.data); err != nil {
				t.Fatalf("publish %s: %v", m.subject, err)
			}
		}
		for _, m := range hosts {
			if err := e.nc.Publish(m.subject, m.data); err != nil {
				t.Fatalf("publish %s: %v", m.subject, err)
			}
		}
	}
	const eventRounds = 5
	for r := 0; r < eventRounds; r++ {
		for _, m := range events {
			if _, err := e.js.Publish(e.ctx(10*time.Second), m.subject, m.data); err != nil {
				t.Fatalf("publish event %s: %v", m.subject, err)
			}
		}
	}
	// An oversize event never reaches the selector: the stream refuses it.
	if _, err := e.js.Publish(e.ctx(10*time.Second), e.subj.Event("t"), oversize); err == nil {
		t.Errorf("the event stream accepted a %d-byte event", len(oversize))
	}
	specs := [][]byte{
		[]byte(`{garbage`),
		[]byte(`{"v":1,"profile":"nope"}`),
		[]byte(`{"v":7,"profile":"declared","phases":[]}`),
		binary,
	}
	nTargets := 0
	for i, data := range specs {
		if err := e.client.PutTargetRaw(e.ctx(10*time.Second), fmt.Sprintf("bad-%d", i), data); err != nil {
			t.Fatalf("put raw spec: %v", err)
		}
		nTargets++
	}
	// A key that is not an encoded name, with a valid spec.
	good, err := schemas.Marshal(func() *schemas.TargetSpec { s := longSpec(); return &s }())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.kv(protocol.TargetsBucket).Put(e.ctx(10*time.Second), "=A", good); err != nil {
		t.Fatalf("put =A: %v", err)
	}
	nTargets++
	// An operator's typo on a running target: it keeps its last good spec.
	if err := e.client.PutTargetRaw(e.ctx(10*time.Second), "real", []byte(`{"v":1,"profile":`)); err != nil {
		t.Fatalf("put raw spec: %v", err)
	}
	nTargets++

	// Status requests with garbage bodies are answered like any other.
	for i, body := range [][]byte{nil, []byte(`{garbage`), binary, oversize} {
		m, err := e.nc.Request(e.subj.Status(), body, 2*time.Second)
		if err != nil {
			t.Fatalf("status request %d with a garbage body: %v", i, err)
		}
		if _, err := schemas.DecodeSelectorStatus(m.Data); err != nil {
			t.Fatalf("status answer %d does not decode: %v", i, err)
		}
	}
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	want := map[string]uint64{
		bus.SourceHeartbeat: uint64(rounds * len(heartbeats)),
		bus.SourceHost:      uint64(rounds * len(hosts)),
		bus.SourceEvent:     uint64(eventRounds * len(events)),
		bus.SourceTargets:   uint64(nTargets),
	}
	st := e.waitStatus(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		got := st.Counters.MalformedMessages
		for src, n := range want {
			if got[src] < n {
				return false, fmt.Sprintf("malformed counters %v, want %v", got, want)
			}
		}
		return true, ""
	})
	for src, n := range want {
		if got := st.Counters.MalformedMessages[src]; got != n {
			t.Errorf("malformed %s: %d counted, %d sent", src, got, n)
		}
	}
	if !sel.running() {
		t.Fatal("selector Run returned during the flood")
	}

	// Still working: the running task was not disturbed, and a new target
	// goes from launch to active.
	if ts, ok := targetLine(&st, "real"); !ok || ts.TaskID != before.TaskID || ts.State != "active" {
		t.Errorf("real after the flood: %s, want still %s active", describeLine(ts), before.TaskID)
	}
	for _, name := range []string{"bad-0", "bad-1", "bad-2", "bad-3"} {
		if ts, ok := targetLine(&st, name); ok {
			t.Errorf("malformed target %s was declared: %s", name, describeLine(ts))
		}
	}
	e.putTarget("after", longSpec())
	e.waitActive(15*time.Second, "after")
	if c := e.mustStatus().Counters; c.Launches != 2 {
		t.Errorf("%d launches, want 2 (real and after)", c.Launches)
	}
}

// TestMalformedReplies: replies that do not decode, to a launch, a ps and a
// kill, are counted by source and handled as lost replies: the launch is
// judged at its timeout by a ps, the ps is asked again, and the kill is
// retried.
func TestMalformedReplies(t *testing.T) {
	e := newEnv(t, false)
	// The worker acts on every request as usual, but garbles its launch
	// and kill replies and its first ps reply; later ps replies list the
	// task as running, so that the selector goes on to kill it.
	fw := startFakeWorker(t, e.connect("fake"), "garbler", 4096, false, true)
	fw.mu.Lock()
	fw.garbleLaunch, fw.garbleKill, fw.garblePs = true, true, 1
	fw.mu.Unlock()
	cfg := engineConfig()
	cfg.LaunchTimeout = 300 * time.Millisecond
	cfg.ReplyTimeout = 300 * time.Millisecond
	sel := e.startSelector(serviceConfig(cfg))
	e.putTarget("kappa", longSpec())

	st := e.waitStatus(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		m := st.Counters.MalformedMessages
		return m[bus.SourceLaunchReply] >= 1 && m[bus.SourcePsReply] >= 1 && m[bus.SourceKillReply] >= 2,
			fmt.Sprintf("malformed %v; %s", m, describe(st))
	})
	ls, ps, kills := fw.launchList(), fw.psList(), fw.killList()
	if len(ls) != 1 || len(ps) < 2 || len(kills) < 2 {
		t.Fatalf("%d launches, %d ps and %d kills at the worker; want 1 launch, its ps asked again, its kill retried", len(ls), len(ps), len(kills))
	}
	if kills[0].req.TaskID != ls[0].req.TaskID || kills[0].req.PID != ls[0].pid {
		t.Errorf("kill of %s pid %d, want the launched %s pid %d", kills[0].req.TaskID, kills[0].req.PID, ls[0].req.TaskID, ls[0].pid)
	}
	m := st.Counters.MalformedMessages
	if m[bus.SourceLaunchReply] != 1 || m[bus.SourcePsReply] != 1 {
		t.Errorf("malformed launch replies %d, ps replies %d; want 1 and 1", m[bus.SourceLaunchReply], m[bus.SourcePsReply])
	}
	if ts, _ := targetLine(&st, "kappa"); ts.TaskID != ls[0].req.TaskID {
		t.Errorf("kappa: %s, want its one task %s still held while its kill is unconfirmed", describeLine(ts), ls[0].req.TaskID)
	}
	if !sel.running() {
		t.Fatal("selector Run returned")
	}
}
