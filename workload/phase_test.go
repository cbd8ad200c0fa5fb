package workload

import (
	"encoding/json"
	"errors"
	"maps"
	"math"
	"slices"
	"testing"

	"github.com/taskselector/taskselector/schemas"
)

func declaredSpec(phases ...schemas.Phase) *schemas.TargetSpec {
	return &schemas.TargetSpec{V: 1, Profile: schemas.ProfileDeclared, Phases: phases}
}

func ph(typ string, repeat bool) schemas.Phase {
	return schemas.Phase{Type: typ, WrapperMiB: 10, HelpersMinMiB: 100, HelpersFullMiB: 1000, WorkS: 5, Repeat: repeat}
}

func TestValidate(t *testing.T) {
	good := server(t, "joesguns").Metrics(DemoLevel)
	nan := good
	nan.Money = math.NaN()
	neg := -1.0
	for _, tc := range []struct {
		name string
		spec *schemas.TargetSpec
		ok   bool
	}{
		{"declared", declaredSpec(ph("a", false), ph("b", true)), true},
		{"declared single repeat", declaredSpec(ph("a", true)), true},
		{"hacking", hackingSpec(good), true},
		{"nil", nil, false},
		{"unknown profile", &schemas.TargetSpec{Profile: "other"}, false},
		{"declared without phases", declaredSpec(), false},
		{"repeat not last", declaredSpec(ph("a", true), ph("b", false)), false},
		{"duplicate type", declaredSpec(ph("a", false), ph("a", false)), false},
		{"empty type", declaredSpec(ph("", false)), false},
		{"negative wrapper", declaredSpec(schemas.Phase{Type: "a", WrapperMiB: -1}), false},
		{"helpers without minimum", declaredSpec(schemas.Phase{Type: "a", HelpersFullMiB: 10}), false},
		{"NaN work", declaredSpec(schemas.Phase{Type: "a", WorkS: math.NaN()}), false},
		{"declared with metrics", &schemas.TargetSpec{Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{ph("a", false)}, Metrics: &good}, false},
		{"hacking without metrics", &schemas.TargetSpec{Profile: schemas.ProfileHacking}, false},
		{"hacking with phases", &schemas.TargetSpec{Profile: schemas.ProfileHacking, Metrics: &good, Phases: []schemas.Phase{ph("a", false)}}, false},
		{"hacking NaN metric", hackingSpec(nan), false},
		{"negative value", &schemas.TargetSpec{Profile: schemas.ProfileHacking, Metrics: &good, Value: &neg}, false},
	} {
		err := Validate(tc.spec)
		if tc.ok && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("%s: got %v, want ErrInvalidSpec", tc.name, err)
		}
	}
}

