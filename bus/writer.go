package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/taskselector/taskselector/internal/backoff"
	"github.com/taskselector/taskselector/selector"
)

// writeItem is one Step's batch for the store writer: its commands in order,
// the ack to send once its writes are stored, or a flush marker.
type writeItem struct {
	cmds  []outCmd
	ack   func()
	flush chan struct{}
}

// storeWriter carries out the store commands of every Step, one at a time
// and in order, from an unbounded in-memory queue: enqueueing never blocks
// the engine's lock holder and nothing is dropped. Launch, kill and ps
// commands of a batch are sent once the writes before them are stored.
//
// Every ack of a task event goes through this queue, so it leaves only once
// every write queued before it is stored. Once a write has failed (a lost
// compare-and-swap, or a write abandoned at shutdown) no ack leaves any more:
// the events are redelivered to the next selector, which has to start anyway.
type storeWriter struct {
	s *SelectorService

	mu   sync.Mutex
	q    []writeItem
	wake chan struct{}

	failed bool // a write failed: no more acks (owned by run's goroutine)
}

func newStoreWriter(s *SelectorService) *storeWriter {
	return &storeWriter{s: s, wake: make(chan struct{}, 1)}
}

func (w *storeWriter) enqueue(it writeItem) {
	w.mu.Lock()
	w.q = append(w.q, it)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *storeWriter) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.q)
}

// flush waits until everything queued before it has been carried out.
func (w *storeWriter) flush(ctx context.Context) error {
	done := make(chan struct{})
	w.enqueue(writeItem{flush: done})
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *storeWriter) run(ctx context.Context) {
	var items []writeItem
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
		for {
			w.mu.Lock()
			items, w.q = w.q, items[:0]
			w.mu.Unlock()
			if len(items) == 0 {
				break
			}
			for i := range items {
				w.process(ctx, &items[i])
				items[i] = writeItem{}
			}
		}
	}
}

func (w *storeWriter) process(ctx context.Context, it *writeItem) {
	if it.flush != nil {
		close(it.flush)
		return
	}
	failed := false
	for _, c := range it.cmds {
		switch c.kind {
		case selector.CmdPersist, selector.CmdDelete:
			if err := w.write(ctx, c); err != nil {
				failed = true
				w.failed = true
			}
		case selector.CmdLaunch:
			if failed {
				// Write-ahead: a launch whose state is not stored is not
				// sent, and the engine learns that nothing started.
				w.s.log.Warn("launch not sent: its state could not be stored", "target", c.target, "host", c.host, "task_id", c.taskID)
				w.s.step(notSent(&c), nil)
				continue
			}
			w.s.request(c)
		default:
			w.s.request(c)
		}
	}
	if it.ack == nil {
		return
	}
	if w.failed || ctx.Err() != nil {
		w.s.logLimit.Log("ack-withheld", w.s.log, slog.LevelWarn, "event not acked: a store write failed; it will be redelivered")
		return
	}
	it.ack()
}

// write carries out one persist or delete, retrying failures that are not a
// lost compare-and-swap until ctx ends. A lost compare-and-swap is reported
// to the engine as a StoreConflict. When an attempt whose outcome is unknown
// (it failed, but may have landed) is followed by a lost compare-and-swap,
// the key is read to settle it; a failed read is a transient failure like
// any other, retried.
func (w *storeWriter) write(ctx context.Context, c outCmd) error {
	s := w.s
	ambiguous := false
	for attempt := 1; ; attempt++ {
		if !s.mayAct() {
			// Fenced: the lease is not ours (any more). Nothing is
			// written, and no ack leaves.
			s.logLimit.Log("store-fenced", s.log, slog.LevelWarn, "store write not sent: the leader lease is not held", "target", c.target, "op", c.kind)
			return ErrNotLeader
		}
		err := s.cfg.Faults.beforeWrite(ctx, c.target)
		wrote := false
		if err == nil {
			wrote = true
			opCtx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
			if c.kind == selector.CmdPersist {
				err = s.tasks.Put(opCtx, c.target, c.data)
			} else {
				err = s.tasks.Delete(opCtx, c.target)
			}
			if err != nil && ambiguous && errors.Is(err, ErrConflict) {
				// An earlier attempt may have landed before its reply was
				// lost: if the key holds what we wrote, it did.
				switch ok, rerr := s.tasks.Reconcile(opCtx, c.target, c.data); {
				case rerr != nil:
					err = fmt.Errorf("bus: settle an earlier attempt: %w", rerr)
				case ok:
					err = nil
				}
			}
			cancel()
		}
		if err == nil {
			return nil
		}
		s.storeErrors.Add(1)
		if errors.Is(err, ErrConflict) {
			s.log.Error("store conflict: another writer changed the tasks bucket; launches stop", "target", c.target, "err", err)
			s.step(&selector.StoreConflict{Target: c.target, Err: err.Error()}, nil)
			return err
		}
		if ctx.Err() != nil {
			s.log.Error("store write abandoned at shutdown", "target", c.target, "op", c.kind, "err", err)
			return err
		}
		if wrote {
			ambiguous = true
		}
		s.logLimit.Log("store-write", s.log, slog.LevelWarn, "store write failed; retrying", "target", c.target, "op", c.kind, "attempt", attempt, "err", err)
		if !sleepCtx(ctx, writeRetry.Delay(attempt, nil)) {
			s.log.Error("store write abandoned at shutdown", "target", c.target, "op", c.kind, "err", err)
			return err
		}
	}
}

// ErrNotLeader is returned for a store write that was not sent because the
// service does not hold the leader lease.
var ErrNotLeader = errors.New("bus: not the leader")

// writeRetry spaces the store writer's retries: 20ms doubling to 2s, without
// jitter (one writer, nothing to spread out).
var writeRetry = backoff.Policy{Base: 20 * time.Millisecond, Max: 2 * time.Second}
