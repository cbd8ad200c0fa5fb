package bus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// SelectorConsumer is the durable name of the selector's consumer on the
// protocol.EventStream.
const SelectorConsumer = "selector"

// StoreConfig sizes the JetStream state. Zero fields take the defaults in
// brackets.
type StoreConfig struct {
	// Replicas of every bucket and of the stream [1].
	Replicas int
	// TargetsHistory is how many revisions of each target spec are kept,
	// for operators to look back [5]. The tasks bucket keeps 1: the
	// selector only ever needs the latest revision for its CAS.
	TargetsHistory uint8
	// EventMaxAge and EventMaxBytes bound the TASK_EVENTS stream [24h,
	// 256 MiB]; the oldest events are discarded first. They only matter
	// when the selector is down (or not acking) for longer than that:
	// events it has acked are no longer needed, and workers publish them
	// only when a task ends.
	EventMaxAge   time.Duration
	EventMaxBytes int64
	// AckWait is how long the server waits for the selector's ack of an
	// event before it redelivers it [30s]. Events are handled
	// idempotently, so a redelivery is harmless.
	AckWait time.Duration
	// MaxAckPending bounds the events delivered but not yet acked [1024].
	MaxAckPending int
}

func (c StoreConfig) withDefaults() StoreConfig {
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.TargetsHistory == 0 {
		c.TargetsHistory = 5
	}
	if c.EventMaxAge <= 0 {
		c.EventMaxAge = 24 * time.Hour
	}
	if c.EventMaxBytes <= 0 {
		c.EventMaxBytes = 256 << 20
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 1024
	}
	return c
}

// Store holds the handles of the JetStream state the selector uses.
type Store struct {
	Targets  jetstream.KeyValue
	Tasks    jetstream.KeyValue
	Events   jetstream.Stream
	Consumer jetstream.Consumer
}

// EnsureStore creates, or updates to cfg, the targets and tasks buckets (file
// storage, no TTL), the TASK_EVENTS stream on subj.Events() (file storage,
// bounded by age and bytes) and the selector's durable consumer on it
// (explicit ack, unlimited redeliveries). It is idempotent.
//
// The stream's name is fixed, so one JetStream account serves one subject
// prefix.
func EnsureStore(ctx context.Context, js jetstream.JetStream, subj protocol.Subjects, cfg StoreConfig) (*Store, error) {
	cfg = cfg.withDefaults()
	targets, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:       protocol.TargetsBucket,
		Description:  "taskselector: desired targets (key = encoded target name, value = TargetSpec)",
		History:      cfg.TargetsHistory,
		MaxValueSize: schemas.MaxMessageBytes,
		Storage:      jetstream.FileStorage,
		Replicas:     cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: ensure bucket %s: %w", protocol.TargetsBucket, err)
	}
	tasks, err := js.CreateOrUpdateKeyValue(ctx, TasksBucketConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("bus: ensure bucket %s: %w", protocol.TasksBucket, err)
	}
	stream, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        protocol.EventStream,
		Description: "taskselector: task done/failed events",
		Subjects:    []string{subj.Events()},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      cfg.EventMaxAge,
		MaxBytes:    cfg.EventMaxBytes,
		MaxMsgSize:  schemas.MaxMessageBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Duplicates:  2 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: ensure stream %s: %w", protocol.EventStream, err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       SelectorConsumer,
		Description:   "taskselector: the selector's event consumer",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: cfg.MaxAckPending,
		FilterSubject: subj.Events(),
	})
	if err != nil {
		return nil, fmt.Errorf("bus: ensure consumer %s on %s: %w", SelectorConsumer, protocol.EventStream, err)
	}
	return &Store{Targets: targets, Tasks: tasks, Events: stream, Consumer: cons}, nil
}

