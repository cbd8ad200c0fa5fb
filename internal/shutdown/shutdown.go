// Package shutdown turns SIGINT and SIGTERM into the graceful shutdown of a
// command: the first signal ends a context, and a second one, while that
// shutdown runs, forces the exit, so that an operator can always stop a
// shutdown that hangs.
package shutdown

import (
	"context"
	"log/slog"
	"os"
	"sync"
)

// ForcedExitCode is the exit status after a second signal, as after an
// interrupt.
const ForcedExitCode = 130

// OnSignals returns a context that ends at the first signal received on
// sigs, which starts the graceful shutdown. A second signal while that
// shutdown runs is logged and handed to force, which is expected to exit the
// process (with ForcedExitCode). stop ends the watch and the context; it is
// idempotent, and a signal that arrives with it is not acted on.
func OnSignals(parent context.Context, sigs <-chan os.Signal, log *slog.Logger, force func(os.Signal)) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(parent)
	done := make(chan struct{})
	go func() {
		// next waits for a signal; false once stop was called, which wins
		// over a signal pending at the same time.
		next := func() (os.Signal, bool) {
			select {
			case sig := <-sigs:
				select {
				case <-done:
					return nil, false
				default:
					return sig, true
				}
			case <-done:
				return nil, false
			}
		}
		sig, ok := next()
		if !ok {
			return
		}
		log.Info("signal received: shutting down gracefully; send it again to exit at once", "signal", sig.String())
		cancel()
		if sig, ok = next(); ok {
			log.Error("second signal during shutdown: exiting at once", "signal", sig.String(), "status", ForcedExitCode)
			force(sig)
		}
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() { close(done) })
		cancel()
	}
}
