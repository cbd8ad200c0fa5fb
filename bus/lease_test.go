package bus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
)

func leaseFor(t *testing.T, js jetstream.JetStream, id string, ttl, renew time.Duration) *Lease {
	t.Helper()
	ctx := testCtx(t, 10*time.Second)
	kv, err := js.CreateOrUpdateKeyValue(ctx, LeaseBucketConfig(1))
	if err != nil {
		t.Fatalf("lease bucket: %v", err)
	}
	l, err := NewLease(js, kv, LeaseConfig{ID: id, TTL: ttl, Renew: renew}, testLog())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLeaseConfigCheck(t *testing.T) {
	for _, c := range []LeaseConfig{
		{},
		{ID: "a", TTL: 500 * time.Millisecond},
		{ID: "a", TTL: 2 * time.Second, Renew: 2 * time.Second},
	} {
		if c.Check() == nil {
			t.Errorf("%+v: accepted", c)
		}
	}
	if err := (LeaseConfig{ID: "a"}).Check(); err != nil {
		t.Errorf("defaults rejected: %v", err)
	}
}

// TestLease: take, renew past the TTL, expiry of an unrenewed lease,
// takeover by a campaigning standby with a larger term, the deposed
// holder's renewal failing, and a release handing over at once.
func TestLease(t *testing.T) {
	s := natstest.Server(t)
	js, err := jetstream.New(connect(t, s.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	const ttl, renew = 2 * time.Second, 200 * time.Millisecond
	a := leaseFor(t, js, "a", ttl, renew)
	b := leaseFor(t, js, "b", ttl, renew)
	ctx := testCtx(t, 60*time.Second)

	ok, err := a.TryAcquire(ctx)
	if err != nil || !ok {
		t.Fatalf("a: take: %v %v", ok, err)
	}
	term1 := a.Term()
	if !a.Valid(time.Now()) || term1 == 0 {
		t.Fatal("a: lease taken but not valid")
	}
	if ok, err := b.TryAcquire(ctx); ok || err != nil {
		t.Fatalf("b took a held lease: %v %v", ok, err)
	}
	if id, _ := b.Holder(); id != "a" {
		t.Fatalf("b sees holder %q, want a", id)
	}

	// a renews for longer than the TTL: b cannot take it meanwhile.
	holdCtx, stopHold := context.WithCancel(ctx)
	held := make(chan error, 1)
	go func() { held <- a.Hold(holdCtx, nil) }()
	campCtx, stopCamp := context.WithTimeout(ctx, ttl+time.Second)
	if err := b.Campaign(campCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("b campaigned against a renewed lease: %v", err)
	}
	stopCamp()
	if !a.Valid(time.Now()) {
		t.Fatal("a: renewed lease not valid")
	}
	if _, term := b.Holder(); term != term1 {
		t.Fatalf("b sees term %d, want %d", term, term1)
	}

	// a stops renewing (a pause): it stops being valid on its own clock
	// before the server expires the key and b takes over.
	stopHold()
	if err := <-held; err != nil {
		t.Fatalf("hold: %v", err)
	}
	aUntil := a.ValidUntil()
	if err := b.Campaign(ctx); err != nil {
		t.Fatalf("b campaign: %v", err)
	}
	took := time.Now()
	if !took.After(aUntil) {
		t.Fatalf("b took over at %v, before a's lease ended at %v", took, aUntil)
	}
	if a.Valid(took) {
		t.Fatal("a still valid after b took over")
	}
	if b.Term() <= term1 {
		t.Fatalf("b's term %d not above a's %d", b.Term(), term1)
	}
	// The deposed a's late renewal fails its compare-and-set.
	if err := a.Renew(ctx); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("a's late renewal: %v, want ErrLeaseLost", err)
	}
	if err := b.Renew(ctx); err != nil {
		t.Fatalf("b renew: %v", err)
	}

	// Release deletes the key (it does not wait for the TTL): the next
	// attempt takes it.
	if err := b.Release(ctx); err != nil {
		t.Fatalf("b release: %v", err)
	}
	if _, err := b.kv.Get(ctx, LeaseKey); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("lease key after a release: %v, want not found", err)
	}
	if b.Valid(time.Now()) || b.Term() != 0 {
		t.Fatal("b still holds a released lease")
	}
	if ok, err := a.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("a: take a released lease: %v %v", ok, err)
	}
	if a.Term() <= term1 {
		t.Fatalf("a's new term %d not above %d", a.Term(), term1)
	}
}

