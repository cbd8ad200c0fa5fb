package selector

import (
	"bufio"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of selector/testdata/*.txt scenarios")

// TestScenarios runs the scenario files in testdata: events in a small
// line-oriented language, each block followed by the commands expected back.
// The language is described in testdata/README.md.
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no scenarios in testdata")
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) {
			runScenario(t, file)
		})
	}
}

// scenarioCase is one block of a scenario file: its text up to "----" (comments,
// blank lines and directives), and the output expected after it.
type scenarioCase struct {
	pre      []string // verbatim lines before "----"
	line     int      // line number of "----"
	expected []string
}

func parseScenario(path string) ([]scenarioCase, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var cases []scenarioCase
	var pre []string
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if line != "----" {
			pre = append(pre, line)
			continue
		}
		c := scenarioCase{pre: pre, line: n}
		pre = nil
		for sc.Scan() {
			n++
			if sc.Text() == "" {
				break
			}
			c.expected = append(c.expected, sc.Text())
		}
		cases = append(cases, c)
	}
	return cases, pre, sc.Err()
}

func runScenario(t *testing.T, path string) {
	cases, trailer, err := parseScenario(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range trailer {
		if d := strings.TrimSpace(l); d != "" && !strings.HasPrefix(d, "#") {
			t.Fatalf("%s: directives after the last ----", path)
		}
	}
	s := &scenario{h: newHarness(t, testConfig())}
	var out strings.Builder
	failed := false
	for i := range cases {
		c := &cases[i]
		var got []string
		for _, l := range c.pre {
			d := strings.TrimSpace(l)
			if d == "" || strings.HasPrefix(d, "#") {
				continue
			}
			lines, err := s.do(d)
			if err != nil {
				t.Fatalf("%s:%d: %q: %v", path, c.line, d, err)
			}
			got = append(got, lines...)
		}
		if len(got) == 0 {
			got = []string{"ok"}
		}
		if !*rewrite && !slices.Equal(got, c.expected) {
			failed = true
			t.Errorf("%s:%d: output differs\n--- got\n%s\n--- want\n%s", path, c.line,
				strings.Join(got, "\n"), strings.Join(c.expected, "\n"))
		}
		for _, l := range c.pre {
			out.WriteString(l + "\n")
		}
		out.WriteString("----\n")
		for _, l := range got {
			out.WriteString(l + "\n")
		}
		if i < len(cases)-1 || len(trailer) > 0 {
			out.WriteString("\n")
		}
	}
	for i, l := range trailer {
		if i == 0 && l == "" {
			continue
		}
		out.WriteString(l + "\n")
	}
	if *rewrite && !failed {
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// scenario interprets directives against a harness.
type scenario struct {
	h *harness
}

// args splits "name k=v flag" into positional words and key=value pairs.
type args struct {
	pos   []string
	kv    map[string]string
	flags map[string]bool
	used  map[string]bool
}

func parseArgs(words []string) *args {
	a := &args{kv: map[string]string{}, flags: map[string]bool{}, used: map[string]bool{}}
	for _, w := range words {
		if k, v, ok := strings.Cut(w, "="); ok {
			a.kv[k] = v
		} else {
			a.pos = append(a.pos, w)
		}
	}
	return a
}

func (a *args) str(k, def string) string {
	a.used[k] = true
	if v, ok := a.kv[k]; ok {
		return v
	}
	return def
}

func (a *args) int(k string, def int64) (int64, error) {
	a.used[k] = true
	v, ok := a.kv[k]
	if !ok {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", k, err)
	}
	return n, nil
}

func (a *args) float(k string, def float64) (float64, error) {
	a.used[k] = true
	v, ok := a.kv[k]
	if !ok {
		return def, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", k, err)
	}
	return f, nil
}

func (a *args) dur(k string, def time.Duration) (time.Duration, error) {
	a.used[k] = true
	v, ok := a.kv[k]
	if !ok {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", k, err)
	}
	return d, nil
}

// flag reports whether the bare word w is among the positional words from
// index from on.
func (a *args) flag(from int, w string) bool {
	for _, p := range a.pos[min(from, len(a.pos)):] {
		if p == w {
			return true
		}
	}
	return false
}

// unused reports keys that no directive read: typos fail loudly.
func (a *args) unused() error {
	for _, k := range slices.Sorted(maps.Keys(a.kv)) {
		if !a.used[k] {
			return fmt.Errorf("unknown key %q", k)
		}
	}
	return nil
}

func (s *scenario) do(line string) ([]string, error) {
	words := strings.Fields(line)
	cmd, a := words[0], parseArgs(words[1:])
	lines, err := s.dispatch(cmd, a)
	if err != nil {
		return nil, err
	}
	if err := a.unused(); err != nil {
		return nil, err
	}
	return lines, nil
}

func (s *scenario) need(a *args, n int) error {
	if len(a.pos) < n {
		return fmt.Errorf("want %d argument(s), got %d", n, len(a.pos))
	}
	return nil
}

func (s *scenario) dispatch(cmd string, a *args) ([]string, error) {
	h := s.h
	cmds := func(c []Command) ([]string, error) { return h.format(c), nil }
	switch cmd {
	case "config":
		if h.e != nil {
			return nil, fmt.Errorf("config after start")
		}
		return nil, s.config(a)
	case "start", "restart":
		h.start()
		return nil, nil
	case "target":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		spec, err := s.spec(a)
		if err != nil {
			return nil, err
		}
		return cmds(h.declare(a.pos[0], spec))
	case "delete-target":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		return cmds(h.undeclare(a.pos[0]))
	case "host":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		total, err := a.int("total", 0)
		if err != nil {
			return nil, err
		}
		used, err := a.int("used", 0)
		if err != nil {
			return nil, err
		}
		var ids []string
		if ts := a.str("tasks", ""); ts != "" {
			for _, n := range strings.Split(ts, ",") {
				l, err := s.task(n, a.pos[0])
				if err != nil {
					return nil, err
				}
				ids = append(ids, l.id)
			}
		}
		h.hostRAM[a.pos[0]] = [2]int64{total, used}
		return cmds(h.step(&HostStatusReceived{Status: &schemas.HostStatus{
			V: schemas.Version, Host: a.pos[0], RAM: schemas.HostRAM{TotalMiB: total, UsedMiB: used},
			Tasks: ids, Draining: a.flag(1, "draining"), SentAt: h.now,
		}}))
	case "advance":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		d, err := time.ParseDuration(a.pos[0])
		if err != nil {
			return nil, err
		}
		h.advance(d)
		return nil, nil
	case "tick":
		return cmds(h.tick())
	case "heartbeat":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		l, err := s.task(a.pos[0], a.str("host", ""))
		if err != nil {
			return nil, err
		}
		if pid, err := a.int("pid", 0); err != nil {
			return nil, err
		} else if pid != 0 {
			l.pid = pid
		}
		used, err := a.int("used", 0)
		if err != nil {
			return nil, err
		}
		if budget, err := a.int("budget", -1); err != nil {
			return nil, err
		} else if budget >= 0 {
			l.wrapper, l.helpers = 0, budget
		}
		return cmds(h.step(&HeartbeatReceived{Heartbeat: h.heartbeatMsg(l, used)}))
	case "launch-reply":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		if _, err := s.task(a.pos[0], ""); err != nil {
			return nil, err
		}
		if code := a.str("error", ""); code != "" {
			return cmds(h.replyError(a.pos[0], code))
		}
		pid, err := a.int("pid", 0)
		if err != nil {
			return nil, err
		}
		return cmds(h.reply(a.pos[0], pid))
	case "launch-unanswered":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		l, err := s.task(a.pos[0], "")
		if err != nil {
			return nil, err
		}
		return cmds(h.step(&LaunchUnanswered{Host: l.host, Target: l.target, TaskID: l.id, NoResponders: a.flag(1, "no-responders")}))
	case "ps-reply":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		for _, n := range a.pos[1:] {
			if _, err := s.task(n, a.pos[0]); err != nil {
				return nil, err
			}
		}
		return cmds(h.psReply(a.pos[0], a.pos[1:]...))
	case "ps-unanswered":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		return cmds(h.step(&PsUnanswered{Host: a.pos[0], NoResponders: a.flag(1, "no-responders")}))
	case "kill-reply":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		if _, err := s.task(a.pos[0], ""); err != nil {
			return nil, err
		}
		running, err := strconv.ParseBool(a.str("running", "false"))
		if err != nil {
			return nil, err
		}
		return cmds(h.killReply(a.pos[0], running))
	case "kill-unanswered":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		l, err := s.task(a.pos[0], "")
		if err != nil {
			return nil, err
		}
		return cmds(h.step(&KillUnanswered{Host: l.host, TaskID: l.id}))
	case "done", "failed":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		if _, err := s.task(a.pos[0], ""); err != nil {
			return nil, err
		}
		kind, reason := schemas.EventDone, ""
		if cmd == "failed" {
			kind, reason = schemas.EventFailed, a.str("reason", schemas.ReasonCrashed)
		}
		var metrics map[string]any
		for _, k := range slices.Sorted(maps.Keys(a.kv)) {
			if k == "reason" {
				continue
			}
			v, err := a.float(k, 0)
			if err != nil {
				return nil, err
			}
			if metrics == nil {
				metrics = map[string]any{}
			}
			metrics[k] = v
		}
		return cmds(h.event(a.pos[0], kind, reason, metrics))
	case "disconnect":
		return cmds(h.step(&Disconnected{}))
	case "reconnect":
		return cmds(h.step(&Reconnected{}))
	case "conflict":
		if err := s.need(a, 1); err != nil {
			return nil, err
		}
		return cmds(h.step(&StoreConflict{Target: a.pos[0], Err: "wrong last sequence"}))
	case "shutdown":
		return cmds(h.step(&ShutdownRequested{}))
	case "status":
		return s.status(a.pos), nil
	case "store":
		var lines []string
		for _, name := range slices.Sorted(maps.Keys(h.kv)) {
			st := h.kv[name]
			lines = append(lines, strings.TrimPrefix(h.formatOne(Command{Kind: CmdPersist, State: &st}), "persist "))
		}
		if len(lines) == 0 {
			lines = []string{"(empty)"}
		}
		return lines, nil
	}
	return nil, fmt.Errorf("unknown directive %q", cmd)
}

// task resolves a task named target#epoch: one the engine launched or
// restored, or else a stray the engine never issued (on host).
func (s *scenario) task(name, host string) (*launched, error) {
	if l, ok := s.h.tasks[name]; ok {
		return l, nil
	}
	target, rest, ok := strings.Cut(name, "#")
	if !ok {
		return nil, fmt.Errorf("task %q is not target#epoch", name)
	}
	digits := rest
	if i := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		digits = rest[:i]
	}
	epoch, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("task %q: epoch: %w", name, err)
	}
	if host == "" {
		return nil, fmt.Errorf("task %q is unknown; give host= for a stray", name)
	}
	s.h.nextPID++
	return s.h.stray(name, target, epoch, host, s.h.nextPID), nil
}

func (s *scenario) config(a *args) error {
	c := &s.h.cfg
	var err error
	durs := []struct {
		k string
		v *time.Duration
	}{
		{"launch_timeout", &c.LaunchTimeout}, {"reply_timeout", &c.ReplyTimeout},
		{"heartbeat_stale", &c.HeartbeatStale}, {"host_stale", &c.HostStale},
		{"recovery_grace", &c.RecoveryGrace}, {"backoff_base", &c.BackoffBase},
		{"backoff_max", &c.BackoffMax}, {"restart_delay_base", &c.RestartDelayBase},
		{"restart_delay_max", &c.RestartDelayMax}, {"restart_delay_reset", &c.RestartDelayReset},
	}
	for _, d := range durs {
		if *d.v, err = a.dur(d.k, *d.v); err != nil {
			return err
		}
	}
	if c.BackoffFactor, err = a.float("backoff_factor", c.BackoffFactor); err != nil {
		return err
	}
	if c.BackoffJitter, err = a.float("backoff_jitter", c.BackoffJitter); err != nil {
		return err
	}
	n, err := a.int("max_pending_launches", int64(c.MaxPendingLaunches))
	if err != nil {
		return err
	}
	c.MaxPendingLaunches = int(n)
	if c.HostHeadroomMiB, err = a.int("headroom", c.HostHeadroomMiB); err != nil {
		return err
	}
	if n, err = a.int("max_skips", int64(c.MaxSkips)); err != nil {
		return err
	}
	c.MaxSkips = int(n)
	seed, err := a.int("seed", int64(c.Seed))
	c.Seed = uint64(seed)
	return err
}

// spec builds a target spec:
//
//	profile=declared phases=a:wrapper=10,min=10,full=100,work=5,repeat;b:... [value=2]
//	profile=hacking server=foodnstuff [level=100] [security=.. money=.. ...]
func (s *scenario) spec(a *args) (schemas.TargetSpec, error) {
	var spec schemas.TargetSpec
	switch p := a.str("profile", schemas.ProfileDeclared); p {
	case schemas.ProfileDeclared:
		spec = declared()
		for _, ph := range strings.Split(a.str("phases", ""), ";") {
			if ph == "" {
				continue
			}
			typ, fields, _ := strings.Cut(ph, ":")
			phase := schemas.Phase{Type: typ}
			for _, f := range strings.Split(fields, ",") {
				k, v, _ := strings.Cut(f, "=")
				var err error
				switch k {
				case "wrapper":
					phase.WrapperMiB, err = strconv.ParseInt(v, 10, 64)
				case "min":
					phase.HelpersMinMiB, err = strconv.ParseInt(v, 10, 64)
				case "full":
					phase.HelpersFullMiB, err = strconv.ParseInt(v, 10, 64)
				case "work":
					phase.WorkS, err = strconv.ParseFloat(v, 64)
				case "repeat":
					phase.Repeat = true
				case "":
				default:
					err = fmt.Errorf("unknown phase field %q", k)
				}
				if err != nil {
					return spec, fmt.Errorf("phase %s: %w", typ, err)
				}
			}
			spec.Phases = append(spec.Phases, phase)
		}
	case schemas.ProfileHacking:
		level, err := a.int("level", workload.DemoLevel)
		if err != nil {
			return spec, err
		}
		server := a.str("server", "")
		for _, sv := range workload.EarlyGame() {
			if sv.Name == server {
				spec = sv.Spec(int(level))
			}
		}
		if spec.Metrics == nil {
			return spec, fmt.Errorf("unknown server %q", server)
		}
		m := spec.Metrics
		for _, f := range []struct {
			k string
			v *float64
		}{
			{"security", &m.Security}, {"min_security", &m.MinSecurity}, {"money", &m.Money},
			{"max_money", &m.MaxMoney}, {"growth", &m.GrowthLogPerThread},
			{"hack_fraction", &m.HackFractionPerThread}, {"chance", &m.HackChance}, {"hack_ms", &m.HackTimeMS},
		} {
			if *f.v, err = a.float(f.k, *f.v); err != nil {
				return spec, err
			}
		}
	default:
		spec = schemas.TargetSpec{V: schemas.Version, Profile: p}
	}
	if _, ok := a.kv["value"]; ok {
		v, err := a.float("value", 0)
		if err != nil {
			return spec, err
		}
		spec.Value = &v
	}
	return spec, nil
}

// status renders parts of the engine's status: summary, targets, hosts,
// counters (all of them when none is named).
func (s *scenario) status(parts []string) []string {
	h := s.h
	st := h.e.Status(h.now)
	if len(parts) == 0 {
		parts = []string{"summary", "targets", "hosts"}
	}
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return strconv.Quote(s)
	}
	var lines []string
	for _, p := range parts {
		switch p {
		case "summary":
			backoff := strconv.Itoa(st.Backoff.Level)
			if !st.Backoff.NextLaunchAt.IsZero() {
				backoff += " wait=" + st.Backoff.NextLaunchAt.Sub(h.now).String()
			}
			lines = append(lines, fmt.Sprintf("ready=%v degraded=%s stopped=%s backoff=%s pending_launches=%d",
				st.Ready, dash(st.DegradedReason), dash(st.LaunchesStopped), backoff, st.PendingLaunches))
		case "targets":
			for _, ts := range st.Targets {
				line := fmt.Sprintf("target %s phase=%s state=%s epoch=%d", ts.Target, ts.Phase, ts.State, ts.Epoch)
				if ts.TaskID != "" {
					line += fmt.Sprintf(" task=%s host=%s pid=%d budget=%d hb_age=%dms", h.stable(ts.TaskID), ts.Host, ts.PID, ts.BudgetMiB, ts.HeartbeatAgeMS)
				}
				lines = append(lines, line+" reason="+dash(ts.Reason))
			}
		case "hosts":
			for _, hl := range st.Hosts {
				line := fmt.Sprintf("host %s total=%d used=%d reserved=%d free=%d tasks=%d", hl.Host, hl.TotalMiB, hl.UsedMiB, hl.ReservedMiB, hl.FreeMiB, hl.Tasks)
				for _, f := range []struct {
					on   bool
					name string
				}{{hl.Stale, "stale"}, {hl.Lost, "lost"}, {hl.Draining, "draining"}, {hl.Avoided, "avoided"}} {
					if f.on {
						line += " " + f.name
					}
				}
				lines = append(lines, line)
			}
		case "counters":
			c := st.Counters
			fails := "-"
			if len(c.Failures) > 0 {
				var fs []string
				for _, k := range slices.Sorted(maps.Keys(c.Failures)) {
					fs = append(fs, fmt.Sprintf("%s:%d", k, c.Failures[k]))
				}
				fails = strings.Join(fs, ",")
			}
			lines = append(lines, fmt.Sprintf("counters launches=%d confirmed=%d timeouts=%d stale=%d kills=%d requeues=%d adoptions=%d fenced=%d hosts_lost=%d phases=%d duplicates=%d failures=%s",
				c.Launches, c.Confirmed, c.Timeouts, c.Stale, c.Kills, c.Requeues, c.Adoptions, c.FencedHeartbeats, c.HostsLost, c.PhasesCompleted, c.DuplicateEvents, fails))
		default:
			lines = append(lines, "unknown status part "+p)
		}
	}
	return lines
}