// TasksBucketConfig is the configuration of the tasks bucket under cfg (its
// zero fields taking their defaults).
func TasksBucketConfig(cfg StoreConfig) jetstream.KeyValueConfig {
	cfg = cfg.withDefaults()
	return jetstream.KeyValueConfig{
		Bucket:       protocol.TasksBucket,
		Description:  "taskselector: selector state per target (key = encoded target name, value = TaskState); written by the selector only",
		History:      1,
		MaxValueSize: schemas.MaxMessageBytes,
		Storage:      jetstream.FileStorage,
		Replicas:     cfg.Replicas,
		// No TTL, ever: expiring task state would forget live tasks.
	}
}

// ErrConflict is wrapped by TaskStore writes that lost a compare-and-swap:
// the key changed since the selector last saw it, so another writer exists.
var ErrConflict = errors.New("bus: store conflict")

// TaskStore is the selector's view of the tasks bucket: it replays it and
// writes it with compare-and-swap on the revision it last saw for each key.
// Its methods are safe for concurrent use, but writes of one key must come
// from one goroutine, in order.
//
// It also keeps the last value it stored (or replayed) under each key, so
// that when the bucket itself is lost it can recreate it and store every
// target's state again (see RecreateWith).
type TaskStore struct {
	kv       jetstream.KeyValue
	log      *slog.Logger
	recreate func(context.Context) error // nil: a lost bucket is not recreated

	mu   sync.Mutex
	revs map[string]uint64 // KV key -> last revision seen
	vals map[string][]byte // KV key -> last good value stored or replayed
	lost map[string]bool   // keys of vals that a lost bucket took and that are not stored again yet

	malformed atomic.Uint64
	recreated atomic.Uint64
}

// NewTaskStore returns a TaskStore on kv (the tasks bucket).
func NewTaskStore(kv jetstream.KeyValue, log *slog.Logger) *TaskStore {
	if log == nil {
		log = slog.Default()
	}
	return &TaskStore{kv: kv, log: log, revs: make(map[string]uint64), vals: make(map[string][]byte), lost: make(map[string]bool)}
}

// RecreateWith sets how the store recreates the tasks bucket once the server
// says it does not exist (an operator deleted it, say): fn creates it again,
// empty. The write that found it gone is then retried, and every other key
// the store knows is stored again, with its last value, before the next
// write: the bucket holds every target's state again, so a restarted
// selector rebuilds the same state. Only the server's "not found" counts: a
// timeout or a lost quorum says nothing of the bucket and is an ordinary
// write error. Without fn, a lost bucket is such an error too, so writes
// fail (and the service's writer retries them) until it is back. Call it
// before the first write.
func (s *TaskStore) RecreateWith(fn func(context.Context) error) { s.recreate = fn }

// Malformed counts the values Replay could not use.
func (s *TaskStore) Malformed() uint64 { return s.malformed.Load() }

// Recreated counts the times the store found the bucket gone and recreated
// it.
func (s *TaskStore) Recreated() uint64 { return s.recreated.Load() }

// Revision returns the last revision seen of target's key.
func (s *TaskStore) Revision(target string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rev, ok := s.revs[protocol.EncodeName(target)]
	return rev, ok
}

