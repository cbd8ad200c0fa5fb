package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/natsperm"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
)

// deployConf is the committed server configuration of deploy/compose.yaml.
var deployConf = filepath.Join("..", "deploy", "nats", "nats.conf")

// Hosts of the committed configuration's worker users.
var deployHosts = []string{"home", "w16", "w32"}

// passwordOf is the password the test gives each user: a function of its
// variable, so that a user's password is known from its name.
func passwordOf(v string) string { return "pw-" + strings.ToLower(v) }

// permServer starts one node from the committed configuration, on a free
// port, alone (its cluster block dropped) and with its store in a temporary
// directory: the users and permissions are exactly the committed ones.
func permServer(t *testing.T) *server.Server {
	t.Helper()
	t.Setenv("NATS_SERVER_NAME", "perm-test")
	for _, v := range []string{natsperm.SelectorPasswordVar, natsperm.OperatorPasswordVar} {
		t.Setenv(v, passwordOf(v))
	}
	for _, h := range deployHosts {
		t.Setenv(natsperm.WorkerPasswordVar(h), passwordOf(natsperm.WorkerPasswordVar(h)))
	}
	opts, err := server.ProcessConfigFile(deployConf)
	if err != nil {
		t.Fatalf("load %s: %v", deployConf, err)
	}
	if opts.Cluster.Name != "taskselector" || len(opts.Routes) != 3 || !opts.JetStream {
		t.Fatalf("%s: want a cluster named taskselector with 3 routes and JetStream, got %q, %d routes, JetStream %v",
			deployConf, opts.Cluster.Name, len(opts.Routes), opts.JetStream)
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.Cluster, opts.Routes = server.ClusterOpts{}, nil
	opts.StoreDir = t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { natstest.Shutdown(srv) })
	if !srv.ReadyForConnections(20 * time.Second) {
		t.Fatal("server not ready")
	}
	return srv
}

// roleConn is a connection as one user, with the asynchronous errors the
// server sent it (permission violations among them).
type roleConn struct {
	*nats.Conn
	mu   sync.Mutex
	errs []error
}

