package worker

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// BenchmarkLaunchRoundTrip measures, through a real NATS server, a launch
// request until both its PID reply and its first heartbeat are in, with the
// sim executor; it reports the p50 and p99 of that latency. The task is
// killed after each measurement (outside the latency).
func BenchmarkLaunchRoundTrip(b *testing.B) {
	srv := natstest.Server(b)
	cli := natstest.Conn(b, srv.ClientURL())
	js, err := jetstream.New(cli)
	if err != nil {
		b.Fatal(err)
	}
	createStream(b, js, "")
	subj := protocol.NewSubjects("")
	hbs, err := cli.SubscribeSync(subj.Heartbeats())
	if err != nil {
		b.Fatal(err)
	}
	sim, err := NewSim(SimConfig{RAMMiB: 1 << 20, Tick: -1})
	if err != nil {
		b.Fatal(err)
	}
	a, err := New(natstest.Conn(b, srv.ClientURL()), Config{Host: "bench", RAMMiB: 1 << 20, HeartbeatInterval: time.Hour}, sim, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-a.Ready()

	launchSubj, killSubj := subj.Launch("bench"), subj.Kill("bench")
	req := declared("bench-target", "work", 10, 10, 1e6)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req.TaskID = "bench-" + itoa(i)
		data, err := schemas.Marshal(&req)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		msg, err := cli.Request(launchSubj, data, 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		hb, err := hbs.NextMsg(5 * time.Second)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		rep, err := schemas.DecodeLaunchReply(msg.Data)
		if err != nil || rep.PID == 0 {
			b.Fatalf("reply %s: %v", msg.Data, err)
		}
		if _, err := schemas.DecodeHeartbeat(hb.Data); err != nil {
			b.Fatal(err)
		}
		kill, _ := schemas.Marshal(&schemas.KillRequest{TaskID: req.TaskID, PID: rep.PID, Reason: "bench"})
		if _, err := cli.Request(killSubj, kill, 5*time.Second); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

func itoa(i int) string {
	var buf [20]byte
	n := len(buf)
	for {
		n--
		buf[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(buf[n:])
		}
	}
}
