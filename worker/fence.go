package worker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/schemas"
)

// Self-fencing.
//
// A selector that declares a host lost cannot know that the host's tasks
// are gone: the host may only be cut off from the bus, its tasks still
// running. Before it relaunches them elsewhere, the host itself must have
// stopped them. With Config.FenceAfter set, the agent promises that:
//
//   - A prober goroutine sends a round trip to the server (a PING, awaiting
//     its PONG: nats.Conn.FlushWithContext) every probe period (half the
//     heartbeat interval, or a quarter of FenceAfter if that is shorter),
//     and records the time each successful probe was SENT, on the monotonic
//     clock.
//   - A watchdog goroutine fences the agent when no probe sent in the last
//     FenceAfter has succeeded: now - (send time of the latest successful
//     probe) >= FenceAfter. It does not depend on the client noticing a
//     disconnect: a connection that stalls (TCP open, nothing flowing) fails
//     the probes just the same. Fenced, the agent stops every task, reports
//     each as a failed TaskEvent with reason fenced through its outbox (they
//     are published, acked, once the connection is back), refuses launches
//     with code draining and publishes draining=true in its HostStatus.
//   - The first probe that succeeds again lifts the fence. Launch requests
//     may still wait in the connection, sent while the agent was cut off
//     and long since given up by the selector (which may have relaunched
//     their targets elsewhere). So on lifting the fence the agent publishes
//     a barrier, a message to its own launch subject that names the fence,
//     and refuses every launch it handles before the barrier comes back:
//     one subscription delivers in order, and the barrier, published after
//     the probe's round trip, comes after everything that was in flight.
//     A barrier that is lost is published again at every probe.
//
// Why this makes "lost" safe to act on. A successful probe sent at P proves
// that the server received everything the agent published before P, since a
// connection delivers in order: in particular the HostStatus published before
// P. So if S is the send time of the last HostStatus the selector received,
// the status published next, at S + HeartbeatInterval at the latest, never
// arrived, and no probe sent after it can have succeeded: the latest
// successful probe was sent before S + HeartbeatInterval. The watchdog
// therefore fences, and stops the tasks, by S + HeartbeatInterval +
// FenceAfter. The selector declares the host lost no earlier than
// S + HostStale. HostStale >= FenceAfter + 2 × HeartbeatInterval leaves one
// more heartbeat interval for stopping the tasks and for scheduling delays
// (CheckFenceMargin states the relation). The defaults (8 s, 1 s, 10 s)
// meet it exactly.
//
// The prober and watchdog never wait on the agent's lock while it is held
// across a network call (tick publishes its heartbeats after releasing
// it), and the fence itself only takes the lock, the executor and the
// outbox: a connection whose writes block does not hold the fence up.

// fenceState is the agent's view of its connection.
type fenceState struct {
	mu     sync.Mutex
	lastOK time.Time // send time of the latest successful probe (monotonic)
	fenced atomic.Bool
	// barrier is the nonce of the barrier that must come back through the
	// launch subscription before launches are taken again after a fence
	// (0: none awaited).
	barrier atomic.Uint64
}

// barrierHeader is the header that marks a barrier on the launch subject;
// its value is the barrier's nonce in decimal.
const barrierHeader = "Taskselector-Fence-Barrier"

// ErrFenceMargin is returned (wrapped) by CheckFenceMargin.
var ErrFenceMargin = errors.New("selector host-stale time too short for the worker fence time")

// CheckFenceMargin checks the relation between the selector's host-stale
// time (SELECTOR_HOST_STALE) and the workers' fence time (WORKER_FENCE_AFTER)
// and heartbeat interval (WORKER_HEARTBEAT_INTERVAL) that makes relaunching
// the tasks of a lost host safe:
//
//	hostStale >= fenceAfter + 2 × heartbeatInterval
//
// A worker cut off from NATS stops its tasks within fenceAfter + one
// heartbeat interval of the last HostStatus the selector received, and the
// selector declares it lost hostStale after that status; the second
// interval is the margin for stopping the tasks. The defaults
// (SELECTOR_HOST_STALE 10s, WORKER_FENCE_AFTER 8s, heartbeats every 1s)
// meet it exactly. A fenceAfter of 0 (fencing
// off) passes: there is no relation to keep, and a partition may then run a
// target twice. The error wraps ErrFenceMargin.
func CheckFenceMargin(hostStale, fenceAfter, heartbeatInterval time.Duration) error {
	switch {
	case fenceAfter < 0 || heartbeatInterval <= 0 || hostStale <= 0:
		return fmt.Errorf("%w: invalid durations: host stale %v, fence after %v, heartbeat interval %v",
			ErrFenceMargin, hostStale, fenceAfter, heartbeatInterval)
	case fenceAfter == 0:
		return nil
	}
	if need := fenceAfter + 2*heartbeatInterval; hostStale < need {
		return fmt.Errorf("%w: host stale %v must be at least fence after %v + 2 × heartbeat interval %v = %v",
			ErrFenceMargin, hostStale, fenceAfter, heartbeatInterval, need)
	}
	return nil
}