// dial connects to srv as user (whose password variable is pwVar) through
// natsconn, with the credentials given the way the binaries take them.
func dial(t *testing.T, srv *server.Server, user, pwVar string, extra ...nats.Option) *roleConn {
	t.Helper()
	rc := &roleConn{}
	auth := natsconn.Auth{User: user, Password: passwordOf(pwVar)}
	if err := auth.Check(); err != nil {
		t.Fatal(err)
	}
	opts, err := auth.Options()
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		rc.mu.Lock()
		rc.errs = append(rc.errs, err)
		rc.mu.Unlock()
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, err := natsconn.Connect(ctx, srv.ClientURL(), user, testLog(), nil, nil, append(opts, extra...)...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	rc.Conn = nc
	return rc
}

func workerConn(t *testing.T, srv *server.Server, host string) *roleConn {
	return dial(t, srv, natsperm.WorkerUser(host), natsperm.WorkerPasswordVar(host), nats.CustomInboxPrefix(protocol.WorkerInbox(host)))
}

// waitDenied waits until the server has told rc that its publish to, or
// subscription on, subject was refused.
func (rc *roleConn) waitDenied(t *testing.T, what, subject string) {
	t.Helper()
	want := strings.ToLower(fmt.Sprintf("%s to %q", what, subject))
	waitFor(t, 10*time.Second, func() (bool, string) {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		for _, err := range rc.errs {
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(strings.ToLower(err.Error()), want) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("no permissions violation for %s; errors so far: %v", want, rc.errs)
	})
}

// denied reports how many permission violations rc was told of.
func (rc *roleConn) denied() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	n := 0
	for _, err := range rc.errs {
		if errors.Is(err, nats.ErrPermissionViolation) {
			n++
		}
	}
	return n
}

// subjectSpy collects every message on subjects, as the operator (who reads
// everything under the prefix).
type subjectSpy struct {
	mu   sync.Mutex
	msgs map[string]int
}

func newSubjectSpy(t *testing.T, op *roleConn, subject string) *subjectSpy {
	t.Helper()
	s := &subjectSpy{msgs: map[string]int{}}
	if _, err := op.Subscribe(subject, func(m *nats.Msg) {
		s.mu.Lock()
		s.msgs[m.Subject]++
		s.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := op.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *subjectSpy) count(subject string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.msgs[subject]
}

// TestPermissionsWorker: with the committed configuration, a worker cannot
// publish a launch for another host, nor heartbeats, host status or events
// for another host; cannot read another host's launches or anyone's
// inbox; and cannot write either bucket or use the JetStream API. What it
// may do on its own host's subjects reaches the others.
func TestPermissionsWorker(t *testing.T) {
	srv := permServer(t)
	subj := protocol.NewSubjects("")
	op := dial(t, srv, natsperm.OperatorUser, natsperm.OperatorPasswordVar)
	w := workerConn(t, srv, "w16")
	other := workerConn(t, srv, "w32")
	sp := newSubjectSpy(t, op, "tasks.>")

	// Refused publishes: each is followed by an allowed one on the same
	// connection; once the subjectSpy has that, it would have had the refused one.
	sentinel := subj.Host("w16")
	for i, subject := range []string{
		subj.Launch("w32"),
		subj.Kill("w32"),
		subj.Heartbeat("w32", "t"),
		subj.Host("w32"),
		subj.TaskEvent("w32", "t"),
		subj.Event("t"), // the first version's event subject names no host
		"$KV." + protocol.TargetsBucket + ".t",
		"$KV." + protocol.TasksBucket + ".t",
		"$JS.API.STREAM.DELETE." + protocol.EventStream,
		"$JS.API.STREAM.INFO.KV_" + protocol.TasksBucket,
	} {
		if err := w.Publish(subject, []byte("x")); err != nil {
			t.Fatal(err)
		}
		w.waitDenied(t, "publish", subject)
		if err := w.Publish(sentinel, []byte("x")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, func() (bool, string) {
			return sp.count(sentinel) == i+1, fmt.Sprintf("sentinel %d not seen", i+1)
		})
		if n := sp.count(subject); n != 0 {
			t.Fatalf("a worker's publish to %s was delivered (%d)", subject, n)
		}
	}

	// Through the JetStream client too: no bucket write succeeds.
	js, err := jetstream.New(w.Conn)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := js.KeyValue(ctx, protocol.TargetsBucket); err == nil {
		t.Fatal("a worker opened the targets bucket")
	}

	// Refused subscriptions: another host's launches, every launch, any
	// inbox but its own.
	for _, subject := range []string{subj.Launch("w32"), "tasks.launch.>", "tasks.>", "_INBOX.>", protocol.WorkerInbox("w32") + ".>"} {
		if _, err := w.Subscribe(subject, func(*nats.Msg) { t.Errorf("worker w16 received a message on %s", subject) }); err != nil {
			t.Fatal(err)
		}
		w.waitDenied(t, "subscription", subject)
	}
	// A launch sent to w32 reaches w32 alone.
	got := make(chan *nats.Msg, 1)
	if _, err := other.Subscribe(subj.Launch("w32"), func(m *nats.Msg) { got <- m }); err != nil {
		t.Fatal(err)
	}
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	sel := dial(t, srv, natsperm.SelectorUser, natsperm.SelectorPasswordVar)
	if err := sel.Publish(subj.Launch("w32"), []byte("launch")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the selector's launch did not reach w32")
	}

	// Allowed: its own host's heartbeat, event and alloc request subjects.
	for _, subject := range []string{subj.Heartbeat("w16", "t"), subj.TaskEvent("w16", "t"), subj.Prefix + ".alloc"} {
		before := sp.count(subject)
		if err := w.Publish(subject, []byte("x")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, func() (bool, string) {
			return sp.count(subject) == before+1, "own-host publish to " + subject + " not delivered"
		})
	}
	if n := other.denied(); n != 0 {
		t.Fatalf("worker w32 was refused %d times doing only its own work", n)
	}
}

// TestPermissionsOperator: an operator reads status and writes targets, but
// cannot launch, write the tasks bucket or delete the event stream.
func TestPermissionsOperator(t *testing.T) {
	srv := permServer(t)
	subj := protocol.NewSubjects("")
	op := dial(t, srv, natsperm.OperatorUser, natsperm.OperatorPasswordVar)
	for _, subject := range []string{subj.Launch("w16"), subj.Kill("w16"), "$KV." + protocol.TasksBucket + ".t",
		"$JS.API.STREAM.DELETE." + protocol.EventStream, "$JS.API.CONSUMER.DELETE." + protocol.EventStream + ".selector"} {
		if err := op.Publish(subject, []byte("x")); err != nil {
			t.Fatal(err)
		}
		op.waitDenied(t, "publish", subject)
	}
}

// TestPermissionsRealComponents: the real selector and a real worker agent,
// each connected as its own user, and an operator's client do their work
// under the committed permissions: targets are put, launched on the worker
// (launch request, heartbeats, host status), read in status, and killed on
// deletion, whose end event is read from the stream. Nobody is refused
// anything.
func TestPermissionsRealComponents(t *testing.T) {
	srv := permServer(t)
	op := dial(t, srv, natsperm.OperatorUser, natsperm.OperatorPasswordVar)
	sel := dial(t, srv, natsperm.SelectorUser, natsperm.SelectorPasswordVar)
	wc := workerConn(t, srv, "w16")
	e := &env{t: t, srv: srv, url: srv.ClientURL(), subj: protocol.NewSubjects(""), nc: op.Conn}
	var err error
	if e.client, err = client.New(op.Conn, ""); err != nil {
		t.Fatal(err)
	}
	if e.js, err = jetstream.New(op.Conn); err != nil {
		t.Fatal(err)
	}
	// The selector owns its connection from now on; closing it twice is
	// harmless.
	e.runSelector(sel.Conn, serviceConfig(engineConfig()))
	startWorkerOn(t, wc.Conn, "w16", 4096)

	e.putTarget("t", longSpec())
	line := e.waitActive(20*time.Second, "t")
	if line.Host != "w16" {
		t.Fatalf("t runs on %q, want w16", line.Host)
	}
	e.waitStatus(10*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		return st.Counters.Heartbeats > 0 && len(st.Hosts) == 1, fmt.Sprintf("heartbeats %d, hosts %v", st.Counters.Heartbeats, st.Hosts)
	})
	// Service discovery works across the roles: the operator's $SRV.PING
	// reaches the selector and the worker, whose answers come back.
	inbox := op.NewInbox()
	pings, err := op.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := op.PublishRequest("$SRV.PING", inbox, nil); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for len(seen) < 2 {
		m, err := pings.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("service ping answers: %v (so far %v)", err, seen)
		}
		var info struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal(m.Data, &info); err != nil {
			t.Fatal(err)
		}
		seen[info.Name] = true
	}
	if !seen[protocol.SelectorService] || !seen[protocol.WorkerService] {
		t.Fatalf("services answering: %v", seen)
	}
	// The operator reads the tasks bucket.
	if _, err := e.kv(protocol.TasksBucket).Get(e.ctx(10*time.Second), protocol.EncodeName("t")); err != nil {
		t.Fatalf("operator reads the tasks bucket: %v", err)
	}
	if err := e.client.DeleteTarget(e.ctx(10*time.Second), "t"); err != nil {
		t.Fatal(err)
	}
	e.waitStatus(20*time.Second, func(st *schemas.SelectorStatus) (bool, string) {
		_, declared := targetLine(st, "t")
		return st.Counters.Kills >= 1 && st.Counters.Events >= 1 && !declared,
			fmt.Sprintf("kills %d, events %d, t declared %v", st.Counters.Kills, st.Counters.Events, declared)
	})
	for name, rc := range map[string]*roleConn{"operator": op, "selector": sel, "worker": wc} {
		if n := rc.denied(); n != 0 {
			rc.mu.Lock()
			t.Errorf("%s was refused %d times: %v", name, n, rc.errs)
			rc.mu.Unlock()
		}
	}
}

// startWorkerOn runs a worker agent for host with the sim executor on nc,
// and waits until it is ready.
func startWorkerOn(t *testing.T, nc *nats.Conn, host string, ramMiB int64) {
	t.Helper()
	log := testLog()
	sim, err := worker.NewSim(worker.SimConfig{Host: host, RAMMiB: ramMiB, Speed: 1, Tick: 20 * time.Millisecond, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	agent, err := worker.New(nc, worker.Config{
		Host: host, RAMMiB: ramMiB, HeartbeatInterval: hbInterval, Executor: worker.SimExecutor,
		FlushTimeout: time.Second, PublishTimeout: 500 * time.Millisecond,
		RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
	}, sim, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		defer sim.Close()
		done <- agent.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("worker %s Run: %v", host, err)
			}
		case <-time.After(stopTimeout):
			t.Errorf("worker %s did not stop within %v", host, stopTimeout)
		}
	})
	select {
	case <-agent.Ready():
	case err := <-done:
		t.Fatalf("worker %s stopped before it was ready: %v", host, err)
	case <-time.After(20 * time.Second):
		t.Fatalf("worker %s not ready within 20s", host)
	}
}
