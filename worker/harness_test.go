package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

const waitFor = 10 * time.Second

// createStream creates the TASK_EVENTS stream over prefix.event.>.
func createStream(t testing.TB, js jetstream.JetStream, prefix string) jetstream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     protocol.EventStream,
		Subjects: []string{protocol.NewSubjects(prefix).Events()},
		Storage:  jetstream.FileStorage,
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	return st
}

type harness struct {
	t      *testing.T
	srv    *server.Server
	cli    *nats.Conn // the selector's side
	js     jetstream.JetStream
	stream jetstream.Stream
	subj   protocol.Subjects
	agent  *Agent
	sim    *Sim
	proxy  *natstest.Proxy // between the agent and the server, when asked for
	cfg    Config
	cancel context.CancelFunc
	done   chan error
	hbs    *nats.Subscription
	hosts  *nats.Subscription
	events jetstream.Consumer
}

type harnessOpts struct {
	cfg      Config
	sim      SimConfig
	noStream bool
	proxy    bool                // connect the agent through a natstest.Proxy
	exec     func(*Sim) Executor // wraps the sim executor, when set
}

// newHarness starts a server, the events stream, a sim executor and an
// agent, and waits until the agent is ready. Subscriptions to heartbeats and
// host statuses are made before the agent starts.
func newHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	h := &harness{t: t, srv: natstest.Server(t)}
	h.cli = natstest.Conn(t, h.srv.ClientURL())
	var err error
	if h.js, err = jetstream.New(h.cli); err != nil {
		t.Fatal(err)
	}
	if o.cfg.Host == "" {
		o.cfg.Host = "host-1"
	}
	if o.cfg.RAMMiB == 0 {
		o.cfg.RAMMiB = 64 << 10
	}
	if o.cfg.HeartbeatInterval == 0 {
		o.cfg.HeartbeatInterval = time.Hour // only the first heartbeat, unless a test wants more
	}
	if o.cfg.RetryBase == 0 {
		o.cfg.RetryBase = 5 * time.Millisecond
		o.cfg.RetryMax = 50 * time.Millisecond
	}
	if o.cfg.PublishTimeout == 0 {
		o.cfg.PublishTimeout = 500 * time.Millisecond
	}
	h.cfg = o.cfg
	h.subj = protocol.NewSubjects(o.cfg.Prefix)
	if !o.noStream {
		h.stream = createStream(t, h.js, o.cfg.Prefix)
	}
	if h.hbs, err = h.cli.SubscribeSync(h.subj.Heartbeats()); err != nil {
		t.Fatal(err)
	}
	if h.hosts, err = h.cli.SubscribeSync(h.subj.Host(o.cfg.Host)); err != nil {
		t.Fatal(err)
	}
	if err := h.cli.Flush(); err != nil {
		t.Fatal(err)
	}

	sc := o.sim
	sc.Host, sc.RAMMiB = o.cfg.Host, o.cfg.RAMMiB
	if sc.Tick == 0 {
		sc.Tick = -1 // tests drive game time with Advance unless they ask for a ticker
	}
	if h.sim, err = NewSim(sc); err != nil {
		t.Fatal(err)
	}
	url := h.srv.ClientURL()
	if o.proxy {
		h.proxy = natstest.NewProxy(t, url)
		url = h.proxy.URL()
	}
	nc := natstest.Conn(t, url, nats.ReconnectWait(20*time.Millisecond), nats.Timeout(500*time.Millisecond))
	var exec Executor = h.sim
	if o.exec != nil {
		exec = o.exec(h.sim)
	}
	if h.agent, err = New(nc, o.cfg, exec, natstest.Log("WORKER_TEST_LOG")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan error, 1)
	go func() { h.done <- h.agent.Run(ctx) }()
	t.Cleanup(h.stop)
	select {
	case <-h.agent.Ready():
	case err := <-h.done:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(waitFor):
		t.Fatal("agent not ready")
	}
	return h
}

// stop ends the agent and waits for Run to return.
func (h *harness) stop() {
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run: %v", err)
		}
		h.done <- nil // later stops return at once
	case <-time.After(waitFor):
		h.t.Error("agent did not stop")
	}
}

func (h *harness) request(subject string, req any) []byte {
	h.t.Helper()
	var b []byte
	var err error
	if m, ok := req.(schemas.Message); ok {
		b, err = schemas.Marshal(m)
	} else if raw, ok := req.([]byte); ok {
		b = raw
	} else {
		b, err = json.Marshal(req)
	}
	if err != nil {
		h.t.Fatalf("encode request: %v", err)
	}
	msg, err := h.cli.Request(subject, b, waitFor)
	if err != nil {
		h.t.Fatalf("request %s: %v", subject, err)
	}
	return msg.Data
}

func (h *harness) launch(req schemas.LaunchRequest) schemas.LaunchReply {
	h.t.Helper()
	data := h.request(h.subj.Launch(h.cfg.Host), &req)
	rep, err := schemas.DecodeLaunchReply(data)
	if err != nil {
		h.t.Fatalf("launch reply %s: %v", data, err)
	}
	return rep
}

// mustLaunch launches and fails the test unless a PID comes back.
func (h *harness) mustLaunch(req schemas.LaunchRequest) int64 {
	h.t.Helper()
	rep := h.launch(req)
	if rep.Error != nil || rep.PID <= 0 || rep.TaskID != req.TaskID {
		h.t.Fatalf("launch %s: reply %+v (error %+v)", req.TaskID, rep, rep.Error)
	}
	return rep.PID
}

