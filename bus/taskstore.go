package bus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

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
	fence    *storeFence                 // nil: per-key compare-and-swap only (see Fence)

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
		if isTermMarker(key) {
			continue
		}
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

// Put writes data (an encoded TaskState) as target's state: an Update at the
// last revision seen, or a Create when none was seen. A lost compare-and-swap
// returns an error wrapping ErrConflict (and the KV error).
//
// With RecreateWith set, a Put that finds the bucket gone recreates it and
// writes again; and every Put first stores again what a lost bucket took.
// data must not be modified afterwards: the store keeps it.
func (s *TaskStore) Put(ctx context.Context, target string, data []byte) error {
	key := protocol.EncodeName(target)
	if s.fence != nil {
		if err := s.writeFenced(ctx, key, data); err != nil {
			return fmt.Errorf("bus: persist %q: %w", target, err)
		}
		return nil
	}
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
		if s.fence != nil {
			if err := s.writeFenced(ctx, key, nil); err != nil {
				return fmt.Errorf("bus: delete %q: %w", target, err)
			}
			return nil
		}
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
	if s.fence != nil {
		// A fenced write settles its own earlier attempts before it
		// reports a conflict: the conflict is real.
		return false, nil
	}
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
