package integration

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/schemas"
)

// leasedProc is a selector run with a leader lease, as cmd/selector runs
// it: on its own (tapped) connection, and replaced by a new service, standing
// by again, whenever it is deposed.
type leasedProc struct {
	id     string
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
	once   sync.Once

	svc      atomic.Pointer[bus.SelectorService]
	deposals atomic.Int64
}

// startLeased starts selector id with a lease on a tapped connection; it
// returns at once (see waitLeader and waitStandby).
func (w *chaosWorld) startLeased(id string, cfg bus.ServiceConfig) *leasedProc {
	w.t.Helper()
	cfg.Lease.ID = id
	p := &leasedProc{id: id, nc: w.connectTapped(id), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.svc.Store(bus.NewSelectorService(p.nc, cfg, testLog().With("selector_id", id)))
	go func() {
		for {
			err := p.svc.Load().Run(ctx)
			if !errors.Is(err, bus.ErrDeposed) || ctx.Err() != nil {
				p.done <- err
				return
			}
			p.deposals.Add(1)
			p.svc.Store(bus.NewSelectorService(p.nc, cfg, testLog().With("selector_id", id)))
		}
	}()
	t := w.t
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop shuts the selector down gracefully (it releases the lease) and
// checks that Run returned nil.
func (p *leasedProc) stop(t testing.TB) {
	t.Helper()
	p.once.Do(func() {
		p.cancel()
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("selector %s Run: %v", p.id, err)
			}
		case <-time.After(stopTimeout):
			t.Errorf("selector %s did not stop within %v", p.id, stopTimeout)
		}
		p.nc.Close()
	})
}

// kill stops the selector the way SIGKILL would: its connection closes
// first (nothing more leaves it, the lease is not released), then Run ends.
func (p *leasedProc) kill(t testing.TB) {
	t.Helper()
	p.nc.Close()
	p.cancel()
	p.once.Do(func() {})
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		t.Errorf("killed selector %s did not return within %v", p.id, stopTimeout)
	}
}

func (p *leasedProc) leads() bool {
	svc := p.svc.Load()
	select {
	case <-svc.Ready():
		return !svc.Deposed()
	default:
		return false
	}
}

// waitRole waits until p leads (lead) or stands by warm.
func (p *leasedProc) waitRole(t testing.TB, timeout time.Duration, lead bool) {
	t.Helper()
	waitFor(t, timeout, func() (bool, string) {
		if lead {
			return p.leads(), p.id + " does not lead"
		}
		return p.svc.Load().Standby(), p.id + " does not stand by"
	})
}

