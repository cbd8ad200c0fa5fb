package integration

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// longFullMiB is what a longSpec task takes at full size.
const longFullMiB = 8 + 64

// waitAllActiveOn waits until every named target is active, and on host when
// host is set, and returns the status that shows it.
func (e *env) waitAllActiveOn(timeout time.Duration, targets []string, host string) schemas.SelectorStatus {
	e.t.Helper()
	return e.waitStatus(timeout, func(st *schemas.SelectorStatus) (bool, string) {
		for _, name := range targets {
			ts, ok := targetLine(st, name)
			if !ok || ts.State != selector.StateActive || (host != "" && ts.Host != host) {
				return false, fmt.Sprintf("%s not active on %q: %s", name, host, describe(st))
			}
		}
		return true, ""
	})
}

// Issue 7, defect 2: a host that dies holding most of the tasks froze the
// selector for good: the mass-stale guard entered "degraded" and only the
// dead host's return could end it. Now it is one host lost of two, and its
// targets move to the host that lives.
func TestHostHoldingMostTasksDiesAndItsTargetsMove(t *testing.T) {
	e := newEnv(t, false)
	big := e.startWorker("big", 3*longFullMiB+longFullMiB/2, 0, worker.Faults{})
	e.startWorker("small", 16*longFullMiB, 0, worker.Faults{})
	cfg := engineConfig()
	e.startSelector(serviceConfig(cfg))
	targets := []string{"a", "b", "c", "d"}
	for _, name := range targets {
		e.putTarget(name, longSpec())
		e.waitActive(20*time.Second, name) // one at a time: best fit fills big first
	}
	onBig := 0
	for _, ts := range e.mustStatus().Targets {
		if ts.Host == "big" {
			onBig++
		}
	}
	if onBig != 3 {
		t.Fatalf("want 3 of 4 tasks on big, got %d: %s", onBig, describe(new(e.mustStatus())))
	}

	died := time.Now()
	big.stop(t) // its sim tasks vanish with it, without a word
	st := e.waitAllActiveOn(cfg.HostStale+20*time.Second, targets, "small")
	t.Logf("all targets active again %v after big died (host stale %v)", time.Since(died).Round(time.Millisecond), cfg.HostStale)
	for _, ts := range st.Targets {
		if ts.Host != "small" {
			t.Errorf("%s on %s", ts.Target, ts.Host)
		}
	}
	if st.Counters.HostsLost != 1 || st.Disruption != selector.DisruptionNormal || st.Degraded {
		t.Errorf("hosts lost %d, disruption %q (%s); want 1, normal", st.Counters.HostsLost, st.Disruption, st.DegradedReason)
	}
}

// Issue 7, defect 3: a selector restarted after the hosts its records name
// vanished never launched anything. Two of three hosts are gone for good:
// that is partial disruption, so they are lost at the limited rate, and
// their targets move to the third.
func TestRestartAfterRecordedHostsVanishRelaunchesElsewhere(t *testing.T) {
	e := newEnv(t, false)
	sp := e.startSpy()
	h1 := e.startWorker("h1", longFullMiB, 0, worker.Faults{})
	h2 := e.startWorker("h2", longFullMiB, 0, worker.Faults{})
	e.startWorker("h3", 8*longFullMiB, 0, worker.Faults{})
	cfg := engineConfig()
	cfg.LostHostsPerMin = 30 // one every 2 s, to keep the test short
	sel := e.startSelector(serviceConfig(cfg))
	targets := []string{"a", "b", "c"}
	for _, name := range targets {
		e.putTarget(name, longSpec())
		e.waitActive(20*time.Second, name)
	}
	sel.stop(t)
	h1.stop(t)
	h2.stop(t)

	restarted := time.Now()
	e.startSelector(serviceConfig(cfg))
	sawPartial := false
	st := e.waitStatus(cfg.RecoveryGrace+cfg.HostStale+30*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		if st.Disruption == selector.DisruptionPartial {
			sawPartial = true
		}
		for _, name := range targets {
			ts, ok := targetLine(st, name)
			if !ok || ts.State != selector.StateActive || ts.Host != "h3" {
				return false, describe(st)
			}
		}
		return true, ""
	})
	t.Logf("every target active on h3 %v after the restart", time.Since(restarted).Round(time.Millisecond))
	if st.Counters.HostsLost != 2 {
		t.Errorf("hosts lost %d, want 2", st.Counters.HostsLost)
	}
	if !sawPartial {
		t.Errorf("two of three hosts gone: partial disruption never shown in status")
	}
	for _, name := range targets {
		for _, l := range sp.launches(name) {
			if l.host != "h3" && l.at.After(restarted) {
				t.Errorf("%s launched on %s after the restart", name, l.host)
			}
		}
	}
}

// Issue 7, defect 4: used_mib near MaxInt64 overflowed the ledger. Such a
// heartbeat is now refused at the edge as malformed, and the ledger bounds
// every figure anyway.
func TestHugeRAMFiguresNeitherOverflowNorOvercommit(t *testing.T) {
	e := newEnv(t, false)
	w := e.startWorker("h", 200, 0, worker.Faults{})
	e.startSelector(serviceConfig(engineConfig()))
	e.putTarget("a", longSpec())
	a := e.waitActive(20*time.Second, "a")
	for range 2 {
		hb := schemas.Heartbeat{V: schemas.Version, TaskID: a.TaskID, Epoch: a.Epoch, PID: a.PID, Host: "h", Target: "a",
			Type: a.Phase, Seq: 1 << 40, RAM: schemas.HeartbeatRAM{BudgetMiB: a.BudgetMiB, UsedMiB: math.MaxInt64 - 1000}, SentAt: time.Now().UTC()}
		data := schemas.AppendHeartbeat(nil, &hb)
		if err := e.nc.Publish(e.subj.Heartbeat("h", "a"), data); err != nil {
			t.Fatal(err)
		}
	}
	e.waitStatus(10*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		return st.Counters.MalformedMessages["heartbeat"] == 2, describe(st)
	})
	// More targets than 200 MiB hold at full size: they are placed, scaled
	// down to what is really free, and never beyond it.
	for _, name := range []string{"b", "c", "d", "e"} {
		e.putTarget(name, longSpec())
	}
	st := e.waitStatus(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		return st.PendingLaunches == 0 && st.Counters.Launches >= 3, describe(st)
	})
	var budgets int64
	for _, ts := range st.Targets {
		budgets += ts.BudgetMiB
	}
	for _, hl := range st.Hosts {
		if hl.ReservedMiB < 0 || hl.FreeMiB < 0 || hl.ReservedMiB > hl.TotalMiB || budgets > hl.TotalMiB {
			t.Errorf("ledger of %s: %+v; budgets %d MiB", hl.Host, hl, budgets)
		}
	}
	if s := w.agent.Stats(); s.Refused[schemas.CodeInsufficientRAM] != 0 {
		t.Errorf("the worker refused %d launches for RAM: the selector overcommitted", s.Refused[schemas.CodeInsufficientRAM])
	}
}
