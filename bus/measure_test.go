package bus

// The harness behind the heartbeat-ingest and restart-to-ready benchmarks
// (ingest_test.go): it starts an embedded server, seeds the buckets as a
// previous selector would have left them, and times the service over real
// NATS. It serves only those benchmarks, so it lives with the tests rather
// than in the package.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/natsembed"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// ingestOptions configure measureHeartbeatIngest. Zero fields take the
// defaults in brackets.
type ingestOptions struct {
	// Messages is the number of heartbeats published in each phase [200000].
	Messages int
	// Tasks is the number of distinct tasks (and targets) the heartbeats
	// cycle over; all are known to the selector [100].
	Tasks int
	// Window bounds the heartbeats published but not yet processed, so that
	// neither subscriber is overrun into slow-consumer drops [20000].
	Window int
	// StoreDir is the embedded server's store [a new temporary directory,
	// removed afterwards].
	StoreDir string
	// Log receives the service's logs [discarded].
	Log *slog.Logger
	// PubURL and SubURL, when set, are the servers (of a running cluster,
	// say) the publisher and the subscribers connect to; no server is
	// started then [an embedded server, for both].
	PubURL, SubURL string
	// Replicas of the buckets and the stream [1].
	Replicas int
	// BeforePhase, if set, is called before each timed phase ("bare",
	// "service") and AfterPhase after it; a Go benchmark uses them to
	// start and stop its timer.
	BeforePhase, AfterPhase func(phase string)
}

// ingestResult holds the figures of one measureHeartbeatIngest run.
type ingestResult struct {
	Messages     int     // heartbeats per phase
	MessageBytes int     // size of one heartbeat
	BareRate     float64 // msgs/s read and dropped by a bare subscriber
	ServiceRate  float64 // msgs/s decoded and stepped through the engine by the service
	Ratio        float64 // ServiceRate / BareRate
	BareDropped  int     // slow-consumer drops (0 unless the window is too large)
	SvcDropped   int
}

// String formats the result in one line.
func (r ingestResult) String() string {
	return fmt.Sprintf("heartbeat ingest: %d msgs of %d B: bare %.0f msgs/s, service %.0f msgs/s, ratio %.2f (drops: bare %d, service %d)",
		r.Messages, r.MessageBytes, r.BareRate, r.ServiceRate, r.Ratio, r.BareDropped, r.SvcDropped)
}

