package process

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/taskselector/taskselector/internal/cgroup"
	"github.com/taskselector/taskselector/internal/envcfg"
	"github.com/taskselector/taskselector/worker"
)

// Defaults of the exec executor's settings.
const (
	DefaultLogMaxBytes = 8 << 20
	DefaultSlackMiB    = 64
)

// EnvVars documents the exec executor's settings, read through
// worker.Env.Lookup, with their accepted forms and defaults.
var EnvVars = []worker.EnvVar{
	{Name: "WORKER_TASKS_FILE", Form: "the path of a TOML tasks file ([[task]] entries with type and command)", Default: "(required with WORKER_EXECUTOR=exec)"},
	{Name: "WORKER_STATE_DIR", Form: "a directory path (created if missing) for task state files, logs and the task API socket", Default: "$TMPDIR/taskselector-<host>"},
	{Name: "WORKER_TASK_API", Form: "a Unix socket path of at most 107 bytes", Default: "<state dir>/task.sock"},
	{Name: "WORKER_TASK_LOG_MAX", Form: "a positive number of bytes, optionally with a KiB, MiB or GiB suffix, such as 8MiB", Default: "8MiB"},
	{Name: "WORKER_MEMORY_SLACK_MIB", Form: "a non-negative integer number of MiB added to each task's budget for its memory limit", Default: "64"},
	{Name: "WORKER_MEMORY_MODE", Form: "auto, cgroup2, cgroup1 or proc", Default: "auto"},
	{Name: "WORKER_CGROUP_ROOT", Form: "the absolute path where cgroup hierarchies are mounted", Default: cgroup.DefaultRoot},
	{Name: "WORKER_CGROUP_PARENT", Form: "one path element (no slash, not starting with a dot) naming this agent's parent group", Default: "taskselector-<host>"},
}

func formOf(name string) string {
	for _, v := range EnvVars {
		if v.Name == name {
			return v.Form
		}
	}
	return "a valid value"
}

func bad(name, got string) error {
	return &envcfg.Error{Var: name, Form: formOf(name), Got: got}
}

// ConfigFromEnv reads a Config for host from the WORKER_* variables of
// EnvVars through lookup. A bad value is an *envcfg.Error naming the variable
// and the accepted form.
func ConfigFromEnv(host string, ramMiB int64, lookup func(string) (string, bool)) (Config, error) {
	get := func(name string) (string, bool) {
		if lookup == nil {
			return "", false
		}
		v, ok := lookup(name)
		v = strings.TrimSpace(v)
		return v, ok && v != ""
	}
	parent := cgroup.ParentName(host)
	c := Config{
		Host:         host,
		RAMMiB:       ramMiB,
		LogMaxBytes:  DefaultLogMaxBytes,
		SlackMiB:     DefaultSlackMiB,
		CgroupRoot:   cgroup.DefaultRoot,
		CgroupParent: parent,
		StateDir:     filepath.Join(os.TempDir(), parent),
		Lookup:       lookup,
	}
	var ok bool
	if c.TasksFile, ok = get("WORKER_TASKS_FILE"); !ok {
		return c, bad("WORKER_TASKS_FILE", "")
	}
	if v, ok := get("WORKER_STATE_DIR"); ok {
		c.StateDir = v
	}
	if v, ok := get("WORKER_TASK_API"); ok {
		if len(v) > 107 {
			return c, bad("WORKER_TASK_API", v)
		}
		c.APISocket = v
	}
	if v, ok := get("WORKER_TASK_LOG_MAX"); ok {
		n, err := parseSize(v)
		if err != nil || n <= 0 {
			return c, bad("WORKER_TASK_LOG_MAX", v)
		}
		c.LogMaxBytes = n
	}
	if v, ok := get("WORKER_MEMORY_SLACK_MIB"); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || n > 1<<30 {
			return c, bad("WORKER_MEMORY_SLACK_MIB", v)
		}
		c.SlackMiB = n
	}
	if v, ok := get("WORKER_MEMORY_MODE"); ok {
		switch m := cgroup.Mode(v); m {
		case "auto":
		case cgroup.ModeV2, cgroup.ModeV1, cgroup.ModeProc:
			c.MemoryMode = m
		default:
			return c, bad("WORKER_MEMORY_MODE", v)
		}
	}
	if v, ok := get("WORKER_CGROUP_ROOT"); ok {
		if !filepath.IsAbs(v) {
			return c, bad("WORKER_CGROUP_ROOT", v)
		}
		c.CgroupRoot = v
	}
	if v, ok := get("WORKER_CGROUP_PARENT"); ok {
		if cgroup.ValidName(v) != nil {
			return c, bad("WORKER_CGROUP_PARENT", v)
		}
		c.CgroupParent = v
	}
	return c, nil
}

// parseSize reads "8388608", "512KiB", "8MiB" or "1GiB".
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, err
	}
	if n < 0 || n > (1<<50)/mult {
		return 0, fmt.Errorf("size %d out of range", n)
	}
	return n * mult, nil
}

func newFromEnv(env worker.Env) (worker.Executor, error) {
	cfg, err := ConfigFromEnv(env.Host, env.RAMMiB, env.Lookup)
	if err != nil {
		return nil, err
	}
	cfg.Log, cfg.Now = env.Log, env.Now
	return New(cfg)
}
