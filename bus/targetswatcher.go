package bus

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// TargetsWatcher follows the targets bucket: it replays it to the end of its
// initial values, then turns live changes into engine events.
//
// A malformed spec (a value that does not decode, or a key that is not an
// encoded name) is counted, logged and otherwise ignored: the target keeps
// its last good spec (or stays undeclared if it never had one). An operator's
// typo must not kill a running task; deleting the key is how a target is
// removed.
type TargetsWatcher struct {
	kv        jetstream.KeyValue
	log       *slog.Logger
	malformed atomic.Uint64
	restart   chan struct{}

	mu      sync.Mutex
	w       jetstream.KeyWatcher
	wcancel context.CancelFunc // ends w's context
	lastRev uint64             // highest revision seen
	probed  uint64             // the bucket's last revision at the previous probe
	stopped bool
}

// WatchProbeInterval is how often a TargetsWatcher checks that its watcher
// still delivers. A KV watcher is a consumer held by one server; when that
// server goes away while the selector's own connection stays up (its node
// stops, in a cluster), the client notices only after two missed idle
// heartbeats, 10 s or more, and no target change reaches the selector
// meanwhile. So when the bucket holds a revision that was already there at
// the previous probe and has still not been delivered, the watch is resumed.
const WatchProbeInterval = time.Second

// WatchTargets starts watching kv (the targets bucket) and returns the specs
// declared at the end of its initial values. Call Run to receive the changes
// that follow, and Stop when done.
func WatchTargets(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger) (*TargetsWatcher, map[string]schemas.TargetSpec, error) {
	if log == nil {
		log = slog.Default()
	}
	w, wcancel, err := startWatch(ctx, kv)
	if err != nil {
		return nil, nil, fmt.Errorf("bus: watch %s: %w", protocol.TargetsBucket, err)
	}
	tw := &TargetsWatcher{kv: kv, w: w, wcancel: wcancel, log: log, restart: make(chan struct{}, 1)}
	entries, err := replayDecode(ctx, w, protocol.TargetsBucket, func(e jetstream.KeyValueEntry) (selector.Event, error) {
		return tw.event(e), nil
	})
	if err != nil {
		_ = tw.Stop()
		return nil, nil, err
	}
	specs := make(map[string]schemas.TargetSpec, len(entries))
	for i := range entries {
		switch ev := entries[i].v.(type) {
		case *selector.TargetUpserted:
			specs[ev.Target] = ev.Spec
		case *selector.TargetDeleted:
			delete(specs, ev.Target)
		}
	}
	return tw, specs, nil
}

// Malformed counts the entries that could not be used.
func (tw *TargetsWatcher) Malformed() uint64 { return tw.malformed.Load() }

// Resume asks Run to replace its watcher by a new one that resumes after the
// last revision seen. Call it after a reconnect: a watcher's server-side
// consumer does not survive a server restart, and the client notices that
// only after several missed heartbeats (about 20 s), whereas a new one
// picks up at once, with every change made in between, deletes included.
// It does not block.
func (tw *TargetsWatcher) Resume() {
	select {
	case tw.restart <- struct{}{}:
	default:
	}
}

// Run delivers each later change to emit, as a *selector.TargetUpserted or
// *selector.TargetDeleted, or a *selector.Malformed{Source: "targets"} for an
// entry it could not use. It returns when ctx ends or Stop is called.
func (tw *TargetsWatcher) Run(ctx context.Context, emit func(selector.Event)) {
	var retry <-chan time.Time
	probe := time.NewTicker(WatchProbeInterval)
	defer probe.Stop()
	for {
		tw.mu.Lock()
		w, stopped := tw.w, tw.stopped
		tw.mu.Unlock()
		if stopped {
			return
		}
		var updates <-chan jetstream.KeyValueEntry
		if w != nil {
			updates = w.Updates()
		}
		select {
		case <-ctx.Done():
			return
		case <-tw.restart:
			tw.resume(ctx, &retry)
		case <-retry:
			retry = nil
			tw.resume(ctx, &retry)
		case <-probe.C:
			if w != nil && tw.stalled(ctx) {
				tw.log.Warn("targets watch: changes not delivered; resuming the watch", "last_revision", tw.lastRevision())
				tw.resume(ctx, &retry)
			}
		case e, ok := <-updates:
			if !ok {
				// Closed by Stop, or by resume replacing it.
				tw.mu.Lock()
				if tw.w == w {
					tw.w = nil
					if !tw.stopped && retry == nil {
						retry = time.After(time.Second)
					}
				}
				tw.mu.Unlock()
				continue
			}
			if e == nil {
				continue
			}
			tw.mu.Lock()
			if tw.w != w {
				// Entry from a replaced watcher: the new one delivers it.
				tw.mu.Unlock()
				continue
			}
			rev := tw.lastRev
			tw.mu.Unlock()
			if e.Revision() <= rev {
				continue // already seen (a resumed watcher may overlap)
			}
			if ev := tw.event(e); ev != nil {
				emit(ev)
			}
		}
	}
}

