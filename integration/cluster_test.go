package integration

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// clusterEnv is a cluster test's world: a 3-node JetStream cluster, an env
// whose components (selector, workers) connect to the URL list of every node
// and so fail over, and the test's own connection, pinned to the one node the
// test never stops (survivor), so that its spy sees every request.
type clusterEnv struct {
	*env
	c        *natstest.Cluster
	survivor int
}

// newClusterEnv starts a 3-node cluster. The test's connection is not made
// yet: call pin once the survivor is chosen.
func newClusterEnv(t *testing.T) *clusterEnv {
	t.Helper()
	start := time.Now()
	c := natstest.NewCluster(t, 3, natstest.ClusterName("ts"))
	t.Logf("3-node cluster formed in %v; meta leader %s", time.Since(start), c.Name(c.MetaLeader()))
	return &clusterEnv{
		env:      &env{t: t, url: c.URLs(), port: -1, subj: bus.NewSubjects("")},
		c:        c,
		survivor: -1,
	}
}

// pin makes node i the survivor and opens the test's connection to it alone.
func (ce *clusterEnv) pin(i int) {
	t := ce.t
	t.Helper()
	ce.survivor = i
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, err := bus.Connect(ctx, ce.c.URL(i), "test", testLog(), nil, nil)
	if err != nil {
		t.Fatalf("connect to %s: %v", ce.c.URL(i), err)
	}
	t.Cleanup(nc.Close)
	ce.nc = nc
	if ce.client, err = bus.NewClient(nc, ""); err != nil {
		t.Fatalf("client: %v", err)
	}
	if ce.js, err = jetstream.New(nc); err != nil {
		t.Fatalf("jetstream: %v", err)
	}
}

// node returns the number of the node conn is connected to, or -1.
func (ce *clusterEnv) node(nc *nats.Conn) int {
	if !nc.IsConnected() {
		return -1
	}
	return ce.c.Index(nc.ConnectedServerName())
}

// roles describes what node i leads, for the log.
func (ce *clusterEnv) roles(i int) string {
	var r []string
	if ce.c.MetaLeader() == i {
		r = append(r, "meta leader")
	}
	for _, s := range []string{"KV_" + bus.TargetsBucket, "KV_" + bus.TasksBucket, bus.EventStream} {
		if ce.c.StreamLeader(natstest.GlobalAccount, s) == i {
			r = append(r, s+" leader")
		}
	}
	if len(r) == 0 {
		return "no leader role"
	}
	return strings.Join(r, ", ")
}

// stop stops node i and returns when it stopped.
func (ce *clusterEnv) stop(i int) time.Time {
	ce.t.Helper()
	if i == ce.survivor {
		ce.t.Fatalf("test bug: stopping the survivor node %d", i)
	}
	ce.t.Logf("stopping node %s (%s)", ce.c.Name(i), ce.roles(i))
	at := time.Now()
	ce.c.Stop(i)
	return at
}

// putTargetUntil declares name, retrying until a put succeeds; it returns
// when that was.
func (ce *clusterEnv) putTargetUntil(timeout time.Duration, name string) time.Time {
	ce.t.Helper()
	var ok time.Time
	waitFor(ce.t, timeout, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := ce.client.PutTarget(ctx, name, longSpec()); err != nil {
			return false, err.Error()
		}
		ok = time.Now()
		return true, ""
	})
	return ok
}

// waitLaunch waits until the spy has seen the n-th launch of target and
// returns when it saw it.
func (ce *clusterEnv) waitLaunch(sp *spy, timeout time.Duration, target string, n int) time.Time {
	ce.t.Helper()
	var at time.Time
	waitFor(ce.t, timeout, func() (bool, string) {
		ls := sp.launches(target)
		if len(ls) < n {
			return false, fmt.Sprintf("%d launches of %s seen, want %d", len(ls), target, n)
		}
		at = ls[n-1].at
		return true, ""
	})
	return at
}

// waitStored waits until target's entry in the tasks bucket records its task
// taskID active and returns when the test read it.
func (ce *clusterEnv) waitStored(timeout time.Duration, target, taskID string) time.Time {
	ce.t.Helper()
	ce.waitStoredTask(timeout, target, taskID, schemas.TaskActive)
	return time.Now()
}

