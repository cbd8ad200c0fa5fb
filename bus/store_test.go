package bus

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

func TestTaskStoreCAS(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	kv := kvOf(t, nc, protocol.TasksBucket)
	ctx := testCtx(t, 10*time.Second)
	st := NewTaskStore(kv, testLog())

	const target = "I.I.I.I"
	v1 := mustMarshal(t, ptr(taskState(target, "t1", 1)))
	v2 := mustMarshal(t, ptr(taskState(target, "t2", 2)))

	// Unknown key: Create.
	if err := st.Put(ctx, target, v1); err != nil {
		t.Fatalf("create: %v", err)
	}
	rev1, ok := st.Revision(target)
	if !ok || rev1 == 0 {
		t.Fatalf("no revision after create")
	}
	e, err := kv.Get(ctx, protocol.EncodeName(target))
	if err != nil || string(e.Value()) != string(v1) || e.Revision() != rev1 {
		t.Fatalf("stored value/revision wrong: %v", err)
	}

	// Known key: Update at the revision seen.
	if err := st.Put(ctx, target, v2); err != nil {
		t.Fatalf("update: %v", err)
	}
	rev2, _ := st.Revision(target)
	if rev2 <= rev1 {
		t.Fatalf("revision did not advance: %d -> %d", rev1, rev2)
	}

	// Another writer changes the key: our next write is a conflict.
	if _, err := kv.Put(ctx, protocol.EncodeName(target), v1); err != nil {
		t.Fatal(err)
	}
	err = st.Put(ctx, target, v2)
	if !errors.Is(err, ErrConflict) || !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Fatalf("stale update: got %v, want ErrConflict wrapping ErrKeyRevisionMismatch", err)
	}
	// Delete at a stale revision is a conflict too, and deletes nothing.
	err = st.Delete(ctx, target)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("stale delete: got %v, want ErrConflict", err)
	}
	if _, err := kv.Get(ctx, protocol.EncodeName(target)); err != nil {
		t.Fatalf("key gone after a refused delete: %v", err)
	}

	// A fresh store that never saw the key: Create fails as a conflict.
	st2 := NewTaskStore(kv, testLog())
	err = st2.Put(ctx, target, v2)
	if !errors.Is(err, ErrConflict) || !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("create over an existing key: got %v, want ErrConflict wrapping ErrKeyExists", err)
	}

	// After a replay it knows the revision: update and delete work.
	if _, err := st2.Replay(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st2.Put(ctx, target, v2); err != nil {
		t.Fatalf("update after replay: %v", err)
	}
	if err := st2.Delete(ctx, target); err != nil {
		t.Fatalf("delete at revision: %v", err)
	}
	if _, err := kv.Get(ctx, protocol.EncodeName(target)); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("get after delete: %v, want ErrKeyNotFound", err)
	}
	if _, ok := st2.Revision(target); ok {
		t.Fatalf("revision still known after delete")
	}
	// Create over the delete marker.
	if err := st2.Put(ctx, target, v1); err != nil {
		t.Fatalf("create over a delete marker: %v", err)
	}
	// Deleting a key never seen does nothing.
	if err := NewTaskStore(kv, testLog()).Delete(ctx, "never-seen"); err != nil {
		t.Fatalf("delete of an unknown key: %v", err)
	}
}

