// Package integration holds end-to-end tests of taskselector: a real
// embedded NATS server with JetStream, the real selector service, and real
// worker agents with the sim executor (or hand-written fake workers where a
// test needs exact control over the replies). The tests wait on conditions
// with deadlines and never sleep for a fixed time.
//
// Set INTEGRATION_LOG=1 to see the components' logs.
package integration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// hbInterval is the workers' heartbeat and host status period in every test.
const hbInterval = 100 * time.Millisecond

// stopTimeout bounds how long a component may take to shut down.
const stopTimeout = 30 * time.Second

// testLog discards logs unless INTEGRATION_LOG is set.
func testLog() *slog.Logger { return natstest.Log("INTEGRATION_LOG") }

// engineConfig returns engine timers that are short, so that the suite is
// fast, but not so short that a loaded machine (two shared cores, -race)
// trips them by accident. Tests that exercise a timer shorten that one.
func engineConfig() selector.Config {
	return selector.Config{
		LaunchTimeout:    2 * time.Second,
		ReplyTimeout:     500 * time.Millisecond,
		HeartbeatStale:   2 * time.Second,
		HostStale:        3 * time.Second,
		RecoveryGrace:    300 * time.Millisecond,
		BackoffBase:      50 * time.Millisecond,
		BackoffMax:       800 * time.Millisecond,
		RestartDelayBase: 100 * time.Millisecond,
		RestartDelayMax:  time.Second,
		Seed:             rand.Uint64(),
	}
}

// serviceConfig wraps an engine config with the service's short timers.
func serviceConfig(eng selector.Config) bus.ServiceConfig {
	return bus.ServiceConfig{
		Engine:          eng,
		Tick:            10 * time.Millisecond,
		WriteTimeout:    2 * time.Second,
		ShutdownTimeout: 2 * time.Second,
	}
}

// longSpec is a declared target whose single, repeating phase never ends at
// sim speed 1: its task stays active until killed.
func longSpec() schemas.TargetSpec {
	return schemas.TargetSpec{
		V: schemas.Version, Profile: schemas.ProfileDeclared,
		Phases: []schemas.Phase{{Type: "work", WrapperMiB: 8, HelpersMinMiB: 16, HelpersFullMiB: 64, WorkS: 1e7, Repeat: true}},
	}
}

// waitFor polls cond every 15 ms until it holds, and fails the test with
// cond's last description when timeout passes first.
func waitFor(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %s", timeout, desc)
		}
		time.Sleep(15 * time.Millisecond)
	}
}

// env is one test's world: an embedded server and the test's own connection,
// through which it reads status, the buckets, and spies on requests.
type env struct {
	t      *testing.T
	dir    string
	port   int
	srv    *server.Server
	url    string
	subj   protocol.Subjects
	nc     *nats.Conn
	client *client.Client
	js     jetstream.JetStream
}

// newEnv starts an embedded server with its own store directory on a random
// port, or on a fixed free port when fixedPort is set (for restarts).
func newEnv(t *testing.T, fixedPort bool) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), port: -1, subj: protocol.NewSubjects("")}
	if fixedPort {
		e.port = natstest.FreePort(t)
	}
	e.startServer()
	t.Cleanup(func() { natstest.Shutdown(e.srv) })
	e.url = e.srv.ClientURL()
	e.nc = e.connect("test")
	var err error
	if e.client, err = client.New(e.nc, ""); err != nil {
		t.Fatalf("client: %v", err)
	}
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return e
}

// startServer starts the env's server on its port and store directory. Its
// shutdown is left to the env's one cleanup, which stops whichever server is
// current, after everything registered later (connections, components).
func (e *env) startServer() {
	e.t.Helper()
	e.srv = natstest.Server(e.t, natstest.StoreDir(e.dir), natstest.Port(e.port),
		natstest.ReadyTimeout(20*time.Second), natstest.NoCleanup())
}

// restartServer stops the server and starts a new one on the same port and
// store directory. stopped, if set, runs while the server is down.
func (e *env) restartServer(stopped func()) {
	e.t.Helper()
	if e.port <= 0 {
		e.t.Fatal("restartServer needs a fixed port")
	}
	natstest.Shutdown(e.srv)
	if stopped != nil {
		stopped()
	}
	e.startServer()
}

// connect opens a connection that reconnects for good (natsconn.Connect),
// closed at the end of the test.
func (e *env) connect(name string) *nats.Conn {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, err := natsconn.Connect(ctx, e.url, name, testLog(), nil, nil)
	if err != nil {
		e.t.Fatalf("connect %s: %v", name, err)
	}
	e.t.Cleanup(nc.Close)
	return nc
}