// crash stops the task of line on its worker with a kill request from the
// test, as if its process had died: the selector does not ask for it, and the
// failed event the worker then publishes is the only trace besides the
// missing heartbeats.
func (ce *clusterEnv) crash(line schemas.TargetStatus) {
	ce.t.Helper()
	data, err := schemas.Marshal(&schemas.KillRequest{V: schemas.Version, TaskID: line.TaskID, PID: line.PID, Reason: "test: crash"})
	if err != nil {
		ce.t.Fatalf("encode kill: %v", err)
	}
	// The worker may be failing over to another node: retry until it
	// answers (a repeated kill of a task gone is answered "not running").
	var msg *nats.Msg
	waitFor(ce.t, 15*time.Second, func() (bool, string) {
		msg, err = ce.nc.Request(ce.subj.Kill(line.Host), data, time.Second)
		return err == nil, fmt.Sprintf("crash %s on %s: %v", line.TaskID, line.Host, err)
	})
	r, err := schemas.DecodeKillReply(msg.Data)
	if err != nil || r.Running || r.Error != nil {
		ce.t.Fatalf("crash %s on %s: reply %+v (%v)", line.TaskID, line.Host, r, err)
	}
}

// checkNoOverlap checks, from the workers' own spans, that no target ever had
// two tasks alive at the same time, on any hosts.
func (ce *clusterEnv) checkNoOverlap(ws []*workerProc) {
	t := ce.t
	t.Helper()
	type span struct {
		host string
		worker.TaskSpan
	}
	byTarget := map[string][]span{}
	for _, w := range ws {
		for _, sp := range w.agent.Spans() {
			byTarget[sp.Target] = append(byTarget[sp.Target], span{w.host, sp})
		}
	}
	for _, target := range sortedKeys(byTarget) {
		ss := byTarget[target]
		sort.Slice(ss, func(i, j int) bool { return ss[i].Start.Before(ss[j].Start) })
		for i := 1; i < len(ss); i++ {
			prev, cur := ss[i-1], ss[i]
			if prev.End.IsZero() || cur.Start.Before(prev.End) {
				t.Errorf("%s: task %s on %s (from %v, ended %v) overlaps task %s on %s (from %v)",
					target, prev.TaskID, prev.host, prev.Start.Format("15:04:05.000"), prev.End.Format("15:04:05.000"),
					cur.TaskID, cur.host, cur.Start.Format("15:04:05.000"))
			}
		}
	}
}

