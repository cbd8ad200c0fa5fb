package sim

import (
	"fmt"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// Policy decides which tasks run where. It gets the same events, and returns
// the same commands, as the selector engine; *selector.Engine is a Policy.
// The returned slice may be reused by the next call.
type Policy interface {
	Step(now time.Time, ev selector.Event) []selector.Command
}

// Policy names.
const (
	PolicySelector = "selector"
	PolicyNaive    = "naive"
	PolicyBound    = "bound"
)

// NewPolicy builds the named policy ("selector" or "naive") for a run of
// world under cfg. The selector is the real engine with its default
// configuration (its jitter seeded from cfg.Seed), declared the world's
// targets at Epoch.
func NewPolicy(name string, cfg Config, world World) (Policy, error) {
	cfg = cfg.WithDefaults()
	switch name {
	case PolicySelector:
		sc := selector.DefaultConfig()
		sc.Seed = cfg.Seed
		sc.Workload = cfg.Params
		for _, t := range world.Targets {
			if t.Spec.Profile == schemas.ProfileHacking {
				// Hacking helpers are threads of a fixed size:
				// grants in whole threads waste none.
				sc.HelperGrainMiB = max(cfg.Params.GrowThreadMiB, cfg.Params.WeakenThreadMiB, cfg.Params.HackThreadMiB)
				// Plan the hacking targets for the run's length.
				sc.Horizon = cfg.Duration
				break
			}
		}
		return NewSelector(sc, world)
	case PolicyNaive:
		return NewNaive(cfg.Params, world.Targets), nil
	}
	return nil, fmt.Errorf("sim: unknown policy %q (want %s or %s)", name, PolicySelector, PolicyNaive)
}

// NewSelector builds the selector engine with sc, declared world's targets
// at Epoch.
func NewSelector(sc selector.Config, world World) (*selector.Engine, error) {
	specs := make(map[string]schemas.TargetSpec, len(world.Targets))
	for _, t := range world.Targets {
		specs[t.Name] = cloneSpec(t.Spec)
	}
	e, err := selector.New(sc, Epoch, selector.Snapshot{Targets: specs})
	if err != nil {
		return nil, fmt.Errorf("sim: selector: %w", err)
	}
	return e, nil
}

// RunPolicy builds the named policy and simulates world with it.
func RunPolicy(name string, cfg Config, world World) (*Result, error) {
	p, err := NewPolicy(name, cfg, world)
	if err != nil {
		return nil, err
	}
	s, err := New(cfg, world, p)
	if err != nil {
		return nil, err
	}
	res, err := s.Run()
	if err != nil {
		return nil, fmt.Errorf("sim: %s on %s: %w", name, world.Name, err)
	}
	return res, nil
}

// statusOf returns the policy's status when it has one (the selector).
func statusOf(p Policy, now time.Time) (schemas.SelectorStatus, bool) {
	if sp, ok := p.(interface {
		Status(time.Time) schemas.SelectorStatus
	}); ok {
		return sp.Status(now), true
	}
	return schemas.SelectorStatus{}, false
}
