package bus

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// BenchmarkHeartbeatIngest publishes b.N heartbeats to a bare subscriber and
// then b.N to the selector service, through one embedded server, and reports
// both rates and their ratio (goal: service >= 0.5x bare). Run it with a
// fixed count, e.g. -benchtime=200000x.
func BenchmarkHeartbeatIngest(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b.StopTimer()
	res, err := measureHeartbeatIngest(ctx, ingestOptions{
		Messages:    b.N,
		StoreDir:    b.TempDir(),
		BeforePhase: func(string) { b.StartTimer() },
		AfterPhase:  func(string) { b.StopTimer() },
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(res.BareRate, "bare_msgs/s")
	b.ReportMetric(res.ServiceRate, "svc_msgs/s")
	b.ReportMetric(res.Ratio, "svc/bare")
	b.ReportMetric(float64(res.MessageBytes), "B/msg")
	if b.N >= 10000 {
		b.Log(res)
	}
}

// TestHeartbeatIngestSmall runs the measurement at a small size, to keep it
// working; its figures are not checked (timed tests are not benchmarks).
func TestHeartbeatIngestSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := measureHeartbeatIngest(ctx, ingestOptions{Messages: 5000, Tasks: 20, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if res.BareRate <= 0 || res.ServiceRate <= 0 || res.MessageBytes < 100 {
		t.Fatalf("implausible result: %v", res)
	}
}

// BenchmarkHeartbeatPath measures the service's per-heartbeat work without
// NATS: decode, subject cross-check, engine step, for a known task.
func BenchmarkHeartbeatPath(b *testing.B) {
	svc := NewSelectorService(nil, ServiceConfig{}, testLog())
	now := time.Now()
	const n = 100
	snap := selector.Snapshot{Targets: map[string]schemas.TargetSpec{}}
	msgs := make([]*nats.Msg, n)
	for i := range n {
		target := fmt.Sprintf("bench-%d", i)
		snap.Targets[target] = declaredSpec()
		st := taskState(target, fmt.Sprintf("task-%d", i), 1)
		st.Task.PID = int64(i + 1)
		snap.Tasks = append(snap.Tasks, st)
		hb := schemas.Heartbeat{V: 1, TaskID: st.Task.TaskID, Epoch: 1, PID: st.Task.PID, Host: "h1", Target: target, Type: "work",
			Seq: 1, RAM: schemas.HeartbeatRAM{BudgetMiB: 100, UsedMiB: 50}, SentAt: now.UTC()}
		msgs[i] = &nats.Msg{Subject: svc.subj.Heartbeat("h1", target), Data: schemas.AppendHeartbeat(nil, &hb)}
	}
	eng, err := selector.New(testEngineConfig(), now, snap)
	if err != nil {
		b.Fatal(err)
	}
	svc.eng = eng
	for _, m := range msgs {
		svc.onHeartbeat(m)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		svc.onHeartbeat(msgs[i%n])
	}
	b.StopTimer()
	if c := svc.Status().Counters; c.FencedHeartbeats != 0 || len(c.MalformedMessages) != 0 {
		b.Fatalf("heartbeats not accepted: %+v", c)
	}
}

// BenchmarkRestartToReady reports the restart-to-ready time with 10,000 and
// 100,000 tasks in KV (goals: 250 ms and 2 s). Each iteration seeds a new
// server, so run it with -benchtime=1x.
func BenchmarkRestartToReady(b *testing.B) {
	for _, n := range []int{10000, 100000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			var total time.Duration
			for range b.N {
				res, err := measureRestartToReady(ctx, restartOptions{Tasks: n, StoreDir: b.TempDir()})
				if err != nil {
					b.Fatal(err)
				}
				total += res.RestartToReady
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/restart")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func TestRestartToReadySmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := measureRestartToReady(ctx, restartOptions{Tasks: 300, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if res.RestartToReady <= 0 {
		t.Fatalf("implausible: %v", res)
	}
}