// TestClusterNodeLossKeepsSelectorAndWorkersWorking runs the selector and
// three sim workers on a 3-node NATS cluster, with both buckets and the event
// stream at replicas 3, and stops nodes under them:
//
//  1. One node down, the selector's own: a quorum remains. The selector fails
//     over, launches a new target, kills the task of a deleted one and writes
//     the tasks bucket; no running task is relaunched.
//  2. A second node down: no quorum. Writes fail. The selector keeps running
//     and answering status, its running tasks keep running, and a target
//     whose task crashed now is not relaunched, since its state cannot be
//     stored first.
//  3. Both nodes back: the crashed target is relaunched once, a target
//     declared now is launched, and the tasks bucket matches the status.
//
// Throughout, no target has two live tasks: the spy, pinned to the node that
// is never stopped, counts every launch, and the workers' spans must not
// overlap.
func TestClusterNodeLossKeepsSelectorAndWorkersWorking(t *testing.T) {
	testStart := time.Now()
	ce := newClusterEnv(t)

	eng := engineConfig()
	// A client fails over to another node in well under a second, but a
	// loaded machine (two shared cores, -race) stretches that: keep the
	// staleness thresholds clear of it, so that no task goes stale only
	// because its worker or the selector was moving to another node.
	eng.HeartbeatStale = 3 * time.Second
	eng.HostStale = 6 * time.Second
	cfg := serviceConfig(eng)
	cfg.Store.Replicas = 3
	// The first selector connection decides which node is stopped first;
	// the survivor is another one.
	sel := ce.startSelector(cfg)
	first := ce.node(sel.nc)
	if first < 0 {
		t.Fatal("selector not connected to a cluster node")
	}
	ce.pin((first + 1) % 3)
	second := (first + 2) % 3
	sp := ce.startSpy()

	ws := []*workerProc{
		ce.startWorker("h1", 1024, 0, worker.Faults{}),
		ce.startWorker("h2", 1024, 0, worker.Faults{}),
		ce.startWorker("h3", 1024, 0, worker.Faults{}),
	}
	initial := []string{"c1", "c2", "c3", "c4", "c5", "c6"}
	for _, name := range initial {
		ce.putTarget(name, longSpec())
	}
	lines := map[string]schemas.TargetStatus{}
	for _, name := range initial {
		lines[name] = ce.waitActive(20*time.Second, name)
		ce.waitStoredTask(10*time.Second, name, lines[name].TaskID, schemas.TaskActive)
	}
	t.Logf("setup: %d targets active and stored %v after the start; selector on %s, survivor %s",
		len(initial), time.Since(testStart).Round(time.Millisecond), ce.c.Name(first), ce.c.Name(ce.survivor))

	// ----- 1. One node down: the selector's own. -----
	stopped := ce.stop(first)
	putOK := ce.putTargetUntil(20*time.Second, "c7")
	launched := ce.waitLaunch(sp, 20*time.Second, "c7", 1)
	c7 := ce.waitActive(20*time.Second, "c7")
	stored := ce.waitStored(20*time.Second, "c7", c7.TaskID)
	t.Logf("node %s stopped: first KV put by the test after %v; c7 launched after %v, stored by %v, active; selector now on %s",
		ce.c.Name(first), putOK.Sub(stopped).Round(time.Millisecond), launched.Sub(stopped).Round(time.Millisecond),
		stored.Sub(stopped).Round(time.Millisecond), ce.c.Name(ce.node(sel.nc)))

	// A deleted target gets its task killed and its state deleted.
	if err := ce.client.DeleteTarget(ce.ctx(10*time.Second), "c1"); err != nil {
		t.Fatalf("delete c1 with one node down: %v", err)
	}
	waitFor(t, 20*time.Second, func() (bool, string) {
		return len(sp.kills(lines["c1"].TaskID)) > 0, "no kill of c1's task seen"
	})
	waitFor(t, 20*time.Second, func() (bool, string) {
		_, err := ce.taskState("c1")
		return isNotFound(err), fmt.Sprintf("tasks[c1]: %v", err)
	})
	ce.waitStatus(10*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		_, ok := targetLine(st, "c1")
		return !ok && st.Ready, "c1 still in status, or not ready: " + describe(st)
	})
	delete(lines, "c1")
	lines["c7"] = c7
	waitAllActiveAs(ce.env, 10*time.Second, lines)
	if c := ce.launchCounts(sp); !c.each(1) {
		t.Errorf("launches per target after one node stopped: %v; want exactly 1 each (no relaunch)", c)
	}

	// ----- 2. A second node down: no quorum. -----
	// The worst case: the survivor leads the tasks bucket, so the
	// selector's writes reach a leader that takes them in but can no
	// longer commit them.
	ce.c.LeadStream(ce.survivor, natstest.GlobalAccount, "KV_"+bus.TasksBucket, 20*time.Second)
	if n := ce.node(sel.nc); n == second {
		t.Logf("the selector is on %s, which stops now: it fails over to the survivor without a quorum", ce.c.Name(n))
	} else {
		t.Logf("the selector is on the survivor %s: its connection stays up", ce.c.Name(ce.survivor))
	}
	before := ce.mustStatus().Counters
	ce.stop(second)
	victim := "c2"
	victimLine := lines[victim]
	crashedAt := time.Now()
	ce.crash(victimLine)

	// Nothing can be written: an operator's put fails.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	err := ce.client.PutTarget(ctx, "c8", longSpec())
	cancel()
	if err == nil {
		t.Fatal("put of c8 succeeded with 2 of 3 nodes down")
	}
	t.Logf("no quorum: put of c8 fails: %v", err)

	// The selector finds the crashed task gone (no event can reach it: the
	// stream has no quorum) and requeues it, but cannot store that, so it
	// does not launch it: the store errors count up while status answers.
	st := ce.waitStatus(30*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		ts, _ := targetLine(st, victim)
		gone := ts.TaskID != victimLine.TaskID || ts.State != selector.StateActive
		return gone && st.Counters.StoreErrors >= before.StoreErrors+2,
			fmt.Sprintf("store errors %d (were %d); %s", st.Counters.StoreErrors, before.StoreErrors, describe(st))
	})
	t.Logf("no quorum: %v after the crash: %s %s; %d store errors, pending launches %d, launches stopped %q",
		time.Since(crashedAt).Round(time.Millisecond), victim, describeLine(ce.mustLine(&st, victim)),
		st.Counters.StoreErrors-before.StoreErrors, st.PendingLaunches, st.LaunchesStopped)
	if n := len(sp.launches(victim)); n != 1 {
		t.Errorf("%s launched %d times without a quorum; its state cannot be stored, so it must not be relaunched", victim, n)
	}
	// No other writer exists: a write that the stream leader took in but
	// could not commit must not be taken for one. The engine's conflict
	// stop is for good, so nothing would ever be launched again.
	if strings.HasPrefix(st.LaunchesStopped, "compare-and-swap") {
		t.Fatalf("without a quorum the selector reported a store conflict and stopped launching for good: %q", st.LaunchesStopped)
	}
	if !sel.running() {
		t.Fatal("selector Run returned without a quorum")
	}
	// Every other task still runs and heartbeats.
	others := map[string]schemas.TargetStatus{}
	for name, l := range lines {
		if name != victim {
			others[name] = l
		}
	}
	waitMoreHeartbeats(t, sel, 3*uint64(len(others)))
	ce.waitStatus(5*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		for _, name := range sortedKeys(others) {
			if ts, ok := targetLine(st, name); !ok || ts.State != selector.StateActive || ts.TaskID != others[name].TaskID {
				return false, fmt.Sprintf("%s: %s", name, describeLine(ts))
			}
		}
		return st.Connected, describe(st)
	})
	if n := len(sp.launches(victim)); n != 1 {
		t.Errorf("%s launched %d times without a quorum", victim, n)
	}

	// ----- 3. Both nodes back. -----
	restarted := time.Now()
	ce.c.Restart(second)
	ce.c.Restart(first)
	t.Logf("nodes %s and %s restarted in %v", ce.c.Name(second), ce.c.Name(first), time.Since(restarted).Round(time.Millisecond))
	putOK = ce.putTargetUntil(30*time.Second, "c8")
	relaunched := ce.waitLaunch(sp, 30*time.Second, victim, 2)
	launched = ce.waitLaunch(sp, 30*time.Second, "c8", 1)
	lines[victim] = ce.waitActive(20*time.Second, victim)
	lines["c8"] = ce.waitActive(20*time.Second, "c8")
	for name, l := range lines {
		ce.waitStoredTask(20*time.Second, name, l.TaskID, schemas.TaskActive)
	}
	t.Logf("both restarted: first KV put by the test after %v; %s relaunched after %v; c8 launched after %v; all stored after %v",
		putOK.Sub(restarted).Round(time.Millisecond), victim, relaunched.Sub(restarted).Round(time.Millisecond),
		launched.Sub(restarted).Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
	st = waitAllActiveAs(ce.env, 20*time.Second, lines)
	if !st.Ready || !st.Connected || st.LaunchesStopped != "" {
		t.Errorf("after the restarts: %s", describe(&st))
	}

	// No duplicates: one launch per target, two for the crashed one; the
	// workers started exactly those and never answered a repeated launch.
	counts := ce.launchCounts(sp)
	total := 0
	for name, n := range counts {
		want := 1
		if name == victim {
			want = 2
		}
		if n != want {
			t.Errorf("%s launched %d times, want %d", name, n, want)
		}
		total += n
	}
	var started, repeated uint64
	for _, w := range ws {
		s := w.agent.Stats()
		started += s.Launches
		repeated += s.Relaunches
	}
	if started != uint64(total) || repeated != 0 {
		t.Errorf("workers started %d tasks and answered %d repeated launches; the spy saw %d launches", started, repeated, total)
	}
	ce.checkNoOverlap(ws)
	if !sel.running() {
		t.Error("selector Run returned")
	}
	t.Logf("total %v", time.Since(testStart).Round(time.Millisecond))
}

// clusterLaunches is the number of launches seen per target.
type clusterLaunches map[string]int

// each reports whether every target was launched exactly n times.
func (l clusterLaunches) each(n int) bool {
	for _, c := range l {
		if c != n {
			return false
		}
	}
	return true
}

// launchCounts counts the launches the spy has seen per target, after a
// round trip to the server, so that every launch already sent is counted.
func (ce *clusterEnv) launchCounts(sp *spy) clusterLaunches {
	if err := ce.nc.Flush(); err != nil {
		ce.t.Fatalf("flush: %v", err)
	}
	return clusterLaunches(sp.launchCounts())
}

// mustLine returns target's line in st, or fails the test.
func (ce *clusterEnv) mustLine(st *schemas.SelectorStatus, target string) schemas.TargetStatus {
	t := ce.t
	t.Helper()
	ts, ok := targetLine(st, target)
	if !ok {
		t.Fatalf("%s not in status: %s", target, describe(st))
	}
	return ts
}