// measureHeartbeatIngest measures heartbeats ingested per second end to end
// through NATS: a publisher, an embedded server, and the subscriber. It runs
// two phases in one process on one server, with the same publisher and the
// same messages: first a bare subscriber that reads and drops each message,
// then a SelectorService that knows every task (rebuilt from the tasks
// bucket), decodes each heartbeat and steps the engine with it.
func measureHeartbeatIngest(ctx context.Context, o ingestOptions) (ingestResult, error) {
	if o.Messages <= 0 {
		o.Messages = 200000
	}
	if o.Tasks <= 0 {
		o.Tasks = 100
	}
	if o.Window <= 0 {
		o.Window = 20000
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.BeforePhase == nil {
		o.BeforePhase = func(string) {}
	}
	if o.AfterPhase == nil {
		o.AfterPhase = func(string) {}
	}
	res := ingestResult{Messages: o.Messages}
	if o.PubURL == "" {
		srv, stopServer, err := startMeasureServer(ctx, o.StoreDir, "taskselector-ingest-", "ingest")
		if err != nil {
			return res, err
		}
		defer stopServer()
		o.PubURL, o.SubURL = srv.ClientURL(), srv.ClientURL()
	}
	conn := func(name string) (*nats.Conn, error) {
		url := o.SubURL
		if name == "ingest-publisher" {
			url = o.PubURL
		}
		return natsconn.Connect(ctx, url, name, o.Log, nil, nil)
	}
	pub, err := conn("ingest-publisher")
	if err != nil {
		return res, err
	}
	defer pub.Close()

	subj := protocol.NewSubjects("")
	const host = "bench-host"
	hbs, err := seedIngest(ctx, pub, subj, host, o.Tasks, o.Replicas)
	if err != nil {
		return res, err
	}
	buf := schemas.AppendHeartbeat(nil, &hbs[0].hb)
	res.MessageBytes = len(buf)

	// Keep the host alive in the engine's eyes for the whole run.
	hostCtx, stopHost := context.WithCancel(ctx)
	defer stopHost()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			st := schemas.HostStatus{V: schemas.Version, Host: host, RAM: schemas.HostRAM{TotalMiB: 1 << 30}, SentAt: time.Now().UTC()}
			if data, err := schemas.Marshal(&st); err == nil {
				_ = pub.Publish(subj.Host(host), data)
			}
			select {
			case <-hostCtx.Done():
				return
			case <-t.C:
			}
		}
	}()

	publish := func(processed func() uint64, dropped func() int) (float64, error) {
		base := processed()
		start := time.Now()
		for i := 0; i < o.Messages; i++ {
			if i%128 == 0 {
				for i-int(processed()-base)-dropped() > o.Window {
					time.Sleep(20 * time.Microsecond)
				}
			}
			h := &hbs[i%len(hbs)]
			h.hb.Seq++
			h.hb.SentAt = time.Now().UTC()
			buf = schemas.AppendHeartbeat(buf[:0], &h.hb)
			if err := pub.Publish(h.subject, buf); err != nil {
				return 0, fmt.Errorf("bus: ingest: publish: %w", err)
			}
		}
		if err := pub.FlushWithContext(ctx); err != nil {
			return 0, fmt.Errorf("bus: ingest: flush: %w", err)
		}
		for int(processed()-base)+dropped() < o.Messages {
			if ctx.Err() != nil {
				return 0, fmt.Errorf("bus: ingest: waiting for %d of %d messages: %w", o.Messages-int(processed()-base), o.Messages, ctx.Err())
			}
			time.Sleep(50 * time.Microsecond)
		}
		return float64(o.Messages) / time.Since(start).Seconds(), nil
	}

	// Phase 1: a bare subscriber.
	bareConn, err := conn("ingest-bare")
	if err != nil {
		return res, err
	}
	var bareCount atomic.Uint64
	bareSub, err := bareConn.Subscribe(subj.Heartbeats(), func(*nats.Msg) { bareCount.Add(1) })
	if err != nil {
		bareConn.Close()
		return res, fmt.Errorf("bus: ingest: subscribe: %w", err)
	}
	if err := bareConn.Flush(); err != nil {
		bareConn.Close()
		return res, fmt.Errorf("bus: ingest: flush: %w", err)
	}
	if err := awaitInterest(ctx, pub, bareConn); err != nil {
		bareConn.Close()
		return res, err
	}
	o.BeforePhase("bare")
	res.BareRate, err = publish(bareCount.Load, func() int { n, _ := bareSub.Dropped(); return n })
	o.AfterPhase("bare")
	res.BareDropped, _ = bareSub.Dropped()
	bareConn.Close()
	if err != nil {
		return res, err
	}

	// Phase 2: the selector service.
	svcConn, err := conn("ingest-selector")
	if err != nil {
		return res, err
	}
	defer svcConn.Close()
	svc, stopSvc, err := runMeasureService(ctx, svcConn, ServiceConfig{Store: StoreConfig{Replicas: o.Replicas}}, o.Log, "ingest")
	if err != nil {
		return res, err
	}
	defer stopSvc()
	if err := awaitInterest(ctx, pub, svcConn); err != nil {
		return res, err
	}
	o.BeforePhase("service")
	res.ServiceRate, err = publish(svc.HeartbeatsHandled, svc.heartbeatsDropped)
	o.AfterPhase("service")
	res.SvcDropped = svc.heartbeatsDropped()
	if err != nil {
		return res, err
	}
	// The heartbeats must have gone through the engine as known tasks'.
	st := svc.Status()
	if st.Counters.Heartbeats < uint64(o.Messages-res.SvcDropped) || st.Counters.FencedHeartbeats > 0 || len(st.Counters.MalformedMessages) > 0 {
		return res, fmt.Errorf("bus: ingest: heartbeats were not all accepted: %d counted, %d fenced, malformed %v",
			st.Counters.Heartbeats, st.Counters.FencedHeartbeats, st.Counters.MalformedMessages)
	}
	if res.BareRate > 0 {
		res.Ratio = res.ServiceRate / res.BareRate
	}
	return res, nil
}

type ingestTask struct {
	hb      schemas.Heartbeat
	subject string
}

