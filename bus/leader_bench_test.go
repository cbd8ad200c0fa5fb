package bus

// The figures of issue 12 (hot standby and cluster), as Go benchmarks:
//
//	go test -run '^$' -bench 'BenchmarkFailover' -benchtime 20x -timeout 30m ./bus/
//	go test -run '^$' -bench 'BenchmarkHeartbeatIngestCluster' -benchtime 200000x ./bus/
//	go test -run '^$' -bench 'BenchmarkStandbyTakeover' -benchtime 1x -timeout 30m ./bus/

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// leasedSvc is a leased service on its own connection, replaced by a new one
// when deposed (as cmd/selector does).
type leasedSvc struct {
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	svc    *SelectorService
}

func startLeasedSvc(tb testing.TB, url, id string, cfg ServiceConfig) *leasedSvc {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	nc, err := natsconn.Connect(ctx, url, id, quietLog(), nil, nil)
	cancel()
	if err != nil {
		tb.Fatalf("connect %s: %v", id, err)
	}
	cfg.Lease.ID = id
	p := &leasedSvc{nc: nc, done: make(chan struct{})}
	runCtx, stop := context.WithCancel(context.Background())
	p.cancel = stop
	p.svc = NewSelectorService(nc, cfg, quietLog())
	go func() {
		defer close(p.done)
		for {
			p.mu.Lock()
			svc := p.svc
			p.mu.Unlock()
			if err := svc.Run(runCtx); err != ErrDeposed || runCtx.Err() != nil {
				return
			}
			p.mu.Lock()
			p.svc = NewSelectorService(nc, cfg, quietLog())
			p.mu.Unlock()
		}
	}()
	tb.Cleanup(func() { p.cancel(); <-p.done; nc.Close() })
	return p
}

func (p *leasedSvc) current() *SelectorService {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.svc
}

// kill is SIGKILL in process: the connection closes first, so nothing more
// leaves, and the lease is not released.
func (p *leasedSvc) kill() {
	p.nc.Close()
	p.cancel()
	<-p.done
}

func (p *leasedSvc) leads() bool {
	svc := p.current()
	select {
	case <-svc.Ready():
		return !svc.Deposed()
	default:
		return false
	}
}

// BenchmarkFailover measures the failover time, from the leader's death
// (SIGKILL in process) to the next launch a worker receives, over b.N
// failovers (run it with -benchtime=20x), on a 3-node cluster at replicas 3
// with the production lease (TTL 5s, renewal 1s) and engine defaults (a
// recovery grace of 5s, which ends early once every recorded task is
// confirmed). Each round kills the leader, declares a new target at once,
// waits for its launch, then starts a fresh standby in place of the dead
// one. It reports p50 and max, and the goal TTL + grace + 1s.
func BenchmarkFailover(b *testing.B) {
	c := natstest.NewCluster(b, 3, natstest.ClusterName("bench"))
	eng := selector.DefaultConfig()
	cfg := ServiceConfig{Engine: eng, Store: StoreConfig{Replicas: 3}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	wnc, err := natsconn.Connect(ctx, c.URLs(), "bench-worker", quietLog(), nil, nil)
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(wnc.Close)
	w := startFakeWorker(b, wnc, "", "h1", 1<<20)
	var (
		mu       sync.Mutex
		launched = map[string]time.Time{}
	)
	w.set(func(w *fakeWorker) {
		w.onLaunchHook = func(r schemas.LaunchRequest) {
			mu.Lock()
			if _, ok := launched[r.Target]; !ok {
				launched[r.Target] = time.Now()
			}
			mu.Unlock()
		}
	})
	spec := mustMarshal(b, &schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared,
		Phases: []schemas.Phase{{Type: "work", WrapperMiB: 1, HelpersMinMiB: 1, HelpersFullMiB: 2, WorkS: 1e7, Repeat: true}}})

	sels := []*leasedSvc{startLeasedSvc(b, c.URLs(), "sel-0", cfg)}
	waitFor(b, 60*time.Second, "a first leader", sels[0].leads)
	js, err := jetstream.New(wnc)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	cl, err := js.KeyValue(ctx, protocol.TargetsBucket)
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	sels = append(sels, startLeasedSvc(b, c.URLs(), "sel-1", cfg))
	waitFor(b, 60*time.Second, "a standby", func() bool { return sels[1].current().Standby() })
	ttl := LeaseConfig{}.withDefaults().TTL
	grace := eng.WithDefaults().RecoveryGrace

	var toLaunch, toReady []time.Duration
	b.ResetTimer()
	for i := range b.N {
		leader, standby := sels[len(sels)-2], sels[len(sels)-1]
		if !leader.leads() {
			leader, standby = standby, leader
		}
		target := "f-" + strconv.Itoa(i)
		killed := time.Now()
		leader.kill()
		// Declared right after the kill, while no selector leads: the
		// next launch is this target's, by the new leader.
		putCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := cl.Put(putCtx, protocol.EncodeName(target), spec); err != nil {
			cancel()
			b.Fatalf("declare %s: %v", target, err)
		}
		cancel()
		waitFor(b, 60*time.Second, "the standby to lead", standby.leads)
		toReady = append(toReady, time.Since(killed))
		waitFor(b, 60*time.Second, "the next launch", func() bool {
			mu.Lock()
			defer mu.Unlock()
			_, ok := launched[target]
			return ok
		})
		mu.Lock()
		toLaunch = append(toLaunch, launched[target].Sub(killed))
		mu.Unlock()
		next := startLeasedSvc(b, c.URLs(), "sel-"+strconv.Itoa(i+2), cfg)
		waitFor(b, 60*time.Second, "a new standby", func() bool { return next.current().Standby() })
		sels = append(sels[:0], standby, next)
	}
	b.StopTimer()
	p50, pmax := quantiles(toLaunch)
	r50, rmax := quantiles(toReady)
	b.ReportMetric(p50.Seconds(), "p50_s/failover")
	b.ReportMetric(pmax.Seconds(), "max_s/failover")
	b.ReportMetric(r50.Seconds(), "p50_s/ready")
	b.ReportMetric(0, "ns/op")
	b.Logf("failover (kill -> next launch) over %d: p50 %v, max %v; kill -> new leader ready: p50 %v, max %v; goal TTL %v + grace %v + 1s = %v",
		len(toLaunch), p50.Round(time.Millisecond), pmax.Round(time.Millisecond), r50.Round(time.Millisecond), rmax.Round(time.Millisecond),
		ttl, grace, ttl+grace+time.Second)
}