func (h *harness) kill(taskID string, pid int64) schemas.KillReply {
	h.t.Helper()
	data := h.request(h.subj.Kill(h.cfg.Host), &schemas.KillRequest{TaskID: taskID, PID: pid, Reason: "test"})
	rep, err := schemas.DecodeKillReply(data)
	if err != nil {
		h.t.Fatalf("kill reply %s: %v", data, err)
	}
	return rep
}

func (h *harness) ps(pids ...int64) schemas.PsReply {
	h.t.Helper()
	data := h.request(h.subj.Ps(h.cfg.Host), &schemas.PsRequest{PIDs: pids})
	rep, err := schemas.DecodePsReply(data)
	if err != nil {
		h.t.Fatalf("ps reply %s: %v", data, err)
	}
	return rep
}

// nextHeartbeat returns the next heartbeat on any subject.
func (h *harness) nextHeartbeat() (schemas.Heartbeat, string) {
	h.t.Helper()
	m, err := h.hbs.NextMsg(waitFor)
	if err != nil {
		h.t.Fatalf("no heartbeat: %v", err)
	}
	hb, err := schemas.DecodeHeartbeat(m.Data)
	if err != nil {
		h.t.Fatalf("heartbeat %s: %v", m.Data, err)
	}
	return hb, m.Subject
}

// nextHostStatus returns the next HostStatus.
func (h *harness) nextHostStatus() schemas.HostStatus {
	h.t.Helper()
	m, err := h.hosts.NextMsg(waitFor)
	if err != nil {
		h.t.Fatalf("no host status: %v", err)
	}
	st, err := schemas.DecodeHostStatus(m.Data)
	if err != nil {
		h.t.Fatalf("host status %s: %v", m.Data, err)
	}
	return st
}

// hostStatusWhere waits for a HostStatus that satisfies ok.
func (h *harness) hostStatusWhere(what string, ok func(schemas.HostStatus) bool) schemas.HostStatus {
	h.t.Helper()
	deadline := time.Now().Add(waitFor)
	for time.Now().Before(deadline) {
		m, err := h.hosts.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		st, err := schemas.DecodeHostStatus(m.Data)
		if err != nil {
			h.t.Fatalf("host status %s: %v", m.Data, err)
		}
		if ok(st) {
			return st
		}
	}
	h.t.Fatalf("no host status with %s", what)
	return schemas.HostStatus{}
}

// nextEvent returns the next event in the stream (in stream order).
func (h *harness) nextEvent() schemas.TaskEvent {
	h.t.Helper()
	if h.events == nil {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		c, err := h.js.OrderedConsumer(ctx, protocol.EventStream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			h.t.Fatalf("consumer: %v", err)
		}
		h.events = c
	}
	m, err := h.events.Next(jetstream.FetchMaxWait(waitFor))
	if err != nil {
		h.t.Fatalf("no event: %v", err)
	}
	ev, err := schemas.DecodeTaskEvent(m.Data())
	if err != nil {
		h.t.Fatalf("event %s: %v", m.Data(), err)
	}
	if want := h.subj.TaskEvent(ev.Host, ev.Target); m.Subject() != want {
		h.t.Errorf("event on %s, want %s", m.Subject(), want)
	}
	return ev
}

// streamCount is the number of events in the stream.
func (h *harness) streamCount() uint64 {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	info, err := h.stream.Info(ctx)
	if err != nil {
		h.t.Fatalf("stream info: %v", err)
	}
	return info.State.Msgs
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

var taskSeq atomic.Int64

// declared builds a launch of a declared task described by args.
func declared(target, typ string, wrapper, helpers int64, workS float64, extra ...any) schemas.LaunchRequest {
	args := map[string]any{ArgWorkS: workS}
	for i := 0; i+1 < len(extra); i += 2 {
		args[extra[i].(string)] = extra[i+1]
	}
	return schemas.LaunchRequest{
		V: schemas.Version, TaskID: fmt.Sprintf("task-%d", taskSeq.Add(1)), Epoch: 1,
		Target: target, Type: typ, RAM: schemas.TaskRAM{WrapperMiB: wrapper, HelpersMiB: helpers}, Args: args,
	}
}

// earlyGame is the hacking spec of an early-game server at the demo level.
func earlyGame(t testing.TB, name string) schemas.TargetSpec {
	t.Helper()
	for _, s := range workload.EarlyGame() {
		if s.Name == name {
			m := s.Metrics(workload.DemoLevel)
			return schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileHacking, Metrics: &m}
		}
	}
	t.Fatalf("no early-game server %q", name)
	return schemas.TargetSpec{}
}

// hacking builds a launch of a hacking task of the given phase for spec,
// with the spec passed as args["spec"] (a decoded JSON object, as on the wire).
func hacking(t testing.TB, target, phase string, spec schemas.TargetSpec, helpers int64) schemas.LaunchRequest {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal(b, &obj); err != nil {
		t.Fatal(err)
	}
	return schemas.LaunchRequest{
		V: schemas.Version, TaskID: fmt.Sprintf("task-%d", taskSeq.Add(1)), Epoch: 1,
		Target: target, Type: phase, RAM: schemas.TaskRAM{WrapperMiB: workload.DefaultParams().WrapperMiB, HelpersMiB: helpers},
		Args: map[string]any{ArgSpec: obj},
	}
}

func isNoMsg(err error) bool { return errors.Is(err, nats.ErrTimeout) }
