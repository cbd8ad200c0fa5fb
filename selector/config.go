package selector

import (
	"fmt"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

// DefaultConfig returns the engine's defaults, as issue and README list them.
func DefaultConfig() Config {
	return Config{
		LaunchTimeout:      3 * time.Second,
		ReplyTimeout:       time.Second,
		HeartbeatStale:     5 * time.Second,
		HostStale:          10 * time.Second,
		RecoveryGrace:      5 * time.Second,
		BackoffBase:        500 * time.Millisecond,
		BackoffFactor:      2,
		BackoffMax:         10 * time.Second,
		BackoffJitter:      0.2,
		MaxPendingLaunches: 1,
		HostHeadroomMiB:    0,
		RestartDelayBase:   time.Second,
		RestartDelayMax:    5 * time.Minute,
		RestartDelayReset:  10 * time.Minute,
		MaxSkips:           64,
		Seed:               1,

		UnhealthyHostFraction: 0.55,
		LostHostsPerMin:       6,
		Workload:              workload.DefaultParams(),
	}
}

// WithDefaults returns c with every zero field set to its default. The
// recovery grace defaults to the heartbeat stale threshold.
func (c Config) WithDefaults() Config {
	d := DefaultConfig()
	setDur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setDur(&c.LaunchTimeout, d.LaunchTimeout)
	setDur(&c.ReplyTimeout, d.ReplyTimeout)
	setDur(&c.HeartbeatStale, d.HeartbeatStale)
	setDur(&c.HostStale, d.HostStale)
	setDur(&c.RecoveryGrace, c.HeartbeatStale)
	setDur(&c.BackoffBase, d.BackoffBase)
	setDur(&c.BackoffMax, d.BackoffMax)
	setDur(&c.RestartDelayBase, d.RestartDelayBase)
	setDur(&c.RestartDelayMax, d.RestartDelayMax)
	setDur(&c.RestartDelayReset, d.RestartDelayReset)
	if c.BackoffFactor == 0 {
		c.BackoffFactor = d.BackoffFactor
	}
	if c.BackoffJitter == 0 {
		c.BackoffJitter = d.BackoffJitter
	}
	if c.MaxPendingLaunches == 0 {
		c.MaxPendingLaunches = d.MaxPendingLaunches
	}
	if c.MaxSkips == 0 {
		c.MaxSkips = d.MaxSkips
	}
	if c.UnhealthyHostFraction == 0 {
		c.UnhealthyHostFraction = d.UnhealthyHostFraction
	}
	if c.LostHostsPerMin == 0 {
		c.LostHostsPerMin = d.LostHostsPerMin
	}
	if c.Workload == (workload.Params{}) {
		c.Workload = d.Workload
	}
	return c
}

// Validate reports the first setting that is out of range.
func (c Config) Validate() error {
	pos := []struct {
		name string
		v    time.Duration
	}{
		{"LaunchTimeout", c.LaunchTimeout},
		{"ReplyTimeout", c.ReplyTimeout},
		{"HeartbeatStale", c.HeartbeatStale},
		{"HostStale", c.HostStale},
		{"RecoveryGrace", c.RecoveryGrace},
		{"BackoffBase", c.BackoffBase},
		{"BackoffMax", c.BackoffMax},
		{"RestartDelayBase", c.RestartDelayBase},
		{"RestartDelayMax", c.RestartDelayMax},
		{"RestartDelayReset", c.RestartDelayReset},
	}
	for _, p := range pos {
		if p.v <= 0 {
			return fmt.Errorf("selector: %s must be a positive duration, got %v", p.name, p.v)
		}
	}
	switch {
	case c.BackoffMax < c.BackoffBase:
		return fmt.Errorf("selector: BackoffMax (%v) must not be below BackoffBase (%v)", c.BackoffMax, c.BackoffBase)
	case c.RestartDelayMax < c.RestartDelayBase:
		return fmt.Errorf("selector: RestartDelayMax (%v) must not be below RestartDelayBase (%v)", c.RestartDelayMax, c.RestartDelayBase)
	case !(c.BackoffFactor >= 1) || c.BackoffFactor > 1e6:
		return fmt.Errorf("selector: BackoffFactor must be a number from 1 to 1e6, got %v", c.BackoffFactor)
	case !(c.BackoffJitter >= 0) || c.BackoffJitter >= 1:
		return fmt.Errorf("selector: BackoffJitter must be a fraction in [0, 1), got %v", c.BackoffJitter)
	case c.MaxPendingLaunches < 1:
		return fmt.Errorf("selector: MaxPendingLaunches must be at least 1, got %d", c.MaxPendingLaunches)
	case c.Horizon < 0:
		return fmt.Errorf("selector: Horizon must not be negative, got %v", c.Horizon)
	case c.HelperGrainMiB < 0 || c.HelperGrainMiB > schemas.MaxMiB:
		return fmt.Errorf("selector: HelperGrainMiB must be from 0 to %d, got %d", schemas.MaxMiB, c.HelperGrainMiB)
	case c.HostHeadroomMiB < 0:
		return fmt.Errorf("selector: HostHeadroomMiB must not be negative, got %d", c.HostHeadroomMiB)
	case c.MaxSkips < 0:
		return fmt.Errorf("selector: MaxSkips must not be negative, got %d", c.MaxSkips)
	case !(c.UnhealthyHostFraction > 0) || c.UnhealthyHostFraction >= 1:
		return fmt.Errorf("selector: UnhealthyHostFraction must be a fraction in (0, 1), got %v", c.UnhealthyHostFraction)
	case !(c.LostHostsPerMin > 0) || c.LostHostsPerMin > 1e6:
		return fmt.Errorf("selector: LostHostsPerMin must be a number above 0 and at most 1e6, got %v", c.LostHostsPerMin)
	}
	if err := c.Workload.Validate(); err != nil {
		return fmt.Errorf("selector: Workload: %w", err)
	}
	return nil
}
