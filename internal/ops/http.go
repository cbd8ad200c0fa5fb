package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/taskselector/taskselector/schemas"
)

// Timeouts of the HTTP server.
const (
	// ReadHeaderTimeout bounds the reading of a request's headers.
	ReadHeaderTimeout = 5 * time.Second
	// WriteTimeout bounds the handling of a request, a scrape included.
	WriteTimeout = 30 * time.Second
	// IdleTimeout closes kept-alive connections idle for this long.
	IdleTimeout = 2 * time.Minute
	// ShutdownTimeout bounds the wait for requests in flight at shutdown.
	ShutdownTimeout = 5 * time.Second
)

// Handler returns the operator endpoints:
//
//   - /metrics: what reg gathers, in the Prometheus formats;
//   - /healthz: 200 "ok" while the process runs;
//   - /readyz: 200 "ready" when src's status says ready, else 503 with the
//     reason launches are stopped (or the degraded reason, or "starting").
//     A standby (role standby) is never ready there: only the leader is.
//     /readyz?role=any is also 200 ("standby") for a standby that watches
//     the buckets and can take over, for health checks of every selector.
func Handler(src Source, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		st := src.Status()
		if st.Ready {
			writeText(w, http.StatusOK, "ready")
			return
		}
		if r.URL.Query().Get("role") == "any" && st.Role == schemas.RoleStandby && !st.Recovering {
			writeText(w, http.StatusOK, "standby")
			return
		}
		reason := st.LaunchesStopped
		if reason == "" {
			reason = st.DegradedReason
		}
		if reason == "" {
			reason = "starting"
		}
		writeText(w, http.StatusServiceUnavailable, "not ready: "+reason)
	})
	return mux
}

func writeText(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = fmt.Fprintln(w, msg)
}

// Serve serves h on ln until ctx ends, then shuts the server down
// gracefully, waiting at most ShutdownTimeout for requests in flight. It
// closes ln. It returns nil after a shutdown caused by ctx, and the error
// otherwise.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("operator endpoints serving", "addr", ln.Addr().String())

	select {
	case err := <-served:
		return fmt.Errorf("serve operator endpoints on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		_ = srv.Close()
		err = fmt.Errorf("shut down operator endpoints: requests still running after %s", ShutdownTimeout)
	} else if err != nil {
		err = fmt.Errorf("shut down operator endpoints: %w", err)
	}
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = fmt.Errorf("serve operator endpoints: %w", serr)
	}
	return err
}
