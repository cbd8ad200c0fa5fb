package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// TestChaosFleetHelpers: tasks placed at their minimum (LaunchAtMinimum) on
// a small host hold the rest of their helper RAM on two other hosts; one of
// those dies for good, and a target is deleted. Through it all the auditor, which records
// every process and helper from the workers' side, finds no helper that
// outlived its task, no host over its RAM, and, once settled, reservations
// that equal what the live processes and helpers hold.
func TestChaosFleetHelpers(t *testing.T) {
	w := newChaosWorld(t, false)
	cfg := engineConfig()
	cfg.LaunchAtMinimum = true // tasks at their minimum, the rest as fleet helpers
	opts := chaosWorkerOpts{allocRetry: grantAllocRetry}
	// small holds both tasks at their minimum and nothing more, so that no
	// helper lands there. Both are declared at once: a task that runs asks
	// for helpers at once, and could take the room of one still pending.
	w.startAuditedWorker("small", 2*chaosMinMiB, opts)
	w.startSelector(serviceConfig(cfg))
	w.declare("a", chaosSpec(0, 0))
	w.declare("b", chaosSpec(0, 0))
	w.settle(20*time.Second, w.allActive("a", "b"))
	st := w.mustStatus()
	for _, ts := range st.Targets {
		if ts.Host != "small" || ts.BudgetMiB >= ts.FullMiB {
			t.Fatalf("want both tasks on small below full size: %s", describe(&st))
		}
	}
	// Room for the helpers of both, on either host.
	x := w.startAuditedWorker("x", 4*chaosFullMiB, opts)
	w.startAuditedWorker("y", 4*chaosFullMiB, opts)
	fullyHelped := func(hosts ...string) func(st *schemas.SelectorStatus) (bool, string) {
		return func(st *schemas.SelectorStatus) (bool, string) {
			for _, ts := range st.Targets {
				var held int64
				for _, g := range ts.Helpers {
					ok := false
					for _, h := range hosts {
						ok = ok || g.Host == h
					}
					if !ok {
						return false, fmt.Sprintf("%s holds a helper on %s", ts.Target, g.Host)
					}
					held += g.MiB
				}
				if ts.BudgetMiB+held != ts.FullMiB {
					return false, fmt.Sprintf("%s: budget %d + helpers %v, want %d", ts.Target, ts.BudgetMiB, ts.Helpers, ts.FullMiB)
				}
			}
			return true, ""
		}
	}
	w.settle(20*time.Second, chaosBoth(w.allActive(), fullyHelped("x", "y")))
	w.checkCapacity()

	// x dies for good: its helpers leave the ledger, and the tasks get
	// their RAM back on y.
	w.killWorker(x)
	w.settle(cfg.HostStale+30*time.Second, chaosBoth(w.allActive(), fullyHelped("y")))
	w.checkCapacity()

	// b is deleted: its task is killed and its helpers stopped.
	if err := w.client.DeleteTarget(w.ctx(10*time.Second), "b"); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	delete(w.desired, "b")
	w.mu.Unlock()
	w.settle(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		if _, ok := targetLine(st, "b"); ok {
			return false, "b still in status"
		}
		return fullyHelped("y")(st)
	})
	for _, h := range w.aud.Helpers() {
		if h.Target == "b" && h.End.IsZero() {
			t.Errorf("b's %s still runs", &h)
		}
	}
	w.checkCapacity()
	w.checkAudit()
}