// TestHoldDeposesOnLoss: a holder whose lease is taken from under it (here
// deleted and re-created by another) learns it at its next renewal and
// calls onLost.
func TestHoldDeposesOnLoss(t *testing.T) {
	s := natstest.Server(t)
	js, err := jetstream.New(connect(t, s.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	a := leaseFor(t, js, "a", 2*time.Second, 100*time.Millisecond)
	b := leaseFor(t, js, "b", 2*time.Second, 100*time.Millisecond)
	ctx := testCtx(t, 20*time.Second)
	if ok, err := a.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("take: %v %v", ok, err)
	}
	lost := make(chan error, 1)
	held := make(chan error, 1)
	go func() { held <- a.Hold(ctx, func(err error) { lost <- err }) }()
	if err := a.kv.Delete(ctx, LeaseKey); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("b take: %v %v", ok, err)
	}
	select {
	case err := <-lost:
		if !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("onLost: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("a never learnt it lost the lease")
	}
	if err := <-held; !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("hold: %v", err)
	}
	if a.Valid(time.Now()) {
		t.Fatal("a valid after losing the lease")
	}
}

// TestFencedWrites: a deposed leader's writes fail once the new leader has
// written its term marker, even to a key the new leader never wrote, and
// land nothing; a retried write whose first attempt landed is recognised.
func TestFencedWrites(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv := kvOf(t, nc, protocol.TasksBucket)
	ctx := testCtx(t, 20*time.Second)

	m1, err := WriteTermMarker(ctx, kv, 1, "old")
	if err != nil {
		t.Fatal(err)
	}
	old := NewTaskStore(kv, testLog())
	old.Fence(nc, js, 1, "old", m1)
	v1 := mustMarshal(t, ptr(taskState("x", "t1", 1)))
	v2 := mustMarshal(t, ptr(taskState("x", "t2", 2)))
	vy := mustMarshal(t, ptr(taskState("y", "t3", 1)))
	if err := old.Put(ctx, "x", v1); err != nil {
		t.Fatalf("old leader's write: %v", err)
	}
	if err := old.Put(ctx, "y", vy); err != nil {
		t.Fatalf("old leader's write: %v", err)
	}

	// A retry of a write whose first attempt landed unseen: same expected
	// sequence, same key, same message id.
	f := old.fence
	f.mu.Lock()
	f.lastSeq--
	f.mu.Unlock()
	before := lastSeq(t, kv)
	if err := old.Put(ctx, "y", vy); err != nil {
		t.Fatalf("retry of a landed write: %v", err)
	}
	if after := lastSeq(t, kv); after != before {
		t.Fatalf("the retry stored again: last sequence %d -> %d", before, after)
	}
	if rev, _ := old.Revision("y"); rev != before {
		t.Fatalf("the retry adopted revision %d, want %d", rev, before)
	}

	// A new leader takes over: its marker fences the old one.
	m2, err := WriteTermMarker(ctx, kv, 2, "new")
	if err != nil {
		t.Fatal(err)
	}
	fresh := NewTaskStore(kv, testLog())
	if _, err := fresh.Replay(ctx); err != nil {
		t.Fatal(err)
	}
	fresh.Fence(nc, js, 2, "new", m2)

	// The deposed leader's late writes to keys the new one never wrote.
	if err := old.Put(ctx, "x", v2); !errors.Is(err, ErrConflict) {
		t.Fatalf("deposed leader's write: %v, want ErrConflict", err)
	}
	if err := old.Delete(ctx, "y"); !errors.Is(err, ErrConflict) {
		t.Fatalf("deposed leader's delete: %v, want ErrConflict", err)
	}
	if err := old.Put(ctx, "z", v2); !errors.Is(err, ErrConflict) {
		t.Fatalf("deposed leader's create: %v, want ErrConflict", err)
	}
	e, err := kv.Get(ctx, protocol.EncodeName("x"))
	if err != nil || string(e.Value()) != string(v1) {
		t.Fatalf("x changed by the deposed leader: %v", err)
	}
	if _, err := kv.Get(ctx, "y"); err != nil {
		t.Fatalf("y deleted by the deposed leader: %v", err)
	}
	if _, err := kv.Get(ctx, "z"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("z created by the deposed leader: %v", err)
	}

	// The new leader writes, with its term in a header.
	if err := fresh.Put(ctx, "x", v2); err != nil {
		t.Fatalf("new leader's write: %v", err)
	}
	if err := fresh.Delete(ctx, "y"); err != nil {
		t.Fatalf("new leader's delete: %v", err)
	}
	stream, err := js.Stream(ctx, "KV_"+protocol.TasksBucket)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := stream.GetLastMsgForSubject(ctx, "$KV."+protocol.TasksBucket+".x")
	if err != nil {
		t.Fatal(err)
	}
	if got := raw.Header.Get(HeaderTerm); got != "2" {
		t.Fatalf("term header %q, want 2", got)
	}
	// Replay leaves the marker out, and does not count it as malformed.
	again := NewTaskStore(kv, testLog())
	states, err := again.Replay(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 1 || states[0].Target != "x" || again.Malformed() != 0 {
		t.Fatalf("replay: %d states, %d malformed", len(states), again.Malformed())
	}
}

func lastSeq(t *testing.T, kv jetstream.KeyValue) uint64 {
	t.Helper()
	st, err := kv.Status(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return st.(*jetstream.KeyValueBucketStatus).StreamInfo().State.LastSeq
}
