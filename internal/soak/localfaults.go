package soak

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
)

// ----- task and host faults -----

// runLocal injects one task or host fault and heals it (if it heals) by
// the time it returns, or at once when stop ends. wg tracks the
// replacement of a lost host, which outlives the fault.
func (w *world) runLocal(stop context.Context, wg *sync.WaitGroup, kind string, rng *rand.Rand) {
	switch kind {
	case KindCrash, KindCrashSilent:
		w.crashTask(kind, rng)
	case KindHang:
		w.hangTask(rng)
	case KindSilentLaunch:
		w.silentLaunch(stop, rng)
	case KindHostLoss:
		w.loseHost(stop, wg, rng)
	case KindHostBounce:
		w.bounceHost(stop, rng)
	case KindPartition:
		w.partition(rng)
	}
}

// pickTask chooses a running task, on a host no fault holds, that pred
// accepts and whose target no recovery awaits; nil when there is none.
func (w *world) pickTask(rng *rand.Rand, pred func(*chaosTask) bool) *chaosTask {
	w.mu.Lock()
	var cands []*chaosTask
	for _, name := range w.hostOrder {
		h := w.hosts[name]
		if h.state != hostUp || h.busy || h.exec == nil {
			continue
		}
		for _, t := range h.exec.running() {
			if pred(t) && !w.track.awaited(t.spec.Target) {
				cands = append(cands, t)
			}
		}
	}
	w.mu.Unlock()
	if len(cands) == 0 {
		return nil
	}
	return cands[rng.IntN(len(cands))]
}

// settledTask accepts a task that has run long enough to have heartbeated
// and is not silent.
func settledTask(t *chaosTask) bool {
	return time.Since(t.started) > 500*time.Millisecond && !t.silent.Load()
}

func (w *world) crashTask(kind string, rng *rand.Rand) {
	t := w.pickTask(rng, settledTask)
	if t == nil {
		return
	}
	ex := worker.Exit{Kind: schemas.EventFailed, Reason: schemas.ReasonCrashed}
	if kind == KindCrashSilent {
		ex = worker.Exit{} // vanishes without a word
	}
	at := time.Now()
	if !t.crash(ex) {
		return
	}
	w.count(kind)
	w.log.Info("soak: fault", "kind", kind, "target", t.spec.Target, "task", t.spec.TaskID, "host", t.x.host)
	w.track.expect(kind, fmt.Sprintf("%s of %s on %s", kind, t.spec.TaskID, t.x.host), t.x.host, at, []string{t.spec.Target}, nil, w.o.StallAfter)
}

func (w *world) hangTask(rng *rand.Rand) {
	// Only tasks with work left for a while: the sim's task goes on
	// working while it is silent, and a done event would end the fault.
	t := w.pickTask(rng, func(t *chaosTask) bool { return settledTask(t) && workLeft(t) > 5*time.Second })
	if t == nil {
		return
	}
	at := time.Now()
	t.hang()
	w.count(KindHang)
	w.log.Info("soak: fault", "kind", KindHang, "target", t.spec.Target, "task", t.spec.TaskID, "host", t.x.host)
	w.track.expect(KindHang, fmt.Sprintf("hang of %s on %s", t.spec.TaskID, t.x.host), t.x.host, at, []string{t.spec.Target}, nil, w.o.StallAfter)
}

// workLeft estimates the real time t still works at full size (sim speed 1).
func workLeft(t *chaosTask) time.Duration {
	spec, ok := t.spec.Args[worker.ArgSpec].(map[string]any)
	if !ok {
		return 0
	}
	phases, _ := spec["phases"].([]any)
	for _, p := range phases {
		ph, _ := p.(map[string]any)
		if ph["type"] != t.spec.Type {
			continue
		}
		work, _ := ph["work_s"].(float64)
		s := t.Sample()
		return time.Duration((1 - s.Progress) * work * float64(time.Second))
	}
	return 0
}

