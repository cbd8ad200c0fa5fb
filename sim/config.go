package sim

import (
	"fmt"
	"math"
	"time"

	"github.com/taskselector/taskselector/workload"
)

// Config holds the simulator's knobs. Zero fields take the defaults of
// DefaultConfig through WithDefaults (LossProb, CrashRate, CrashEventProb,
// Jitter and Latency stay as given: zero is a meaningful value for them).
type Config struct {
	Seed     uint64
	Duration time.Duration // virtual time simulated

	Tick              time.Duration // period of the policy's Tick [100ms]
	HeartbeatInterval time.Duration // a task's heartbeat period [1s]
	StatusInterval    time.Duration // a host's HostStatus period [1s]
	ReplyTimeout      time.Duration // the edge's request timeout [1s]
	HelperDelay       time.Duration // wrapper start to helpers start [200ms]
	Latency           time.Duration // one-way bus latency [1ms unless NoLatency]
	Jitter            time.Duration // uniform ± added to each message's latency
	NoLatency         bool          // zero latency (Latency 0 means the default)

	LossProb       float64 // probability that a core NATS message is lost
	CrashRate      float64 // crashes per task-hour of running
	CrashEventProb float64 // share of crashes the worker reports as failed/crashed

	SampleInterval time.Duration // timeline sampling period [30s]; negative: none
	StrandedAfter  time.Duration // pending with room this long is stranded [1m]
	NoMeasures     bool          // skip per-second stranded checks and samples (scale runs)

	Params workload.Params // task model [workload.DefaultParams()]
}

// DefaultConfig returns the simulator's defaults, for a run of one hour.
func DefaultConfig() Config {
	return Config{
		Seed:              1,
		Duration:          time.Hour,
		Tick:              100 * time.Millisecond,
		HeartbeatInterval: time.Second,
		StatusInterval:    time.Second,
		ReplyTimeout:      time.Second,
		HelperDelay:       200 * time.Millisecond,
		Latency:           time.Millisecond,
		SampleInterval:    30 * time.Second,
		StrandedAfter:     time.Minute,
		Params:            workload.DefaultParams(),
	}
}

// WithDefaults fills the zero fields of c from DefaultConfig.
func (c Config) WithDefaults() Config {
	d := DefaultConfig()
	set := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	set(&c.Duration, d.Duration)
	set(&c.Tick, d.Tick)
	set(&c.HeartbeatInterval, d.HeartbeatInterval)
	set(&c.StatusInterval, d.StatusInterval)
	set(&c.ReplyTimeout, d.ReplyTimeout)
	set(&c.HelperDelay, d.HelperDelay)
	set(&c.SampleInterval, d.SampleInterval)
	set(&c.StrandedAfter, d.StrandedAfter)
	if c.NoLatency {
		c.Latency = 0
	} else {
		set(&c.Latency, d.Latency)
	}
	if c.Params == (workload.Params{}) {
		c.Params = d.Params
	}
	return c
}

// Validate reports the first knob out of range.
func (c Config) Validate() error {
	for _, p := range []struct {
		name string
		v    time.Duration
	}{
		{"Duration", c.Duration}, {"Tick", c.Tick}, {"HeartbeatInterval", c.HeartbeatInterval},
		{"StatusInterval", c.StatusInterval}, {"ReplyTimeout", c.ReplyTimeout}, {"HelperDelay", c.HelperDelay},
		{"StrandedAfter", c.StrandedAfter},
	} {
		if p.v <= 0 {
			return fmt.Errorf("sim: %s must be positive, got %v", p.name, p.v)
		}
	}
	switch {
	case c.Latency < 0 || c.Jitter < 0 || c.Jitter > c.Latency:
		return fmt.Errorf("sim: need 0 <= Jitter <= Latency, got latency %v jitter %v", c.Latency, c.Jitter)
	case !(c.LossProb >= 0 && c.LossProb < 1):
		return fmt.Errorf("sim: LossProb must be in [0, 1), got %v", c.LossProb)
	case !(c.CrashRate >= 0) || math.IsInf(c.CrashRate, 0):
		return fmt.Errorf("sim: CrashRate must be finite and >= 0, got %v", c.CrashRate)
	case !(c.CrashEventProb >= 0 && c.CrashEventProb <= 1):
		return fmt.Errorf("sim: CrashEventProb must be in [0, 1], got %v", c.CrashEventProb)
	}
	if err := c.Params.Validate(); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	return nil
}
