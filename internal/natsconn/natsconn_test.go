package natsconn

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/taskselector/taskselector/internal/natstest"
)

func TestReconnectDelay(t *testing.T) {
	prevMax := time.Duration(0)
	for n := 1; n <= 30; n++ {
		d := ReconnectDelay(n)
		p := reconnectBackoff
		base := min(p.Base<<min(n-1, 20), p.Max)
		lo := time.Duration(float64(base) * (1 - p.Jitter))
		hi := time.Duration(float64(base) * (1 + p.Jitter))
		if d < lo || d > hi {
			t.Fatalf("ReconnectDelay(%d) = %v, want within [%v, %v]", n, d, lo, hi)
		}
		if hi < prevMax {
			t.Fatalf("delays shrink at attempt %d", n)
		}
		prevMax = hi
	}
}

// TestConnectGivesUpWithContext: with no server, Connect retries until ctx
// ends and then says so.
func TestConnectGivesUpWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	url := fmt.Sprintf("nats://127.0.0.1:%d", natstest.FreePort(t))
	nc, err := Connect(ctx, url, "nobody", natstest.Log("NATSCONN_DEBUG"), nil, nil)
	if err == nil {
		nc.Close()
		t.Fatal("connected to no server")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want one wrapping context.DeadlineExceeded", err)
	}
}

// TestStatsOf: a connection made by Connect has counters until it is
// closed; any other connection has none.
func TestStatsOf(t *testing.T) {
	srv := natstest.Server(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := Connect(ctx, srv.ClientURL(), "stats", natstest.Log("NATSCONN_DEBUG"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := StatsOf(nc)
	if st == nil {
		t.Fatal("no stats for a connection made by Connect")
	}
	if st.Disconnects.Load() != 0 || st.AsyncErrors.Load() != 0 {
		t.Fatalf("fresh connection has counts: %d disconnects, %d async errors", st.Disconnects.Load(), st.AsyncErrors.Load())
	}
	if StatsOf(natstest.Conn(t, srv.ClientURL())) != nil {
		t.Fatal("stats for a connection not made by Connect")
	}
	nc.Close()
	deadline := time.Now().Add(5 * time.Second)
	for StatsOf(nc) != nil {
		if time.Now().After(deadline) {
			t.Fatal("stats still kept after Close")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
