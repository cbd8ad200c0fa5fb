package soak

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
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
