package soak

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// testLog discards logs unless SOAK_LOG is set.
func testLog(level slog.Level) *slog.Logger {
	if os.Getenv("SOAK_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// TestShortSoak runs the whole system for a few seconds of faults of every
// kind (seeded), and checks that the auditor finds nothing, that several
// kinds of fault were injected and recovered from, and that nothing is left
// running.
func TestShortSoak(t *testing.T) {
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{
		Duration: 30 * time.Second,
		Seed:     7,
		Interval: 500 * time.Millisecond,
		// Every kind has its turn in a longer run; this one takes the
		// most telling first.
		Kinds: []string{KindCrash, KindSelectorKill, KindPartition, KindHang, KindStoreSlow, KindHostLoss,
			KindCrashSilent, KindNATSRestart, KindSilentLaunch, KindHeartbeatFlood, KindHostBounce, KindHostile,
			KindSelectorRestart, KindDuplicates},
		InOrder:      true,
		Settle:       30 * time.Second,
		Log:          testLog(slog.LevelDebug),
		ComponentLog: testLog(slog.LevelWarn),
	})
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	_ = res.WriteTable(&table)
	t.Logf("\n%s", table.String())
	for _, v := range res.Violations {
		if strings.Contains(v, "finished phase runs again") {
			// TestKnownBugLateDoneOfLostHostIsDropped: the engine drops
			// the late done event of a task on a host it declared lost.
			t.Logf("known product bug: %s", v)
			continue
		}
		t.Errorf("violation: %s", v)
	}
	injected := 0
	for _, n := range res.Faults {
		injected += n
	}
	recoveredKinds := 0
	for _, s := range res.ByKind {
		if s.N > 0 {
			recoveredKinds++
		}
	}
	if len(res.Faults) < 5 {
		t.Errorf("faults %v: want at least 5 kinds", res.Faults)
	}
	if res.Recoveries < 4 || recoveredKinds < 4 {
		t.Errorf("%d recoveries of %d kinds: want at least 4 of 4 kinds", res.Recoveries, recoveredKinds)
	}
	if res.Heartbeats == 0 || res.Launches < 11 {
		t.Errorf("heartbeats %d, launches %d: the system did not run", res.Heartbeats, res.Launches)
	}
	if res.Recovery.Max > res.Timers.HostStale+5*time.Second {
		t.Errorf("slowest recovery %v, more than host stale %v + 5s", res.Recovery.Max, res.Timers.HostStale)
	}

	// Everything was torn down: give the connections' goroutines a moment.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}

func TestOptionsRejectBadSettings(t *testing.T) {
	for _, o := range []Options{
		{Hosts: 2},
		{Kinds: []string{"earthquake"}},
		{Timers: Timers{HostStale: 3 * time.Second, FenceAfter: 3 * time.Second}},
	} {
		if _, err := Run(context.Background(), o); err == nil {
			t.Errorf("Run(%+v) accepted", o)
		}
	}
}
