package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/taskselector/taskselector/internal/envcfg"
	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// config is the selector's configuration, read from the environment. The
// README lists every variable with its default.
type config struct {
	// Auth holds the NATS credentials (NATS_CREDS, NATS_USER, ...), used
	// with NATS_URL; the embedded server asks for none.
	natsconn.Auth
	NATSURL        string        `envconfig:"NATS_URL" form:"a NATS URL such as nats://127.0.0.1:4222, or empty for the embedded server"`
	DataDir        string        `envconfig:"SELECTOR_DATA_DIR" default:"./data" form:"a directory path"`
	Listen         string        `envconfig:"SELECTOR_LISTEN" default:"127.0.0.1:4222" form:"host:port for the embedded server's clients (port 0 picks a free one)"`
	HTTPListen     string        `envconfig:"SELECTOR_HTTP_LISTEN" form:"host:port such as 127.0.0.1:9464, or empty to turn it off"`
	SubjectPrefix  string        `envconfig:"SELECTOR_SUBJECT_PREFIX" default:"tasks" form:"a NATS subject token of letters, digits, '-' and '_' (dots allowed between tokens)"`
	LaunchTimeout  time.Duration `envconfig:"SELECTOR_LAUNCH_TIMEOUT" default:"3s" form:"a positive duration such as 3s, 500ms or 1m30s"`
	ReplyTimeout   time.Duration `envconfig:"SELECTOR_REPLY_TIMEOUT" default:"1s" form:"a positive duration such as 3s, 500ms or 1m30s"`
	HeartbeatStale time.Duration `envconfig:"SELECTOR_HEARTBEAT_STALE" default:"5s" form:"a positive duration such as 3s, 500ms or 1m30s"`
	HostStale      time.Duration `envconfig:"SELECTOR_HOST_STALE" default:"10s" form:"a positive duration such as 3s, 500ms or 1m30s"`
	RecoveryGrace  time.Duration `envconfig:"SELECTOR_RECOVERY_GRACE" form:"a positive duration such as 3s, 500ms or 1m30s (empty: the heartbeat stale threshold)"`
	BackoffBase    time.Duration `envconfig:"SELECTOR_BACKOFF_BASE" default:"500ms" form:"a positive duration such as 3s, 500ms or 1m30s"`
	BackoffMax     time.Duration `envconfig:"SELECTOR_BACKOFF_MAX" default:"10s" form:"a positive duration no smaller than SELECTOR_BACKOFF_BASE"`
	MaxPending     int           `envconfig:"SELECTOR_MAX_PENDING_LAUNCHES" default:"1" form:"a whole number of at least 1"`
	HeadroomMiB    int64         `envconfig:"SELECTOR_HOST_HEADROOM_MIB" default:"0" form:"a whole number of MiB, 0 or more"`
	Tick           time.Duration `envconfig:"SELECTOR_TICK" default:"50ms" form:"a positive duration such as 50ms"`
	UnhealthyFrac  float64       `envconfig:"SELECTOR_UNHEALTHY_HOST_FRACTION" default:"0.55" form:"a fraction above 0 and below 1, such as 0.55"`
	LostPerMin     float64       `envconfig:"SELECTOR_LOST_HOSTS_PER_MIN" default:"6" form:"a number of hosts per minute above 0 and at most 1e6, such as 6"`
	FenceAfter     time.Duration `envconfig:"SELECTOR_WORKER_FENCE_AFTER" default:"8s" form:"a duration of 0 or more (0: the workers do not fence), at most SELECTOR_HOST_STALE minus 2s"`
	HBPending      int           `envconfig:"SELECTOR_HEARTBEAT_PENDING_MSGS" default:"0" form:"a whole number of messages, 0 or more (0: the NATS default, 524288)"`
	HostPending    int           `envconfig:"SELECTOR_HOST_STATUS_PENDING_MSGS" default:"0" form:"a whole number of messages, 0 or more (0: the NATS default, 524288)"`
	LogLevel       string        `envconfig:"SELECTOR_LOG_LEVEL" default:"info" form:"one of debug, info, warn, error"`
	SimSpeed       float64       `envconfig:"SIM_SPEED" default:"0" form:"a number of game seconds per real second, above 0 (0: the demo's default)"`
	ID             string        `envconfig:"SELECTOR_ID" form:"1 to 128 printable characters naming this selector (empty: the host name, a dash and 8 random hex digits)"`
	LeaseTTL       time.Duration `envconfig:"SELECTOR_LEASE_TTL" default:"5s" form:"a duration of at least 1s, above SELECTOR_LEASE_RENEW"`
	LeaseRenew     time.Duration `envconfig:"SELECTOR_LEASE_RENEW" default:"1s" form:"a positive duration below SELECTOR_LEASE_TTL, such as 1s"`
	Replicas       int           `envconfig:"SELECTOR_REPLICAS" default:"1" form:"a whole number from 1 to 5 (3 on a 3-node cluster)"`
}

// loadConfig reads and checks the configuration.
func loadConfig() (config, error) {
	var c config
	if err := envcfg.Load(&c); err != nil {
		return c, err
	}
	return c, c.check()
}