// silentLaunch declares a probe target whose first launch is silent (its
// task never heartbeats nor ends, and half the time its reply comes after
// the reply timeout), waits until it has been relaunched, and deletes it.
// The launch is counted, and its recovery measured, when a worker starts it
// (see onStart).
func (w *world) silentLaunch(stop context.Context, rng *rand.Rand) {
	var delay time.Duration
	if rng.IntN(2) == 0 {
		delay = w.tm.ReplyTimeout + 200*time.Millisecond // the reply comes too late
	}
	w.mu.Lock()
	if w.silentTarget != "" {
		w.mu.Unlock()
		return
	}
	w.probes++
	name := fmt.Sprintf("probe-%d", w.probes)
	w.silentTarget, w.silentDelay = name, delay
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.silentTarget = ""
		w.mu.Unlock()
	}()
	w.log.Info("soak: fault", "kind", KindSilentLaunch, "target", name, "reply_delay", delay)
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := w.putTarget(ctx, name, lingerSpec()); err != nil {
		w.fail("silent launch: %v", err)
		return
	}
	// Until it has run twice (silently, then for real), or the recovery
	// stalled; then the probe goes. The silent launch is taken when a
	// worker receives it but starts only after its reply delay: the
	// recovery is awaited from then on.
	for i := 0; i < 2*int(w.o.StallAfter/(50*time.Millisecond)); i++ {
		w.mu.Lock()
		taken := w.silentTarget != name
		started := w.silentStarted == name
		w.mu.Unlock()
		if started && !w.track.awaited(name) {
			break
		}
		if !taken && stop.Err() != nil {
			break // faults are over before its launch: no fault
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := w.client.DeleteTarget(ctx, name); err != nil {
		w.fail("silent launch: delete %s: %v", name, err)
		return
	}
	w.mu.Lock()
	delete(w.desired, name)
	w.mu.Unlock()
}

// pickHost chooses an up host that no fault holds, preferring one with
// running tasks, marks it busy and returns it with the targets of its
// running tasks; nil when fewer than minHealthyHosts would be left
// untouched.
func (w *world) pickHost(rng *rand.Rand) (*hostProc, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var free, loaded []*hostProc
	for _, name := range w.hostOrder {
		h := w.hosts[name]
		if h.state != hostUp || h.busy || h.exec == nil || w.track.hostAwaited(name) {
			continue
		}
		free = append(free, h)
		if len(h.exec.running()) > 0 {
			loaded = append(loaded, h)
		}
	}
	if len(free) <= minHealthyHosts {
		return nil, nil
	}
	if len(loaded) > 0 {
		free = loaded
	}
	h := free[rng.IntN(len(free))]
	h.busy = true
	return h, runningTargets(h)
}

func (w *world) unbusy(h *hostProc) {
	w.mu.Lock()
	h.busy = false
	w.mu.Unlock()
}

// runningTargets lists the targets with a process on h now.
func runningTargets(h *hostProc) []string {
	if h.exec == nil {
		return nil
	}
	var out []string
	for _, t := range h.exec.running() {
		out = append(out, t.spec.Target)
	}
	return out
}

// loseHost kills a host for good; a new host with its RAM joins 5-15 s
// later (at once when the faults stop).
func (w *world) loseHost(stop context.Context, wg *sync.WaitGroup, rng *rand.Rand) {
	h, targets := w.pickHost(rng)
	if h == nil {
		return
	}
	at := time.Now()
	w.die(h)
	w.mu.Lock()
	h.state = hostLost
	w.replaced++
	name := fmt.Sprintf("r%d", w.replaced)
	w.mu.Unlock()
	w.count(KindHostLoss)
	w.hostFaultOver()
	w.log.Info("soak: fault", "kind", KindHostLoss, "host", h.name, "targets", len(targets), "replacement", name)
	w.track.expect(KindHostLoss, "loss of host "+h.name, "", at, targets, nil, w.o.StallAfter)
	wait := 5*time.Second + time.Duration(rng.Float64()*float64(10*time.Second))
	wg.Add(1)
	go func() {
		defer wg.Done()
		sleepCtx(stop, wait)
		ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
		defer cancel()
		if _, err := w.startHost(ctx, name, h.ram); err != nil {
			w.fail("replacement host %s: %v", name, err)
			return
		}
		w.log.Info("soak: replacement host joined", "host", name, "for", h.name)
	}()
}

// bounceHost kills a host and brings it back under its name after a pause
// that ends before or after the selector declares it lost.
func (w *world) bounceHost(stop context.Context, rng *rand.Rand) {
	h, targets := w.pickHost(rng)
	if h == nil {
		return
	}
	defer w.unbusy(h)
	at := time.Now()
	w.die(h)
	w.mu.Lock()
	h.state = hostDown
	w.mu.Unlock()
	w.count(KindHostBounce)
	down := time.Second + time.Duration(rng.Float64()*float64(w.tm.HostStale+2*time.Second))
	w.log.Info("soak: fault", "kind", KindHostBounce, "host", h.name, "targets", len(targets), "down", down.Round(time.Millisecond))
	w.track.expect(KindHostBounce, "bounce of host "+h.name, "", at, targets, nil, w.o.StallAfter)
	sleepCtx(stop, down)
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if _, err := w.startHost(ctx, h.name, h.ram); err != nil {
		w.fail("host %s did not come back: %v", h.name, err)
		w.mu.Lock()
		h.state = hostLost
		w.mu.Unlock()
	}
	w.hostFaultOver()
}

// partition stalls a host's connection past its fence time (and up to a
// few seconds past the host-stale time), then lets it flow again.
func (w *world) partition(rng *rand.Rand) {
	h, targets := w.pickHost(rng)
	if h == nil {
		return
	}
	defer w.unbusy(h)
	w.aud.SetUnreachable(h.name, true)
	at := time.Now()
	h.proxy.Stall()
	w.count(KindPartition)
	minD := w.tm.FenceAfter + 500*time.Millisecond
	d := minD + time.Duration(rng.Float64()*float64(w.tm.HostStale+3*time.Second-minD))
	w.log.Info("soak: fault", "kind", KindPartition, "host", h.name, "targets", len(targets), "for", d.Round(time.Millisecond))
	w.track.expect(KindPartition, "partition of host "+h.name, "", at, targets, nil, w.o.StallAfter)
	time.Sleep(d) // not cut short: a shorter one would not be past the fence time

	h.proxy.Resume()
	w.aud.Heal(h.name)
	w.hostFaultOver()
}
