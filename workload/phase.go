package workload

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/taskselector/taskselector/schemas"
)

// JSON names of the hacking metrics, as in schemas.HackingMetrics.
const (
	keySecurity     = "security"
	keyMinSecurity  = "min_security"
	keyMoney        = "money"
	keyMaxMoney     = "max_money"
	keyGrowth       = "growth_log_per_thread"
	keyHackFraction = "hack_fraction_per_thread"
	keyHackChance   = "hack_chance"
	keyHackTime     = "hack_time_ms"
)

// Validate checks a target spec: a known profile; for declared, at least one
// phase, unique non-empty types, sane figures (see Estimate) and repeat only
// on the last phase; for hacking, metrics present and valid (CheckMetrics)
// and no phases. The value, when set, must be finite and >= 0.
func Validate(spec *schemas.TargetSpec) error {
	if spec == nil {
		return fmt.Errorf("%w: no spec", ErrInvalidSpec)
	}
	if _, err := specWeight(spec); err != nil {
		return err
	}
	switch spec.Profile {
	case schemas.ProfileDeclared:
		if len(spec.Phases) == 0 {
			return fmt.Errorf("%w: declared profile without phases", ErrInvalidSpec)
		}
		if spec.Metrics != nil {
			return fmt.Errorf("%w: metrics are for the hacking profile, not declared", ErrInvalidSpec)
		}
		seen := make(map[string]struct{}, len(spec.Phases))
		for i := range spec.Phases {
			ph := &spec.Phases[i]
			if ph.Type == "" {
				return fmt.Errorf("%w: phases[%d]: empty type", ErrInvalidSpec, i)
			}
			if _, dup := seen[ph.Type]; dup {
				return fmt.Errorf("%w: phases[%d]: type %q appears twice", ErrInvalidSpec, i, ph.Type)
			}
			seen[ph.Type] = struct{}{}
			if err := checkPhase(ph); err != nil {
				return err
			}
			if ph.Repeat && i != len(spec.Phases)-1 {
				return fmt.Errorf("%w: phases[%d] (%q): repeat is allowed only on the last phase", ErrInvalidSpec, i, ph.Type)
			}
		}
		return nil
	case schemas.ProfileHacking:
		if spec.Metrics == nil {
			return fmt.Errorf("%w: hacking profile without metrics", ErrInvalidSpec)
		}
		if len(spec.Phases) != 0 {
			return fmt.Errorf("%w: phases are for the declared profile, not hacking", ErrInvalidSpec)
		}
		return CheckMetrics(*spec.Metrics)
	default:
		return fmt.Errorf("%w: unknown profile %q", ErrInvalidSpec, spec.Profile)
	}
}

// HackingPhase derives a hacking target's phase from its metrics: till if
// security > min_security + 1, else sow if money < 0.99 * max_money, else
// harvest.
func HackingPhase(m schemas.HackingMetrics) string {
	switch {
	case m.Security > m.MinSecurity+1:
		return PhaseTill
	case m.Money < 0.99*m.MaxMoney:
		return PhaseSow
	default:
		return PhaseHarvest
	}
}

// isHackingPhase reports whether phase is till, sow or harvest.
func isHackingPhase(phase string) bool {
	return phase == PhaseTill || phase == PhaseSow || phase == PhaseHarvest
}

// isCannot reports a target that is valid but cannot (yet) be worked.
func isCannot(err error) bool {
	return errors.Is(err, ErrCannotGrow) || errors.Is(err, ErrCannotHarvest)
}

// InitialPhase is the phase a new target starts in: the first phase for
// declared, the phase its metrics derive (HackingPhase) for hacking.
func InitialPhase(spec *schemas.TargetSpec) (string, error) {
	if err := Validate(spec); err != nil {
		return "", err
	}
	if spec.Profile == schemas.ProfileDeclared {
		return spec.Phases[0].Type, nil
	}
	return HackingPhase(*spec.Metrics), nil
}

