package soak

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/internal/natsembed"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// ----- faults that run alone -----

// runExclusive injects one fault of the selector, the bus or the store,
// and heals it, before it returns.
func (w *world) runExclusive(stop context.Context, kind string, rng *rand.Rand) {
	switch kind {
	case KindSelectorKill:
		w.restartSelector(stop, rng, false)
	case KindSelectorRestart:
		w.restartSelector(stop, rng, true)
	case KindNATSRestart:
		w.restartNATS(rng)
	case KindStoreSlow:
		w.slowStore(stop, rng)
	case KindHeartbeatFlood:
		w.flood(stop, rng)
	case KindDuplicates:
		w.replay(rng)
	case KindHostile:
		w.hostile(rng)
	}
}

// restartSelector stops the selector, at once or gracefully, and starts a
// new one on the same store after a pause, with a probe target pending. A
// killed selector dies half the time right as a launch leaves it.
func (w *world) restartSelector(stop context.Context, rng *rand.Rand, graceful bool) {
	kind, how := KindSelectorKill, "killed"
	if graceful {
		kind, how = KindSelectorRestart, "restarted"
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	old := w.current()
	if !graceful && rng.IntN(2) == 0 {
		how = "killed mid-launch"
		since := time.Now()
		if probe, err := w.putProbe(ctx); err == nil {
			deadline := time.Now().Add(5 * time.Second)
			for !w.sniff.launchSeen(probe, since) && time.Now().Before(deadline) {
				time.Sleep(2 * time.Millisecond)
			}
		}
	}
	w.stopSelector(old, graceful)
	w.count(kind)
	if _, err := w.putProbe(ctx); err != nil {
		w.fail("%s: declare probe: %v", kind, err)
	}
	down := 100*time.Millisecond + time.Duration(rng.Float64()*float64(1900*time.Millisecond))
	time.Sleep(down)
	skip := w.sniff.launched()
	since := time.Now()
	w.log.Info("soak: selector "+how, "down", down.Round(time.Millisecond))
	w.track.expectAny(kind, "selector "+how, since, skip, w.o.StallAfter)
	sel, err := w.startSelector(ctx, since)
	if err != nil {
		w.fatal(fmt.Errorf("%s: new selector: %w", kind, err))
		return
	}
	w.mu.Lock()
	w.sel = sel
	w.sels = append(w.sels, sel)
	w.mu.Unlock()
}

// restartNATS restarts the embedded server on its port and file store.
// The hosts count as unreachable until their connections are back.
func (w *world) restartNATS(rng *rand.Rand) {
	w.mu.Lock()
	var hosts []*hostProc
	for _, name := range w.hostOrder {
		if h := w.hosts[name]; h.state == hostUp {
			hosts = append(hosts, h)
		}
	}
	w.mu.Unlock()
	for _, h := range hosts {
		w.aud.SetUnreachable(h.name, true)
	}
	down := 200*time.Millisecond + time.Duration(rng.Float64()*float64(800*time.Millisecond))
	w.log.Info("soak: fault", "kind", KindNATSRestart, "down", down.Round(time.Millisecond))
	natsembed.Shutdown(w.srv)
	w.count(KindNATSRestart)
	time.Sleep(down)
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := w.startServer(ctx); err != nil {
		w.fatal(err)
		return
	}
	skip := w.sniff.launched()
	since := time.Now()
	w.track.expectAny(KindNATSRestart, "NATS server restart", since, skip, w.o.StallAfter)
	if _, err := w.putProbe(ctx); err != nil {
		w.fail("%s: declare probe: %v", KindNATSRestart, err)
	}
	for _, h := range hosts {
		for {
			w.mu.Lock()
			nc := h.nc
			w.mu.Unlock()
			if nc == nil || (nc.IsConnected() && nc.FlushTimeout(time.Second) == nil) {
				break
			}
			if ctx.Err() != nil {
				w.fail("%s: worker %s did not reconnect within %v", KindNATSRestart, h.name, readyTimeout)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		w.aud.Heal(h.name)
	}
}

// harmless runs fault, one that should need no recovery, and checks that no
// target was requeued on its account: once it is over, it waits long
// enough for any false judgement (a task taken for stale or a launch for
// silent) to show in the counters.
func (w *world) harmless(kind string, fault func()) {
	before := w.status().Counters
	sel := w.current()
	fault()
	time.Sleep(w.tm.HeartbeatStale + w.tm.LaunchTimeout + time.Second)
	if w.current() != sel {
		return
	}
	after := w.status().Counters
	if after.Requeues > before.Requeues {
		w.fail("%s needs no recovery, yet %d targets were requeued (failures %v, then %v)",
			kind, after.Requeues-before.Requeues, before.Failures, after.Failures)
	}
	w.log.Info("soak: fault over", "kind", kind, "input_gaps", after.InputGaps-before.InputGaps,
		"duplicate_events", after.DuplicateEvents-before.DuplicateEvents, "fenced_heartbeats", after.FencedHeartbeats-before.FencedHeartbeats,
		"malformed", sumCounts(after.MalformedMessages)-sumCounts(before.MalformedMessages))
}

func sumCounts(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// slowStore holds every write to the tasks bucket past the event AckWait
// and the launch timeout, for 2-5 s, while a probe target is declared.
func (w *world) slowStore(stop context.Context, rng *rand.Rand) {
	d := 2*time.Second + time.Duration(rng.Float64()*float64(3*time.Second))
	w.log.Info("soak: fault", "kind", KindStoreSlow, "for", d.Round(time.Millisecond))
	w.harmless(KindStoreSlow, func() {
		w.slowWrites.Store(int64(w.tm.AckWait + 500*time.Millisecond))
		w.count(KindStoreSlow)
		if _, err := w.putProbe(stop); err != nil && stop.Err() == nil {
			w.fail("%s: declare probe: %v", KindStoreSlow, err)
		}
		sleepCtx(stop, d)
		w.slowWrites.Store(0)
	})
}

// liveMessages returns the latest heartbeat of every running, talking task
// and the latest host status of every up host.
func (w *world) liveMessages() (hbs, hosts []recorded) {
	_, statuses, _, _, _ := w.sniff.recent()
	w.mu.Lock()
	up := map[string]bool{}
	var tasks []*chaosTask
	for _, name := range w.hostOrder {
		h := w.hosts[name]
		if h.state != hostUp || h.exec == nil {
			continue
		}
		up[name] = true
		tasks = append(tasks, h.exec.running()...)
	}
	w.mu.Unlock()
	for _, t := range tasks {
		if t.silent.Load() {
			continue
		}
		if r, ok := w.sniff.latestHeartbeat(t.spec.TaskID); ok {
			hbs = append(hbs, r)
		}
	}
	latest := map[string]recorded{}
	for _, r := range statuses {
		if up[r.host] {
			latest[r.host] = r
		}
	}
	for _, name := range sortedKeys(latest) {
		hosts = append(hosts, latest[name])
	}
	return hbs, hosts
}

// flood publishes copies of live heartbeats and host statuses as fast as it
// can for 1-3 s, while the selector consumes them slowly: its pending
// limits overflow and it drops input.
func (w *world) flood(stop context.Context, rng *rand.Rand) {
	hbs, hosts := w.liveMessages()
	if len(hbs) == 0 {
		return
	}
	d := time.Second + time.Duration(rng.Float64()*float64(2*time.Second))
	w.log.Info("soak: fault", "kind", KindHeartbeatFlood, "for", d.Round(time.Millisecond))
	w.harmless(KindHeartbeatFlood, func() {
		nc, err := nats.Connect(w.url, nats.Name("soak-flood"))
		if err != nil {
			w.fail("%s: connect: %v", KindHeartbeatFlood, err)
			return
		}
		defer nc.Close()
		w.slowInput.Store(int64(200 * time.Microsecond))
		defer w.slowInput.Store(0)
		w.count(KindHeartbeatFlood)
		deadline := time.Now().Add(d)
		sent := 0
		for time.Now().Before(deadline) && stop.Err() == nil && sent < 1_000_000 {
			for _, m := range hbs {
				_ = nc.Publish(m.subject, m.data)
			}
			for _, m := range hosts {
				_ = nc.Publish(m.subject, m.data)
			}
			sent += len(hbs) + len(hosts)
		}
		_ = nc.FlushTimeout(5 * time.Second)
		w.log.Info("soak: flood sent", "messages", sent)
	})
}

// replay publishes again recent heartbeats (of tasks that run, or whose
// target runs a newer task), host statuses of up hosts, task events, and
// kill (of tasks that are gone) and ps requests: duplicated, late and
// reordered.
func (w *world) replay(rng *rand.Rand) {
	hbs, statuses, events, kills, ps := w.sniff.recent()
	w.mu.Lock()
	live := map[string]bool{}    // task ids running and talking
	running := map[string]bool{} // task ids running
	current := map[string]bool{} // targets running a task
	up := map[string]bool{}
	for _, name := range w.hostOrder {
		h := w.hosts[name]
		if h.state != hostUp || h.exec == nil {
			continue
		}
		up[name] = true
		for _, t := range h.exec.running() {
			current[t.spec.Target] = true
			running[t.spec.TaskID] = true
			if !t.silent.Load() {
				live[t.spec.TaskID] = true
			}
		}
	}
	w.mu.Unlock()
	var msgs []recorded
	for _, r := range hbs {
		if live[r.taskID] || current[r.target] {
			msgs = append(msgs, r)
		}
	}
	for _, r := range statuses {
		if up[r.host] {
			msgs = append(msgs, r)
		}
	}
	for _, r := range kills {
		if !running[r.taskID] {
			msgs = append(msgs, r)
		}
	}
	msgs = append(msgs, ps...)
	rng.Shuffle(len(msgs), func(i, j int) { msgs[i], msgs[j] = msgs[j], msgs[i] })
	if len(msgs) > 300 {
		msgs = msgs[:300]
	}
	rng.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })
	if len(events) > 40 {
		events = events[:40]
	}
	w.log.Info("soak: fault", "kind", KindDuplicates, "messages", len(msgs), "events", len(events))
	w.harmless(KindDuplicates, func() {
		w.count(KindDuplicates)
		for _, m := range msgs {
			for range 1 + rng.IntN(3) {
				_ = w.opNC.Publish(m.subject, m.data)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, ev := range events {
			// A new message to the stream (no message id): the selector
			// gets it as one more delivery of an event it has handled.
			if _, err := w.js.Publish(ctx, ev.subject, ev.data); err != nil {
				w.log.Warn("soak: replay event", "err", err)
			}
		}
		_ = w.opNC.FlushTimeout(5 * time.Second)
	})
}

// hostile publishes malformed messages on every subject, into the event
// stream and the targets bucket, with RAM figures past the bound.
func (w *world) hostile(rng *rand.Rand) {
	hbs, hosts := w.liveMessages()
	w.mu.Lock()
	var hostNames []string
	for _, name := range w.hostOrder {
		if w.hosts[name].state == hostUp {
			hostNames = append(hostNames, name)
		}
	}
	targets := sortedKeys(w.desired)
	w.mu.Unlock()
	if len(hostNames) == 0 || len(targets) == 0 {
		return
	}
	host := hostNames[rng.IntN(len(hostNames))]
	target := targets[rng.IntN(len(targets))]
	p := w.subj.Prefix
	junk := [][]byte{
		[]byte("not json"),
		[]byte("{}"),
		[]byte(`{"v":99}`),
		[]byte(`[1,2,3]`),
		[]byte(strings.Repeat("x", schemas.MaxMessageBytes+10)),
		{0xff, 0xfe, 0x00},
	}
	type pub struct {
		subject string
		data    []byte
	}
	var pubs []pub
	for _, subject := range []string{
		w.subj.Heartbeat(host, target), w.subj.Host(host), w.subj.Launch(host), w.subj.Kill(host), w.subj.Ps(host),
		p + ".heartbeat.=!!.x", p + ".heartbeat.onlyonetoken", p + ".host.=***", w.subj.Status(),
	} {
		for _, j := range junk {
			pubs = append(pubs, pub{subject, j})
		}
	}
	// Well-formed but out of bounds, or naming another host than the
	// subject: each must be refused at the edge.
	for _, m := range hbs {
		var hb map[string]any
		if json.Unmarshal(m.data, &hb) != nil {
			continue
		}
		ram, _ := hb["ram"].(map[string]any)
		if ram == nil {
			continue
		}
		ram["used_mib"] = float64(uint64(1) << 62)
		ram["budget_mib"] = float64(schemas.MaxMiB) * 4
		b, _ := json.Marshal(hb)
		pubs = append(pubs, pub{m.subject, b})
		hb["host"] = "elsewhere"
		b, _ = json.Marshal(hb)
		pubs = append(pubs, pub{m.subject, b})
		break
	}
	for _, m := range hosts {
		var hs map[string]any
		if json.Unmarshal(m.data, &hs) != nil {
			continue
		}
		hs["ram"] = map[string]any{"total_mib": float64(uint64(1) << 60), "used_mib": -5}
		b, _ := json.Marshal(hs)
		pubs = append(pubs, pub{m.subject, b})
		break
	}
	events := [][]byte{
		[]byte("not json"),
		[]byte(`{"v":1,"task_id":"","epoch":0,"kind":"exploded"}`),
		[]byte(fmt.Sprintf(`{"v":1,"task_id":"x","epoch":1,"pid":-1,"host":%q,"target":%q,"type":"t","kind":"done","at":"2030-01-01T00:00:00Z"}`, host, "someone-else")),
	}
	specs := [][]byte{
		[]byte("not json"),
		[]byte(`{"v":1,"profile":"declared","phases":[]}`),
		[]byte(fmt.Sprintf(`{"v":1,"profile":"declared","phases":[{"type":"x","wrapper_mib":%d,"helpers_min_mib":1,"helpers_full_mib":1,"work_s":1}]}`, uint64(schemas.MaxMiB)*8)),
		[]byte(`{"v":1,"profile":"declared","phases":[{"type":"x","wrapper_mib":1,"helpers_min_mib":1,"helpers_full_mib":1,"work_s":-1}]}`),
		[]byte(`{"v":1,"profile":"nonsense"}`),
	}
	w.log.Info("soak: fault", "kind", KindHostile, "messages", len(pubs), "events", len(events), "specs", len(specs))
	w.harmless(KindHostile, func() {
		w.count(KindHostile)
		for _, m := range pubs {
			_ = w.opNC.Publish(m.subject, m.data)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, ev := range events {
			if _, err := w.js.Publish(ctx, w.subj.Event(target), ev); err != nil {
				w.log.Warn("soak: hostile event", "err", err)
			}
		}
		kv, err := w.js.KeyValue(ctx, protocol.TargetsBucket)
		if err != nil {
			w.log.Warn("soak: targets bucket", "err", err)
			return
		}
		keys := make([]string, 0, len(specs))
		for i, s := range specs {
			key := fmt.Sprintf("hostile-%d", i)
			if _, err := kv.Put(ctx, key, s); err != nil {
				w.log.Warn("soak: hostile spec", "err", err)
			}
			keys = append(keys, key)
		}
		_ = w.opNC.FlushTimeout(5 * time.Second)
		time.Sleep(time.Second)
		for _, key := range keys {
			_ = kv.Delete(ctx, key)
		}
	})
}