func quantiles(ds []time.Duration) (p50, pmax time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[(len(s)-1)/2], s[len(s)-1]
}

// BenchmarkHeartbeatIngestCluster runs the heartbeat-ingest measurement
// (see BenchmarkHeartbeatIngest) on a single embedded server and on a 3-node
// cluster at replicas 3, where the publisher (the workers) and the selector
// sit on different nodes, so that every heartbeat crosses a route. It
// reports both service rates and their ratio (cluster / single).
func BenchmarkHeartbeatIngestCluster(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b.StopTimer()
	single, err := measureHeartbeatIngest(ctx, ingestOptions{Messages: b.N, StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	c := natstest.NewCluster(b, 3, natstest.ClusterName("ingest"))
	cluster, err := measureHeartbeatIngest(ctx, ingestOptions{
		Messages: b.N, PubURL: c.URL(0), SubURL: c.URL(1), Replicas: 3,
		BeforePhase: func(string) { b.StartTimer() },
		AfterPhase:  func(string) { b.StopTimer() },
	})
	if err != nil {
		b.Fatal(err)
	}
	ratio := 0.0
	if single.ServiceRate > 0 {
		ratio = cluster.ServiceRate / single.ServiceRate
	}
	b.ReportMetric(single.ServiceRate, "single_msgs/s")
	b.ReportMetric(cluster.ServiceRate, "cluster_msgs/s")
	b.ReportMetric(ratio, "cluster/single")
	if b.N >= 10000 {
		b.Logf("single server: %v", single)
		b.Logf("3-node cluster: %v", cluster)
		b.Logf("service ingest on the cluster / on a single server: %.2f", ratio)
	}
}

// BenchmarkStandbyTakeover compares, with 10,000 and 100,000 tasks in KV,
// the restart-to-ready time of a cold start (a leased selector that starts
// alone: it loads both buckets, takes the lease, builds the engine) with the
// takeover-to-ready time of a warm standby (from taking the lease, once the
// leader stopped and released it, to ready). Run it with -benchtime=1x.
func BenchmarkStandbyTakeover(b *testing.B) {
	for _, n := range []int{10000, 100000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var cold, warm time.Duration
			for range b.N {
				c, w := measureTakeover(b, n)
				cold += c
				warm += w
			}
			b.ReportMetric(float64(cold.Milliseconds())/float64(b.N), "ms/cold")
			b.ReportMetric(float64(warm.Milliseconds())/float64(b.N), "ms/standby")
			b.ReportMetric(0, "ns/op")
			b.Logf("%d tasks: cold start to ready %v; standby takeover to ready %v", n, cold/time.Duration(b.N), warm/time.Duration(b.N))
		})
	}
}

func measureTakeover(b *testing.B, n int) (cold, warm time.Duration) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	srv, stopServer, err := startMeasureServer(ctx, b.TempDir(), "taskselector-takeover-", "takeover")
	if err != nil {
		b.Fatal(err)
	}
	defer stopServer()
	seedConn, err := natsconn.Connect(ctx, srv.ClientURL(), "seed", quietLog(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	err = seedRestart(ctx, seedConn, n)
	seedConn.Close()
	if err != nil {
		b.Fatal(err)
	}
	cfg := ServiceConfig{}
	started := time.Now()
	cfg.StartedAt = started
	a := startLeasedSvc(b, srv.ClientURL(), "sel-a", cfg)
	waitFor(b, 5*time.Minute, "the first leader", a.leads)
	cold = a.current().RestartToReady()
	cfg.StartedAt = time.Time{}
	s := startLeasedSvc(b, srv.ClientURL(), "sel-b", cfg)
	waitFor(b, 5*time.Minute, "the standby", func() bool { return s.current().Standby() })
	a.cancel() // a graceful stop: the lease is released
	<-a.done
	waitFor(b, 5*time.Minute, "the takeover", s.leads)
	svc := s.current()
	if st := svc.Status(); len(st.Targets) != n {
		b.Fatalf("standby took over with %d targets, want %d", len(st.Targets), n)
	}
	return cold, svc.TakeoverToReady()
}