func TestInitialPhase(t *testing.T) {
	m := func(sec, money float64) schemas.HackingMetrics {
		return schemas.HackingMetrics{Security: sec, MinSecurity: 5, Money: money, MaxMoney: 100, GrowthLogPerThread: 0.01}
	}
	for _, tc := range []struct {
		name string
		spec *schemas.TargetSpec
		want string
	}{
		{"declared", declaredSpec(ph("a", false), ph("b", true)), "a"},
		{"above min+1", hackingSpec(m(6.01, 0)), PhaseTill},
		{"at min+1", hackingSpec(m(6, 50)), PhaseSow},
		{"money just low", hackingSpec(m(5, 98.99)), PhaseSow},
		{"money at 99%", hackingSpec(m(5, 99)), PhaseHarvest},
		{"n00dles", ptr(server(t, "n00dles").Spec(DemoLevel)), PhaseSow},
		{"joesguns", ptr(server(t, "joesguns").Spec(DemoLevel)), PhaseTill},
	} {
		got, err := InitialPhase(tc.spec)
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	if _, err := InitialPhase(declaredSpec()); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("invalid spec: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestAfterDoneDeclared(t *testing.T) {
	repeat := declaredSpec(ph("a", false), ph("b", false), ph("c", true))
	once := declaredSpec(ph("a", false), ph("b", false))
	for _, tc := range []struct {
		name     string
		spec     *schemas.TargetSpec
		phase    string
		next     string
		complete bool
	}{
		{"first to second", repeat, "a", "b", false},
		{"into repeat", repeat, "b", "c", false},
		{"repeat stays", repeat, "c", "c", false},
		{"middle", once, "a", "b", false},
		{"last completes", once, "b", "b", true},
	} {
		next, complete, updated, err := AfterDone(tc.spec, tc.phase, map[string]any{"money": 1.0})
		if err != nil || next != tc.next || complete != tc.complete || updated != nil {
			t.Errorf("%s: %q %v %v %v; want %q %v", tc.name, next, complete, updated, err, tc.next, tc.complete)
		}
	}
	if _, _, _, err := AfterDone(once, "c", nil); !errors.Is(err, ErrUnknownPhase) {
		t.Errorf("unknown phase: %v", err)
	}
	if _, _, _, err := AfterDone(declaredSpec(ph("a", true), ph("b", false)), "a", nil); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("invalid spec: %v", err)
	}
}

func TestAfterDoneHacking(t *testing.T) {
	base := server(t, "joesguns").Metrics(DemoLevel) // security 15 > 6: till
	w := 2.0
	spec := &schemas.TargetSpec{V: 1, Profile: schemas.ProfileHacking, Metrics: &base, Value: &w}
	orig := *spec.Metrics

	for _, tc := range []struct {
		name    string
		metrics map[string]any
		next    string
		changed bool
		check   func(schemas.HackingMetrics) bool
	}{
		{"no metrics: still till", nil, PhaseTill, false, nil},
		{"same metrics", MetricsMap(base), PhaseTill, false, nil},
		{"unknown keys ignored", map[string]any{"foo": "bar"}, PhaseTill, false, nil},
		{"till done", map[string]any{"security": 5.5}, PhaseSow, true,
			func(m schemas.HackingMetrics) bool { return m.Security == 5.5 && m.Money == base.Money }},
		{"sow done", map[string]any{"security": 5.0, "money": 62.5e6}, PhaseHarvest, true,
			func(m schemas.HackingMetrics) bool { return m.Money == 62.5e6 }},
		{"harvest drifted", map[string]any{"security": json.Number("5"), "money": int64(1e6)}, PhaseSow, true,
			func(m schemas.HackingMetrics) bool { return m.Money == 1e6 && m.Security == 5 }},
		{"integer keys", map[string]any{"security": 7, "min_security": uint8(6)}, PhaseSow, true,
			func(m schemas.HackingMetrics) bool { return m.MinSecurity == 6 }},
	} {
		next, complete, updated, err := AfterDone(spec, PhaseTill, tc.metrics)
		if err != nil || next != tc.next || complete {
			t.Errorf("%s: %q %v %v; want %q", tc.name, next, complete, err, tc.next)
			continue
		}
		if (updated != nil) != tc.changed {
			t.Errorf("%s: updated %v, want changed=%v", tc.name, updated, tc.changed)
			continue
		}
		if updated != nil {
			if !tc.check(*updated.Metrics) {
				t.Errorf("%s: merged metrics %+v", tc.name, *updated.Metrics)
			}
			if updated.Profile != spec.Profile || *updated.Value != w || updated.Value == spec.Value || updated.Metrics == spec.Metrics {
				t.Errorf("%s: updated spec %+v is not a copy of the spec", tc.name, updated)
			}
			if p, _ := InitialPhase(updated); p != next {
				t.Errorf("%s: updated spec derives %q, AfterDone said %q", tc.name, p, next)
			}
		}
		if *spec.Metrics != orig {
			t.Fatalf("%s: spec mutated", tc.name)
		}
	}

	for name, bad := range map[string]map[string]any{
		"string":      {"money": "lots"},
		"NaN":         {"money": math.NaN()},
		"negative":    {"security": -3.0},
		"bad number":  {"money": json.Number("1e999")},
		"chance >1":   {"hack_chance": 2.0},
		"bool":        {"security": true},
		"nil value":   {"security": nil},
		"inf float32": {"money": float32(math.Inf(1))},
	} {
		if _, _, _, err := AfterDone(spec, PhaseSow, bad); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("%s: %v, want ErrInvalidSpec", name, err)
		}
	}
	if _, _, _, err := AfterDone(spec, "build", nil); !errors.Is(err, ErrUnknownPhase) {
		t.Errorf("unknown phase: %v", err)
	}
}

func TestMetricsMapMatchesJSON(t *testing.T) {
	m := schemas.HackingMetrics{
		Security: 1, MinSecurity: 2, Money: 3, MaxMoney: 4,
		GrowthLogPerThread: 5, HackFractionPerThread: 0.6, HackChance: 0.7, HackTimeMS: 8,
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var viaJSON map[string]any
	if err := json.Unmarshal(raw, &viaJSON); err != nil {
		t.Fatal(err)
	}
	got := MetricsMap(m)
	if !maps.Equal(got, viaJSON) {
		t.Fatalf("MetricsMap %v, JSON %v", got, viaJSON)
	}
	back, err := MetricsFromMap(schemas.HackingMetrics{}, viaJSON)
	if err != nil || back != m {
		t.Fatalf("round trip %+v, %v; want %+v", back, err, m)
	}
	if keys := slices.Sorted(maps.Keys(got)); len(keys) != 8 {
		t.Fatalf("keys %v", keys)
	}
}
