// Command bench runs taskselector's benchmarks on the deterministic cluster
// simulator and writes a Markdown report with plots.
//
//	go run ./cmd/bench                 # full suite into bench-out/
//	go run ./cmd/bench --quick         # reduced suite, under a minute
//	go run ./cmd/bench --json          # also print {"runs":[...]} to stdout
//	go run ./cmd/bench -scale          # cost at 1k/10k/100k targets
//
// The constrained-RAM suite compares the selector engine with the naive
// policy it replaces and an offline upper bound on the early-game (hacking)
// and fleet (declared) workloads; see package sim and sim/report.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/taskselector/taskselector/sim/report"
)

func main() {
	if err := run(); err != nil {
		slog.Error("bench failed", "err", err)
		os.Exit(1)
	}
}

func run() error {
	out := flag.String("out", "bench-out", "folder for the report and plots")
	quick := flag.Bool("quick", false, "run a reduced set (under a minute)")
	asJSON := flag.Bool("json", false, `print {"runs":[...]} to stdout`)
	scale := flag.Bool("scale", false, "run the scale suite (1k/10k/100k targets) instead")
	scaleDur := flag.Duration("scale-duration", 20*time.Second, "virtual time of each scale run")
	repeat := flag.Int("scale-repeat", 1, "runs per scale size; the lowest cost of each is kept")
	seed := flag.Uint64("seed", 1, "simulation seed")
	crash := flag.Float64("crash-rate", -1, "fleet crashes per task-hour (default: the plan's)")
	par := flag.Int("parallel", 0, "runs at once (default GOMAXPROCS)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if *scale {
		sizes := report.ScaleSizes
		if *quick {
			sizes = sizes[:2]
		}
		rs, err := report.RunScale(ctx, sizes, *scaleDur, *seed, *repeat)
		if err != nil {
			return err
		}
		path := filepath.Join(*out, report.ScaleFile)
		if err := os.WriteFile(path, []byte(report.ScaleMarkdown(rs, *scaleDur)), 0o644); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		if !*asJSON {
			fmt.Print(report.ScaleTable(rs))
		} else if err := writeScaleJSON(rs); err != nil {
			return err
		}
		log.Info("scale report written", "path", path)
		return nil
	}

	plan := report.DefaultPlan(*quick)
	plan.Seed = *seed
	plan.Parallel = *par
	if *crash >= 0 {
		plan.FleetCrashRate = *crash
	}
	res, err := report.Run(ctx, plan)
	if err != nil {
		return err
	}
	paths, err := report.Write(*out, res)
	if err != nil {
		return err
	}
	if *asJSON {
		if err := report.WriteJSON(os.Stdout, res); err != nil {
			return err
		}
	} else {
		fmt.Print(report.Headline(res))
		fmt.Print(report.Goals(res))
	}
	log.Info("report written", "dir", *out, "files", len(paths), "elapsed", res.Elapsed.Round(time.Millisecond))
	return nil
}