// seedIngest declares n targets and stores an active task for each, as a
// previous selector run would have left them, and returns their heartbeats.
func seedIngest(ctx context.Context, nc *nats.Conn, subj protocol.Subjects, host string, n, replicas int) ([]ingestTask, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("bus: ingest: %w", err)
	}
	store, err := EnsureStore(ctx, js, subj, StoreConfig{Replicas: replicas})
	if err != nil {
		return nil, err
	}
	tasks := NewTaskStore(store.Tasks, nil)
	now := time.Now().UTC()
	spec := schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared,
		Phases: []schemas.Phase{{Type: "work", WrapperMiB: 1, HelpersMinMiB: 1, HelpersFullMiB: 4, WorkS: 1e6, Repeat: true}}}
	specData, err := schemas.Marshal(&spec)
	if err != nil {
		return nil, err
	}
	out := make([]ingestTask, n)
	for i := range n {
		target := "bench-" + strconv.Itoa(i)
		taskID := "task-" + strconv.Itoa(i)
		st := schemas.TaskState{V: schemas.Version, Target: target, Phase: "work", Epoch: 1, UpdatedAt: now,
			Task: &schemas.TaskRecord{TaskID: taskID, PID: int64(i + 1), Type: "work", Host: host, State: schemas.TaskActive,
				BudgetMiB: 4, LaunchedAt: now, ConfirmedAt: &now}}
		data, err := schemas.Marshal(&st)
		if err != nil {
			return nil, err
		}
		if _, err := store.Targets.Put(ctx, protocol.EncodeName(target), specData); err != nil {
			return nil, fmt.Errorf("bus: ingest: seed target: %w", err)
		}
		if err := tasks.Put(ctx, target, data); err != nil && !errors.Is(err, ErrConflict) {
			return nil, fmt.Errorf("bus: ingest: seed task: %w", err)
		}
		out[i] = ingestTask{
			hb: schemas.Heartbeat{V: schemas.Version, TaskID: taskID, Epoch: 1, PID: int64(i + 1), Host: host, Target: target,
				Type: "work", RAM: schemas.HeartbeatRAM{BudgetMiB: 4, UsedMiB: 3}},
			subject: subj.Heartbeat(host, target),
		}
	}
	return out, nil
}

// startMeasureServer starts an embedded server on a random port for a
// measurement, with its store in dir or, when dir is "", in a new temporary
// directory named after pattern. stop shuts the server down and then removes
// that temporary directory. what names the measurement in errors.
func startMeasureServer(ctx context.Context, dir, pattern, what string) (srv *server.Server, stop func(), err error) {
	tmp := ""
	if dir == "" {
		if tmp, err = os.MkdirTemp("", pattern); err != nil {
			return nil, nil, fmt.Errorf("bus: %s: %w", what, err)
		}
		dir = tmp
	}
	removeTmp := func() {
		if tmp != "" {
			os.RemoveAll(tmp)
		}
	}
	if srv, err = natsembed.Start(ctx, natsembed.Options{StoreDir: dir, Port: -1}); err != nil {
		removeTmp()
		return nil, nil, err
	}
	return srv, func() { natsembed.Shutdown(srv); removeTmp() }, nil
}

// runMeasureService starts a selector service on nc and waits until it is
// ready. stop cancels the service and waits for its Run to return. When Run
// returns first, or ctx ends, the service is stopped and an error returned.
// what names the measurement in errors.
func runMeasureService(ctx context.Context, nc *nats.Conn, cfg ServiceConfig, log *slog.Logger, what string) (svc *SelectorService, stop func(), err error) {
	svc = NewSelectorService(nc, cfg, log)
	svcCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Run(svcCtx) }()
	select {
	case <-svc.Ready():
		return svc, func() { cancel(); <-done }, nil
	case err := <-done:
		cancel()
		return nil, nil, fmt.Errorf("bus: %s: selector stopped: %w", what, err)
	case <-ctx.Done():
		cancel()
		<-done
		return nil, nil, ctx.Err()
	}
}

// restartOptions configure measureRestartToReady.
type restartOptions struct {
	// Tasks is the number of targets, each with a persisted task [10000].
	Tasks int
	// StoreDir is the embedded server's store [a new temporary directory,
	// removed afterwards].
	StoreDir string
	// Log receives the service's logs [discarded].
	Log *slog.Logger
}

// restartResult holds the figures of one measureRestartToReady run.
type restartResult struct {
	Tasks int
	// RestartToReady runs from the start of the connection to NATS until
	// the service has replayed both buckets, rebuilt the engine and
	// subscribed (the recovery grace is not included).
	RestartToReady time.Duration
}

// String formats the result in one line.
func (r restartResult) String() string {
	return fmt.Sprintf("restart-to-ready with %d tasks in KV: %v", r.Tasks, r.RestartToReady)
}