func (e *env) ctx(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	e.t.Cleanup(cancel)
	return ctx
}

// status asks the selector for its status over NATS.
func (e *env) status() (schemas.SelectorStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return e.client.Status(ctx)
}

func (e *env) mustStatus() schemas.SelectorStatus {
	e.t.Helper()
	st, err := e.status()
	if err != nil {
		e.t.Fatalf("status: %v", err)
	}
	return st
}

// waitStatus polls the status until pred holds.
func (e *env) waitStatus(timeout time.Duration, pred func(st *schemas.SelectorStatus) (bool, string)) schemas.SelectorStatus {
	e.t.Helper()
	var last schemas.SelectorStatus
	waitFor(e.t, timeout, func() (bool, string) {
		st, err := e.status()
		if err != nil {
			return false, "status: " + err.Error()
		}
		last = st
		return pred(&st)
	})
	return last
}

// waitTarget polls the status until target's line satisfies pred.
func (e *env) waitTarget(timeout time.Duration, target string, pred func(ts schemas.TargetStatus) bool) schemas.TargetStatus {
	e.t.Helper()
	var line schemas.TargetStatus
	e.waitStatus(timeout, func(st *schemas.SelectorStatus) (bool, string) {
		ts, ok := targetLine(st, target)
		if !ok {
			return false, fmt.Sprintf("target %q not in status (%s)", target, describe(st))
		}
		line = ts
		return pred(ts), fmt.Sprintf("target %q: %s", target, describeLine(ts))
	})
	return line
}

// waitActive waits until target's task is active and returns its line.
func (e *env) waitActive(timeout time.Duration, target string) schemas.TargetStatus {
	e.t.Helper()
	return e.waitTarget(timeout, target, func(ts schemas.TargetStatus) bool { return ts.State == selector.StateActive })
}

func (e *env) putTarget(name string, spec schemas.TargetSpec) {
	e.t.Helper()
	if err := e.client.PutTarget(e.ctx(10*time.Second), name, spec); err != nil {
		e.t.Fatalf("put target %q: %v", name, err)
	}
}

func (e *env) kv(bucket string) jetstream.KeyValue {
	e.t.Helper()
	kv, err := e.js.KeyValue(e.ctx(10*time.Second), bucket)
	if err != nil {
		e.t.Fatalf("open bucket %s: %v", bucket, err)
	}
	return kv
}

// taskState reads target's entry in the tasks bucket.
func (e *env) taskState(target string) (schemas.TaskState, error) {
	kv, err := e.js.KeyValue(e.ctx(10*time.Second), protocol.TasksBucket)
	if err != nil {
		return schemas.TaskState{}, err
	}
	ent, err := kv.Get(e.ctx(10*time.Second), protocol.EncodeName(target))
	if err != nil {
		return schemas.TaskState{}, err
	}
	return schemas.DecodeTaskState(ent.Value())
}

// waitStoredTask waits until target's tasks entry records the task taskID in
// state.
func (e *env) waitStoredTask(timeout time.Duration, target, taskID, state string) schemas.TaskState {
	e.t.Helper()
	var st schemas.TaskState
	waitFor(e.t, timeout, func() (bool, string) {
		var err error
		st, err = e.taskState(target)
		switch {
		case err != nil:
			return false, fmt.Sprintf("tasks[%q]: %v", target, err)
		case st.Task == nil:
			return false, fmt.Sprintf("tasks[%q] has no task", target)
		}
		return st.Task.TaskID == taskID && st.Task.State == state,
			fmt.Sprintf("tasks[%q] = task %s state %s, want %s %s", target, st.Task.TaskID, st.Task.State, taskID, state)
	})
	return st
}

func targetLine(st *schemas.SelectorStatus, target string) (schemas.TargetStatus, bool) {
	for _, ts := range st.Targets {
		if ts.Target == target {
			return ts, true
		}
	}
	return schemas.TargetStatus{}, false
}

func describeLine(ts schemas.TargetStatus) string {
	return fmt.Sprintf("phase=%s state=%s task=%s epoch=%d pid=%d host=%q reason=%q",
		ts.Phase, ts.State, ts.TaskID, ts.Epoch, ts.PID, ts.Host, ts.Reason)
}

func describe(st *schemas.SelectorStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "ready=%v connected=%v recovering=%v degraded=%q stopped=%q backoff=%d pending=%d",
		st.Ready, st.Connected, st.Recovering, st.DegradedReason, st.LaunchesStopped, st.Backoff.Level, st.PendingLaunches)
	for _, ts := range st.Targets {
		fmt.Fprintf(&b, "; %s: %s", ts.Target, describeLine(ts))
	}
	return b.String()
}

// ----- the selector -----

