package soak

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is what a soak found.
type Result struct {
	// Seed is the seed the soak ran with.
	Seed int64
	// Duration is the wall time from the first fault draw to the end of the
	// final checks (settling included).
	Duration time.Duration
	// Faults counts the faults injected, by kind.
	Faults map[string]int
	// Recoveries counts the recoveries measured; Recovery summarises them
	// all and ByKind per fault kind. A crash, hang or silent launch
	// recovers when its target's next process starts; a lost, bounced or
	// partitioned host when every target it ran has a new process; a
	// selector or NATS restart when the first process starts after it
	// (a target is always pending then).
	Recoveries int
	Recovery   Stats
	ByKind     map[string]Stats
	// Goals are the recovery goals of issue 8, judged on these figures.
	Goals []Goal
	// Violations are the auditor's findings during the run, the settled
	// system's breaches, stalled recoveries, and faults that should need
	// no recovery but requeued targets.
	Violations []string
	// Heartbeats counts the heartbeat messages the selectors handled.
	Heartbeats uint64
	// Launches counts the launch requests the auditor saw.
	Launches int
	// Timers are the system's timers.
	Timers Timers
}

// Goal is one recovery goal and how the soak measured against it.
type Goal struct {
	Name  string        // what it bounds
	Kinds []string      // the fault kinds it covers
	Stat  string        // "p99" or "max"
	Limit time.Duration // the goal
	Value time.Duration // the measured figure (0 when N is 0)
	N     int           // recoveries measured
	Met   bool          // Value <= Limit (and something was measured)
}

// goals returns issue 8's recovery goals for the timers t, judged on byKind.
func goals(t Timers, byKind map[string][]time.Duration) []Goal {
	gs := []Goal{
		{Name: "crashed task relaunched within heartbeat stale + 1s", Kinds: []string{KindCrash, KindCrashSilent},
			Stat: "p99", Limit: t.HeartbeatStale + time.Second},
		{Name: "lost host's targets relaunched within host stale + 2s", Kinds: []string{KindHostLoss, KindHostBounce, KindPartition},
			Stat: "p99", Limit: t.HostStale + 2*time.Second},
		{Name: "restarted selector launching within grace + 1s", Kinds: []string{KindSelectorKill, KindSelectorRestart},
			Stat: "max", Limit: t.RecoveryGrace + time.Second},
	}
	for i := range gs {
		g := &gs[i]
		var ds []time.Duration
		for _, k := range g.Kinds {
			ds = append(ds, byKind[k]...)
		}
		s := summarize(ds)
		g.N = s.N
		if g.Stat == "max" {
			g.Value = s.Max
		} else {
			g.Value = s.P99
		}
		g.Met = s.N > 0 && g.Value <= g.Limit
	}
	return gs
}

// jsonStats is Stats in the report's JSON.
type jsonStats struct {
	N    int     `json:"n"`
	P50S float64 `json:"p50_s"`
	P99S float64 `json:"p99_s"`
	MaxS float64 `json:"max_s"`
}

type jsonGoal struct {
	Name   string   `json:"name"`
	Kinds  []string `json:"kinds"`
	Stat   string   `json:"stat"`
	LimitS float64  `json:"limit_s"`
	ValueS float64  `json:"value_s"`
	N      int      `json:"n"`
	Met    bool     `json:"met"`
}

// Report is the JSON object cmd/soak prints as its last line.
type Report struct {
	DurationS      float64              `json:"duration_s"`
	Seed           int64                `json:"seed"`
	Faults         map[string]int       `json:"faults"`
	Recoveries     int                  `json:"recoveries"`
	RecoveryP50S   float64              `json:"recovery_p50_s"`
	RecoveryP99S   float64              `json:"recovery_p99_s"`
	RecoveryMaxS   float64              `json:"recovery_max_s"`
	Violations     int                  `json:"violations"`
	Heartbeats     uint64               `json:"heartbeats"`
	Launches       int                  `json:"launches"`
	RecoveryByKind map[string]jsonStats `json:"recovery_by_kind"`
	Goals          []jsonGoal           `json:"goals"`
}

// secs rounds d to milliseconds, in seconds.
func secs(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }

// Report returns the result's JSON report.
func (r *Result) Report() Report {
	rep := Report{
		DurationS:      secs(r.Duration),
		Seed:           r.Seed,
		Faults:         map[string]int{},
		Recoveries:     r.Recoveries,
		RecoveryP50S:   secs(r.Recovery.P50),
		RecoveryP99S:   secs(r.Recovery.P99),
		RecoveryMaxS:   secs(r.Recovery.Max),
		Violations:     len(r.Violations),
		Heartbeats:     r.Heartbeats,
		Launches:       r.Launches,
		RecoveryByKind: map[string]jsonStats{},
		Goals:          []jsonGoal{},
	}
	for k, n := range r.Faults {
		rep.Faults[k] = n
	}
	for k, s := range r.ByKind {
		rep.RecoveryByKind[k] = jsonStats{N: s.N, P50S: secs(s.P50), P99S: secs(s.P99), MaxS: secs(s.Max)}
	}
	for _, g := range r.Goals {
		rep.Goals = append(rep.Goals, jsonGoal{Name: g.Name, Kinds: g.Kinds, Stat: g.Stat, LimitS: secs(g.Limit),
			ValueS: secs(g.Value), N: g.N, Met: g.Met})
	}
	return rep
}

// JSON returns the report as one line of JSON, without a newline.
func (r *Result) JSON() ([]byte, error) { return json.Marshal(r.Report()) }

// WriteTable writes the result as a readable table: faults and recoveries
// per kind, the totals, and the goals.
func (r *Result) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "soak: %v, seed %d, %d heartbeats handled, %d launches, %d violations\n\n",
		r.Duration.Round(time.Second), r.Seed, r.Heartbeats, r.Launches, len(r.Violations))
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "fault\tinjected\trecovered\tp50 s\tp99 s\tmax s\t")
	names := Kinds()
	for k := range r.ByKind {
		if !slices.Contains(names, k) {
			names = append(names, k)
		}
	}
	for _, k := range names {
		n, s := r.Faults[k], r.ByKind[k]
		if n == 0 && s.N == 0 {
			continue
		}
		if s.N == 0 {
			fmt.Fprintf(tw, "%s\t%d\t-\t-\t-\t-\t\n", k, n)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%.2f\t%.2f\t\n", k, n, s.N, s.P50.Seconds(), s.P99.Seconds(), s.Max.Seconds())
	}
	total := 0
	for _, n := range r.Faults {
		total += n
	}
	fmt.Fprintf(tw, "all\t%d\t%d\t%.2f\t%.2f\t%.2f\t\n", total, r.Recoveries,
		r.Recovery.P50.Seconds(), r.Recovery.P99.Seconds(), r.Recovery.Max.Seconds())
	if err := tw.Flush(); err != nil {
		return err
	}
	b.WriteString("\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "goal\tlimit\tmeasured\tn\tmet")
	for _, g := range r.Goals {
		met := "yes"
		switch {
		case g.N == 0:
			met = "not measured"
		case !g.Met:
			met = "NO"
		}
		fmt.Fprintf(tw, "%s\t%v\t%s %.2fs\t%d\t%s\n", g.Name, g.Limit, g.Stat, g.Value.Seconds(), g.N, met)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
