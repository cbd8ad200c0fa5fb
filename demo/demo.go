// Package demo runs the whole taskselector system in one process: an
// embedded NATS server with JetStream, the selector service, and three
// simulated workers with small RAM, working a dozen early-game targets of the
// hacking profile. `go run ./cmd/selector --demo` starts it.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/natsembed"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
	"github.com/taskselector/taskselector/workload"
)

// DefaultSpeed is the demo's game seconds per real second: fast enough that
// targets move from till to sow to harvest within a minute.
const DefaultSpeed = 300

// Hosts are the demo's simulated workers and their RAM in GiB.
var Hosts = []struct {
	Name   string
	RAMGiB int64
}{{"home", 8}, {"w16", 16}, {"w32", 32}}

// CrashTarget is the target whose first task on each host the demo makes
// crash, a little while after it starts, so that the recovery can be
// watched.
const CrashTarget = "joesguns"

// Options configure Run. Zero fields take the defaults in brackets.
type Options struct {
	// Speed is game seconds per real second [DefaultSpeed].
	Speed float64
	// Engine is the selector's configuration [selector defaults].
	Engine selector.Config
	// Tick is the selector service's tick [50ms].
	Tick time.Duration
	// Out receives the status view every Refresh; nil draws nothing.
	Out io.Writer
	// ANSI redraws the view in place (for terminals).
	ANSI bool
	// Host and Port are where the embedded NATS server listens, so that
	// tools such as `nats micro ls` can look in; the view's first line
	// names the URL. Port 0 picks a free port; Host "" is 127.0.0.1.
	Host string
	Port int
	// Refresh is the period of the status view [1s].
	Refresh time.Duration
	// Observe, when set, sees every status snapshot the view draws.
	Observe func(*schemas.SelectorStatus)
	// Log receives the components' logs [warnings and errors to stderr].
	Log *slog.Logger
	// NoFaults turns the injected crash off.
	NoFaults bool
	// FenceAfter is the workers' fence time [worker.DefaultFenceAfter]; it
	// must leave Engine.HostStale a margin of two heartbeat intervals.
	FenceAfter time.Duration
}

// Targets returns the demo's dozen targets: the early-game servers with
// money, at the demo's hacking level, best known first.
func Targets() map[string]schemas.TargetSpec {
	out := make(map[string]schemas.TargetSpec)
	for _, s := range workload.EarlyGame() {
		if len(out) == 12 {
			break
		}
		if s.IsTarget() && s.Hackable(workload.DemoLevel) {
			out[s.Name] = s.Spec(workload.DemoLevel)
		}
	}
	return out
}

// Run runs the demo until ctx ends, then stops every part cleanly.
func Run(ctx context.Context, o Options) (err error) {
	if o.Speed <= 0 {
		o.Speed = DefaultSpeed
	}
	if o.Refresh <= 0 {
		o.Refresh = time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	log := o.Log

	dir, err := os.MkdirTemp("", "taskselector-demo-")
	if err != nil {
		return fmt.Errorf("demo: data directory: %w", err)
	}
	defer os.RemoveAll(dir)

	port := o.Port
	if port == 0 {
		port = -1 // a free port
	}
	srv, err := natsembed.Start(ctx, natsembed.Options{StoreDir: dir, Host: o.Host, Port: port})
	if err != nil {
		return fmt.Errorf("demo: start NATS: %w", err)
	}
	defer natsembed.Shutdown(srv)
	url := srv.ClientURL()

	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var conns []*nats.Conn // closed once every component has stopped
	errs := make(chan error, 1+len(Hosts))
	defer func() {
		cancel()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
		close(errs)
		for e := range errs {
			if e != nil && !errors.Is(e, context.Canceled) {
				err = errors.Join(err, e)
			}
		}
	}()
	goRun := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- f()
		}()
	}

	nc, err := natsconn.Connect(ctx, url, "taskselector", log, nil, nil)
	if err != nil {
		return fmt.Errorf("demo: connect selector: %w", err)
	}
	conns = append(conns, nc)
	svc := bus.NewSelectorService(nc, bus.ServiceConfig{Engine: o.Engine, Tick: o.Tick}, log)
	goRun(func() error { return svc.Run(runCtx) })
	select {
	case <-svc.Ready():
	case <-ctx.Done():
		return ctx.Err()
	}

	// The workers fence themselves; the selector must not declare a host
	// lost before its tasks are surely stopped.
	fenceAfter := o.FenceAfter
	if fenceAfter <= 0 {
		fenceAfter = worker.DefaultFenceAfter
	}
	if err := worker.CheckFenceMargin(o.Engine.WithDefaults().HostStale, fenceAfter, worker.DefaultHeartbeatInterval); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	for i, h := range Hosts {
		wnc, err := nats.Connect(url, nats.Name("worker-"+h.Name), nats.MaxReconnects(-1))
		if err != nil {
			return fmt.Errorf("demo: connect worker %s: %w", h.Name, err)
		}
		conns = append(conns, wnc)
		ram := h.RAMGiB * workload.MiBPerGiB
		faults := worker.Faults{Seed: int64(i + 1)}
		if !o.NoFaults {
			faults.CrashTargets = []string{CrashTarget + ":1"}
			faults.CrashAfter = 20 * time.Minute // game time: a few real seconds
		}
		exec, err := worker.NewSim(worker.SimConfig{Host: h.Name, RAMMiB: ram, Speed: o.Speed, Faults: faults, Log: log})
		if err != nil {
			return fmt.Errorf("demo: worker %s: %w", h.Name, err)
		}
		agent, err := worker.New(wnc, worker.Config{Host: h.Name, RAMMiB: ram, Executor: worker.SimExecutor, KillOnShutdown: true,
			FenceAfter: fenceAfter}, exec, log)
		if err != nil {
			return fmt.Errorf("demo: worker %s: %w", h.Name, err)
		}
		goRun(func() error { defer exec.Close(); return agent.Run(runCtx) })
	}

	cl, err := client.New(nc, "")
	if err != nil {
		return fmt.Errorf("demo: client: %w", err)
	}
	for name, spec := range Targets() {
		if err := cl.PutTarget(ctx, name, spec); err != nil {
			return fmt.Errorf("demo: declare %s: %w", name, err)
		}
	}

	start := time.Now()
	tick := time.NewTicker(o.Refresh)
	defer tick.Stop()
	for {
		st := svc.Status()
		if o.Observe != nil {
			o.Observe(&st)
		}
		if o.Out != nil {
			if o.ANSI {
				io.WriteString(o.Out, "\x1b[H\x1b[2J")
			}
			fmt.Fprintf(o.Out, "NATS at %s (try: nats -s %s micro ls)\n", url, url)
			Render(o.Out, &st, time.Since(start))
			if !o.ANSI {
				io.WriteString(o.Out, "\n")
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
