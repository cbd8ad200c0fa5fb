package integration

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/taskselector/taskselector/demo"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// TestDemoReachesHarvest runs the one-command demo at a high sim speed until
// some target reaches its harvest phase, then stops it and checks that it
// shuts down cleanly.
func TestDemoReachesHarvest(t *testing.T) {
	const deadline = 30 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var once sync.Once
	harvest := make(chan string, 1)
	var mu sync.Mutex
	var last schemas.SelectorStatus
	observe := func(st *schemas.SelectorStatus) {
		mu.Lock()
		last = *st
		mu.Unlock()
		for _, ts := range st.Targets {
			if ts.Phase == "harvest" {
				once.Do(func() { harvest <- ts.Target })
			}
		}
	}
	done := make(chan error, 1)
	go func() {
		done <- demo.Run(ctx, demo.Options{
			Speed: 3000,
			// The demo's workers heartbeat every second: staleness above that.
			Engine: selector.Config{
				LaunchTimeout:  2 * time.Second,
				ReplyTimeout:   500 * time.Millisecond,
				HeartbeatStale: 3 * time.Second,
				HostStale:      4 * time.Second,
				RecoveryGrace:  200 * time.Millisecond,
				BackoffBase:    50 * time.Millisecond,
				BackoffMax:     time.Second,
			},
			FenceAfter: 2 * time.Second, // HostStale 4 s = 2 s + two 1 s heartbeat intervals
			Tick:       10 * time.Millisecond,
			Refresh:    50 * time.Millisecond,
			Out:        io.Discard, // the view is drawn too, as the demo does
			Observe:    observe,
			Log:        testLog(),
		})
	}()

	timer := time.NewTimer(deadline)
	defer timer.Stop()
	select {
	case name := <-harvest:
		t.Logf("%s reached harvest", name)
	case err := <-done:
		t.Fatalf("demo returned before any target reached harvest: %v", err)
	case <-timer.C:
		mu.Lock()
		st := last
		mu.Unlock()
		t.Fatalf("no target reached harvest within %v: %s", deadline, describe(&st))
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo.Run: %v", err)
		}
	case <-time.After(stopTimeout):
		t.Fatalf("demo did not stop within %v of its cancel", stopTimeout)
	}
}
