package soak

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/internal/natsembed"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// minHealthyHosts is how many hosts stay up and untouched by host faults.
const minHealthyHosts = 3

// runFaults injects faults until Options.Duration has passed or ctx ends,
// then lets the faults under way heal and returns. A fault whose system
// cannot be brought back (a selector or server that does not restart) ends
// the phase early and is recorded as a failure.
func (w *world) runFaults(ctx context.Context) {
	stop, cancel := context.WithTimeout(ctx, w.o.Duration)
	defer cancel()
	w.mu.Lock()
	w.stopFaults = cancel
	w.mu.Unlock()

	var wg sync.WaitGroup // local faults and the replacements of lost hosts
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		w.reportProgress(stop)
	}()

	var deck []kindInfo
	lastClean := time.Now()
	for {
		w.mu.Lock()
		wait := time.Duration(float64(w.o.Interval) * (0.5 + w.rng.Float64()))
		w.mu.Unlock()
		if !sleepCtx(stop, wait) {
			break
		}
		w.track.expire(time.Now())
		if time.Since(lastClean) > 10*time.Second {
			w.dropCompleteProbes(stop)
			lastClean = time.Now()
		}
		if len(deck) == 0 {
			deck = w.newDeck(!w.o.InOrder)
		}
		k := deck[0]
		deck = deck[1:]
		w.mu.Lock()
		rng := rand.New(rand.NewPCG(w.rng.Uint64(), w.rng.Uint64()))
		w.mu.Unlock()
		if k.exclusive {
			if !w.quiesce(stop) {
				break
			}
			w.runExclusive(stop, k.name, rng)
			continue
		}
		if !w.takeSlot() {
			deck = append(deck, k) // later
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer w.releaseSlot()
			w.runLocal(stop, &wg, k.name, rng)
		}()
	}
	cancel()
	wg.Wait()
	<-progressDone
}

// newDeck returns the enabled kinds, each as often as its weight,
// shuffled; or, unshuffled, each once in the order given.
func (w *world) newDeck(shuffle bool) []kindInfo {
	var deck []kindInfo
	for _, name := range w.o.Kinds {
		k, _ := kindOf(name)
		if !shuffle {
			deck = append(deck, k)
			continue
		}
		for range k.weight {
			deck = append(deck, k)
		}
	}
	if !shuffle {
		return deck
	}
	w.mu.Lock()
	w.rng.Shuffle(len(deck), func(i, j int) { deck[i], deck[j] = deck[j], deck[i] })
	w.mu.Unlock()
	return deck
}

func (w *world) takeSlot() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.active >= w.o.MaxLocal {
		return false
	}
	w.active++
	return true
}

func (w *world) releaseSlot() {
	w.mu.Lock()
	w.active--
	w.mu.Unlock()
}

// hostFaultOver records the end of a fault that silenced a host.
func (w *world) hostFaultOver() {
	w.mu.Lock()
	w.lastHostFault = time.Now()
	w.mu.Unlock()
}

// quiesce waits until the system is calm: no task or host fault under way,
// none that silenced a host ended less than a host-stale time ago (a launch
// sent to a host just before it went silent is settled only that long after
// it left), no
// recovery being measured, and the selector at rest (ready, no launch
// pending, no task launching or suspect, no silent host). It returns false
// when stop ends first.
func (w *world) quiesce(stop context.Context) bool {
	for {
		w.track.expire(time.Now())
		w.mu.Lock()
		idle := w.active == 0 && time.Since(w.lastHostFault) > w.tm.HostStale+time.Second
		w.mu.Unlock()
		if idle && w.track.pending() == 0 && atRest(w.status()) {
			return true
		}
		if !sleepCtx(stop, 50*time.Millisecond) {
			return false
		}
	}
}

// atRest reports whether st shows a selector with nothing in flight.
func atRest(st schemas.SelectorStatus) bool {
	if !st.Ready || st.Recovering || st.PendingLaunches > 0 {
		return false
	}
	for _, ts := range st.Targets {
		if ts.State == selector.StateLaunching || ts.State == selector.StateSuspect {
			return false
		}
	}
	for _, h := range st.Hosts {
		if h.Stale && !h.Lost {
			return false
		}
	}
	return true
}

// count records one injected fault.
func (w *world) count(kind string) {
	w.mu.Lock()
	w.counts[kind]++
	w.mu.Unlock()
}