// Fenced reports whether the agent is fenced now: cut off from NATS for
// Config.FenceAfter, its tasks stopped, launches refused.
func (a *Agent) Fenced() bool { return a.fence.fenced.Load() }

// probePeriod is the time between two probes of the connection.
func (a *Agent) probePeriod() time.Duration {
	return max(min(a.cfg.HeartbeatInterval/2, a.cfg.FenceAfter/4), time.Millisecond)
}

// startFencing starts the prober and the watchdog when fencing is on, and
// returns the function that stops them and waits for them (idempotent).
func (a *Agent) startFencing() (stop func()) {
	if a.cfg.FenceAfter <= 0 {
		return func() {}
	}
	a.fence.mu.Lock()
	a.fence.lastOK = time.Now() // the connection counts as good at the start
	a.fence.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	period := a.probePeriod()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.probeLoop(ctx, period)
	}()
	go func() {
		defer wg.Done()
		a.fenceWatch(ctx, period)
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}

// probeLoop sends a round trip to the server every period until ctx ends.
// A probe that has not succeeded within FenceAfter is abandoned: it could no
// longer keep the agent unfenced.
func (a *Agent) probeLoop(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		sent := time.Now()
		pctx, cancel := context.WithTimeout(ctx, a.cfg.FenceAfter)
		err := a.nc.FlushWithContext(pctx)
		cancel()
		if err == nil {
			a.probeSucceeded(sent)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probeSucceeded records a probe sent at sent that came back, and lifts the
// fence.
func (a *Agent) probeSucceeded(sent time.Time) {
	f := &a.fence
	f.mu.Lock()
	if sent.After(f.lastOK) {
		f.lastOK = sent
	}
	lift := f.fenced.Load() && time.Since(f.lastOK) < a.cfg.FenceAfter
	if lift {
		f.fenced.Store(false)
	}
	nonce := f.barrier.Load()
	f.mu.Unlock()
	if nonce != 0 {
		a.publishBarrier(nonce)
	}
	if lift {
		a.log.Warn("NATS answers again: fence lifted; launches taken once the barrier is back")
		a.publishHostStatus()
	}
}

// publishBarrier sends the barrier nonce to the agent's own launch subject
// (see the package's notes on fencing above). A failed publish is retried at
// the next probe.
func (a *Agent) publishBarrier(nonce uint64) {
	m := nats.NewMsg(a.subj.Launch(a.cfg.Host))
	m.Header.Set(barrierHeader, strconv.FormatUint(nonce, 10))
	if err := a.nc.PublishMsg(m); err != nil {
		a.log.Warn("fence barrier not sent; retrying at the next probe", "err", err)
	}
}

// passBarrier handles a launch-subject message whose barrierHeader is
// barrier ("" when it has none): it reports whether the message is to be
// handled as a launch request. A barrier is not: if it is the one awaited,
// launches are taken again. A launch that arrives while a barrier is
// awaited was sent before the fence lifted, and is refused.
func (a *Agent) passBarrier(barrier string) (launch, stale bool) {
	awaited := a.fence.barrier.Load()
	if v := barrier; v != "" {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil && n != 0 && n == awaited &&
			a.fence.barrier.CompareAndSwap(awaited, 0) {
			a.log.Info("fence barrier back: taking launches again")
		}
		return false, false
	}
	return true, awaited != 0
}

// fenceWatch fences the agent when no probe sent in the last FenceAfter has
// succeeded, and, while fenced, retries stopping tasks every period.
func (a *Agent) fenceWatch(ctx context.Context, period time.Duration) {
	timer := time.NewTimer(a.cfg.FenceAfter)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		timer.Reset(a.checkFence(period))
	}
}

// checkFence fences the agent if it is cut off, and returns when to check
// again.
func (a *Agent) checkFence(period time.Duration) time.Duration {
	f := &a.fence
	f.mu.Lock()
	silent := time.Since(f.lastOK)
	if silent < a.cfg.FenceAfter {
		f.mu.Unlock()
		return a.cfg.FenceAfter - silent
	}
	first := !f.fenced.Swap(true)
	if first {
		f.barrier.Store(max(rand.Uint64(), 1))
	}
	f.mu.Unlock()
	if first {
		a.fences.Add(1)
		a.log.Error("FENCED: no round trip to NATS for the fence time; stopping every task and refusing launches until NATS answers",
			"silent_for", silent.Round(time.Millisecond), "fence_after", a.cfg.FenceAfter)
	}
	a.stopFenced()
	if first {
		a.publishHostStatus() // draining, no tasks; delivered once the connection is back
	}
	return period
}

// stopFenced stops every task of a fenced agent. A launch that raced with
// the fence and recorded its task after this ran, or a task whose stop
// failed, is stopped at the next check.
func (a *Agent) stopFenced() {
	a.stopAllHelpers("host fenced")
	for _, e := range a.entries() {
		stopped, err := a.stop(e, schemas.ReasonFenced)
		if err != nil || !stopped {
			continue
		}
		a.fencedTasks.Add(1)
		a.log.Warn("task stopped: host fenced", "task_id", e.spec.TaskID, "pid", e.pid, "target", e.spec.Target, "epoch", e.spec.Epoch)
	}
}
