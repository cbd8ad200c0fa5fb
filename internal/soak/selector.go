package soak

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/schemas"
)

// ----- the selector -----

// selectorProc is one selector service on its own connection.
type selectorProc struct {
	svc    *bus.SelectorService
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's, once done is closed
}

// startSelector starts a new selector, as a process started at started
// would, and waits until it is ready.
func (w *world) startSelector(ctx context.Context, started time.Time) (*selectorProc, error) {
	nc, err := natsconn.Connect(ctx, w.selProxy.URL(), "taskselector", w.clog, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("soak: connect selector: %w", err)
	}
	w.mu.Lock()
	w.selGen++
	seed := uint64(w.o.Seed)<<16 + uint64(w.selGen)
	w.mu.Unlock()
	svc := bus.NewSelectorService(nc, bus.ServiceConfig{
		Engine:            w.tm.engine(seed),
		Tick:              w.tm.Tick,
		Store:             bus.StoreConfig{AckWait: w.tm.AckWait},
		WriteTimeout:      2 * time.Second,
		ShutdownTimeout:   2 * time.Second,
		HeartbeatPending:  bus.PendingLimits{Msgs: 4096},
		HostStatusPending: bus.PendingLimits{Msgs: 512},
		StartedAt:         started,
		Faults:            w.svcFaults,
	}, w.clog)
	runCtx, cancel := context.WithCancel(context.Background())
	p := &selectorProc{svc: svc, nc: nc, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = svc.Run(runCtx)
	}()
	select {
	case <-svc.Ready():
		return p, nil
	case <-p.done:
		nc.Close()
		return nil, fmt.Errorf("soak: selector stopped before it was ready: %v", p.err)
	case <-time.After(readyTimeout):
	case <-ctx.Done():
	}
	cancel()
	nc.Close()
	<-p.done
	return nil, fmt.Errorf("soak: selector not ready within %v", readyTimeout)
}

// stopSelector stops p: gracefully (it finishes its work, then its
// connection closes), or at once, as a SIGKILL would (its connection closes
// first, so that nothing more leaves it, and Run winds down in the
// background).
func (w *world) stopSelector(p *selectorProc, graceful bool) {
	finish := func() {
		if p.err != nil {
			w.fail("selector Run: %v", p.err)
		}
	}
	if !graceful {
		p.nc.Close()
		p.cancel()
		w.bg.Add(1)
		go func() {
			defer w.bg.Done()
			select {
			case <-p.done:
				finish()
			case <-time.After(stopTimeout):
				w.fail("killed selector's Run did not return within %v", stopTimeout)
			}
		}()
		return
	}
	p.cancel()
	select {
	case <-p.done:
		finish()
	case <-time.After(stopTimeout):
		w.fail("selector did not stop within %v", stopTimeout)
	}
	p.nc.Close()
}

// current returns the running selector.
func (w *world) current() *selectorProc {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sel
}

// status is the running selector's status snapshot.
func (w *world) status() schemas.SelectorStatus { return w.current().svc.Status() }

// heartbeats counts the heartbeats every selector has handled.
func (w *world) heartbeats() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n uint64
	for _, p := range w.sels {
		n += p.svc.HeartbeatsHandled()
	}
	return n
}
