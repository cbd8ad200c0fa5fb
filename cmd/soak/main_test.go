package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/internal/soak"
)

func TestParseFlagsDefaults(t *testing.T) {
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := config{duration: time.Minute, seed: 1, hosts: 5, targets: 10, interval: 2 * time.Second,
		settle: time.Minute, components: componentsOff}
	if !equalConfig(c, want) {
		t.Errorf("defaults %+v, want %+v", c, want)
	}
}

func equalConfig(a, b config) bool {
	return a.duration == b.duration && a.jsonOnly == b.jsonOnly && a.seed == b.seed && a.hosts == b.hosts &&
		a.targets == b.targets && a.interval == b.interval && a.settle == b.settle && slices.Equal(a.kinds, b.kinds) &&
		a.components == b.components && a.quiet == b.quiet && a.trace == b.trace
}

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"-duration", "10m", "-json", "-seed", "42", "-hosts", "7", "-targets", "3",
		"-interval", "500ms", "-settle", "20s", "-kinds", "crash, partition", "-v", "-q", "-trace"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := config{duration: 10 * time.Minute, jsonOnly: true, seed: 42, hosts: 7, targets: 3, interval: 500 * time.Millisecond,
		settle: 20 * time.Second, kinds: []string{"crash", "partition"}, components: slog.LevelWarn, quiet: true, trace: true}
	if !equalConfig(c, want) {
		t.Errorf("got %+v, want %+v", c, want)
	}
	if c, err = parseFlags([]string{"-component-log", "debug"}, io.Discard); err != nil || c.components != slog.LevelDebug {
		t.Errorf("-component-log debug: %v, %v", c.components, err)
	}
	o := c.options(io.Discard)
	if o.Duration != time.Minute || o.Seed != 1 || o.ComponentLog == nil || o.Log == nil {
		t.Errorf("options %+v", o)
	}
}

func TestParseFlagsRejects(t *testing.T) {
	for _, args := range [][]string{
		{"-duration", "0s"},
		{"-duration", "soon"},
		{"-interval", "-1s"},
		{"-settle", "0"},
		{"-hosts", "2"},
		{"-targets", "0"},
		{"-kinds", "crash,earthquake"},
		{"-component-log", "loud"},
		{"-nope"},
		{"extra"},
	} {
		var out bytes.Buffer
		if _, err := parseFlags(args, &out); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	if _, err := parseFlags([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-hosts", "1"}, io.Discard, &stderr); code != exitUsage {
		t.Errorf("bad flags: exit %d, want %d (%s)", code, exitUsage, stderr.String())
	}
}

func sampleResult(violations ...string) soak.Result {
	return soak.Result{
		Seed:       3,
		Duration:   90*time.Second + 500*time.Millisecond,
		Faults:     map[string]int{soak.KindCrash: 4, soak.KindHostLoss: 1, soak.KindHostile: 2},
		Recoveries: 5,
		Recovery:   soak.Stats{N: 5, P50: 300 * time.Millisecond, P99: 4 * time.Second, Max: 4 * time.Second},
		ByKind: map[string]soak.Stats{
			soak.KindCrash:    {N: 4, P50: 250 * time.Millisecond, P99: 2200 * time.Millisecond, Max: 2200 * time.Millisecond},
			soak.KindHostLoss: {N: 1, P50: 4 * time.Second, P99: 4 * time.Second, Max: 4 * time.Second},
		},
		Goals: []soak.Goal{{Name: "crashed task relaunched within heartbeat stale + 1s", Kinds: []string{soak.KindCrash},
			Stat: "p99", Limit: 3 * time.Second, Value: 2200 * time.Millisecond, N: 4, Met: true}},
		Violations: violations,
		Heartbeats: 12345,
		Launches:   67,
	}
}

// lastLine returns the last line of out and checks that out ends with a
// newline.
func lastLine(t *testing.T, out string) string {
	t.Helper()
	if !strings.HasSuffix(out, "\n") {
		t.Fatalf("output does not end with a newline: %q", out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	return lines[len(lines)-1]
}

func TestReportEndsWithTheJSONLine(t *testing.T) {
	for _, jsonOnly := range []bool{false, true} {
		var stdout, stderr bytes.Buffer
		res := sampleResult()
		if code := report(&stdout, &stderr, &res, jsonOnly); code != exitOK {
			t.Errorf("exit %d without violations", code)
		}
		line := lastLine(t, stdout.String())
		var got map[string]any
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("last line %q is not a JSON object: %v", line, err)
		}
		for _, key := range []string{"duration_s", "faults", "recoveries", "recovery_p50_s", "recovery_p99_s",
			"recovery_max_s", "violations", "heartbeats", "launches", "recovery_by_kind", "goals"} {
			if _, ok := got[key]; !ok {
				t.Errorf("JSON line has no %q: %s", key, line)
			}
		}
		var rep soak.Report
		if err := json.Unmarshal([]byte(line), &rep); err != nil {
			t.Fatal(err)
		}
		if rep.DurationS != 90.5 || rep.Faults[soak.KindCrash] != 4 || rep.Recoveries != 5 || rep.RecoveryP50S != 0.3 ||
			rep.RecoveryP99S != 4 || rep.RecoveryMaxS != 4 || rep.Violations != 0 || rep.Heartbeats != 12345 ||
			rep.Launches != 67 || rep.RecoveryByKind[soak.KindCrash].P99S != 2.2 || len(rep.Goals) != 1 || !rep.Goals[0].Met {
			t.Errorf("report %+v", rep)
		}
		lines := strings.Count(stdout.String(), "\n")
		switch {
		case jsonOnly && lines != 1:
			t.Errorf("-json: %d lines on stdout, want the JSON line alone:\n%s", lines, stdout.String())
		case !jsonOnly && !strings.Contains(stdout.String(), "host_loss") && !strings.Contains(stdout.String(), "goal"):
			t.Errorf("no table:\n%s", stdout.String())
		}
		if stderr.Len() != 0 {
			t.Errorf("stderr without violations: %s", stderr.String())
		}
	}
}

func TestReportViolationsExitNonZero(t *testing.T) {
	var stdout, stderr bytes.Buffer
	res := sampleResult("overlap: two of a", "stalled: b")
	if code := report(&stdout, &stderr, &res, true); code != exitViolations {
		t.Errorf("exit %d, want %d", code, exitViolations)
	}
	var rep soak.Report
	if err := json.Unmarshal([]byte(lastLine(t, stdout.String())), &rep); err != nil || rep.Violations != 2 {
		t.Errorf("violations %d (%v)", rep.Violations, err)
	}
	for _, v := range res.Violations {
		if !strings.Contains(stderr.String(), "VIOLATION: "+v+"\n") {
			t.Errorf("stderr lacks %q:\n%s", v, stderr.String())
		}
	}
}

// TestRunEndToEnd runs the command for a few seconds of crashes.
func TestRunEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a short soak; -short")
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"-duration", "3s", "-json", "-q", "-kinds", "crash", "-interval", "1s",
		"-hosts", "3", "-targets", "3", "-settle", "20s"}, &stdout, &stderr)
	line := lastLine(t, stdout.String())
	var rep soak.Report
	if err := json.Unmarshal([]byte(line), &rep); err != nil {
		t.Fatalf("last line %q: %v\nstderr:\n%s", line, err, stderr.String())
	}
	if code != exitOK || rep.Violations != 0 || rep.Launches < 3 || rep.Heartbeats == 0 {
		t.Errorf("exit %d, report %s\nstderr:\n%s", code, line, stderr.String())
	}
}
