// Command selector runs the taskselector service: it decides which tasks run,
// and where, on a fleet of RAM-scarce worker hosts, over NATS.
//
// With no NATS_URL it starts an embedded NATS server with JetStream, storing
// in SELECTOR_DATA_DIR. Any number of selectors may share one NATS system:
// one leads (it holds the leader lease) and the others stand by, warm (see
// package bus). With SELECTOR_HTTP_LISTEN set, it serves /metrics,
// /healthz and /readyz there. With --demo it runs the whole system on one machine:
// the embedded server, the selector and three simulated workers, with a
// status view redrawn every second.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/demo"
	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/natsembed"
	"github.com/taskselector/taskselector/internal/ops"
	"github.com/taskselector/taskselector/internal/shutdown"
)

func main() {
	demoMode := flag.Bool("demo", false, "run the demo: embedded NATS, the selector and three simulated workers")
	probeURL := flag.String("probe", "", "fetch this URL (such as http://127.0.0.1:9464/readyz), exit 0 if it answers 200 and 1 otherwise: a container health check")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: selector [--demo | --probe URL]\n\nConfiguration comes from environment variables; see the README.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *probeURL != "" {
		if err := probe(context.Background(), *probeURL); err != nil {
			fmt.Fprintf(os.Stderr, "selector: %v\n", err)
			os.Exit(1)
		}
		return
	}

	cfg, err := loadConfig()
	if err != nil {
		fmt.Fprintf(os.Stderr, "selector: bad configuration:\n%v\n", err)
		os.Exit(2)
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, stop := shutdown.OnSignals(context.Background(), sigs, slog.New(slog.NewTextHandler(os.Stderr, nil)), func(os.Signal) {
		os.Exit(shutdown.ForcedExitCode)
	})
	defer stop()

	if *demoMode {
		var host string
		var port int
		if host, port, err = splitListen(cfg.Listen); err != nil {
			fmt.Fprintf(os.Stderr, "selector: %v\n", err)
			os.Exit(2)
		}
		err = demo.Run(ctx, demo.Options{
			Host:       host,
			Port:       max(port, 0),
			Speed:      cfg.SimSpeed,
			Engine:     cfg.engine(),
			Tick:       cfg.Tick,
			Out:        os.Stdout,
			ANSI:       isTerminal(os.Stdout),
			FenceAfter: cfg.FenceAfter,
		})
	} else {
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.level()}))
		err = run(ctx, cfg, log)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "selector: %v\n", err)
		os.Exit(1)
	}
}

// run starts the service and blocks until ctx ends, then shuts down
// gracefully: launches stop, in-flight work settles, writes are flushed.
//
// With SELECTOR_HTTP_LISTEN set, it also serves the operator endpoints
// (/metrics, /healthz, /readyz) there until ctx ends.
func run(ctx context.Context, cfg config, log *slog.Logger) error {
	started := time.Now()
	var opsLn net.Listener
	if cfg.HTTPListen != "" {
		// Listen first, so that a port in use stops startup at once.
		ln, err := net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			return fmt.Errorf("SELECTOR_HTTP_LISTEN: %w", err)
		}
		defer ln.Close() // for a failed start; ops.Serve closes it otherwise
		opsLn = ln
	}
	url := cfg.NATSURL
	if url == "" {
		host, port, err := splitListen(cfg.Listen)
		if err != nil {
			return err
		}
		srv, err := natsembed.Start(ctx, natsembed.Options{StoreDir: cfg.DataDir, Host: host, Port: port})
		if err != nil {
			return fmt.Errorf("start embedded NATS server: %w", err)
		}
		defer natsembed.Shutdown(srv)
		url = srv.ClientURL()
		log.Info("embedded NATS server started", "url", url, "store", cfg.DataDir)
	}
	var authOpts []nats.Option
	if cfg.NATSURL != "" {
		// The embedded server asks for no credentials.
		var err error
		if authOpts, err = cfg.Auth.Options(); err != nil {
			return err
		}
		log.Info("connecting to NATS", "url", natsconn.RedactURL(url), "auth", cfg.Auth)
	}
	nc, err := natsconn.Connect(ctx, url, "taskselector", log, nil, nil, authOpts...)
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", natsconn.RedactURL(url), err)
	}
	defer nc.Close()
	id := cfg.selectorID()
	log = log.With("selector_id", id)
	scfg := bus.ServiceConfig{
		Prefix:            cfg.SubjectPrefix,
		Engine:            cfg.engine(),
		Tick:              cfg.Tick,
		StartedAt:         started,
		HeartbeatPending:  bus.PendingLimits{Msgs: cfg.HBPending},
		HostStatusPending: bus.PendingLimits{Msgs: cfg.HostPending},
		Store:             bus.StoreConfig{Replicas: cfg.Replicas},
		Lease:             bus.LeaseConfig{ID: id, TTL: cfg.LeaseTTL, Renew: cfg.LeaseRenew},
	}
	var cur current
	cur.set(bus.NewSelectorService(nc, scfg, log))
	if opsLn != nil {
		h := ops.Handler(&cur, ops.NewRegistry(&cur, natsconn.StatsOf(nc)))
		opsCtx, stopOps := context.WithCancel(ctx)
		served := make(chan struct{})
		go func() {
			defer close(served)
			// A failure leaves the selector running without its endpoints.
			if err := ops.Serve(opsCtx, opsLn, h, log); err != nil {
				log.Error("operator endpoints stopped", "err", err)
			}
		}()
		defer func() { stopOps(); <-served }()
	}
	for {
		err := cur.svc.Load().Run(ctx)
		if !errors.Is(err, bus.ErrDeposed) || ctx.Err() != nil {
			return err
		}
		// Deposed: it stopped acting at once. Stand by again, warm.
		log.Warn("deposed as leader; standing by again")
		scfg.StartedAt = time.Now()
		cur.set(bus.NewSelectorService(nc, scfg, log))
	}
}

// splitListen parses SELECTOR_LISTEN.
func splitListen(s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	port, perr := strconv.Atoi(p)
	if err != nil || perr != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("SELECTOR_LISTEN: want host:port such as 127.0.0.1:4222, got %q", s)
	}
	if port == 0 {
		port = -1 // a free port
	}
	return host, port, nil
}

// isTerminal reports whether f is a character device, where the demo redraws
// in place.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