// AfterDone advances a target whose task of the given phase reported done.
//
// declared: next is the following phase; after the last phase, next is the
// same phase again when it has repeat, and otherwise complete is true (next
// is then the last phase, which the target stays in without a task).
// metrics are ignored and updated is nil.
//
// hacking: the done event's metrics (keys are the JSON names of
// schemas.HackingMetrics; missing keys keep the spec's values, unknown keys
// are ignored) are merged over the spec's, and next is derived from the
// result (HackingPhase). updated is a copy of spec with the merged metrics,
// or nil when they did not change. complete is always false.
func AfterDone(spec *schemas.TargetSpec, phase string, metrics map[string]any) (next string, complete bool, updated *schemas.TargetSpec, err error) {
	if err := Validate(spec); err != nil {
		return "", false, nil, err
	}
	if spec.Profile == schemas.ProfileDeclared {
		for i := range spec.Phases {
			if spec.Phases[i].Type != phase {
				continue
			}
			if i+1 < len(spec.Phases) {
				return spec.Phases[i+1].Type, false, nil, nil
			}
			return phase, !spec.Phases[i].Repeat, nil, nil
		}
		return "", false, nil, fmt.Errorf("%w: %q is not a phase of this declared target", ErrUnknownPhase, phase)
	}
	if !isHackingPhase(phase) {
		return "", false, nil, fmt.Errorf("%w: %q is not a hacking phase (till, sow, harvest)", ErrUnknownPhase, phase)
	}
	merged, err := MetricsFromMap(*spec.Metrics, metrics)
	if err != nil {
		return "", false, nil, fmt.Errorf("done event metrics: %w", err)
	}
	if merged != *spec.Metrics {
		cp := *spec
		if spec.Value != nil {
			v := *spec.Value
			cp.Value = &v
		}
		cp.Metrics = &merged
		updated = &cp
	}
	return HackingPhase(merged), false, updated, nil
}

// MetricsMap is the metrics as a done event carries them (JSON names, float64
// values).
func MetricsMap(m schemas.HackingMetrics) map[string]any {
	return map[string]any{
		keySecurity:     m.Security,
		keyMinSecurity:  m.MinSecurity,
		keyMoney:        m.Money,
		keyMaxMoney:     m.MaxMoney,
		keyGrowth:       m.GrowthLogPerThread,
		keyHackFraction: m.HackFractionPerThread,
		keyHackChance:   m.HackChance,
		keyHackTime:     m.HackTimeMS,
	}
}

// MetricsFromMap merges an event's metrics map over base: each known key
// replaces its field, missing keys keep base's value and unknown keys are
// ignored. Values may be any Go number or json.Number. A value that is not a
// number, or a merged result that fails CheckMetrics, is an error naming the
// metric.
func MetricsFromMap(base schemas.HackingMetrics, m map[string]any) (schemas.HackingMetrics, error) {
	out := base
	fields := [...]struct {
		key string
		dst *float64
	}{
		{keySecurity, &out.Security},
		{keyMinSecurity, &out.MinSecurity},
		{keyMoney, &out.Money},
		{keyMaxMoney, &out.MaxMoney},
		{keyGrowth, &out.GrowthLogPerThread},
		{keyHackFraction, &out.HackFractionPerThread},
		{keyHackChance, &out.HackChance},
		{keyHackTime, &out.HackTimeMS},
	}
	for _, f := range fields {
		raw, ok := m[f.key]
		if !ok {
			continue
		}
		v, err := toFloat(raw)
		if err != nil {
			return base, fmt.Errorf("%w: metrics.%s: %w", ErrInvalidSpec, f.key, err)
		}
		*f.dst = v
	}
	if err := CheckMetrics(out); err != nil {
		return base, err
	}
	return out, nil
}

// toFloat converts a decoded JSON or Go number to float64.
func toFloat(v any) (float64, error) {
	switch x := v.(type) {
	case float64:
		return x, nil
	case float32:
		return float64(x), nil
	case int:
		return float64(x), nil
	case int8:
		return float64(x), nil
	case int16:
		return float64(x), nil
	case int32:
		return float64(x), nil
	case int64:
		return float64(x), nil
	case uint:
		return float64(x), nil
	case uint8:
		return float64(x), nil
	case uint16:
		return float64(x), nil
	case uint32:
		return float64(x), nil
	case uint64:
		return float64(x), nil
	case json.Number:
		f, err := x.Float64()
		if err != nil {
			return 0, fmt.Errorf("not a number: %q", string(x))
		}
		return f, nil
	default:
		return 0, fmt.Errorf("want a number, got %T", v)
	}
}
