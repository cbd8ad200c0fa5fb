package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func declaredSpec() schemas.TargetSpec {
	return schemas.TargetSpec{
		Profile: schemas.ProfileDeclared,
		Phases:  []schemas.Phase{{Type: "work", WrapperMiB: 10, HelpersMinMiB: 20, HelpersFullMiB: 100, WorkS: 3600, Repeat: true}},
	}
}

// targetsBucket creates the targets bucket as the selector would, and
// returns it for the test to read.
func targetsBucket(t *testing.T, nc *nats.Conn) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(testCtx(t), jetstream.KeyValueConfig{Bucket: protocol.TargetsBucket})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func TestPutAndDeleteTarget(t *testing.T) {
	s := natstest.Server(t)
	nc := natstest.Conn(t, s.ClientURL())
	ctx := testCtx(t)
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}

	// Before a selector has made the bucket, the error says so.
	if err := c.PutTarget(ctx, "early", declaredSpec()); err == nil || !strings.Contains(err.Error(), "is a selector running?") {
		t.Fatalf("PutTarget without the bucket: err = %v", err)
	}
	kv := targetsBucket(t, nc)

	// PutTarget validates, sets the version and encodes the key.
	const name = "I.I.I.I"
	if err := c.PutTarget(ctx, name, declaredSpec()); err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, protocol.EncodeName(name))
	if err != nil {
		t.Fatalf("get %s: %v", protocol.EncodeName(name), err)
	}
	spec, err := schemas.DecodeTargetSpec(e.Value())
	if err != nil {
		t.Fatalf("stored spec: %v", err)
	}
	if spec.V != schemas.Version || spec.Profile != schemas.ProfileDeclared || len(spec.Phases) != 1 {
		t.Fatalf("stored spec = %+v", spec)
	}

	// An invalid spec or an empty name is refused and nothing is written.
	if err := c.PutTarget(ctx, "x", schemas.TargetSpec{Profile: "declared"}); err == nil {
		t.Fatal("PutTarget accepted an invalid spec")
	}
	if _, err := kv.Get(ctx, "x"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("get x after a refused put: %v", err)
	}
	if err := c.PutTarget(ctx, "", declaredSpec()); err == nil {
		t.Fatal("PutTarget accepted an empty name")
	}

	// DeleteTarget removes it.
	if err := c.DeleteTarget(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, protocol.EncodeName(name)); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
}

func TestPutTargetRaw(t *testing.T) {
	s := natstest.Server(t)
	nc := natstest.Conn(t, s.ClientURL())
	ctx := testCtx(t)
	kv := targetsBucket(t, nc)
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}

	// A bad value is stored as is: validation is the selector's job (it
	// counts the target as malformed), so decoding it fails.
	bad := []byte(`{"v":1,"profile":"nope"}`)
	if err := c.PutTargetRaw(ctx, "bad one", bad); err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, protocol.EncodeName("bad one"))
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Value()) != string(bad) {
		t.Fatalf("stored %q, want %q", e.Value(), bad)
	}
	if _, err := schemas.DecodeTargetSpec(e.Value()); err == nil {
		t.Fatal("the bad value decodes as a spec")
	}

	// An empty name has no key: refused.
	if err := c.PutTargetRaw(ctx, "", bad); err == nil {
		t.Fatal("PutTargetRaw accepted an empty name")
	}
}

func TestStatus(t *testing.T) {
	s := natstest.Server(t)
	nc := natstest.Conn(t, s.ClientURL())
	ctx := testCtx(t)

	const prefix = "other"
	c, err := client.New(nc, prefix)
	if err != nil {
		t.Fatal(err)
	}

	// No selector listening: the error wraps nats.ErrNoResponders.
	if _, err := c.Status(ctx); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("Status without a selector: err = %v, want ErrNoResponders", err)
	}

	// A fake selector on the status subject of the client's prefix.
	want := schemas.SelectorStatus{V: schemas.Version, Ready: true, Connected: true, PendingLaunches: 2,
		Targets: []schemas.TargetStatus{{Target: "t1"}}}
	body, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe(protocol.NewSubjects(prefix).Status(), func(m *nats.Msg) { _ = m.Respond(body) }); err != nil {
		t.Fatal(err)
	}
	got, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Ready || !got.Connected || got.PendingLaunches != 2 || len(got.Targets) != 1 || got.Targets[0].Target != "t1" {
		t.Fatalf("status = %+v", got)
	}

	// A reply that is not JSON is an error.
	other, err := client.New(nc, "garbled")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe(protocol.NewSubjects("garbled").Status(), func(m *nats.Msg) { _ = m.Respond([]byte("not json")) }); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Status(ctx); err == nil || !strings.Contains(err.Error(), "decode status") {
		t.Fatalf("Status of a garbled reply: err = %v", err)
	}
}

// TestStatusPrefersTheLeader: with a standby that answers at once and a
// leader that answers later, Status returns the leader's answer; with only
// a standby, it returns the standby's once LeaderWait has passed.
func TestStatusPrefersTheLeader(t *testing.T) {
	s := natstest.Server(t)
	nc := natstest.Conn(t, s.ClientURL())
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	subj := protocol.NewSubjects("").Status()
	answer := func(role string, delay time.Duration) *nats.Subscription {
		sub, err := nc.Subscribe(subj, func(m *nats.Msg) {
			time.Sleep(delay)
			data, _ := json.Marshal(schemas.SelectorStatus{V: schemas.Version, Role: role, Leader: "lead", Term: 3})
			_ = m.Respond(data)
		})
		if err != nil {
			t.Fatal(err)
		}
		return sub
	}
	standby := answer(schemas.RoleStandby, 0)
	leader := answer(schemas.RoleLeader, 50*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil || st.Role != schemas.RoleLeader {
		t.Fatalf("Status with a leader and a standby: %+v, %v; want the leader's", st.Role, err)
	}
	if err := leader.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	st, err = c.Status(ctx)
	if err != nil || st.Role != schemas.RoleStandby || st.Leader != "lead" {
		t.Fatalf("Status with a standby only: %+v, %v", st, err)
	}
	if d := time.Since(start); d < client.LeaderWait {
		t.Fatalf("standby's answer returned after %v, before LeaderWait", d)
	}
	_ = standby.Unsubscribe()
}