// measureRestartToReady stores o.Tasks targets and their task states, as a
// selector would have left them, then starts a selector service on a fresh
// connection and reports how long it took to be ready.
func measureRestartToReady(ctx context.Context, o restartOptions) (restartResult, error) {
	if o.Tasks <= 0 {
		o.Tasks = 10000
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	res := restartResult{Tasks: o.Tasks}
	srv, stopServer, err := startMeasureServer(ctx, o.StoreDir, "taskselector-restart-", "restart")
	if err != nil {
		return res, err
	}
	defer stopServer()
	seedConn, err := natsconn.Connect(ctx, srv.ClientURL(), "restart-seed", o.Log, nil, nil)
	if err != nil {
		return res, err
	}
	err = seedRestart(ctx, seedConn, o.Tasks)
	seedConn.Close()
	if err != nil {
		return res, err
	}

	started := time.Now()
	nc, err := natsconn.Connect(ctx, srv.ClientURL(), "restart-selector", o.Log, nil, nil)
	if err != nil {
		return res, err
	}
	defer nc.Close()
	svc, stopSvc, err := runMeasureService(ctx, nc, ServiceConfig{StartedAt: started}, o.Log, "restart")
	if err != nil {
		return res, err
	}
	defer stopSvc()
	res.RestartToReady = svc.RestartToReady()
	if st := svc.Status(); len(st.Targets) != o.Tasks || st.Counters.MalformedMessages[SourceTasks] != 0 {
		return res, fmt.Errorf("bus: restart: rebuilt %d targets of %d (malformed %v)", len(st.Targets), o.Tasks, st.Counters.MalformedMessages)
	}
	return res, nil
}

// seedRestart writes n targets and task states with pipelined publishes.
func seedRestart(ctx context.Context, nc *nats.Conn, n int) error {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return fmt.Errorf("bus: restart: %w", err)
	}
	if _, err := EnsureStore(ctx, js, protocol.NewSubjects(""), StoreConfig{}); err != nil {
		return err
	}
	now := time.Now().UTC()
	spec := schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared,
		Phases: []schemas.Phase{{Type: "work", WrapperMiB: 8, HelpersMinMiB: 16, HelpersFullMiB: 256, WorkS: 60, Repeat: true}}}
	specData, err := schemas.Marshal(&spec)
	if err != nil {
		return err
	}
	for i := range n {
		target := "target-" + strconv.Itoa(i)
		host := "host-" + strconv.Itoa(i%1000)
		st := schemas.TaskState{V: schemas.Version, Target: target, Phase: "work", Epoch: 3, UpdatedAt: now,
			Task: &schemas.TaskRecord{TaskID: target + "#3.x", PID: int64(1000 + i), Type: "work", Host: host,
				State: schemas.TaskActive, BudgetMiB: 64, WrapperMiB: 8, LaunchedAt: now, ConfirmedAt: &now}}
		data, err := schemas.Marshal(&st)
		if err != nil {
			return err
		}
		key := protocol.EncodeName(target)
		if _, err := js.PublishAsync("$KV."+protocol.TargetsBucket+"."+key, specData, jetstream.WithStallWait(30*time.Second)); err != nil {
			return fmt.Errorf("bus: restart: seed: %w", err)
		}
		if _, err := js.PublishAsync("$KV."+protocol.TasksBucket+"."+key, data, jetstream.WithStallWait(30*time.Second)); err != nil {
			return fmt.Errorf("bus: restart: seed: %w", err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("bus: restart: seed: %w", ctx.Err())
	}
}

// heartbeatsDropped is how many heartbeats the service's subscription
// dropped for its pending limits.
func (s *SelectorService) heartbeatsDropped() int {
	s.mu.Lock()
	sub := s.hbSub
	s.mu.Unlock()
	if sub == nil {
		return 0
	}
	n, _ := sub.Dropped()
	return n
}

// awaitInterest returns once pub's server knows of every subscription sub
// made so far: on a cluster, interest crosses routes asynchronously, and a
// heartbeat published before it arrives is dropped. sub answers a probe
// subscribed last; interest travels in order on a route, so once pub's
// request reaches it, every earlier subscription is known too.
func awaitInterest(ctx context.Context, pub, sub *nats.Conn) error {
	probe := "bench.interest." + nats.NewInbox()
	s, err := sub.Subscribe(probe, func(m *nats.Msg) { _ = m.Respond(nil) })
	if err != nil {
		return fmt.Errorf("bus: ingest: probe: %w", err)
	}
	defer func() { _ = s.Unsubscribe() }()
	if err := sub.Flush(); err != nil {
		return fmt.Errorf("bus: ingest: probe: %w", err)
	}
	for {
		rctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		_, err := pub.RequestWithContext(rctx, probe, nil)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("bus: ingest: probe: %w", ctx.Err())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
