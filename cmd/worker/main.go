// Command worker runs the taskselector worker agent for one host: it answers
// the selector's launch, kill and ps requests over NATS and runs the tasks
// with an executor (the simulated "sim" executor by default).
//
// Configuration is read from the environment (run with -h for the list):
//
//	WORKER_HOST                host name (required)
//	WORKER_RAM_MIB             RAM capacity in MiB (required, > 0)
//	NATS_URL                   [nats://127.0.0.1:4222]
//	WORKER_HEARTBEAT_INTERVAL  [1s]
//	WORKER_EXECUTOR            [sim]
//	WORKER_SUBJECT_PREFIX      [tasks]
//	WORKER_KILL_ON_SHUTDOWN    [false]
//	WORKER_FLUSH_TIMEOUT       [5s]
//	WORKER_FENCE_AFTER         [8s]; 0 turns self-fencing off
//	WORKER_FLEET_HELPERS       [true]; false: run no fleet helpers, ask for none
//	WORKER_ALLOC_RETRY         [2s]; the first wait after a refused fleet helper request
//	WORKER_LOG_LEVEL           [info]
//
// and the NATS credentials shared by every binary (see internal/natsconn):
// NATS_CREDS, NATS_USER and NATS_PASSWORD, NATS_NKEY_SEED, NATS_TLS_CA,
// NATS_TLS_CERT and NATS_TLS_KEY.
//
// plus the sim executor's SIM_* variables (SIM_SPEED [1] and the fault
// knobs) and, with WORKER_EXECUTOR=exec, the exec executor's settings
// (WORKER_TASKS_FILE, WORKER_STATE_DIR, WORKER_TASK_API, WORKER_TASK_LOG_MAX,
// WORKER_MEMORY_SLACK_MIB, WORKER_MEMORY_MODE, WORKER_CGROUP_ROOT,
// WORKER_CGROUP_PARENT; see package worker/process). A bad value stops startup with a message naming the variable and the
// accepted form. SIGINT or SIGTERM shuts the agent down gracefully; a second
// one during that shutdown exits at once with status 130.
//
// A worker cut off from NATS for WORKER_FENCE_AFTER stops its tasks itself
// and takes no launches until NATS answers again (see package worker). The
// selector's SELECTOR_HOST_STALE must be at least WORKER_FENCE_AFTER + 2 ×
// WORKER_HEARTBEAT_INTERVAL for that to make relaunching a lost host's
// tasks safe.
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

	"github.com/kelseyhightower/envconfig"
	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/shutdown"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
	"github.com/taskselector/taskselector/worker/process"
)

// config is the agent's environment.
type config struct {
	// Auth holds the NATS credentials (NATS_CREDS, NATS_USER, ...).
	natsconn.Auth
	Host              string        `envconfig:"WORKER_HOST" required:"true"`
	RAMMiB            int64         `envconfig:"WORKER_RAM_MIB" required:"true"`
	NATSURL           string        `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222"`
	HeartbeatInterval time.Duration `envconfig:"WORKER_HEARTBEAT_INTERVAL" default:"1s"`
	Executor          string        `envconfig:"WORKER_EXECUTOR" default:"sim"`
	Prefix            string        `envconfig:"WORKER_SUBJECT_PREFIX" default:"tasks"`
	KillOnShutdown    bool          `envconfig:"WORKER_KILL_ON_SHUTDOWN" default:"false"`
	FlushTimeout      time.Duration `envconfig:"WORKER_FLUSH_TIMEOUT" default:"5s"`
	FenceAfter        time.Duration `envconfig:"WORKER_FENCE_AFTER" default:"8s"`
	FleetHelpers      bool          `envconfig:"WORKER_FLEET_HELPERS" default:"true"`
	AllocRetry        time.Duration `envconfig:"WORKER_ALLOC_RETRY" default:"2s"`
	LogLevel          string        `envconfig:"WORKER_LOG_LEVEL" default:"info"`
}

// NATS client timers. Pings every natsPingInterval, with two unanswered
// allowed, notice a dead connection within about 3 intervals, well inside
// the default fence time, so that the client starts reconnecting early; a
// write blocked for natsWriteTimeout breaks the connection rather than
// holding the client up. The fence itself does not depend on either: it
// probes the connection on its own.
const (
	natsPingInterval = 2 * time.Second
	natsMaxPingsOut  = 2
	natsWriteTimeout = 2 * time.Second
)

