// Command loadtargets declares targets in the targets bucket of a running
// taskselector, as an operator would with the Go client, and exits: the
// one-shot service of deploy/compose.yaml that loads the demo's targets.
//
//	loadtargets -demo                 # the demo's dozen early-game targets
//	loadtargets -file targets.json    # {"name": TargetSpec, ...}
//
// It connects to NATS_URL [nats://127.0.0.1:4222] with the NATS credentials
// every binary takes (NATS_CREDS, NATS_USER and NATS_PASSWORD,
// NATS_NKEY_SEED, NATS_TLS_CA, NATS_TLS_CERT and NATS_TLS_KEY), waits up to
// -wait for the selector to have created the bucket, puts every target and
// exits 0. A bad setting exits 2, a failure 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/demo"
	"github.com/taskselector/taskselector/internal/envcfg"
	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/schemas"
)

// config is the command's environment.
type config struct {
	natsconn.Auth
	NATSURL string `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222" form:"a NATS URL such as nats://127.0.0.1:4222 (comma-separated for several)"`
}

// errUsage marks a bad flag or setting (exit status 2).
var errUsage = errors.New("usage")

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(context.Background(), os.Args[1:], log); err != nil {
		fmt.Fprintln(os.Stderr, "loadtargets:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// run parses args and the environment, and loads the targets.
func run(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("loadtargets", flag.ContinueOnError)
	useDemo := fs.Bool("demo", false, "load the demo's targets")
	file := fs.String("file", "", "load the targets of this JSON file: an object of target name to TargetSpec")
	wait := fs.Duration("wait", 2*time.Minute, "how long to wait for NATS and the selector's targets bucket")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if *useDemo == (*file != "") || fs.NArg() > 0 || *wait <= 0 {
		return fmt.Errorf("%w: give -demo or -file PATH (one of them), and a positive -wait", errUsage)
	}
	var cfg config
	if err := envcfg.Load(&cfg); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if err := errors.Join(cfg.Auth.Check(), cfg.Auth.CheckURL(cfg.NATSURL)); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	targets := demo.Targets()
	if *file != "" {
		var err error
		if targets, err = readTargets(*file); err != nil {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
	}
	opts, err := cfg.Auth.Options()
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	ctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	log.Info("connecting to NATS", "url", natsconn.RedactURL(cfg.NATSURL), "auth", cfg.Auth)
	nc, err := natsconn.Connect(ctx, cfg.NATSURL, "loadtargets", log, nil, nil, opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	return load(ctx, nc, targets, log)
}

// readTargets reads and checks a file of target specs.
func readTargets(path string) (map[string]schemas.TargetSpec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-file: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("-file %s: want a JSON object of target name to spec: %w", path, err)
	}
	out := make(map[string]schemas.TargetSpec, len(raw))
	for name, r := range raw {
		spec, err := schemas.DecodeTargetSpec(r)
		if err != nil {
			return nil, fmt.Errorf("-file %s: target %q: %w", path, name, err)
		}
		out[name] = spec
	}
	return out, nil
}

// load puts every target, in name order, retrying each until ctx ends while
// the bucket does not exist yet (the selector creates it when it starts).
func load(ctx context.Context, nc *nats.Conn, targets map[string]schemas.TargetSpec, log *slog.Logger) error {
	c, err := client.New(nc, "")
	if err != nil {
		return err
	}
	names := make([]string, 0, len(targets))
	for n := range targets {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		for attempt := 1; ; attempt++ {
			err := c.PutTarget(ctx, name, targets[name])
			if err == nil {
				break
			}
			d := natsconn.ReconnectDelay(attempt)
			log.Warn("cannot put target yet; retrying", "target", name, "attempt", attempt, "wait", d, "err", err)
			select {
			case <-ctx.Done():
				return fmt.Errorf("put target %q: %w", name, err)
			case <-time.After(d):
			}
		}
	}
	log.Info("targets loaded", "count", len(names))
	return nil
}
