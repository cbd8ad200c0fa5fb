package report

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/sim"
)

func tinyPlan() Plan {
	return Plan{
		Seed:           3,
		EarlyGameGiB:   []int{16, 256},
		FleetPct:       []float64{10, 100},
		EarlyDuration:  6 * time.Minute,
		FleetDuration:  3 * time.Minute,
		FleetCrashRate: 5,
		TimelineGiB:    256,
		TimelinePct:    -1, // no fleet timeline: rendering is slow under -race
		Quick:          true,
	}
}

func TestWriteReport(t *testing.T) {
	pngDPI = 30
	defer func() { pngDPI = 110 }()
	res, err := Run(context.Background(), tinyPlan())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	paths, err := Write(dir, res)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{ReportFile, JSONFile}
	for _, p := range []string{PlotGoodputEarly, PlotGoodputFleet, PlotFailedEarly, PlotFailedFleet,
		"timeline-early-game-256GiB-selector", "timeline-early-game-256GiB-naive"} {
		want = append(want, p+".png", p+".svg")
	}
	if len(paths) != len(want) {
		t.Errorf("wrote %d files, want %d: %v", len(paths), len(want), paths)
	}
	for _, w := range want {
		fi, err := os.Stat(filepath.Join(dir, w))
		if err != nil {
			t.Errorf("missing %s: %v", w, err)
			continue
		}
		if fi.Size() < 200 {
			t.Errorf("%s is only %d bytes", w, fi.Size())
		}
	}
	png, _ := os.ReadFile(filepath.Join(dir, PlotGoodputFleet+".png"))
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("%s.png is not a PNG", PlotGoodputFleet)
	}
	svg, _ := os.ReadFile(filepath.Join(dir, PlotGoodputFleet+".svg"))
	if !bytes.Contains(svg, []byte("<svg")) {
		t.Errorf("%s.svg is not an SVG", PlotGoodputFleet)
	}
	md, _ := os.ReadFile(filepath.Join(dir, ReportFile))
	for _, s := range []string{"## Headline", "## Goals", "| 256 |", PlotGoodputEarly + ".png", "timeline-early-game-256GiB-naive.png"} {
		if !strings.Contains(string(md), s) {
			t.Errorf("report lacks %q", s)
		}
	}

	// The JSON: one record per workload, level and policy (bound included),
	// with the measures the issue names.
	var doc struct {
		Runs []map[string]any `json:"runs"`
	}
	js, _ := os.ReadFile(filepath.Join(dir, JSONFile))
	if err := json.Unmarshal(js, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Runs) != 4*3 {
		t.Fatalf("%d records, want 12", len(doc.Runs))
	}
	for _, r := range doc.Runs {
		for _, k := range []string{"workload", "ram_gib", "policy", "failed_launches_per_h", "useful_ram_fraction",
			"time_to_last_phase_s", "stranded_targets", "duplicate_tasks"} {
			if _, ok := r[k]; !ok {
				t.Errorf("record %v lacks %s", r, k)
			}
		}
		_, inc := r["income_per_s"]
		_, ph := r["phases_per_h"]
		if (r["workload"] == sim.WorkloadEarlyGame) != inc || inc == ph {
			t.Errorf("record %v: want income_per_s for early-game and phases_per_h for fleet", r)
		}
		if d, ok := r["duration_s"].(float64); !ok || d <= 0 {
			t.Errorf("record %v: no duration_s", r)
		}
		if r["policy"] == sim.PolicyBound {
			old := "bound_old_phases_per_h"
			if inc {
				old = "bound_old_income_per_s"
			}
			if _, ok := r[old]; !ok {
				t.Errorf("bound record %v lacks %s", r, old)
			}
		}
		if r["policy"] == sim.PolicySelector && r["duplicate_tasks"].(float64) != 0 {
			t.Errorf("selector duplicates: %v", r)
		}
	}
	// The same plan again gives the same records.
	again, err := Run(context.Background(), tinyPlan())
	if err != nil {
		t.Fatal(err)
	}
	var a, b bytes.Buffer
	_ = WriteJSON(&a, res)
	_ = WriteJSON(&b, again)
	if a.String() != b.String() {
		t.Error("two runs of one plan gave different JSON")
	}
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, tinyPlan()); err == nil {
		t.Fatal("a cancelled run succeeded")
	}
}

func TestScaleSmall(t *testing.T) {
	rs, err := RunScale(context.Background(), [][2]int{{200, 20}, {2000, 200}}, 8*time.Second, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Launches < uint64(r.Targets) || r.Heartbeats == 0 || r.Ticks == 0 || r.Records != r.Targets || r.Active != r.Targets {
			t.Errorf("%d targets: %+v", r.Targets, r)
		}
		if r.LaunchNs <= 0 || r.BytesPerTarget <= 0 || r.RebuildMs <= 0 {
			t.Errorf("%d targets: missing costs %+v", r.Targets, r)
		}
	}
	md := ScaleMarkdown(rs, 8*time.Second)
	if !strings.Contains(md, "| 2000 / 200 |") || !strings.Contains(md, "(×") {
		t.Errorf("scale report lacks rows or growth factors:\n%s", md)
	}
}
