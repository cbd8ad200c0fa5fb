package integration

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// Chaos fault 11: overload.

// chaosCapture keeps, on the test's connection, the latest message of each
// subject matching a pattern.
type chaosCapture struct {
	mu     sync.Mutex
	latest map[string][]byte
}

// capture starts capturing pattern; it ends with the test.
func (w *chaosWorld) capture(pattern string) *chaosCapture {
	w.t.Helper()
	c := &chaosCapture{latest: map[string][]byte{}}
	sub, err := w.nc.Subscribe(pattern, func(m *nats.Msg) {
		c.mu.Lock()
		c.latest[m.Subject] = m.Data
		c.mu.Unlock()
	})
	if err != nil {
		w.t.Fatalf("capture %s: %v", pattern, err)
	}
	w.t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := w.nc.Flush(); err != nil {
		w.t.Fatal(err)
	}
	return c
}

// messages returns the captured messages.
func (c *chaosCapture) messages() []*nats.Msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*nats.Msg, 0, len(c.latest))
	for _, s := range sortedKeys(c.latest) {
		out = append(out, &nats.Msg{Subject: s, Data: c.latest[s]})
	}
	return out
}

// flood publishes msgs round robin, as fast as the test's connection takes
// them, for d. It returns how many it published.
func (w *chaosWorld) flood(msgs []*nats.Msg, d time.Duration) int {
	w.t.Helper()
	if len(msgs) == 0 {
		w.t.Fatal("flood: nothing to publish")
	}
	n := 0
	for end := time.Now().Add(d); time.Now().Before(end); {
		for range 256 {
			m := msgs[n%len(msgs)]
			if err := w.nc.Publish(m.Subject, m.Data); err != nil {
				w.t.Fatalf("flood: publish: %v", err)
			}
			n++
		}
	}
	if err := w.nc.Flush(); err != nil {
		w.t.Fatalf("flood: flush: %v", err)
	}
	return n
}

