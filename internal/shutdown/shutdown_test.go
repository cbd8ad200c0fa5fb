package shutdown

import (
	"context"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestSecondSignalForcesExit: the first signal ends the context (the
// graceful shutdown); a second one during it is handed to force (which exits
// the process in main). Before, the second signal was swallowed.
func TestSecondSignalForcesExit(t *testing.T) {
	sigs := make(chan os.Signal, 2)
	forced := make(chan os.Signal, 1)
	ctx, stop := OnSignals(context.Background(), sigs, slog.New(slog.DiscardHandler), func(s os.Signal) { forced <- s })
	defer stop()
	if ctx.Err() != nil {
		t.Fatal("context ended before any signal")
	}
	sigs <- syscall.SIGTERM
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the first signal did not end the context")
	}
	select {
	case s := <-forced:
		t.Fatalf("forced exit on the first signal (%v)", s)
	case <-time.After(50 * time.Millisecond):
	}
	sigs <- os.Interrupt
	select {
	case s := <-forced:
		if s != os.Interrupt {
			t.Fatalf("forced with %v, want interrupt", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second signal was swallowed")
	}
}

// TestSignalWatchStops: after stop, signals are no longer acted on.
func TestSignalWatchStops(t *testing.T) {
	sigs := make(chan os.Signal, 2)
	forced := make(chan os.Signal, 1)
	ctx, stop := OnSignals(context.Background(), sigs, slog.New(slog.DiscardHandler), func(s os.Signal) { forced <- s })
	stop()
	stop() // idempotent
	if ctx.Err() == nil {
		t.Fatal("stop did not end the context")
	}
	sigs <- os.Interrupt
	sigs <- os.Interrupt
	select {
	case s := <-forced:
		t.Fatalf("forced exit after stop (%v)", s)
	case <-time.After(100 * time.Millisecond):
	}
}