// selectorProc is a SelectorService running on its own connection.
type selectorProc struct {
	svc    *bus.SelectorService
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startSelector runs a selector service and waits until it is ready.
func (e *env) startSelector(cfg bus.ServiceConfig) *selectorProc {
	e.t.Helper()
	return e.runSelector(e.connect("selector"), cfg)
}

// runSelector runs a selector service on nc, which it owns from now on, and
// waits until it is ready.
func (e *env) runSelector(nc *nats.Conn, cfg bus.ServiceConfig) *selectorProc {
	e.t.Helper()
	p := &selectorProc{svc: bus.NewSelectorService(nc, cfg, testLog()), nc: nc, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() { p.done <- p.svc.Run(ctx) }()
	e.t.Cleanup(func() { p.stop(e.t) })
	select {
	case <-p.svc.Ready():
	case err := <-p.done:
		e.t.Fatalf("selector stopped before it was ready: %v", err)
	case <-time.After(20 * time.Second):
		e.t.Fatal("selector not ready within 20s")
	}
	return p
}

// stop shuts the selector down, checks that Run returned nil, and closes its
// connection. It is idempotent.
func (p *selectorProc) stop(t testing.TB) {
	t.Helper()
	p.once.Do(func() {
		p.cancel()
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("selector Run: %v", err)
			}
		case <-time.After(stopTimeout):
			t.Errorf("selector did not stop within %v", stopTimeout)
		}
		p.nc.Close()
	})
}

// running reports whether Run has not returned.
func (p *selectorProc) running() bool {
	select {
	case err := <-p.done:
		p.done <- err
		return false
	default:
		return true
	}
}

// ----- workers -----

// workerProc is a worker agent with a sim executor on its own connection.
type workerProc struct {
	host   string
	agent  *worker.Agent
	sim    *worker.Sim
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startWorker runs a worker agent for host with the sim executor (speed 1
// unless speed > 0) and waits until it is ready.
func (e *env) startWorker(host string, ramMiB int64, speed float64, faults worker.Faults) *workerProc {
	e.t.Helper()
	if speed <= 0 {
		speed = 1
	}
	log := testLog()
	nc := e.connect("worker-" + host)
	sim, err := worker.NewSim(worker.SimConfig{Host: host, RAMMiB: ramMiB, Speed: speed, Tick: 20 * time.Millisecond, Faults: faults, Log: log})
	if err != nil {
		e.t.Fatalf("sim %s: %v", host, err)
	}
	agent, err := worker.New(nc, worker.Config{
		Host: host, RAMMiB: ramMiB, HeartbeatInterval: hbInterval, Executor: worker.SimExecutor,
		FlushTimeout: time.Second, PublishTimeout: 500 * time.Millisecond,
		RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
	}, sim, log)
	if err != nil {
		e.t.Fatalf("worker %s: %v", host, err)
	}
	return e.runAgent(host, agent, sim, sim, nc)
}

// runAgent runs agent (whose executor ex wraps sim, or is sim) until the
// test ends, closing ex once Run returns, and waits until it is ready.
func (e *env) runAgent(host string, agent *worker.Agent, ex worker.Executor, sim *worker.Sim, nc *nats.Conn) *workerProc {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &workerProc{host: host, agent: agent, sim: sim, nc: nc, cancel: cancel, done: make(chan error, 1)}
	go func() {
		defer ex.Close() // with an auditor's wrapper, it records the end of the host's processes and helpers
		p.done <- agent.Run(ctx)
	}()
	e.t.Cleanup(func() { p.stop(e.t) })
	select {
	case <-agent.Ready():
	case err := <-p.done:
		e.t.Fatalf("worker %s stopped before it was ready: %v", host, err)
	case <-time.After(20 * time.Second):
		e.t.Fatalf("worker %s not ready within 20s", host)
	}
	return p
}

func (p *workerProc) stop(t testing.TB) {
	t.Helper()
	p.once.Do(func() {
		p.cancel()
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("worker %s Run: %v", p.host, err)
			}
		case <-time.After(stopTimeout):
			t.Errorf("worker %s did not stop within %v", p.host, stopTimeout)
		}
	})
}

// ----- the spy -----

// seenRequest is a launch, kill or ps request as a spy saw it.
type seenRequest struct {
	at     time.Time
	host   string
	launch *schemas.LaunchRequest
	kill   *schemas.KillRequest
	ps     *schemas.PsRequest
}

// seenHeartbeat is a heartbeat as a spy saw it.
type seenHeartbeat struct {
	at time.Time
	hb schemas.Heartbeat
}

// spy listens, next to the workers, to every launch, kill and ps request and
// every heartbeat. It never answers.
type spy struct {
	t    testing.TB
	mu   sync.Mutex
	reqs []seenRequest
	hbs  []seenHeartbeat
	bad  []string
}