// Replay reads every key of the bucket with a watcher, up to the end of its
// initial values, and returns the decoded states. It remembers each key's
// revision for later writes, including keys whose value is malformed (a value
// that does not decode, or whose target does not match its key): those are
// counted, logged and left out, never fatal, and the next write of that
// target replaces them.
func (s *TaskStore) Replay(ctx context.Context) ([]schemas.TaskState, error) {
	w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("bus: replay %s: %w", protocol.TasksBucket, err)
	}
	defer func() { _ = w.Stop() }()
	type decoded struct {
		target string
		st     schemas.TaskState
	}
	entries, err := replayDecode(ctx, w, protocol.TasksBucket, func(e jetstream.KeyValueEntry) (decoded, error) {
		target, err := protocol.DecodeName(e.Key())
		if err != nil {
			return decoded{}, err
		}
		st, err := decodeTaskState(e.Value())
		if err == nil && st.Target != target {
			err = fmt.Errorf("target %q does not match its key %q", st.Target, e.Key())
		}
		return decoded{target: target, st: st}, err
	})
	if err != nil {
		return nil, err
	}
	states := make([]schemas.TaskState, 0, len(entries))
	revs := make(map[string]uint64, len(entries))
	vals := make(map[string][]byte, len(entries))
	for i := range entries {
		r := &entries[i]
		key := r.e.Key()
		if r.v.target == "" {
			s.malformed.Add(1)
			s.log.Warn("tasks bucket: key is not an encoded target name; ignored", "key", key, "err", r.err)
			continue
		}
		// Remember the revision even of a malformed value, so that the
		// next write of that target replaces it instead of conflicting.
		revs[key] = r.e.Revision()
		if r.err != nil {
			s.malformed.Add(1)
			s.log.Warn("tasks bucket: malformed state ignored; the next write replaces it", "key", key, "revision", r.e.Revision(), "err", r.err)
			continue
		}
		states = append(states, r.v.st)
		vals[key] = r.e.Value()
	}
	s.mu.Lock()
	for k, r := range revs {
		s.revs[k] = r
	}
	for k, v := range vals {
		s.vals[k] = v
	}
	s.mu.Unlock()
	return states, nil
}

// replayed is one entry of a replay with its decoded value.
type replayed[T any] struct {
	e   jetstream.KeyValueEntry
	v   T
	err error
}

// replayDecode reads w's initial values, up to its end-of-initial-values
// marker, and decodes them on every core while it reads, in batches. The
// result keeps the order of the watcher.
func replayDecode[T any](ctx context.Context, w jetstream.KeyWatcher, bucket string, decode func(jetstream.KeyValueEntry) (T, error)) ([]replayed[T], error) {
	const batchSize = 256
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan []replayed[T], 4*workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for b := range jobs {
				for i := range b {
					b[i].v, b[i].err = decode(b[i].e)
				}
			}
		})
	}
	finish := func() { close(jobs); wg.Wait() }
	var batches [][]replayed[T]
	cur := make([]replayed[T], 0, batchSize)
	n := 0
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case e, ok = <-w.Updates():
		case <-ctx.Done():
			finish()
			return nil, fmt.Errorf("bus: replay %s: %w", bucket, ctx.Err())
		}
		if !ok {
			finish()
			return nil, fmt.Errorf("bus: replay %s: watcher closed before the end of the initial values", bucket)
		}
		if e == nil {
			break
		}
		cur = append(cur, replayed[T]{e: e})
		n++
		if len(cur) == batchSize {
			batches = append(batches, cur)
			jobs <- cur
			cur = make([]replayed[T], 0, batchSize)
		}
	}
	if len(cur) > 0 {
		batches = append(batches, cur)
		jobs <- cur
	}
	finish()
	out := make([]replayed[T], 0, n)
	for _, b := range batches {
		out = append(out, b...)
	}
	return out, nil
}

// Put writes data (an encoded TaskState) as target's state: an Update at the
// last revision seen, or a Create when none was seen. A lost compare-and-swap
// returns an error wrapping ErrConflict (and the KV error).
//
// With RecreateWith set, a Put that finds the bucket gone recreates it and
// writes again; and every Put first stores again what a lost bucket took.
// data must not be modified afterwards: the store keeps it.
func (s *TaskStore) Put(ctx context.Context, target string, data []byte) error {
	key := protocol.EncodeName(target)
	for retried := false; ; retried = true {
		if err := s.storeLost(ctx, key); err != nil {
			return fmt.Errorf("bus: persist %q: %w", target, err)
		}
		s.mu.Lock()
		rev, known := s.revs[key]
		s.mu.Unlock()
		var newRev uint64
		var err error
		if known {
			newRev, err = s.kv.Update(ctx, key, data, rev)
		} else {
			newRev, err = s.kv.Create(ctx, key, data)
		}
		if err == nil {
			s.mu.Lock()
			s.revs[key] = newRev
			s.vals[key] = data
			delete(s.lost, key)
			s.mu.Unlock()
			return nil
		}
		if isCASError(err) {
			return fmt.Errorf("bus: persist %q (seen revision %d): %w: %w", target, rev, ErrConflict, err)
		}
		if !retried && s.recreateLost(ctx) {
			continue
		}
		return fmt.Errorf("bus: persist %q: %w", target, err)
	}
}

