package bus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/schemas"
)

// TestStalledLeaderIsFenced, through the real edge: a leader whose
// connection stalls (a partition it has not noticed, or a paused process)
// stops acting on its own clock when its lease ends, before the standby can
// take the lease; the standby takes over with a larger term and the tasks
// keep running, none launched twice; once the partition heals, the old
// leader's Run has returned ErrDeposed and nothing it held back lands.
func TestStalledLeaderIsFenced(t *testing.T) {
	s := natstest.Server(t)
	proxy := natstest.NewProxy(t, s.ClientURL())
	eng := testEngineConfig()
	eng.HeartbeatStale = 4 * time.Second
	eng.HostStale = 8 * time.Second
	eng.RecoveryGrace = 300 * time.Millisecond
	cfg := ServiceConfig{Engine: eng, Tick: 10 * time.Millisecond, WriteTimeout: time.Second, ShutdownTimeout: time.Second,
		Lease: LeaseConfig{TTL: 2 * time.Second, Renew: 200 * time.Millisecond}}

	w := startFakeWorker(t, connect(t, s.ClientURL()), "", "h1", 1<<20)
	runLeased := func(url, id string) (*SelectorService, chan error, context.CancelFunc) {
		c := cfg
		c.Lease.ID = id
		svc := NewSelectorService(connect(t, url), c, testLog())
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- svc.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return svc, done, cancel
	}
	a, aDone, _ := runLeased(proxy.URL(), "sel-a")
	waitFor(t, 20*time.Second, "sel-a to lead", func() bool {
		select {
		case <-a.Ready():
			return true
		default:
			return false
		}
	})
	b, _, _ := runLeased(s.ClientURL(), "sel-b")
	waitFor(t, 20*time.Second, "sel-b to stand by", b.Standby)

	cl, err := client.New(connect(t, s.ClientURL()), "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 60*time.Second)
	for _, name := range []string{"t1", "t2", "t3"} {
		if err := cl.PutTarget(ctx, name, declaredSpec()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "3 launches", func() bool { return w.launchCount() == 3 })
	st, err := cl.Status(ctx)
	if err != nil || st.Role != schemas.RoleLeader || st.Leader != "sel-a" {
		t.Fatalf("status: role %q leader %q, %v", st.Role, st.Leader, err)
	}
	termA := st.Term

	proxy.Stall()
	stalled := time.Now()
	waitFor(t, 20*time.Second, "sel-b to lead", func() bool {
		select {
		case <-b.Ready():
			return true
		default:
			return false
		}
	})
	if !a.Deposed() {
		t.Fatal("sel-b leads while sel-a, stalled, has not deposed itself")
	}
	// From its lease's end on its own clock, sel-a sends nothing (mayAct);
	// the server expires the key later, so sel-b takes it later still.
	endA := a.Lease().LastValidUntil()
	if endA.IsZero() || !endA.Before(b.lead.takenAt) {
		t.Fatalf("sel-a's lease ended at %v, not before sel-b took it at %v", endA, b.lead.takenAt)
	}
	deposedAt := time.Unix(0, a.lead.deposedAt.Load())
	t.Logf("stalled leader: lease ended %v and deposed %v after the stall; standby took the lease %v after the stall",
		endA.Sub(stalled).Round(time.Millisecond), deposedAt.Sub(stalled).Round(time.Millisecond), b.lead.takenAt.Sub(stalled).Round(time.Millisecond))
	if err := cl.PutTarget(ctx, "t4", declaredSpec()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "t4's launch by sel-b", func() bool { return w.launchCount() == 4 })
	st, err = cl.Status(ctx)
	if err != nil || st.Leader != "sel-b" || st.Term <= termA {
		t.Fatalf("after the takeover: leader %q term %d (was %d), %v", st.Leader, st.Term, termA, err)
	}

	// Heal: what sel-a held back reaches the server now, and changes
	// nothing.
	proxy.Resume()
	select {
	case err := <-aDone:
		aDone <- err // for the cleanup
		if !errors.Is(err, ErrDeposed) {
			t.Fatalf("sel-a Run: %v, want ErrDeposed", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("sel-a's Run did not return")
	}
	st = waitStatus(t, cl, func(st schemas.SelectorStatus) bool {
		active := 0
		for _, ts := range st.Targets {
			if ts.State == schemas.TargetActive {
				active++
			}
		}
		return st.Leader == "sel-b" && active == 4
	})
	if n := w.launchCount(); n != 4 {
		t.Fatalf("%d launches, want 4: a task was launched twice", n)
	}
	if n := w.killCount(); n != 0 {
		t.Fatalf("%d kills of healthy tasks", n)
	}
}

func waitStatus(t *testing.T, cl *client.Client, cond func(schemas.SelectorStatus) bool) schemas.SelectorStatus {
	t.Helper()
	var st schemas.SelectorStatus
	waitFor(t, 20*time.Second, "status", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		st, err = cl.Status(ctx)
		return err == nil && cond(st)
	})
	return st
}