func (e *env) startSpy() *spy {
	e.t.Helper()
	s := &spy{t: e.t}
	p := e.subj.Prefix
	for _, kind := range []string{"launch", "kill", "ps"} {
		kind := kind
		sub, err := e.nc.Subscribe(p+"."+kind+".*", func(m *nats.Msg) { s.onRequest(kind, m) })
		if err != nil {
			e.t.Fatalf("spy subscribe: %v", err)
		}
		e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	sub, err := e.nc.Subscribe(e.subj.Heartbeats(), func(m *nats.Msg) {
		at := time.Now()
		hb, err := schemas.DecodeHeartbeat(m.Data)
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			return // malformed ones are some tests' own doing
		}
		s.hbs = append(s.hbs, seenHeartbeat{at: at, hb: hb})
	})
	if err != nil {
		e.t.Fatalf("spy subscribe: %v", err)
	}
	e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := e.nc.Flush(); err != nil {
		e.t.Fatalf("spy flush: %v", err)
	}
	e.t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, b := range s.bad {
			e.t.Errorf("spy: %s", b)
		}
	})
	return s
}

func (s *spy) onRequest(kind string, m *nats.Msg) {
	r := seenRequest{at: time.Now()}
	tok := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	host, err := protocol.DecodeName(tok)
	var bad string
	if err != nil {
		bad = fmt.Sprintf("%s request on %q: host token: %v", kind, m.Subject, err)
	}
	r.host = host
	switch kind {
	case "launch":
		req, err := schemas.DecodeLaunchRequest(m.Data)
		if err != nil {
			bad = fmt.Sprintf("launch request does not decode: %v", err)
		}
		r.launch = &req
	case "kill":
		req, err := schemas.DecodeKillRequest(m.Data)
		if err != nil {
			bad = fmt.Sprintf("kill request does not decode: %v", err)
		}
		r.kill = &req
	default:
		req, err := schemas.DecodePsRequest(m.Data)
		if err != nil {
			bad = fmt.Sprintf("ps request does not decode: %v", err)
		}
		r.ps = &req
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if bad != "" {
		s.bad = append(s.bad, bad)
		return
	}
	s.reqs = append(s.reqs, r)
}

// launches returns the launch requests seen for target, in arrival order.
// firstLaunch waits up to timeout for the first launch of target and
// returns its task ID.
func (s *spy) firstLaunch(t *testing.T, timeout time.Duration, target string) string {
	t.Helper()
	var taskID string
	waitFor(t, timeout, func() (bool, string) {
		ls := s.launches(target)
		if len(ls) == 0 {
			return false, "no launch of " + target
		}
		taskID = ls[0].launch.TaskID
		return true, ""
	})
	return taskID
}

func (s *spy) launches(target string) []seenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []seenRequest
	for _, r := range s.reqs {
		if r.launch != nil && r.launch.Target == target {
			out = append(out, r)
		}
	}
	return out
}

// launchCounts counts the launch requests seen per target.
func (s *spy) launchCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for _, r := range s.reqs {
		if r.launch != nil {
			out[r.launch.Target]++
		}
	}
	return out
}

// kills returns the kill requests seen for taskID.
func (s *spy) kills(taskID string) []seenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []seenRequest
	for _, r := range s.reqs {
		if r.kill != nil && r.kill.TaskID == taskID {
			out = append(out, r)
		}
	}
	return out
}

// psOf returns the ps requests seen for host that name pid.
func (s *spy) psOf(host string, pid int64) []seenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []seenRequest
	for _, r := range s.reqs {
		if r.ps != nil && r.host == host {
			for _, p := range r.ps.PIDs {
				if p == pid {
					out = append(out, r)
					break
				}
			}
		}
	}
	return out
}

// lastHeartbeat returns the latest heartbeat seen of taskID.
func (s *spy) lastHeartbeat(taskID string) (seenHeartbeat, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.hbs) - 1; i >= 0; i-- {
		if s.hbs[i].hb.TaskID == taskID {
			return s.hbs[i], true
		}
	}
	return seenHeartbeat{}, false
}

// heartbeatsOf counts the heartbeats seen of taskID.
func (s *spy) heartbeatsOf(taskID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, h := range s.hbs {
		if h.hb.TaskID == taskID {
			n++
		}
	}
	return n
}

// ----- small helpers -----

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func isNotFound(err error) bool { return errors.Is(err, jetstream.ErrKeyNotFound) }

func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	i := int(p*float64(len(s))+0.5) - 1
	i = max(0, min(i, len(s)-1))
	return s[i]
}