// TestChaosLeaderFailover (issue 12): two selectors with a leader lease and
// three audited workers on a 3-node cluster at replicas 3, judged by the
// chaos suite's auditor at every step:
//
//  1. The leader is killed (SIGKILL in process: it does not release the
//     lease). The standby takes over once the lease expires, without a
//     replay, and launches again; no task that ran is relaunched.
//  2. The killed selector comes back, as a standby. One NATS node stops,
//     then the node the leader is connected to: no quorum. The leader
//     cannot renew; it stops acting when its lease ends on its own clock
//     and stands by again (deposed). Nothing is launched twice.
//  3. Both nodes come back: one selector takes the lease, a target declared
//     now is launched, and everything settles.
//
// Every status and /readyz distinction is checked on the way: the status
// answer is the leader's, and names its term and id.
func TestChaosLeaderFailover(t *testing.T) {
	testStart := time.Now()
	ce := newClusterEnv(t)
	w := newChaosWorldOn(ce.env)

	eng := engineConfig()
	eng.HeartbeatStale = 3 * time.Second
	eng.HostStale = 6 * time.Second
	cfg := serviceConfig(eng)
	cfg.Store.Replicas = 3
	cfg.Lease = bus.LeaseConfig{TTL: 2 * time.Second, Renew: 400 * time.Millisecond}

	a := w.startLeased("sel-a", cfg)
	a.waitRole(t, 30*time.Second, true)
	b := w.startLeased("sel-b", cfg)
	b.waitRole(t, 30*time.Second, false)
	// The survivor is neither the leader's node (stopped in step 2) nor
	// the other one.
	ce.pin((ce.node(a.nc) + 1) % 3)
	w.watch(ce.c.URL(ce.survivor))
	for _, h := range []string{"h1", "h2", "h3"} {
		w.startAuditedWorker(h, 1024, chaosWorkerOpts{})
	}
	for _, name := range edgeTargetNames("f", 6) {
		w.declare(name, longSpec())
	}
	st := w.settle(chaosSettle, w.allActive())
	if st.Role != schemas.RoleLeader || st.Leader != "sel-a" || st.Term == 0 {
		t.Fatalf("status of the leader: role %q, leader %q, term %d", st.Role, st.Leader, st.Term)
	}
	termA := st.Term
	// The standby learns the term from the leader's renewals.
	waitFor(t, 10*time.Second, func() (bool, string) {
		bst := b.svc.Load().Status()
		return bst.Role == schemas.RoleStandby && !bst.Ready && !bst.Recovering && bst.Leader == "sel-a" && bst.Term == termA,
			fmt.Sprintf("status of the standby: role %q ready %v leader %q term %d", bst.Role, bst.Ready, bst.Leader, bst.Term)
	})
	w.checkAudit()
	t.Logf("setup: 6 targets active, settled %v after the start; leader sel-a (term %d) on %s",
		time.Since(testStart).Round(time.Millisecond), termA, ce.c.Name(ce.node(a.nc)))

	// ----- 1. The leader is killed. -----
	killed := time.Now()
	a.kill(t)
	b.waitRole(t, 20*time.Second, true)
	ready := time.Now()
	putAt := ce.declareUntil(w, 20*time.Second, "f7", longSpec())
	st = w.settle(chaosSettle, w.allActive())
	f7at, _ := nthStart(w, "f7", 1)
	if st.Leader != "sel-b" || st.Term <= termA {
		t.Fatalf("after the failover: leader %q term %d (was %d)", st.Leader, st.Term, termA)
	}
	termB := st.Term
	svcB := b.svc.Load()
	t.Logf("leader killed: sel-b ready after %v (takeover to ready %v); f7 declared %v later and launched %s after the kill",
		ready.Sub(killed).Round(time.Millisecond), svcB.TakeoverToReady().Round(time.Millisecond),
		putAt.Sub(ready).Round(time.Millisecond), clusterSince(killed, f7at))
	for _, name := range edgeTargetNames("f", 6) {
		if n := len(w.aud.Procs(name)); n != 1 {
			t.Errorf("%s ran %d processes across the failover, want 1: %v", name, n, w.aud.Procs(name))
		}
	}
	w.checkAudit()

	// ----- 2. The old leader comes back as a standby; two nodes stop. -----
	a2 := w.startLeased("sel-a2", cfg)
	a2.waitRole(t, 30*time.Second, false)
	// Stop the other node first, then the leader's (or, when the leader
	// is on the survivor, the two others: it loses its quorum all the same).
	leaderNode := ce.node(b.nc)
	var order []int
	for i := range 3 {
		if i != ce.survivor {
			order = append(order, i)
		}
	}
	if order[0] == leaderNode {
		order[0], order[1] = order[1], order[0]
	}
	t.Logf("the leader sel-b is on %s; stopping %s, then %s", ce.c.Name(leaderNode), ce.c.Name(order[0]), ce.c.Name(order[1]))
	ce.stop(order[0])
	ce.declareUntil(w, 20*time.Second, "f8", longSpec())
	w.settle(chaosSettle, w.allActive())
	w.checkAudit()
	outage := ce.stop(order[1])
	// No quorum: the leader cannot renew and is deposed by its own clock.
	waitFor(t, 30*time.Second, func() (bool, string) {
		return b.deposals.Load() > 0, "sel-b not deposed without a quorum"
	})
	t.Logf("no quorum: sel-b deposed %v after the second node stopped", time.Since(outage).Round(time.Millisecond))
	w.checkAudit()

	// ----- 3. Both nodes back. -----
	restarted := time.Now()
	ce.c.Restart(order[1])
	ce.c.Restart(order[0])
	putAt = ce.declareUntil(w, 30*time.Second, "f9", longSpec())
	st = w.settle(chaosSettle, w.allActive())
	f9at, _ := nthStart(w, "f9", 1)
	t.Logf("both restarted: leader %s term %d; f9 declared after %v, launched after %s",
		st.Leader, st.Term, putAt.Sub(restarted).Round(time.Millisecond), clusterSince(restarted, f9at))
	if st.Term <= termB {
		t.Errorf("term %d after the outage, not above %d", st.Term, termB)
	}
	for _, name := range edgeTargetNames("f", 8) {
		if n := len(w.aud.Procs(name)); n != 1 {
			t.Errorf("%s ran %d processes, want 1: %v", name, n, w.aud.Procs(name))
		}
	}
	for _, ts := range st.Targets {
		w.waitStoredTask(20*time.Second, ts.Target, ts.TaskID, schemas.TaskActive)
	}
	w.checkAudit()
	w.checkCapacity()
	t.Logf("total %v", time.Since(testStart).Round(time.Millisecond))
}
