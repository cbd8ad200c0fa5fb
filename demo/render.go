package demo

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// Render writes one frame of the status view: targets with phase, state,
// host, budget and heartbeat age; hosts with RAM bars; the backoff level and
// the launch and failure counts.
func Render(w io.Writer, st *schemas.SelectorStatus, elapsed time.Duration) {
	var b strings.Builder
	mode := "ready"
	switch {
	case st.Degraded:
		mode = strings.ToUpper(st.Disruption) + " DISRUPTION: " + st.DegradedReason
	case st.LaunchesStopped != "":
		mode = "launches stopped: " + st.LaunchesStopped
	}
	fmt.Fprintf(&b, "taskselector demo  %s  (%s)  Ctrl-C stops\n\n", elapsed.Truncate(time.Second), mode)

	fmt.Fprintf(&b, "%-16s %-8s %-10s %-8s %10s %10s %7s  %s\n",
		"TARGET", "PHASE", "STATE", "HOST", "BUDGET", "FULL", "HB AGE", "NOTE")
	for _, t := range st.Targets {
		budget, age := "-", "-"
		if t.BudgetMiB > 0 {
			budget = mib(t.BudgetMiB)
			if t.FullMiB > t.BudgetMiB {
				budget += "*"
			}
		}
		if t.TaskID != "" && t.State != schemas.TargetLaunching {
			age = fmt.Sprintf("%.1fs", float64(t.HeartbeatAgeMS)/1000)
		}
		fmt.Fprintf(&b, "%-16s %-8s %-10s %-8s %10s %10s %7s  %s\n",
			clip(t.Target, 16), clip(t.Phase, 8), t.State, clip(t.Host, 8), budget, mib(t.FullMiB), age, clip(t.Reason, 48))
	}
	b.WriteString("  (* scaled down: budget below the full size)\n\n")

	for _, h := range st.Hosts {
		fmt.Fprintf(&b, "%-8s %s %9s / %-9s reserved %-9s tasks %d%s\n",
			clip(h.Host, 8), bar(h.ReservedMiB, h.UsedMiB, h.TotalMiB, 30), mib(max(h.ReservedMiB, h.UsedMiB)), mib(h.TotalMiB),
			mib(h.ReservedMiB), h.Tasks, hostFlags(h))
	}

	c := st.Counters
	causes := make([]string, 0, len(c.Failures))
	var failures uint64
	for k, v := range c.Failures {
		failures += v
		causes = append(causes, fmt.Sprintf("%s=%d", k, v))
	}
	slices.Sort(causes)
	fmt.Fprintf(&b, "\nbackoff level %d", st.Backoff.Level)
	if !st.Backoff.NextLaunchAt.IsZero() {
		if d := time.Until(st.Backoff.NextLaunchAt); d > 0 {
			fmt.Fprintf(&b, " (next launch in %.1fs)", d.Seconds())
		}
	}
	fmt.Fprintf(&b, "   launches %d  confirmed %d  phases done %d  requeues %d  kills %d  failures %d %s\n",
		c.Launches, c.Confirmed, c.PhasesCompleted, c.Requeues, c.Kills, failures, strings.Join(causes, " "))
	io.WriteString(w, b.String())
}

func hostFlags(h schemas.HostStatusLine) string {
	var f []string
	if h.Lost {
		f = append(f, "LOST")
	} else if h.Stale {
		f = append(f, "stale")
	}
	if h.Draining {
		f = append(f, "draining")
	}
	if h.Avoided {
		f = append(f, "avoided")
	}
	if len(f) == 0 {
		return ""
	}
	return "  [" + strings.Join(f, ",") + "]"
}

// bar draws reserved RAM as '#' and further reported use as '+'.
func bar(reserved, used, total int64, width int) string {
	if total <= 0 {
		return "[" + strings.Repeat("?", width) + "]"
	}
	cells := func(v int64) int { return int(min(max(v, 0)*int64(width)/total, int64(width))) }
	r := cells(reserved)
	u := max(cells(used)-r, 0)
	return "[" + strings.Repeat("#", r) + strings.Repeat("+", u) + strings.Repeat(".", width-r-u) + "]"
}

func mib(v int64) string {
	if v >= 1024 {
		return fmt.Sprintf("%.1fG", float64(v)/1024)
	}
	return fmt.Sprintf("%dM", v)
}

// clip shortens s to n runes; names can hold any characters.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