// vars lists the agent's variables with their accepted forms and defaults.
var vars = []worker.EnvVar{
	{Name: "WORKER_HOST", Form: "a host name of 1-256 bytes", Default: "(required)"},
	{Name: "WORKER_RAM_MIB", Form: "a positive integer number of MiB, at most 1099511627776", Default: "(required)"},
	{Name: "NATS_URL", Form: "a NATS URL such as nats://127.0.0.1:4222 (comma-separated for several)", Default: "nats://127.0.0.1:4222"},
	{Name: "WORKER_HEARTBEAT_INTERVAL", Form: "a positive Go duration such as 1s or 500ms", Default: "1s"},
	{Name: "WORKER_EXECUTOR", Form: "an executor name (" + strings.Join(worker.Executors(), ", ") + ")", Default: "sim"},
	{Name: "WORKER_SUBJECT_PREFIX", Form: "a NATS subject prefix of letters, digits, '-', '_' and inner dots", Default: "tasks"},
	{Name: "WORKER_KILL_ON_SHUTDOWN", Form: "a boolean (true or false)", Default: "false"},
	{Name: "WORKER_FLUSH_TIMEOUT", Form: "a positive Go duration such as 5s", Default: "5s"},
	{Name: "WORKER_FENCE_AFTER", Form: "a Go duration such as 8s, or 0 to turn self-fencing off", Default: "8s"},
	{Name: "WORKER_FLEET_HELPERS", Form: "a boolean (true or false): serve fleet helpers and ask for fleet helper RAM (the memory-manager protocol)", Default: "true"},
	{Name: "WORKER_ALLOC_RETRY", Form: "a positive Go duration such as 2s", Default: "2s"},
	{Name: "WORKER_LOG_LEVEL", Form: "one of debug, info, warn, error", Default: "info"},
}

// authVars lists the credential variables, shared with every binary.
func authVars() []worker.EnvVar {
	var out []worker.EnvVar
	for _, v := range natsconn.AuthVars() {
		out = append(out, worker.EnvVar{Name: v.Name, Form: v.Form, Default: "(none)"})
	}
	return out
}

func form(name string) string {
	for _, v := range append(vars, authVars()...) {
		if v.Name == name {
			return v.Form
		}
	}
	return "a valid value"
}

// loadConfig reads and checks the environment.
func loadConfig() (config, error) {
	var c config
	if err := envconfig.Process("", &c); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return c, fmt.Errorf("%s: want %s, got %q", pe.KeyName, form(pe.KeyName), pe.Value)
		}
		msg := err.Error()
		if key, ok := strings.CutPrefix(msg, "required key "); ok {
			key, _, _ = strings.Cut(key, " ")
			return c, fmt.Errorf("%s: required, want %s", key, form(key))
		}
		return c, fmt.Errorf("configuration: %w", err)
	}
	bad := func(name, got string) error { return fmt.Errorf("%s: want %s, got %q", name, form(name), got) }
	switch {
	case c.Host == "" || len(c.Host) > schemas.MaxNameBytes:
		return c, bad("WORKER_HOST", c.Host)
	case c.RAMMiB <= 0 || c.RAMMiB > schemas.MaxMiB:
		return c, bad("WORKER_RAM_MIB", fmt.Sprint(c.RAMMiB))
	case c.HeartbeatInterval <= 0:
		return c, bad("WORKER_HEARTBEAT_INTERVAL", c.HeartbeatInterval.String())
	case c.FlushTimeout <= 0:
		return c, bad("WORKER_FLUSH_TIMEOUT", c.FlushTimeout.String())
	case c.FenceAfter < 0:
		return c, bad("WORKER_FENCE_AFTER", c.FenceAfter.String())
	case c.AllocRetry <= 0:
		return c, bad("WORKER_ALLOC_RETRY", c.AllocRetry.String())
	case !validPrefix(c.Prefix):
		return c, bad("WORKER_SUBJECT_PREFIX", c.Prefix)
	case strings.TrimSpace(c.NATSURL) == "":
		return c, bad("NATS_URL", natsconn.RedactURL(c.NATSURL))
	}
	if err := errors.Join(c.Auth.Check(), c.Auth.CheckURL(c.NATSURL)); err != nil {
		return c, err
	}
	if _, ok := logLevel(c.LogLevel); !ok {
		return c, bad("WORKER_LOG_LEVEL", c.LogLevel)
	}
	known := false
	for _, n := range worker.Executors() {
		known = known || n == c.Executor
	}
	if !known {
		return c, bad("WORKER_EXECUTOR", c.Executor)
	}
	return c, nil
}

