package soak

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/netproxy"
	"github.com/taskselector/taskselector/worker"
)

// ----- workers -----

// hostRAM is the RAM of the i-th host, in MiB.
func hostRAM(i int) int64 {
	sizes := [...]int64{512, 768, 384, 640}
	return sizes[(i-1)%len(sizes)]
}

// hostState is where a worker host is in its life.
type hostState int

const (
	hostUp   hostState = iota
	hostDown           // dead, and coming back
	hostLost           // dead for good
)

// hostProc is one worker host: its proxy (which outlives its agents) and
// its current agent.
type hostProc struct {
	name  string
	ram   int64
	proxy *netproxy.Proxy
	state hostState
	busy  bool // a host fault holds it

	// The current agent; nil while down.
	nc     *nats.Conn
	agent  *worker.Agent
	exec   *chaosExec
	cancel context.CancelFunc
	done   chan struct{}
}

// startHost starts (or restarts) host name with ram MiB, connected through
// its own proxy, and waits until its agent is ready.
func (w *world) startHost(ctx context.Context, name string, ram int64) (*hostProc, error) {
	w.mu.Lock()
	h := w.hosts[name]
	if h == nil {
		h = &hostProc{name: name, ram: ram}
		w.hosts[name] = h
		w.hostOrder = append(w.hostOrder, name)
	}
	w.hostGen++
	gen := w.hostGen
	w.mu.Unlock()
	if h.proxy == nil {
		p, err := netproxy.New(w.serverAddr(), netproxy.Options{Log: w.clog})
		if err != nil {
			return nil, fmt.Errorf("soak: proxy for %s: %w", name, err)
		}
		h.proxy = p
	}
	nc, err := natsconn.Connect(ctx, h.proxy.URL(), "worker-"+name, w.clog, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("soak: connect worker %s: %w", name, err)
	}
	sim, err := worker.NewSim(worker.SimConfig{Host: name, RAMMiB: h.ram, Speed: 1, FirstPID: int64(gen) * 1_000_000, Log: w.clog})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("soak: worker %s: %w", name, err)
	}
	exec := newChaosExec(name, w.aud.Wrap(name, sim), w.onStart, w.takeSilent)
	agent, err := worker.New(nc, worker.Config{
		Host: name, RAMMiB: h.ram, HeartbeatInterval: w.tm.Heartbeat, Executor: worker.SimExecutor,
		FenceAfter: w.tm.FenceAfter, FlushTimeout: time.Second, PublishTimeout: 500 * time.Millisecond,
		RetryBase: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond,
	}, exec, w.clog)
	if err != nil {
		_ = exec.Close()
		nc.Close()
		return nil, fmt.Errorf("soak: worker %s: %w", name, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer exec.Close()
		if err := agent.Run(runCtx); err != nil {
			w.fail("worker %s Run: %v", name, err)
		}
	}()
	select {
	case <-agent.Ready():
	case <-done:
		cancel()
		nc.Close()
		return nil, fmt.Errorf("soak: worker %s stopped before it was ready", name)
	case <-time.After(readyTimeout):
		cancel()
		nc.Close()
		<-done
		return nil, fmt.Errorf("soak: worker %s not ready within %v", name, readyTimeout)
	}
	w.mu.Lock()
	h.nc, h.agent, h.exec, h.cancel, h.done = nc, agent, exec, cancel, done
	h.state = hostUp
	w.mu.Unlock()
	return h, nil
}

// die kills h's agent as a host crash would: its connection closes first
// (nothing more leaves it), its processes die at once, and the agent winds
// down in the background. The caller sets h's state.
func (w *world) die(h *hostProc) {
	w.mu.Lock()
	nc, exec, cancel, done := h.nc, h.exec, h.cancel, h.done
	h.nc, h.agent, h.exec, h.cancel, h.done = nil, nil, nil, nil, nil
	w.mu.Unlock()
	if nc == nil {
		return
	}
	nc.Close()
	_ = exec.Close()
	cancel()
	w.bg.Add(1)
	go func() {
		defer w.bg.Done()
		select {
		case <-done:
		case <-time.After(stopTimeout):
			w.fail("dead worker %s's Run did not return within %v", h.name, stopTimeout)
		}
	}()
}

// stop shuts h's agent down gracefully (its tasks are left to die with its
// executor) and waits for it.
func (h *hostProc) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(stopTimeout):
	}
	h.nc.Close()
	h.nc, h.agent, h.exec, h.cancel, h.done = nil, nil, nil, nil, nil
}

// onStart is every worker's report of a process start.
func (w *world) onStart(host, target, taskID string, at time.Time, silent bool) {
	if silent {
		w.track.expect(KindSilentLaunch, fmt.Sprintf("silent launch of %s on %s", taskID, host), host, at,
			[]string{target}, map[string]bool{taskID: true}, w.o.StallAfter)
		w.mu.Lock()
		w.counts[KindSilentLaunch]++
		w.silentStarted = target
		w.mu.Unlock()
	}
	w.track.started(target, taskID, at)
}

// takeSilent reports whether the launch of target is to be silent, and
// how long its reply is held; only the first launch of the silent-launch
// probe is.
func (w *world) takeSilent(target string) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.silentTarget == "" || w.silentTarget != target {
		return 0, false
	}
	w.silentTarget = "-" // taken
	return w.silentDelay, true
}
