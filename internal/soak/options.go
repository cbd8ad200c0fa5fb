package soak

import (
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/worker"
)

// Fault kinds, as Result.Faults counts them.
const (
	// KindCrash: a running task dies mid-phase and its worker reports it
	// (a failed event, reason crashed).
	KindCrash = "crash"
	// KindCrashSilent: a running task vanishes without a word; only its
	// missing heartbeats and a ps tell.
	KindCrashSilent = "crash_silent"
	// KindHang: a running task stays alive but sends no heartbeats.
	KindHang = "hang"
	// KindSilentLaunch: the next launch starts a task that never sends a
	// heartbeat, and half the time its reply comes after the reply timeout.
	KindSilentLaunch = "silent_launch"
	// KindHostLoss: a worker host dies for good; a new host (another name)
	// joins a little later, so that RAM does not run out.
	KindHostLoss = "host_loss"
	// KindHostBounce: a worker host dies and comes back under its name,
	// before or after the selector declares it lost.
	KindHostBounce = "host_bounce"
	// KindPartition: a worker's connection stalls past its fence time,
	// sometimes past the host-stale time, and then flows again.
	KindPartition = "partition"
	// KindSelectorKill: the selector dies at once (its connection closed
	// first, so nothing more leaves it), at a random moment or right as a
	// launch goes out, and a new one starts on the same store after a
	// random pause.
	KindSelectorKill = "selector_kill"
	// KindSelectorRestart: the selector shuts down gracefully and restarts.
	KindSelectorRestart = "selector_restart"
	// KindNATSRestart: the embedded NATS server restarts on its file store.
	KindNATSRestart = "nats_restart"
	// KindStoreSlow: every write to the tasks bucket is held past the
	// event AckWait and the launch timeout, for a few seconds.
	KindStoreSlow = "store_slow"
	// KindHeartbeatFlood: copies of live heartbeats and host statuses
	// flood the selector while it consumes slowly, past its pending limits.
	KindHeartbeatFlood = "heartbeat_flood"
	// KindDuplicates: recent heartbeats, host statuses, task events, ps
	// and kill requests are replayed, duplicated and reordered.
	KindDuplicates = "duplicates"
	// KindHostile: malformed messages on every subject, in the event
	// stream and in the targets bucket, with RAM figures past the bound.
	KindHostile = "hostile"
)

// kindInfo describes a fault kind for the fault loop.
type kindInfo struct {
	name   string
	weight int // copies in each shuffled deck
	// exclusive faults run alone: no other fault active and no recovery
	// under measurement, so that their effect (or lack of one) is theirs.
	exclusive bool
}

var kinds = []kindInfo{
	{KindCrash, 3, false},
	{KindCrashSilent, 2, false},
	{KindHang, 2, false},
	{KindSilentLaunch, 1, false},
	{KindHostLoss, 1, false},
	{KindHostBounce, 1, false},
	{KindPartition, 1, false},
	{KindSelectorKill, 1, true},
	{KindSelectorRestart, 1, true},
	{KindNATSRestart, 1, true},
	{KindStoreSlow, 1, true},
	{KindHeartbeatFlood, 1, true},
	{KindDuplicates, 1, true},
	{KindHostile, 1, true},
}

// Kinds lists every fault kind, in the order of the report.
func Kinds() []string {
	out := make([]string, len(kinds))
	for i, k := range kinds {
		out[i] = k.name
	}
	return out
}

func kindOf(name string) (kindInfo, bool) {
	for _, k := range kinds {
		if k.name == name {
			return k, true
		}
	}
	return kindInfo{}, false
}

// Timers are the system's timers during a soak: the production defaults
// shortened, so that a short soak sees many faults, in the same relations
// (HostStale >= FenceAfter + 2 × Heartbeat, grace = heartbeat stale).
type Timers struct {
	Heartbeat      time.Duration // workers' heartbeat and host status period [250ms]
	FenceAfter     time.Duration // workers' fence time [3s]
	HeartbeatStale time.Duration // [2s]
	HostStale      time.Duration // [4s]
	RecoveryGrace  time.Duration // [= HeartbeatStale]
	LaunchTimeout  time.Duration // [1.5s]
	ReplyTimeout   time.Duration // [500ms]
	BackoffBase    time.Duration // [200ms]
	BackoffMax     time.Duration // [2s]
	// RestartDelayBase and RestartDelayMax bound the per-target delay after
	// a crash [200ms, 800ms]; RestartDelayReset is the healthy run that
	// resets it [30s].
	RestartDelayBase, RestartDelayMax, RestartDelayReset time.Duration
	AckWait                                              time.Duration // event redelivery [2s]
	Tick                                                 time.Duration // selector tick [50ms]
}

// DefaultTimers returns the soak's timers.
func DefaultTimers() Timers {
	return Timers{
		Heartbeat:         250 * time.Millisecond,
		FenceAfter:        3 * time.Second,
		HeartbeatStale:    2 * time.Second,
		HostStale:         4 * time.Second,
		RecoveryGrace:     2 * time.Second,
		LaunchTimeout:     1500 * time.Millisecond,
		ReplyTimeout:      500 * time.Millisecond,
		BackoffBase:       200 * time.Millisecond,
		BackoffMax:        2 * time.Second,
		RestartDelayBase:  200 * time.Millisecond,
		RestartDelayMax:   800 * time.Millisecond,
		RestartDelayReset: 30 * time.Second,
		AckWait:           2 * time.Second,
		Tick:              50 * time.Millisecond,
	}
}

