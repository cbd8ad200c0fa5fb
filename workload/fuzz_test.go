package workload

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/taskselector/taskselector/schemas"
)

// FuzzAfterDone feeds arbitrary done-event metrics (as JSON) through
// AfterDone: it never panics, and whatever it accepts is valid, derives a
// hacking phase and yields sane estimates and runs.
func FuzzAfterDone(f *testing.F) {
	for _, seed := range []string{
		`{}`, `null`, `{"security": 5.5}`, `{"money": 1e308, "max_money": 1e308}`,
		`{"security": -1}`, `{"hack_chance": 2}`, `{"money": "x"}`, `{"growth_log_per_thread": 0}`,
		`{"hack_fraction_per_thread": 0, "hack_time_ms": 1e300}`, `{"security": 1e999}`,
	} {
		f.Add([]byte(seed), uint8(0))
	}
	base := EarlyGame()[3].Spec(DemoLevel)
	p := DefaultParams()
	phases := []string{PhaseTill, PhaseSow, PhaseHarvest, "bogus"}
	f.Fuzz(func(t *testing.T, data []byte, which uint8) {
		var metrics map[string]any
		dec := json.NewDecoder(bytes.NewReader(data))
		if which&4 != 0 {
			dec.UseNumber()
		}
		if dec.Decode(&metrics) != nil {
			return
		}
		phase := phases[int(which)%len(phases)]
		next, complete, updated, err := AfterDone(&base, phase, metrics)
		if err != nil {
			return
		}
		if complete || !isHackingPhase(next) {
			t.Fatalf("next %q complete %v", next, complete)
		}
		spec := &base
		if updated != nil {
			spec = updated
		}
		if err := Validate(spec); err != nil {
			t.Fatalf("accepted metrics fail validation: %v", err)
		}
		est, err := p.Estimate(spec, next)
		if err != nil {
			if !isCannot(err) {
				t.Fatalf("estimate: %v", err)
			}
			return
		}
		if est.HelpersFullMiB < est.HelpersMinMiB || est.HelpersFullMiB > p.MaxMiB || !finite(est.Value) || est.Value <= 0 {
			t.Fatalf("estimate %+v", est)
		}
		r, err := p.NewRun(spec, next, est.HelpersMinMiB)
		if err != nil {
			t.Fatalf("run at minimum: %v", err)
		}
		r.Advance(1 << 40)
		if CheckMetrics(r.Metrics()) != nil || !finite(r.Progress()) || !finite(r.Earned()) {
			t.Fatalf("run: %+v %v %v", r.Metrics(), r.Progress(), r.Earned())
		}
		if back, err := MetricsFromMap(schemas.HackingMetrics{}, MetricsMap(*spec.Metrics)); err != nil || back != *spec.Metrics {
			t.Fatalf("round trip %+v %v", back, err)
		}
	})
}