// TestTaskStoreRecreatesALostBucket: the tasks bucket is deleted under a
// running store. Without a way to recreate it every write fails, for good
// (the service's writer retried forever, holding back the launch queued
// behind it). With RecreateWith, the first write recreates the bucket and
// every target's state is stored again, so that a replay finds all of it,
// and later updates and deletes work at the new revisions.
func TestTaskStoreRecreatesALostBucket(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	kv := kvOf(t, nc, protocol.TasksBucket)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 20*time.Second)
	recreate := func(ctx context.Context) error {
		_, err := js.CreateKeyValue(ctx, TasksBucketConfig(StoreConfig{}))
		return err
	}
	val := func(target, taskID string, epoch uint64) []byte {
		return mustMarshal(t, ptr(taskState(target, taskID, epoch)))
	}
	stored := func() map[string]string {
		t.Helper()
		states, err := NewTaskStore(kv, testLog()).Replay(ctx)
		if err != nil {
			t.Fatalf("replay: %v", err)
		}
		out := map[string]string{}
		for _, st := range states {
			out[st.Target] = st.Task.TaskID
		}
		return out
	}
	lose := func() {
		t.Helper()
		if err := js.DeleteKeyValue(ctx, protocol.TasksBucket); err != nil {
			t.Fatalf("delete the bucket: %v", err)
		}
	}

	st := NewTaskStore(kv, testLog())
	st.RecreateWith(recreate)
	plain := NewTaskStore(kv, testLog()) // no way to recreate
	for _, name := range []string{"a", "b", "c"} {
		if err := st.Put(ctx, name, val(name, name+"#1", 1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := plain.Put(ctx, "p", val("p", "p#1", 1)); err != nil {
		t.Fatal(err)
	}
	lose()

	// Without RecreateWith the write fails, and not as a conflict: it is
	// retried, and fails again as long as nobody recreates the bucket.
	for range 2 {
		if err := plain.Put(ctx, "p", val("p", "p#2", 2)); err == nil || errors.Is(err, ErrConflict) {
			t.Fatalf("write to a lost bucket without RecreateWith: %v, want a plain error", err)
		}
	}

	// With it, the write lands, and the other targets are stored again.
	if err := st.Put(ctx, "a", val("a", "a#2", 2)); err != nil {
		t.Fatalf("write to a lost bucket: %v", err)
	}
	if n := st.Recreated(); n != 1 {
		t.Errorf("recreated %d times, want 1", n)
	}
	want := map[string]string{"a": "a#2", "b": "b#1", "c": "c#1"}
	if got := stored(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("bucket holds %v after the loss, want %v", got, want)
	}
	if err := st.Put(ctx, "b", val("b", "b#2", 2)); err != nil {
		t.Fatalf("update after the recreation: %v", err)
	}
	if err := st.Delete(ctx, "c"); err != nil {
		t.Fatalf("delete after the recreation: %v", err)
	}
	want = map[string]string{"a": "a#2", "b": "b#2"}
	if got := stored(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("bucket holds %v, want %v", got, want)
	}

	// Lost again, and the first write is a delete: it is done (the key is
	// gone with the bucket), and the next write stores the rest again.
	lose()
	if err := st.Delete(ctx, "b"); err != nil {
		t.Fatalf("delete in a lost bucket: %v", err)
	}
	if err := st.Put(ctx, "d", val("d", "d#1", 1)); err != nil {
		t.Fatalf("write after the second loss: %v", err)
	}
	want = map[string]string{"a": "a#2", "d": "d#1"}
	if got := stored(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("bucket holds %v after the second loss, want %v", got, want)
	}
	if n := st.Recreated(); n != 2 {
		t.Errorf("recreated %d times, want 2", n)
	}

	// A store that recreated nothing but finds its key changed still
	// reports a conflict: the recreated bucket is no licence to overwrite.
	if err := plain.Put(ctx, "a", val("a", "a#9", 9)); !errors.Is(err, ErrConflict) {
		t.Fatalf("create over another store's key: %v, want ErrConflict", err)
	}
}

func TestTaskStoreReconcile(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	kv := kvOf(t, nc, protocol.TasksBucket)
	ctx := testCtx(t, 10*time.Second)
	a := NewTaskStore(kv, testLog())
	v1 := mustMarshal(t, ptr(taskState("x", "t1", 1)))
	v2 := mustMarshal(t, ptr(taskState("x", "t2", 2)))
	if err := a.Put(ctx, "x", v1); err != nil {
		t.Fatal(err)
	}
	// Simulate a write that landed but whose reply was lost: another
	// handle writes v2; "a" still holds the old revision.
	b := NewTaskStore(kv, testLog())
	if _, err := b.Replay(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "x", v2); err != nil {
		t.Fatal(err)
	}
	if ok, err := a.Reconcile(ctx, "x", v1); err != nil || ok {
		t.Fatalf("reconcile with other data = %v, %v; want false", ok, err)
	}
	if ok, err := a.Reconcile(ctx, "x", v2); err != nil || !ok {
		t.Fatalf("reconcile with the stored data = %v, %v; want true", ok, err)
	}
	if err := a.Put(ctx, "x", v1); err != nil {
		t.Fatalf("update after reconcile: %v", err)
	}
	if err := a.Delete(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Reconcile(ctx, "x", nil); err != nil || !ok {
		t.Fatalf("reconcile of a delete = %v, %v; want true", ok, err)
	}
	// Nothing landed: the key holds the revision last seen, or a first
	// write finds no key. Not a conflict: the write may be retried.
	if err := a.Put(ctx, "y", v1); err != nil {
		t.Fatal(err)
	}
	if ok, err := a.Reconcile(ctx, "y", v2); ok || !errors.Is(err, ErrUnsettled) {
		t.Fatalf("reconcile of a write that did not land = %v, %v; want ErrUnsettled", ok, err)
	}
	if ok, err := a.Reconcile(ctx, "y", nil); ok || !errors.Is(err, ErrUnsettled) {
		t.Fatalf("reconcile of a delete that did not land = %v, %v; want ErrUnsettled", ok, err)
	}
	if ok, err := NewTaskStore(kv, testLog()).Reconcile(ctx, "z", v1); ok || !errors.Is(err, ErrUnsettled) {
		t.Fatalf("reconcile of a create that did not land = %v, %v; want ErrUnsettled", ok, err)
	}
}

// laggingKV answers Get with an older revision of the key, as a replica
// that has not caught up does in a cluster.
type laggingKV struct {
	jetstream.KeyValue
	stale jetstream.KeyValueEntry // nil: no lag
}

func (l *laggingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if l.stale != nil {
		return l.stale, nil
	}
	return l.KeyValue.Get(ctx, key)
}

// TestReconcileTakesALaggingReadForUnsettled: a read older than the revision
// the store last saw proves nothing; it must not be taken for another
// writer (which stops launches).
func TestReconcileTakesALaggingReadForUnsettled(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	lag := &laggingKV{KeyValue: kvOf(t, nc, protocol.TasksBucket)}
	ctx := testCtx(t, 10*time.Second)
	st := NewTaskStore(lag, testLog())
	v1 := mustMarshal(t, ptr(taskState("x", "t1", 1)))
	v2 := mustMarshal(t, ptr(taskState("x", "t2", 2)))
	v3 := mustMarshal(t, ptr(taskState("x", "t3", 3)))
	if err := st.Put(ctx, "x", v1); err != nil {
		t.Fatal(err)
	}
	first, err := lag.KeyValue.Get(ctx, protocol.EncodeName("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "x", v2); err != nil {
		t.Fatal(err)
	}
	lag.stale = first
	if ok, err := st.Reconcile(ctx, "x", v3); ok || !errors.Is(err, ErrUnsettled) {
		t.Fatalf("reconcile against a lagging read = %v, %v; want ErrUnsettled", ok, err)
	}
	lag.stale = nil
	if err := st.Put(ctx, "x", v3); err != nil {
		t.Fatalf("write after the lagging read: %v", err)
	}
}

func TestTaskStoreReplay(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	kv := kvOf(t, nc, protocol.TasksBucket)
	ctx := testCtx(t, 20*time.Second)

	// An empty bucket replays to nothing, at once.
	if got, err := NewTaskStore(kv, testLog()).Replay(ctx); err != nil || len(got) != 0 {
		t.Fatalf("empty replay = %d states, %v", len(got), err)
	}

	const n = 500
	w := NewTaskStore(kv, testLog())
	want := map[string]uint64{}
	for i := range n {
		target := fmt.Sprintf("t%03d", i)
		if i%7 == 0 {
			target = fmt.Sprintf("srv.%d.x", i) // needs encoding
		}
		if err := w.Put(ctx, target, mustMarshal(t, ptr(taskState(target, fmt.Sprintf("id%d", i), uint64(i+1))))); err != nil {
			t.Fatal(err)
		}
		want[target] = uint64(i + 1)
	}
	// Rewrite some, delete some: the replay sees only the latest values.
	for i := 0; i < n; i += 10 {
		target := fmt.Sprintf("t%03d", i)
		if i%7 == 0 {
			target = fmt.Sprintf("srv.%d.x", i)
		}
		if i%20 == 0 {
			if err := w.Delete(ctx, target); err != nil {
				t.Fatal(err)
			}
			delete(want, target)
			continue
		}
		if err := w.Put(ctx, target, mustMarshal(t, ptr(taskState(target, "again", 1000)))); err != nil {
			t.Fatal(err)
		}
		want[target] = 1000
	}
	// Garbage: a malformed value, a value under the wrong key, a key that
	// is not an encoded name.
	if _, err := kv.Put(ctx, "garbage", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "wrongkey", mustMarshal(t, ptr(taskState("other", "id", 1)))); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "=00", mustMarshal(t, ptr(taskState("x", "id", 1)))); err != nil {
		t.Fatal(err)
	}

	r := NewTaskStore(kv, testLog())
	states, err := r.Replay(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Malformed() != 3 {
		t.Fatalf("malformed = %d, want 3", r.Malformed())
	}
	if len(states) != len(want) {
		t.Fatalf("replayed %d states, want %d", len(states), len(want))
	}
	for _, st := range states {
		if want[st.Target] != st.Epoch {
			t.Fatalf("target %q replayed epoch %d, want %d", st.Target, st.Epoch, want[st.Target])
		}
		rw, _ := w.Revision(st.Target)
		rr, ok := r.Revision(st.Target)
		if !ok || rr != rw {
			t.Fatalf("target %q: replay revision %d, writer revision %d", st.Target, rr, rw)
		}
	}
	// The malformed key's revision is known, so the selector's next write
	// of that target replaces the garbage instead of conflicting.
	if err := r.Put(ctx, "garbage", mustMarshal(t, ptr(taskState("garbage", "id", 1)))); err != nil {
		t.Fatalf("overwrite malformed value: %v", err)
	}
}

func TestTargetsWatcher(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	kv := kvOf(t, nc, protocol.TargetsBucket)
	ctx := testCtx(t, 10*time.Second)
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PutTarget(ctx, "a", declaredSpec()); err != nil {
		t.Fatal(err)
	}
	if err := c.PutTarget(ctx, "I.I.I.I", declaredSpec()); err != nil {
		t.Fatal(err)
	}
	if err := c.PutTarget(ctx, "gone", declaredSpec()); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteTarget(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if err := c.PutTargetRaw(ctx, "bad", []byte(`{"v":1,"profile":"nope"}`)); err != nil {
		t.Fatal(err)
	}
	// PutTarget validates.
	if err := c.PutTarget(ctx, "x", schemas.TargetSpec{Profile: "declared"}); err == nil {
		t.Fatalf("PutTarget accepted an invalid spec")
	}

	tw, specs, err := WatchTargets(ctx, kv, testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer tw.Stop()
	if len(specs) != 2 || specs["a"].Profile != schemas.ProfileDeclared || specs["I.I.I.I"].Profile != schemas.ProfileDeclared {
		t.Fatalf("replayed specs = %v", specs)
	}
	if tw.Malformed() != 1 {
		t.Fatalf("malformed = %d, want 1", tw.Malformed())
	}

	events := make(chan selector.Event, 16)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); tw.Run(runCtx, func(ev selector.Event) { events <- ev }) }()
	next := func() selector.Event {
		select {
		case ev := <-events:
			return ev
		case <-ctx.Done():
			t.Fatal("no event")
			return nil
		}
	}
	spec := declaredSpec()
	spec.Phases[0].WorkS = 7
	if err := c.PutTarget(ctx, "new one", spec); err != nil {
		t.Fatal(err)
	}
	if ev, ok := next().(*selector.TargetUpserted); !ok || ev.Target != "new one" || ev.Spec.Phases[0].WorkS != 7 {
		t.Fatalf("want TargetUpserted for %q, got %#v", "new one", ev)
	}
	if err := c.PutTargetRaw(ctx, "a", []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	if ev, ok := next().(*selector.Malformed); !ok || ev.Source != SourceTargets {
		t.Fatalf("want Malformed, got %#v", ev)
	}
	if err := c.DeleteTarget(ctx, "I.I.I.I"); err != nil {
		t.Fatal(err)
	}
	if ev, ok := next().(*selector.TargetDeleted); !ok || ev.Target != "I.I.I.I" {
		t.Fatalf("want TargetDeleted, got %#v", ev)
	}
	if err := kv.Purge(ctx, "new one"); err == nil {
		t.Fatalf("purge of a raw (unencoded) key should fail in the client")
	}
	if err := kv.Purge(ctx, protocol.EncodeName("new one")); err != nil {
		t.Fatal(err)
	}
	if ev, ok := next().(*selector.TargetDeleted); !ok || ev.Target != "new one" {
		t.Fatalf("want TargetDeleted after purge, got %#v", ev)
	}
	stop()
	<-done
}

func ptr[T any](v T) *T { return &v }