// Delete deletes target's state at the last revision seen. With no revision
// seen there is nothing of ours to delete and it does nothing. A lost
// compare-and-swap returns an error wrapping ErrConflict.
//
// A delete that finds the bucket gone (with RecreateWith set) recreates it;
// the key is then gone already, and so is done.
func (s *TaskStore) Delete(ctx context.Context, target string) error {
	key := protocol.EncodeName(target)
	for retried := false; ; retried = true {
		s.mu.Lock()
		rev, known := s.revs[key]
		if !known || s.lost[key] {
			// Nothing of ours is stored under key: never written, or
			// taken by a lost bucket and not stored again.
			delete(s.vals, key)
			delete(s.lost, key)
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		err := s.kv.Delete(ctx, key, jetstream.LastRevision(rev))
		if err == nil {
			s.mu.Lock()
			delete(s.revs, key)
			delete(s.vals, key)
			s.mu.Unlock()
			return nil
		}
		if isCASError(err) {
			return fmt.Errorf("bus: delete %q (seen revision %d): %w: %w", target, rev, ErrConflict, err)
		}
		if !retried && s.recreateLost(ctx) {
			continue
		}
		return fmt.Errorf("bus: delete %q: %w", target, err)
	}
}

// recreateLost asks the server whether the bucket still exists. When it
// says the bucket is not found, and RecreateWith was set, it recreates the
// bucket and, if that left it empty (no other writer got there first),
// forgets every revision and marks every value it holds as lost, for
// storeLost to store again. It reports whether it did. Any other answer (the
// bucket is there, or no answer: a timeout, no quorum) leaves everything as
// it was.
func (s *TaskStore) recreateLost(ctx context.Context) bool {
	if s.recreate == nil {
		return false
	}
	if _, err := s.kv.Status(ctx); !errors.Is(err, jetstream.ErrStreamNotFound) && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return false
	}
	s.mu.Lock()
	n := len(s.vals)
	s.mu.Unlock()
	s.log.Warn("tasks bucket is gone; recreating it and storing every target's state again", "targets", n)
	if err := s.recreate(ctx); err != nil {
		s.log.Error("tasks bucket is gone and cannot be recreated", "err", err)
		return false
	}
	st, err := s.kv.Status(ctx)
	if err != nil {
		return false
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); !ok || bs.StreamInfo() == nil || bs.StreamInfo().State.LastSeq != 0 {
		// Not the empty bucket we made: another writer recreated it
		// and wrote to it. The revisions we hold judge our writes there.
		return false
	}
	s.mu.Lock()
	clear(s.revs)
	for k := range s.vals {
		s.lost[k] = true
	}
	s.mu.Unlock()
	s.recreated.Add(1)
	return true
}