func (t Timers) withDefaults() Timers {
	d := DefaultTimers()
	set := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&t.Heartbeat, d.Heartbeat)
	set(&t.FenceAfter, d.FenceAfter)
	set(&t.HeartbeatStale, d.HeartbeatStale)
	set(&t.HostStale, d.HostStale)
	set(&t.RecoveryGrace, t.HeartbeatStale)
	set(&t.LaunchTimeout, d.LaunchTimeout)
	set(&t.ReplyTimeout, d.ReplyTimeout)
	set(&t.BackoffBase, d.BackoffBase)
	set(&t.BackoffMax, d.BackoffMax)
	set(&t.RestartDelayBase, d.RestartDelayBase)
	set(&t.RestartDelayMax, d.RestartDelayMax)
	set(&t.RestartDelayReset, d.RestartDelayReset)
	set(&t.AckWait, d.AckWait)
	set(&t.Tick, d.Tick)
	return t
}

// engine returns the selector's configuration for these timers.
func (t Timers) engine(seed uint64) selector.Config {
	return selector.Config{
		LaunchTimeout:     t.LaunchTimeout,
		ReplyTimeout:      t.ReplyTimeout,
		HeartbeatStale:    t.HeartbeatStale,
		HostStale:         t.HostStale,
		RecoveryGrace:     t.RecoveryGrace,
		BackoffBase:       t.BackoffBase,
		BackoffMax:        t.BackoffMax,
		RestartDelayBase:  t.RestartDelayBase,
		RestartDelayMax:   t.RestartDelayMax,
		RestartDelayReset: t.RestartDelayReset,
		Seed:              seed,
	}.WithDefaults()
}

// Options configure Run. Zero fields take the defaults in brackets.
type Options struct {
	// Duration is how long faults are injected [1m]. Settling and the
	// final checks come after it.
	Duration time.Duration
	// Seed seeds the fault loop, the targets and the selector [1].
	Seed int64
	// Hosts is the number of worker hosts at the start [5].
	Hosts int
	// Targets is the number of declared targets with short phases and a
	// long repeating last one [10]. A target that fits no host (the
	// "whale") is declared besides them.
	Targets int
	// Interval is the mean time between two fault draws [2s].
	Interval time.Duration
	// Kinds restricts the faults drawn [every kind, see Kinds].
	Kinds []string
	// InOrder draws the kinds in the order of Kinds, each once per round,
	// instead of at random by weight (for short runs that must cover them).
	InOrder bool
	// MaxLocal bounds the task and host faults active at once [2].
	MaxLocal int
	// StallAfter is how long a recovery may take before it counts as a
	// stalled target, a violation [30s].
	StallAfter time.Duration
	// Settle bounds the wait, after the faults, for the system to settle
	// before the final checks [60s].
	Settle time.Duration
	// Timers are the system's timers [DefaultTimers].
	Timers Timers
	// Log receives the soak's progress [discarded].
	Log *slog.Logger
	// ComponentLog receives the selector's, workers' and connections' logs
	// [discarded].
	ComponentLog *slog.Logger
	// Progress is the period of progress lines on Log [10s].
	Progress time.Duration
}

func (o Options) withDefaults() (Options, error) {
	if o.Duration <= 0 {
		o.Duration = time.Minute
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Hosts <= 0 {
		o.Hosts = 5
	}
	if o.Hosts < 3 {
		return o, fmt.Errorf("soak: at least 3 hosts, got %d", o.Hosts)
	}
	if o.Targets <= 0 {
		o.Targets = 10
	}
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if len(o.Kinds) == 0 {
		o.Kinds = Kinds()
	}
	for _, k := range o.Kinds {
		if _, ok := kindOf(k); !ok {
			return o, fmt.Errorf("soak: unknown fault kind %q (have %v)", k, Kinds())
		}
	}
	o.Kinds = slices.Clone(o.Kinds)
	if o.MaxLocal <= 0 {
		o.MaxLocal = 2
	}
	if o.StallAfter <= 0 {
		o.StallAfter = 30 * time.Second
	}
	if o.Settle <= 0 {
		o.Settle = time.Minute
	}
	o.Timers = o.Timers.withDefaults()
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.ComponentLog == nil {
		o.ComponentLog = slog.New(slog.DiscardHandler)
	}
	if o.Progress <= 0 {
		o.Progress = 10 * time.Second
	}
	t := o.Timers
	if err := t.engine(1).Validate(); err != nil {
		return o, fmt.Errorf("soak: timers: %w", err)
	}
	if err := worker.CheckFenceMargin(t.HostStale, t.FenceAfter, t.Heartbeat); err != nil {
		return o, fmt.Errorf("soak: timers: %w", err)
	}
	return o, nil
}