// TestChaosOverload (fault 11): the selector is overloaded.
//   - heartbeat_flood: copies of real heartbeats flood in for longer than
//     the stale threshold, and the heartbeat subscription (its pending
//     limit small) drops most of them, the real ones too;
//   - host_status_flood: the same with host statuses, for longer than the
//     host-stale threshold;
//   - slow_store: every store write takes longer than the launch timeout
//     and than AckWait, so events are redelivered before they are acked.
//
// The selector must not take what it dropped for silence (no task killed,
// no host lost), must keep answering status, and must neither lose an
// acknowledged event nor run a finished phase again.
func TestChaosOverload(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pattern func(protocol.Subjects) string
		limits  func(*bus.ServiceConfig)
		d       func(selector.Config) time.Duration
	}{
		{"heartbeat_flood", protocol.Subjects.Heartbeats,
			func(c *bus.ServiceConfig) { c.HeartbeatPending = bus.PendingLimits{Msgs: 64} },
			func(c selector.Config) time.Duration { return c.HeartbeatStale + time.Second }},
		{"host_status_flood", protocol.Subjects.Hosts,
			func(c *bus.ServiceConfig) { c.HostStatusPending = bus.PendingLimits{Msgs: 8} },
			func(c selector.Config) time.Duration { return c.HostStale + time.Second }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newChaosWorld(t, false)
			w.startAuditedWorker("a", 4096, chaosWorkerOpts{})
			w.startAuditedWorker("b", 4096, chaosWorkerOpts{})
			eng := engineConfig()
			cfg := serviceConfig(eng)
			tc.limits(&cfg)
			sel := w.startSelector(cfg)
			for _, name := range edgeTargetNames("f", 6) {
				w.declare(name, chaosSpec(1, 0.3))
			}
			before := w.settle(chaosSettle, chaosBoth(w.allActive(), w.inPhase("last")))
			capt := w.capture(tc.pattern(w.subj))
			waitFor(t, 5*time.Second, func() (bool, string) {
				n := len(capt.messages())
				return n >= 2, fmt.Sprintf("%d subjects captured", n)
			})

			var slowest atomic.Int64
			stop := w.sampleStatus(func(_ *schemas.SelectorStatus, rtt time.Duration) {
				if rtt > time.Duration(slowest.Load()) {
					slowest.Store(int64(rtt))
				}
			})
			d := tc.d(eng)
			n := w.flood(capt.messages(), d)
			stop()
			st := w.settle(chaosSettle, w.allActive())
			t.Logf("%d messages in %v (%.0f/s); dropped %d; input gaps told to the engine %d; slowest status answer %v",
				n, d, float64(n)/d.Seconds(), st.Counters.SlowConsumerDrops, st.Counters.InputGaps, time.Duration(slowest.Load()).Round(time.Millisecond))
			if st.Counters.SlowConsumerDrops == 0 || st.Counters.InputGaps == 0 {
				t.Errorf("drops %d, input gaps %d: the flood did not hit the pending limit, or the engine was not told",
					st.Counters.SlowConsumerDrops, st.Counters.InputGaps)
			}
			if c := st.Counters; c.Kills != 0 || c.HostsLost != 0 || c.Stale != 0 {
				t.Errorf("kills %d, hosts lost %d, stale %d: the selector took its own drops for silence (counters %+v; %s)",
					c.Kills, c.HostsLost, c.Stale, c, describe(&st))
			}
			for _, old := range before.Targets {
				if ts, _ := targetLine(&st, old.Target); ts.TaskID != old.TaskID {
					t.Errorf("%s runs %s, ran %s before the flood", old.Target, describeLine(ts), old.TaskID)
				}
			}
			if !sel.running() {
				t.Fatal("selector Run returned during the flood")
			}
			w.checkAudit()
		})
	}

	// input_lag: the selector reads its heartbeats and host statuses late
	// (their handling is held up for longer than the host-stale threshold,
	// as when its process is starved of CPU or its input arrives faster than
	// it is handled), but its queues are large enough that nothing is
	// dropped. What waits in its own queue is no silence of the workers:
	// no task may be killed for it, no host lost.
	t.Run("input_lag", func(t *testing.T) {
		w := newChaosWorld(t, false)
		w.startAuditedWorker("a", 3*chaosFullMiB, chaosWorkerOpts{})
		w.startAuditedWorker("b", 3*chaosFullMiB, chaosWorkerOpts{})
		eng := engineConfig()
		cfg := serviceConfig(eng)
		var g edgeGate
		t.Cleanup(g.open)
		cfg.Faults = &bus.ServiceFaults{BeforeInput: func(string) { _ = g.wait(context.Background()) }}
		sel := w.startSelector(cfg)
		for _, name := range edgeTargetNames("g", 6) {
			w.declare(name, chaosSpec(1, 0.3))
		}
		before := w.settle(chaosSettle, chaosBoth(w.allActive(), w.inPhase("last")))
		if hosts := chaosOnHost(&before); len(hosts["a"]) != 3 || len(hosts["b"]) != 3 {
			t.Fatalf("want three tasks on each host, got %v", hosts)
		}
		h0 := sel.svc.HeartbeatsHandled()
		g.close()
		lag := eng.HostStale + time.Second
		waitFor(t, 10*time.Second, func() (bool, string) {
			return sel.svc.HeartbeatsHandled() == h0, "heartbeats still handled" // the handler is held at the next one
		})
		held := time.NewTimer(lag) // the fault's duration, not a wait for a condition
		<-held.C
		g.open()
		waitMoreHeartbeats(t, sel, 3*uint64(len(before.Targets)))
		st := w.settle(chaosSettle, w.allActive())
		if c := st.Counters; c.Kills != 0 || c.HostsLost != 0 || c.SlowConsumerDrops != 0 {
			t.Errorf("kills %d, hosts lost %d, drops %d: the selector took the lag of its own queue for silence (counters %+v)",
				c.Kills, c.HostsLost, c.SlowConsumerDrops, c)
		}
		for _, old := range before.Targets {
			if ts, _ := targetLine(&st, old.Target); ts.TaskID != old.TaskID {
				t.Errorf("%s runs %s, ran %s before the lag", old.Target, describeLine(ts), old.TaskID)
			}
		}
		w.checkAudit()
	})

	// slowStore is a service config whose every store write takes a second:
	// longer than the launch timeout and than AckWait.
	slowStore := func() (bus.ServiceConfig, time.Duration) {
		eng := engineConfig()
		eng.LaunchTimeout = 700 * time.Millisecond
		cfg := serviceConfig(eng)
		cfg.Store.AckWait = 400 * time.Millisecond
		cfg.WriteTimeout = 5 * time.Second
		cfg.ShutdownTimeout = 5 * time.Second
		const writeTime = time.Second
		cfg.Faults = &bus.ServiceFaults{BeforeWrite: func(ctx context.Context, _ string) error {
			tm := time.NewTimer(writeTime)
			defer tm.Stop()
			select {
			case <-tm.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}}
		return cfg, writeTime
	}

	t.Run("slow_store", func(t *testing.T) {
		w := newChaosWorld(t, false)
		w.startAuditedWorker("a", 4096, chaosWorkerOpts{})
		w.startAuditedWorker("b", 4096, chaosWorkerOpts{})
		cfg, writeTime := slowStore()
		w.startSelector(cfg)
		targets := edgeTargetNames("w", 2)
		for _, name := range targets {
			w.declare(name, chaosSpec(1, 0.3))
		}
		st := w.settle(60*time.Second, chaosBoth(w.allActive(), w.inPhase("last")))
		t.Logf("writes of %v (AckWait %v, launch timeout %v): %d events, %d of them redelivered duplicates",
			writeTime, cfg.Store.AckWait, cfg.Engine.LaunchTimeout, st.Counters.Events, st.Counters.DuplicateEvents)
		if c := st.Counters; c.PhasesCompleted != uint64(len(targets)) || c.Timeouts != 0 || c.Kills != 0 {
			t.Errorf("phases completed %d, timeouts %d, kills %d; want %d, 0, 0", c.PhasesCompleted, c.Timeouts, c.Kills, len(targets))
		}
		if st.Counters.DuplicateEvents == 0 {
			t.Errorf("no event was redelivered: the writes did not outlast AckWait")
		}
		for _, name := range targets {
			if ps := w.aud.Procs(name); len(ps) != 2 {
				t.Errorf("%s ran %v, want p1 then last", name, ps)
			}
		}
		w.checkAudit()
	})

	// slow_store_killed: the selector is killed while its slow writes, and
	// the acks queued behind them, are still pending and JetStream has
	// redelivered events meanwhile. Nothing it acked may be lost: its
	// successor (with a fast store) completes each first phase once and
	// runs none again.
	t.Run("slow_store_killed", func(t *testing.T) {
		w := newChaosWorld(t, false)
		w.startAuditedWorker("a", 4096, chaosWorkerOpts{})
		cfg, _ := slowStore()
		sel := w.startSelector(cfg)
		targets := edgeTargetNames("k", 2)
		for _, name := range targets {
			w.declare(name, chaosSpec(1, 0.3))
		}
		waitFor(t, 60*time.Second, func() (bool, string) {
			for _, name := range targets {
				if _, ok := w.aud.DoneEpoch(name, "p1"); !ok {
					return false, name + "'s p1 not reported done yet"
				}
			}
			c := sel.svc.Status().Counters
			return c.DuplicateEvents >= 1, fmt.Sprintf("%d events handled, %d duplicates", c.Events, c.DuplicateEvents)
		})
		w.killSelector(sel)
		w.startSelector(serviceConfig(engineConfig()))
		w.settle(chaosSettle, chaosBoth(w.allActive(), w.inPhase("last")))
		for _, name := range targets {
			if ps := w.aud.Procs(name); len(ps) != 2 || ps[0].Type != "p1" || ps[1].Type != "last" {
				t.Errorf("%s ran %v, want p1 once, then last", name, ps)
			}
		}
		w.checkAudit()
	})
}
