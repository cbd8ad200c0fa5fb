package bus

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/selector"
)

var lagT0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return lagT0.Add(time.Duration(ms) * time.Millisecond) }

func TestLagClockSteps(t *testing.T) {
	c := newLagClock(at(0))
	for i, st := range []struct {
		now               int
		received, handled uint64
		want              time.Time
	}{
		{10, 3, 0, at(0)},       // queued before the first sample: as of the subscription
		{20, 3, 3, time.Time{}}, // caught up
		{30, 5, 3, at(20)},      // two wait: they arrived after the last caught-up sample
		{40, 9, 3, at(20)},      // the handler is held: as of 20 however long it lasts
		{50, 12, 3, at(20)},
		{60, 12, 5, at(30)}, // the messages up to the sample at 30 are handled
		{70, 14, 8, at(30)}, // 9 arrived by 40: not all handled yet
		{80, 15, 9, at(40)},
		{90, 15, 12, at(60)}, // 12 had arrived by 60
		{100, 15, 15, time.Time{}},
		{110, 16, 15, at(100)},
	} {
		if got := c.observe(at(st.now), st.received, st.handled); !got.Equal(st.want) {
			t.Fatalf("step %d (at %d ms, received %d, handled %d): as of %v, want %v",
				i, st.now, st.received, st.handled, got.Sub(lagT0), st.want.Sub(lagT0))
		}
	}
}

// TestLagClockBounds simulates a subscription whose handler stalls, floods
// and catches up, and checks at every tick that the estimate is never later
// than the arrival of the oldest message waiting (safety), never goes back,
// is the zero time only when nothing waits, and stays close to that arrival
// however long the lag lasts (liveness).
func TestLagClockBounds(t *testing.T) {
	const tick = 10 // ms
	rng := rand.New(rand.NewPCG(1, 2))
	var arrivals []time.Time
	handled := 0
	c := newLagClock(at(0))
	var last time.Time
	worst := 0.0
	for now := tick; now < 300_000; now += tick {
		// Arrivals since the last tick: about one per ms.
		for range rng.IntN(2 * tick) {
			arrivals = append(arrivals, at(now-tick+1+rng.IntN(tick)))
		}
		// Keep the arrivals in order: the queue is FIFO.
		for i := len(arrivals) - 1; i > 0 && arrivals[i].Before(arrivals[i-1]); i-- {
			arrivals[i], arrivals[i-1] = arrivals[i-1], arrivals[i]
		}
		// Handling: stalled for 20 s every minute, otherwise a little faster
		// than the arrivals, or (for the last minute) slower still.
		phase := now % 60_000
		switch {
		case phase < 20_000:
		case now >= 240_000:
			handled += rng.IntN(2 * tick)
		default:
			handled += rng.IntN(3 * tick)
		}
		handled = min(handled, len(arrivals))
		// The edge may count a message twice (received overestimated).
		received := uint64(len(arrivals) + rng.IntN(2))
		asOf := c.observe(at(now), received, uint64(handled))
		if handled == len(arrivals) && received == uint64(handled) {
			if !asOf.IsZero() {
				t.Fatalf("at %d ms: nothing waits, yet as of %v", now, asOf.Sub(lagT0))
			}
			last = at(now)
			continue
		}
		if asOf.IsZero() {
			t.Fatalf("at %d ms: %d messages wait, yet caught up", now, len(arrivals)-handled)
		}
		if asOf.Before(last) {
			t.Fatalf("at %d ms: as of %v, before the earlier %v", now, asOf.Sub(lagT0), last.Sub(lagT0))
		}
		last = asOf
		if handled == len(arrivals) {
			continue // only the overcount waits
		}
		head := arrivals[handled]
		if asOf.After(head) {
			t.Fatalf("at %d ms: as of %v, later than the oldest waiting message's arrival %v",
				now, asOf.Sub(lagT0), head.Sub(lagT0))
		}
		// The estimate trails the head by a fraction of the lag, plus a tick
		// or two of sampling.
		if lag := at(now).Sub(head); lag > time.Second {
			if r := float64(head.Sub(asOf)) / float64(lag); r > worst {
				worst = r
			}
		}
		if gap, lag := head.Sub(asOf), at(now).Sub(head); gap > lag/16+2*tick*time.Millisecond {
			t.Fatalf("at %d ms: as of %v trails the oldest waiting message (%v) by %v with a lag of %v",
				now, asOf.Sub(lagT0), head.Sub(lagT0), gap, lag)
		}
	}
	t.Logf("the estimate trailed the head by at most %.1f%% of the lag", 100*worst)
	if len(c.samples) > maxLagSamples {
		t.Fatalf("%d samples kept", len(c.samples))
	}
}