// validPrefix accepts dot-separated tokens of letters, digits, '-' and '_'.
func validPrefix(p string) bool {
	if p == "" {
		return false
	}
	for _, tok := range strings.Split(p, ".") {
		if tok == "" {
			return false
		}
		for _, r := range tok {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_'
			if !ok {
				return false
			}
		}
	}
	return true
}

func logLevel(s string) (slog.Level, bool) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, true
	case "info", "":
		return slog.LevelInfo, true
	case "warn", "warning":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return 0, false
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: worker   (configured by environment variables)")
	fmt.Fprintln(w)
	for _, group := range [][]worker.EnvVar{vars, authVars(), worker.SimEnvVars, process.EnvVars} {
		for _, v := range group {
			fmt.Fprintf(w, "  %-26s %s [%s]\n", v.Name, v.Form, v.Default)
		}
		fmt.Fprintln(w)
	}
}

func main() {
	flag.Usage = func() { usage(os.Stderr) }
	flag.Parse()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, stop := shutdown.OnSignals(context.Background(), sigs, slog.New(slog.NewTextHandler(os.Stderr, nil)), func(os.Signal) {
		os.Exit(shutdown.ForcedExitCode)
	})
	err := run(ctx, os.Stderr)
	stop()
	signal.Stop(sigs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

// run configures the agent from the environment and serves until ctx ends.
func run(ctx context.Context, logOut io.Writer) error {
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	level, _ := logLevel(cfg.LogLevel)
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: level}))

	exec, err := worker.NewExecutor(cfg.Executor, worker.Env{
		Host: cfg.Host, RAMMiB: cfg.RAMMiB, Log: log.With("executor", cfg.Executor), Lookup: os.LookupEnv,
	})
	if err != nil {
		return err
	}

	authOpts, err := cfg.Auth.Options()
	if err != nil {
		_ = exec.Close()
		return err
	}
	log.Info("connecting to NATS", "url", natsconn.RedactURL(cfg.NATSURL), "auth", cfg.Auth)
	nc, err := nats.Connect(cfg.NATSURL, append([]nats.Option{
		nats.Name("taskselector worker " + cfg.Host),
		// Replies to the agent's requests (JetStream acks of its events
		// among them) come to an inbox of its own host, so that a
		// per-host NATS user may read them and nothing else's.
		nats.CustomInboxPrefix(protocol.WorkerInbox(cfg.Host)),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.PingInterval(natsPingInterval),
		nats.MaxPingsOutstanding(natsMaxPingsOut),
		nats.FlusherTimeout(natsWriteTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("NATS disconnected; reconnecting", "err", err)
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("NATS reconnected", "url", c.ConnectedUrlRedacted())
		}),
		nats.ConnectHandler(func(c *nats.Conn) {
			log.Info("NATS connected", "url", c.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subject := ""
			if s != nil {
				subject = s.Subject
			}
			log.Error("NATS async error", "subject", subject, "err", err)
		}),
	}, authOpts...)...)
	if err != nil {
		_ = exec.Close()
		return fmt.Errorf("connecting to NATS at %s: %w", natsconn.RedactURL(cfg.NATSURL), err)
	}
	defer nc.Close()

	agent, err := worker.New(nc, worker.Config{
		Host:              cfg.Host,
		RAMMiB:            cfg.RAMMiB,
		HeartbeatInterval: cfg.HeartbeatInterval,
		Prefix:            cfg.Prefix,
		Executor:          cfg.Executor,
		KillOnShutdown:    cfg.KillOnShutdown,
		FlushTimeout:      cfg.FlushTimeout,
		FenceAfter:        cfg.FenceAfter,
		NoHelpers:         !cfg.FleetHelpers,
		AllocRetry:        cfg.AllocRetry,
	}, exec, log)
	if err != nil {
		_ = exec.Close()
		return err
	}
	if err := agent.Run(ctx); err != nil {
		return fmt.Errorf("worker agent: %w", err)
	}
	return nil
}