// stalled reads the bucket's last revision and reports whether the one read
// at the previous probe has still not been delivered. A failed read (no
// quorum, or disconnected) is no evidence: there is nothing to resume to.
func (tw *TargetsWatcher) stalled(ctx context.Context) bool {
	pctx, cancel := context.WithTimeout(ctx, WatchProbeInterval)
	defer cancel()
	st, err := tw.kv.Status(pctx)
	if err != nil {
		return false
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return false
	}
	last := bs.StreamInfo().State.LastSeq
	tw.mu.Lock()
	defer tw.mu.Unlock()
	stalled := tw.probed > tw.lastRev
	tw.probed = last
	return stalled
}

func (tw *TargetsWatcher) lastRevision() uint64 {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	return tw.lastRev
}

// resume swaps the current watcher for one that starts after lastRev. On
// failure it schedules another attempt.
func (tw *TargetsWatcher) resume(ctx context.Context, retry *<-chan time.Time) {
	tw.mu.Lock()
	if tw.stopped {
		tw.mu.Unlock()
		return
	}
	old, oldCancel, from := tw.w, tw.wcancel, tw.lastRev+1
	tw.w, tw.wcancel = nil, nil
	tw.mu.Unlock()
	if old != nil {
		_ = old.Stop()
		oldCancel()
	}
	w, wcancel, err := startWatch(ctx, tw.kv, jetstream.ResumeFromRevision(from))
	if err != nil {
		tw.log.Warn("targets watch: cannot resume; retrying", "from_revision", from, "err", err)
		*retry = time.After(time.Second)
		return
	}
	tw.mu.Lock()
	if tw.stopped {
		tw.mu.Unlock()
		_ = w.Stop()
		wcancel()
		return
	}
	tw.w, tw.wcancel = w, wcancel
	tw.mu.Unlock()
	tw.log.Info("targets watch resumed", "from_revision", from)
}

// Stop ends the watch.
func (tw *TargetsWatcher) Stop() error {
	tw.mu.Lock()
	w, wcancel := tw.w, tw.wcancel
	tw.stopped = true
	tw.w, tw.wcancel = nil, nil
	tw.mu.Unlock()
	select {
	case tw.restart <- struct{}{}: // wake Run
	default:
	}
	if w == nil {
		return nil
	}
	defer wcancel()
	if err := w.Stop(); err != nil {
		return fmt.Errorf("bus: stop %s watcher: %w", protocol.TargetsBucket, err)
	}
	return nil
}

func (tw *TargetsWatcher) event(e jetstream.KeyValueEntry) selector.Event {
	tw.mu.Lock()
	tw.lastRev = max(tw.lastRev, e.Revision())
	tw.mu.Unlock()
	target, err := protocol.DecodeName(e.Key())
	if err != nil {
		tw.malformed.Add(1)
		tw.log.Warn("targets bucket: key is not an encoded target name; ignored", "key", e.Key(), "err", err)
		return &selector.Malformed{Source: SourceTargets}
	}
	switch e.Operation() {
	case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
		return &selector.TargetDeleted{Target: target}
	}
	spec, err := decodeTargetSpec(e.Value())
	if err != nil {
		tw.malformed.Add(1)
		tw.log.Warn("targets bucket: malformed spec ignored; the target keeps its last good spec", "target", target, "revision", e.Revision(), "err", err)
		return &selector.Malformed{Source: SourceTargets}
	}
	return &selector.TargetUpserted{Target: target, Spec: spec}
}
