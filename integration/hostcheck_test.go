package integration

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
)

// TestHostMismatchesDropped: a heartbeat, a host status and a task event
// published on one host's subjects (as a per-host NATS user may) but naming
// another host in their body are dropped and counted as host mismatches
// (and as malformed). The lying failed event, though it names the running
// task, does not end it; the real worker's own messages, events included
// (sent on the host's event subject), go on being handled.
func TestHostMismatchesDropped(t *testing.T) {
	e := newEnv(t, false)
	e.startWorker("w1", 4096, 0, worker.Faults{})
	e.startSelector(serviceConfig(engineConfig()))
	e.putTarget("t", longSpec())
	line := e.waitActive(15*time.Second, "t")
	now := time.Now().UTC()

	hb := schemas.Heartbeat{V: schemas.Version, TaskID: line.TaskID, Epoch: line.Epoch, PID: line.PID, Host: "w2", Target: "t",
		Type: "work", Seq: 1 << 40, RAM: schemas.HeartbeatRAM{BudgetMiB: 1, UsedMiB: 1}, SentAt: now}
	if err := e.nc.Publish(e.subj.Heartbeat("w1", "t"), schemas.AppendHeartbeat(nil, &hb)); err != nil {
		t.Fatal(err)
	}
	hs := schemas.HostStatus{V: schemas.Version, Host: "w2", RAM: schemas.HostRAM{TotalMiB: 1 << 20}, Tasks: []string{}, SentAt: now}
	data, err := schemas.Marshal(&hs)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.nc.Publish(e.subj.Host("w1"), data); err != nil {
		t.Fatal(err)
	}
	ev := schemas.TaskEvent{V: schemas.Version, TaskID: line.TaskID, Epoch: line.Epoch, PID: line.PID, Host: "w2", Target: "t",
		Type: "work", Kind: schemas.EventFailed, Reason: schemas.ReasonCrashed, At: now}
	if data, err = schemas.Marshal(&ev); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.Publish(e.ctx(10*time.Second), e.subj.TaskEvent("w1", "t"), data); err != nil {
		t.Fatal(err)
	}

	want := map[string]uint64{bus.SourceHeartbeat: 1, bus.SourceHost: 1, bus.SourceEvent: 1}
	st := e.waitStatus(15*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		return maps.Equal(st.Counters.HostMismatches, want), fmt.Sprintf("host mismatches %v, want %v", st.Counters.HostMismatches, want)
	})
	for src := range want {
		if st.Counters.MalformedMessages[src] < 1 {
			t.Errorf("the %s mismatch is not counted as malformed: %v", src, st.Counters.MalformedMessages)
		}
	}
	if ts, ok := targetLine(&st, "t"); !ok || ts.TaskID != line.TaskID || ts.State != "active" {
		t.Fatalf("t after the lying messages: %s, want %s still active", describeLine(ts), line.TaskID)
	}
	// The snapshot with the new counter passes the strict, schema-checked
	// decoder.
	m, err := e.nc.Request(e.subj.Status(), nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if strict, err := schemas.DecodeSelectorStatus(m.Data); err != nil || !maps.Equal(strict.Counters.HostMismatches, want) {
		t.Fatalf("strict decode of the status: %v, host mismatches %v", err, strict.Counters.HostMismatches)
	}
	if st.Counters.Events != 0 {
		t.Fatalf("%d events handled, want none: the lying event was taken", st.Counters.Events)
	}
	for _, h := range st.Hosts {
		if h.Host == "w2" {
			t.Fatalf("the lying host status declared host w2: %+v", h)
		}
	}
	// The real worker's own event, on its host's subject, is handled: a
	// deleted target's task is killed and its end event acked.
	if err := e.client.DeleteTarget(e.ctx(10*time.Second), "t"); err != nil {
		t.Fatal(err)
	}
	e.waitStatus(15*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		return st.Counters.Events >= 1 && st.Counters.Kills >= 1, fmt.Sprintf("events %d kills %d", st.Counters.Events, st.Counters.Kills)
	})
}