// storeLost stores again, with Create, every value a lost bucket took, but
// skip's (the caller writes that one). A key that exists already is ours if
// it holds our value (an earlier attempt landed), and a conflict otherwise.
func (s *TaskStore) storeLost(ctx context.Context, skip string) error {
	s.mu.Lock()
	if len(s.lost) == 0 {
		s.mu.Unlock()
		return nil
	}
	keys := make([]string, 0, len(s.lost))
	for k := range s.lost {
		if k != skip {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	for _, k := range keys {
		s.mu.Lock()
		data := s.vals[k]
		s.mu.Unlock()
		rev, err := s.kv.Create(ctx, k, data)
		if err != nil && isCASError(err) {
			e, gerr := s.kv.Get(ctx, k)
			switch {
			case gerr != nil:
				err = gerr // no evidence either way: retried
			case bytes.Equal(e.Value(), data):
				rev, err = e.Revision(), nil
			default:
				return fmt.Errorf("store %q again in the recreated bucket: %w: %w", k, ErrConflict, err)
			}
		}
		if err != nil {
			return fmt.Errorf("store %q again in the recreated bucket: %w", k, err)
		}
		s.mu.Lock()
		s.revs[k] = rev
		delete(s.lost, k)
		s.mu.Unlock()
	}
	if len(keys) > 0 {
		s.log.Info("tasks bucket recreated: every target's state is stored again", "targets", len(keys))
	}
	return nil
}

// ErrUnsettled is wrapped by Reconcile when the key still holds what the
// store last saw: the earlier attempt has not landed, at least not yet (a
// clustered stream refuses a compare-and-swap while an earlier proposal of
// the same key is pending). Nothing proves another writer: retry the write.
var ErrUnsettled = errors.New("bus: earlier write not settled yet")

// Reconcile settles a write whose outcome was unknown (it timed out) and
// whose retry then lost its compare-and-swap: it may be our own first
// attempt that landed, or one still pending. It reads the key:
//   - if it holds exactly data (or, for a delete, data == nil and the key is
//     gone), our write landed: it adopts the current revision and reports
//     true;
//   - if it still holds the revision last seen, or an older one (a lagging
//     replica answered), or, for a first write, does not exist yet, nothing
//     is proved: it returns an error wrapping ErrUnsettled, and the write
//     may be retried;
//   - otherwise another writer changed it: it reports false (a conflict).
//
// A failed read returns its error; that too is no evidence of a conflict.
func (s *TaskStore) Reconcile(ctx context.Context, target string, data []byte) (bool, error) {
	key := protocol.EncodeName(target)
	s.mu.Lock()
	seen, known := s.revs[key]
	s.mu.Unlock()
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		switch {
		case data == nil:
			s.mu.Lock()
			delete(s.revs, key)
			delete(s.vals, key)
			s.mu.Unlock()
			return true, nil
		case !known:
			return false, fmt.Errorf("bus: reconcile %q: not created yet: %w", target, ErrUnsettled)
		}
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("bus: reconcile %q: %w", target, err)
	}
	if known && e.Revision() <= seen {
		// Nothing landed, or the read was served by a replica that has not
		// caught up (in a cluster, KV reads may come from any replica):
		// no evidence of another writer.
		return false, fmt.Errorf("bus: reconcile %q: at revision %d, last seen %d: %w", target, e.Revision(), seen, ErrUnsettled)
	}
	if data == nil || !bytes.Equal(e.Value(), data) {
		return false, nil
	}
	s.mu.Lock()
	s.revs[key] = e.Revision()
	s.vals[key] = data
	s.mu.Unlock()
	return true, nil
}

func isCASError(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

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

// startWatch starts a watcher of every key of kv that lives until its cancel
// function is called (or it is stopped). Only its creation is bounded, by ctx
// and by 10 s.
func startWatch(ctx context.Context, kv jetstream.KeyValue, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, context.CancelFunc, error) {
	wctx, cancel := context.WithCancel(context.Background())
	createCtx, stopCreate := context.WithTimeout(ctx, 10*time.Second)
	defer stopCreate()
	unhook := context.AfterFunc(createCtx, cancel)
	w, err := kv.WatchAll(wctx, opts...)
	if !unhook() {
		// ctx ended or the creation took too long: the watcher's context
		// is already cancelled.
		if err == nil {
			_ = w.Stop()
			err = createCtx.Err()
		}
	}
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return w, cancel, nil
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