// TestServiceInputLagIsNoSilence holds the handling of heartbeats and host
// statuses for longer than the host-stale threshold while a worker keeps
// sending them (nothing is dropped): the engine must not take what waits in
// the service's own queues for silence. No ps, no kill, no host lost, no
// relaunch; the disruption mode stays normal.
func TestServiceInputLagIsNoSilence(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		gate chan struct{} // non-nil while input is held
	)
	cfg := ServiceConfig{
		Tick: 10 * time.Millisecond,
		Faults: &ServiceFaults{BeforeInput: func(string) {
			mu.Lock()
			ch := gate
			mu.Unlock()
			if ch != nil {
				<-ch
			}
		}},
	}
	hold := func() {
		mu.Lock()
		gate = make(chan struct{})
		mu.Unlock()
	}
	release := func() {
		mu.Lock()
		if gate != nil {
			close(gate)
			gate = nil
		}
		mu.Unlock()
	}
	t.Cleanup(release)
	r := startService(t, connect(t, s.ClientURL()), cfg)
	w := startFakeWorker(t, connect(t, s.ClientURL()), "", "h1", 4096)
	const target = "lagged"
	if err := c.PutTarget(testCtx(t, 5*time.Second), target, declaredSpec()); err != nil {
		t.Fatal(err)
	}
	before := waitTargetState(t, c, target, selector.StateActive)
	ps := w.psRequests()

	hold()
	lag := r.svc.cfg.Engine.HostStale + time.Second
	for end := time.Now().Add(lag); time.Now().Before(end); {
		time.Sleep(250 * time.Millisecond) // the fault's duration, sampled
		st := statusOf(t, c)
		if st.Disruption != selector.DisruptionNormal {
			t.Fatalf("disruption %q while input waits in the service's queue (%s)", st.Disruption, st.DegradedReason)
		}
		for _, hl := range st.Hosts {
			if hl.Stale || hl.Lost {
				t.Fatalf("host %s stale or lost while its statuses wait in the queue: %+v", hl.Host, hl)
			}
		}
	}
	queued := r.svc.HeartbeatsHandled()
	release()
	waitFor(t, 10*time.Second, "queued heartbeats handled", func() bool {
		return r.svc.HeartbeatsHandled() > queued+uint64(lag/(100*time.Millisecond))
	})
	st := statusOf(t, c)
	if c := st.Counters; c.Stale != 0 || c.Kills != 0 || c.HostsLost != 0 || c.Timeouts != 0 || c.SlowConsumerDrops != 0 {
		t.Fatalf("after the lag: stale %d, kills %d, hosts lost %d, timeouts %d, drops %d",
			c.Stale, c.Kills, c.HostsLost, c.Timeouts, c.SlowConsumerDrops)
	}
	if line, _ := targetLine(st, target); line.TaskID != before.TaskID || line.State != selector.StateActive {
		t.Fatalf("after the lag the target runs %+v, ran %s before", line, before.TaskID)
	}
	if n := w.psRequests() - ps; n != 0 || w.killCount() != 0 || w.launchCount() != 1 {
		t.Fatalf("worker saw %d ps, %d kills, %d launches; want 0, 0, 1", n, w.killCount(), w.launchCount())
	}
}
