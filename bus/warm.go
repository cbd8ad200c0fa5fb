package bus

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// warmTasks keeps a standby's copy of the tasks bucket, decoded, from one
// watch that runs from the standby's start to its takeover: the initial
// values, then every change. Taking over then needs no replay: the new
// leader writes its term marker and waits for this watch to deliver it,
// which proves that every earlier write has been applied (a watch delivers
// in stream order).
type warmTasks struct {
	log     *slog.Logger
	w       jetstream.KeyWatcher
	cancel  context.CancelFunc
	stopped chan struct{}

	mu     sync.Mutex
	states map[string]schemas.TaskState // key -> decoded state (malformed values left out)
	revs   map[string]uint64            // key -> revision, malformed values included
	vals   map[string][]byte            // key -> value of states[key]
	last   uint64                       // highest revision delivered
	wake   chan struct{}                // closed and replaced when last grows

	malformed atomic.Uint64
}

// startWarmTasks replays kv (the tasks bucket) to the end of its initial
// values and keeps following it until stop.
func startWarmTasks(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger) (*warmTasks, error) {
	w, cancel, err := startWatch(ctx, kv)
	if err != nil {
		return nil, fmt.Errorf("bus: watch %s: %w", protocol.TasksBucket, err)
	}
	wt := &warmTasks{
		log: log, w: w, cancel: cancel, stopped: make(chan struct{}),
		states: make(map[string]schemas.TaskState), revs: make(map[string]uint64), vals: make(map[string][]byte),
		wake: make(chan struct{}),
	}
	entries, err := replayDecode(ctx, w, protocol.TasksBucket, func(e jetstream.KeyValueEntry) (warmEntry, error) {
		return wt.decode(e), nil
	})
	if err != nil {
		_ = w.Stop()
		cancel()
		return nil, err
	}
	for i := range entries {
		wt.apply(entries[i].e, entries[i].v.st, entries[i].v.err)
	}
	go wt.follow()
	return wt, nil
}

// warmEntry is one decoded entry of the tasks bucket.
type warmEntry struct {
	st  schemas.TaskState
	err error
}

func (wt *warmTasks) decode(e jetstream.KeyValueEntry) warmEntry {
	var out warmEntry
	if e.Operation() != jetstream.KeyValuePut || isTermMarker(e.Key()) {
		return out
	}
	target, err := protocol.DecodeName(e.Key())
	if err != nil {
		out.err = err
		return out
	}
	out.st, out.err = decodeTaskState(e.Value())
	if out.err == nil && out.st.Target != target {
		out.err = fmt.Errorf("target %q does not match its key %q", out.st.Target, e.Key())
	}
	return out
}

// apply records one entry.
func (wt *warmTasks) apply(e jetstream.KeyValueEntry, st schemas.TaskState, err error) {
	key := e.Key()
	wt.mu.Lock()
	defer wt.mu.Unlock()
	if e.Revision() > wt.last {
		wt.last = e.Revision()
		close(wt.wake)
		wt.wake = make(chan struct{})
	}
	switch {
	case isTermMarker(key):
	case e.Operation() != jetstream.KeyValuePut:
		delete(wt.states, key)
		delete(wt.revs, key)
		delete(wt.vals, key)
	case err != nil:
		wt.malformed.Add(1)
		wt.log.Warn("tasks bucket: malformed state ignored; the next write replaces it", "key", key, "revision", e.Revision(), "err", err)
		delete(wt.states, key)
		delete(wt.vals, key)
		if _, derr := protocol.DecodeName(key); derr == nil {
			wt.revs[key] = e.Revision()
		}
	default:
		wt.states[key] = st
		wt.revs[key] = e.Revision()
		wt.vals[key] = e.Value()
	}
}

// follow applies live changes until the watch ends.
func (wt *warmTasks) follow() {
	defer close(wt.stopped)
	for e := range wt.w.Updates() {
		if e == nil {
			continue
		}
		d := wt.decode(e)
		wt.apply(e, d.st, d.err)
	}
}

// waitFor blocks until revision rev has been delivered, or ctx ends.
func (wt *warmTasks) waitFor(ctx context.Context, rev uint64) error {
	for {
		wt.mu.Lock()
		last, wake := wt.last, wt.wake
		wt.mu.Unlock()
		if last >= rev {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bus: tasks watch did not deliver revision %d (at %d): %w", rev, last, ctx.Err())
		case <-wake:
		case <-wt.stopped:
			return fmt.Errorf("bus: tasks watch ended before revision %d (at %d)", rev, last)
		}
	}
}

// stop ends the watch and waits for its goroutine.
func (wt *warmTasks) stop() {
	_ = wt.w.Stop()
	wt.cancel()
	<-wt.stopped
}

// handOver stops the watch and moves its copy into ts, as a Replay would
// have: it returns the states and the highest revision delivered.
func (wt *warmTasks) handOver(ts *TaskStore) ([]schemas.TaskState, uint64) {
	wt.stop()
	wt.mu.Lock()
	defer wt.mu.Unlock()
	states := make([]schemas.TaskState, 0, len(wt.states))
	for _, st := range wt.states {
		states = append(states, st)
	}
	ts.mu.Lock()
	for k, r := range wt.revs {
		ts.revs[k] = r
	}
	for k, v := range wt.vals {
		ts.vals[k] = v
	}
	ts.mu.Unlock()
	ts.malformed.Add(wt.malformed.Load())
	return states, wt.last
}

// size is the number of targets with a state.
func (wt *warmTasks) size() int {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	return len(wt.states)
}