func (c *config) check() error {
	return errors.Join(
		envcfg.Check(c, "LaunchTimeout", c.LaunchTimeout > 0),
		envcfg.Check(c, "ReplyTimeout", c.ReplyTimeout > 0),
		envcfg.Check(c, "HeartbeatStale", c.HeartbeatStale > 0),
		envcfg.Check(c, "HostStale", c.HostStale > 0),
		envcfg.Check(c, "RecoveryGrace", c.RecoveryGrace >= 0),
		envcfg.Check(c, "BackoffBase", c.BackoffBase > 0),
		envcfg.Check(c, "BackoffMax", c.BackoffMax > 0 && c.BackoffMax >= c.BackoffBase),
		envcfg.Check(c, "MaxPending", c.MaxPending >= 1),
		envcfg.Check(c, "HeadroomMiB", c.HeadroomMiB >= 0),
		envcfg.Check(c, "Tick", c.Tick > 0),
		envcfg.Check(c, "HBPending", c.HBPending >= 0),
		envcfg.Check(c, "HostPending", c.HostPending >= 0),
		envcfg.Check(c, "UnhealthyFrac", c.UnhealthyFrac > 0 && c.UnhealthyFrac < 1),
		envcfg.Check(c, "LostPerMin", c.LostPerMin > 0 && c.LostPerMin <= 1e6),
		envcfg.Check(c, "FenceAfter", c.FenceAfter >= 0 && (c.FenceAfter == 0 || c.HostStale <= 0 ||
			worker.CheckFenceMargin(c.HostStale, c.FenceAfter, worker.DefaultHeartbeatInterval) == nil)),
		envcfg.Check(c, "LogLevel", validLevel(c.LogLevel)),
		envcfg.Check(c, "SubjectPrefix", validPrefix(c.SubjectPrefix)),
		envcfg.Check(c, "SimSpeed", c.SimSpeed >= 0 && c.SimSpeed < 1e9),
		envcfg.Check(c, "DataDir", c.NATSURL != "" || c.DataDir != ""),
		envcfg.Check(c, "HTTPListen", c.HTTPListen == "" || validHostPort(c.HTTPListen)),
		envcfg.Check(c, "ID", validID(c.ID)),
		envcfg.Check(c, "LeaseTTL", c.LeaseTTL >= time.Second && c.LeaseTTL > c.LeaseRenew),
		envcfg.Check(c, "LeaseRenew", c.LeaseRenew > 0 && c.LeaseRenew < c.LeaseTTL),
		envcfg.Check(c, "Replicas", c.Replicas >= 1 && c.Replicas <= 5),
		c.Auth.Check(),
		c.checkAuthNeedsURL(),
	)
}

// validID reports whether id is empty (a generated one) or 1 to 128
// printable UTF-8 characters.
func validID(id string) bool {
	if id == "" {
		return true
	}
	if !utf8.ValidString(id) || utf8.RuneCountInString(id) > 128 {
		return false
	}
	for _, r := range id {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// selectorID is SELECTOR_ID, or the host name, a dash and 8 random hex
// digits: unique per process start, so that a restarted selector never
// mistakes the lease of its previous run for its own.
func (c *config) selectorID() string {
	if c.ID != "" {
		return c.ID
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "selector"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// checkAuthNeedsURL refuses credentials without NATS_URL (the embedded
// server asks for none, and ignoring them would hide a mistake), and a
// NATS_URL whose own credentials would override them.
func (c *config) checkAuthNeedsURL() error {
	if c.NATSURL != "" {
		return c.Auth.CheckURL(c.NATSURL)
	}
	if c.Auth.IsZero() {
		return nil
	}
	return &natsconn.AuthError{Var: "NATS_URL", Form: "a NATS URL when NATS credentials are set",
		Problem: "it is empty, so the embedded server would run, and it takes no credentials"}
}

func validLevel(s string) bool {
	var l slog.Level
	return l.UnmarshalText([]byte(s)) == nil
}

// validHostPort reports whether s is host:port with a port from 0 to 65535
// (0: a free one); the host may be empty (every interface).
func validHostPort(s string) bool {
	_, p, err := net.SplitHostPort(s)
	if err != nil {
		return false
	}
	port, err := strconv.Atoi(p)
	return err == nil && port >= 0 && port <= 65535
}

func validPrefix(p string) bool {
	if p == "" {
		return false
	}
	for tok := range strings.SplitSeq(p, ".") {
		if tok == "" {
			return false
		}
		for _, r := range tok {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// engine returns the decision engine's configuration.
func (c *config) engine() selector.Config {
	e := selector.DefaultConfig()
	e.LaunchTimeout = c.LaunchTimeout
	e.ReplyTimeout = c.ReplyTimeout
	e.HeartbeatStale = c.HeartbeatStale
	e.HostStale = c.HostStale
	e.RecoveryGrace = c.RecoveryGrace
	if e.RecoveryGrace == 0 {
		e.RecoveryGrace = c.HeartbeatStale
	}
	e.BackoffBase = c.BackoffBase
	e.BackoffMax = c.BackoffMax
	e.MaxPendingLaunches = c.MaxPending
	e.HostHeadroomMiB = c.HeadroomMiB
	e.UnhealthyHostFraction = c.UnhealthyFrac
	e.LostHostsPerMin = c.LostPerMin
	return e
}

func (c *config) level() slog.Level {
	var l slog.Level
	_ = l.UnmarshalText([]byte(c.LogLevel))
	return l
}