// goalOf is how long a recovery of kind should take at most: issue 8's
// goals, and for the other kinds the bound the README's failure model
// gives, plus a second.
func (w *world) goalOf(kind string) time.Duration {
	t := w.tm
	switch kind {
	case KindCrash, KindCrashSilent:
		return t.HeartbeatStale + time.Second
	case KindHostLoss, KindHostBounce, KindPartition:
		return t.HostStale + 2*time.Second
	case KindSelectorKill, KindSelectorRestart:
		return t.RecoveryGrace + time.Second
	case KindHang:
		return t.HeartbeatStale + t.ReplyTimeout + t.RestartDelayMax + time.Second
	case KindSilentLaunch:
		return t.LaunchTimeout + 2*t.ReplyTimeout + t.RestartDelayMax + time.Second
	}
	return t.RecoveryGrace + 5*time.Second // a NATS restart: reconnects, then the grace
}

// reportProgress logs a progress line every Options.Progress until stop,
// and, as soon as a recovery takes longer than its goal, what the selector
// says of the targets it awaits.
func (w *world) reportProgress(stop context.Context) {
	t := time.NewTicker(w.o.Progress)
	defer t.Stop()
	check := time.NewTicker(250 * time.Millisecond)
	defer check.Stop()
	start := time.Now()
	for {
		select {
		case <-stop.Done():
			return
		case <-check.C:
			w.reportOverdue()
			continue
		case <-t.C:
		}
		byKind, stalled := w.track.results()
		rec := 0
		for _, ds := range byKind {
			rec += len(ds)
		}
		w.mu.Lock()
		faults, up := 0, 0
		for _, n := range w.counts {
			faults += n
		}
		for _, h := range w.hosts {
			if h.state == hostUp {
				up++
			}
		}
		w.mu.Unlock()
		w.log.Info("soak: progress", "elapsed", time.Since(start).Round(time.Second), "faults", faults,
			"recoveries", rec, "measuring", w.track.pending(), "stalled", len(stalled), "hosts_up", up,
			"heartbeats", w.heartbeats(), "launches", w.aud.LaunchCount())
	}
}

// reportOverdue logs the recoveries slower than their goal, with the
// selector's view.
func (w *world) reportOverdue() {
	late := w.track.overdue(time.Now(), w.goalOf)
	if len(late) == 0 {
		return
	}
	st := w.status()
	var b strings.Builder
	fmt.Fprintf(&b, "ready=%v recovering=%v disruption=%s degraded=%q stopped=%q backoff=%d pending=%d",
		st.Ready, st.Recovering, st.Disruption, st.DegradedReason, st.LaunchesStopped, st.Backoff.Level, st.PendingLaunches)
	for _, h := range st.Hosts {
		fmt.Fprintf(&b, "; host %s: total=%d used=%d reserved=%d free=%d tasks=%d stale=%v lost=%v draining=%v avoided=%v",
			h.Host, h.TotalMiB, h.UsedMiB, h.ReservedMiB, h.FreeMiB, h.Tasks, h.Stale, h.Lost, h.Draining, h.Avoided)
	}
	for _, ts := range st.Targets {
		if ts.State != selector.StateActive && ts.State != selector.StateComplete {
			fmt.Fprintf(&b, "; target %s: %s phase=%s host=%q task=%s reason=%q", ts.Target, ts.State, ts.Phase, ts.Host, ts.TaskID, ts.Reason)
		}
	}
	for _, l := range late {
		w.log.Warn("soak: recovery slower than its goal", "recovery", l, "selector", b.String())
	}
}

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
// running tasks, and marks it busy; nil when fewer than minHealthyHosts
// would be left untouched.
func (w *world) pickHost(rng *rand.Rand) *hostProc {
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
		return nil
	}
	if len(loaded) > 0 {
		free = loaded
	}
	h := free[rng.IntN(len(free))]
	h.busy = true
	return h
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
	h := w.pickHost(rng)
	if h == nil {
		return
	}
	w.mu.Lock()
	targets := runningTargets(h)
	w.mu.Unlock()
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
	h := w.pickHost(rng)
	if h == nil {
		return
	}
	defer w.unbusy(h)
	w.mu.Lock()
	targets := runningTargets(h)
	w.mu.Unlock()
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
	h := w.pickHost(rng)
	if h == nil {
		return
	}
	defer w.unbusy(h)
	w.mu.Lock()
	targets := runningTargets(h)
	w.mu.Unlock()
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
