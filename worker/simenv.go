package worker

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

func init() { Register(SimExecutor, newSimFromEnv) }

// SimEnvVars documents the sim executor's settings, read through Env.Lookup,
// with their accepted forms and defaults.
var SimEnvVars = []EnvVar{
	{"SIM_SPEED", "a positive number (game seconds per real second)", "1"},
	{"SIM_TICK", "a positive Go duration such as 50ms (real time between ticks)", "50ms"},
	{"SIM_SEED", "an integer (seed of the random faults)", "1"},
	{"SIM_FIRST_PID", "a positive integer (first PID handed out)", "1000"},
	{"SIM_CRASH_PROB", "a probability between 0 and 1", "0"},
	{"SIM_CRASH_AFTER", "a non-negative Go duration, game time after the helpers start", "0s"},
	{"SIM_CRASH_TARGETS", "a comma-separated list of target or target:N", ""},
	{"SIM_HANG_PROB", "a probability between 0 and 1", "0"},
	{"SIM_HANG_AFTER", "a non-negative Go duration, game time after the helpers start", "0s"},
	{"SIM_HANG_TARGETS", "a comma-separated list of target or target:N", ""},
	{"SIM_HELPERS_FAIL_PROB", "a probability between 0 and 1", "0"},
	{"SIM_HELPERS_FAIL_TARGETS", "a comma-separated list of target or target:N", ""},
	{"SIM_FOREIGN_MIB", "a non-negative integer number of MiB", "0"},
}

// EnvVar describes one environment variable: its name, the accepted form
// and the default.
type EnvVar struct {
	Name, Form, Default string
}

// envReader reads typed variables and keeps the first error, which names the
// variable and its accepted form.
type envReader struct {
	lookup func(string) (string, bool)
	forms  map[string]string
	err    error
}

func newEnvReader(lookup func(string) (string, bool), vars []EnvVar) *envReader {
	r := &envReader{lookup: lookup, forms: make(map[string]string, len(vars))}
	for _, v := range vars {
		r.forms[v.Name] = v.Form
	}
	return r
}

func (r *envReader) get(name string) (string, bool) {
	if r.err != nil || r.lookup == nil {
		return "", false
	}
	v, ok := r.lookup(name)
	v = strings.TrimSpace(v)
	return v, ok && v != ""
}

func (r *envReader) fail(name, got string) {
	if r.err == nil {
		r.err = fmt.Errorf("%s: want %s, got %q", name, r.forms[name], got)
	}
}

func (r *envReader) float(name string, def float64, ok func(float64) bool) float64 {
	s, set := r.get(name)
	if !set {
		return def
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || !ok(f) {
		r.fail(name, s)
		return def
	}
	return f
}

func (r *envReader) integer(name string, def int64, ok func(int64) bool) int64 {
	s, set := r.get(name)
	if !set {
		return def
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || !ok(n) {
		r.fail(name, s)
		return def
	}
	return n
}

func (r *envReader) duration(name string, def time.Duration, ok func(time.Duration) bool) time.Duration {
	s, set := r.get(name)
	if !set {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || !ok(d) {
		r.fail(name, s)
		return def
	}
	return d
}

func (r *envReader) list(name string) []string {
	s, set := r.get(name)
	if !set {
		return nil
	}
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	if _, err := parseTargeted(out); err != nil {
		r.fail(name, s)
	}
	return out
}

func isProb(f float64) bool              { return f >= 0 && f <= 1 }
func isPositive(f float64) bool          { return f > 0 }
func isPositiveInt(n int64) bool         { return n > 0 }
func isNonNegInt(n int64) bool           { return n >= 0 }
func anyInt(int64) bool                  { return true }
func isPositiveDur(d time.Duration) bool { return d > 0 }
func isNonNegDur(d time.Duration) bool   { return d >= 0 }

// SimConfigFromEnv reads a SimConfig for host from the SIM_* variables
// (SimEnvVars) through lookup. A bad value is an error naming the variable
// and the accepted form.
func SimConfigFromEnv(host string, ramMiB int64, lookup func(string) (string, bool)) (SimConfig, error) {
	r := newEnvReader(lookup, SimEnvVars)
	cfg := SimConfig{
		Host:     host,
		RAMMiB:   ramMiB,
		Speed:    r.float("SIM_SPEED", 1, isPositive),
		Tick:     r.duration("SIM_TICK", DefaultSimTick, isPositiveDur),
		FirstPID: r.integer("SIM_FIRST_PID", DefaultFirstPID, isPositiveInt),
		Faults: Faults{
			Seed:               r.integer("SIM_SEED", 1, anyInt),
			CrashProb:          r.float("SIM_CRASH_PROB", 0, isProb),
			CrashAfter:         r.duration("SIM_CRASH_AFTER", 0, isNonNegDur),
			CrashTargets:       r.list("SIM_CRASH_TARGETS"),
			HangProb:           r.float("SIM_HANG_PROB", 0, isProb),
			HangAfter:          r.duration("SIM_HANG_AFTER", 0, isNonNegDur),
			HangTargets:        r.list("SIM_HANG_TARGETS"),
			HelpersFailProb:    r.float("SIM_HELPERS_FAIL_PROB", 0, isProb),
			HelpersFailTargets: r.list("SIM_HELPERS_FAIL_TARGETS"),
			ForeignMiB:         r.integer("SIM_FOREIGN_MIB", 0, isNonNegInt),
		},
	}
	return cfg, r.err
}

func newSimFromEnv(env Env) (Executor, error) {
	cfg, err := SimConfigFromEnv(env.Host, env.RAMMiB, env.Lookup)
	if err != nil {
		return nil, err
	}
	cfg.Now, cfg.Log = env.Now, env.Log
	return NewSim(cfg)
}
