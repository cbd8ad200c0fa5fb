// Command soak runs the whole taskselector system in this process (an
// embedded NATS server, the selector, simulated workers, an outside
// auditor) and injects random faults into it for a while: task crashes and
// hangs, silent launches, lost, returning and partitioned hosts, selector
// kills and restarts, NATS server restarts, heartbeat floods, slow store
// writes, duplicated and hostile messages. It then lets the system settle
// and checks it. See package internal/soak.
//
//	go run ./cmd/soak -duration 10m [-json] [-seed N]
//
// Progress and every violation go to stderr. Stdout gets a table of faults
// and recovery times (unless -json) and, as its last line in both modes, one
// JSON object with the figures. The exit status is 1 when a violation was
// found, 2 for bad flags, 3 when the soak could not run, and 130 after a
// second interrupt. A first SIGINT or SIGTERM ends the faults early; the
// soak then settles and reports as usual.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/taskselector/taskselector/internal/soak"
)

// Exit statuses.
const (
	exitOK         = 0
	exitViolations = 1
	exitUsage      = 2
	exitFailed     = 3
	exitForced     = 130
)

// config is what the flags say.
type config struct {
	duration   time.Duration
	jsonOnly   bool
	seed       int64
	hosts      int
	targets    int
	interval   time.Duration
	settle     time.Duration
	kinds      []string
	components slog.Level // the components' log level; componentsOff: none
	quiet      bool
	trace      bool
}

// componentsOff turns the components' logs off.
const componentsOff = slog.Level(100)

// parseFlags reads the command line (without the program name).
func parseFlags(args []string, output io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.DurationVar(&c.duration, "duration", time.Minute, "how long to inject faults (settling comes after)")
	fs.BoolVar(&c.jsonOnly, "json", false, "print only the JSON line on stdout, no table")
	fs.Int64Var(&c.seed, "seed", 1, "seed of the faults, the targets and the selector")
	fs.IntVar(&c.hosts, "hosts", 5, "worker hosts at the start (at least 3)")
	fs.IntVar(&c.targets, "targets", 10, "declared targets (besides one that fits no host)")
	fs.DurationVar(&c.interval, "interval", 2*time.Second, "mean time between two fault draws")
	fs.DurationVar(&c.settle, "settle", time.Minute, "bound on the wait for the system to settle after the faults")
	kinds := fs.String("kinds", "", "comma-separated fault kinds to draw from (default all: "+strings.Join(soak.Kinds(), ",")+")")
	verbose := fs.Bool("v", false, "also log the components' warnings and errors (selector, workers, connections); same as -component-log warn")
	componentLog := fs.String("component-log", "off", "level of the components' logs: off, debug, info, warn or error")
	fs.BoolVar(&c.quiet, "q", false, "log only warnings and errors of the soak itself")
	fs.BoolVar(&c.trace, "trace", false, "also log every launch, kill and ps request and every task event on the bus")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: soak [-duration D] [-json] [-seed N] [flags]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	c.components = componentsOff
	if *verbose {
		c.components = slog.LevelWarn
	}
	if *componentLog != "off" {
		if err := c.components.UnmarshalText([]byte(*componentLog)); err != nil {
			return c, fmt.Errorf("-component-log: want off, debug, info, warn or error, got %q", *componentLog)
		}
	}
	switch {
	case c.duration <= 0:
		return c, fmt.Errorf("-duration must be positive, got %v", c.duration)
	case c.interval <= 0:
		return c, fmt.Errorf("-interval must be positive, got %v", c.interval)
	case c.settle <= 0:
		return c, fmt.Errorf("-settle must be positive, got %v", c.settle)
	case c.hosts < 3:
		return c, fmt.Errorf("-hosts must be at least 3, got %d", c.hosts)
	case c.targets < 1:
		return c, fmt.Errorf("-targets must be at least 1, got %d", c.targets)
	}
	if *kinds != "" {
		known := soak.Kinds()
		for _, k := range strings.Split(*kinds, ",") {
			k = strings.TrimSpace(k)
			if !contains(known, k) {
				return c, fmt.Errorf("-kinds: unknown fault kind %q (have %s)", k, strings.Join(known, ","))
			}
			c.kinds = append(c.kinds, k)
		}
	}
	return c, nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// options turns the flags into the soak's options.
func (c config) options(stderr io.Writer) soak.Options {
	level := slog.LevelInfo
	switch {
	case c.trace:
		level = slog.LevelDebug
	case c.quiet:
		level = slog.LevelWarn
	}
	o := soak.Options{
		Duration: c.duration,
		Seed:     c.seed,
		Hosts:    c.hosts,
		Targets:  c.targets,
		Interval: c.interval,
		Settle:   c.settle,
		Kinds:    c.kinds,
		Log:      slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
	}
	if c.components != componentsOff {
		o.ComponentLog = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: c.components}))
	}
	return o
}

// report writes the result: the violations to stderr, the table (unless
// jsonOnly) and the JSON line to stdout. It returns the exit status.
func report(stdout, stderr io.Writer, res *soak.Result, jsonOnly bool) int {
	for _, v := range res.Violations {
		fmt.Fprintf(stderr, "VIOLATION: %s\n", v)
	}
	line, err := res.JSON()
	if err != nil {
		fmt.Fprintf(stderr, "soak: encode the report: %v\n", err)
		return exitFailed
	}
	if !jsonOnly {
		if err := res.WriteTable(stdout); err != nil {
			fmt.Fprintf(stderr, "soak: write the table: %v\n", err)
		}
		fmt.Fprintln(stdout)
	}
	fmt.Fprintf(stdout, "%s\n", line)
	if len(res.Violations) > 0 {
		return exitViolations
	}
	return exitOK
}

// run parses args, runs the soak until it ends or ctx does, and reports.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "soak: %v\n", err)
		return exitUsage
	}
	res, err := soak.Run(ctx, c.options(stderr))
	if err != nil {
		fmt.Fprintf(stderr, "soak: %v\n", err)
		return exitFailed
	}
	return report(stdout, stderr, &res, c.jsonOnly)
}

func main() {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "soak: %v: ending the faults, then settling and reporting; send it again to exit at once\n", sig)
		cancel()
		sig = <-sigs
		fmt.Fprintf(os.Stderr, "soak: %v again: exiting at once\n", sig)
		os.Exit(exitForced)
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	cancel()
	os.Exit(code)
}
