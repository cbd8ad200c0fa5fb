package workload

import (
	"testing"
	"time"
)

func BenchmarkEstimate(b *testing.B) {
	p := DefaultParams()
	spec := server(b, "joesguns").Spec(DemoLevel)
	for _, phase := range []string{PhaseTill, PhaseSow, PhaseHarvest} {
		b.Run(phase, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Estimate(&spec, phase); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRunAdvance(b *testing.B) {
	p := DefaultParams()
	spec := server(b, "joesguns").Spec(DemoLevel)
	sow := spec
	m := *spec.Metrics
	m.Security = m.MinSecurity
	sow.Metrics = &m
	for _, tc := range []struct {
		phase   string
		helpers int64
	}{
		{PhaseTill, 20 * p.WeakenThreadMiB},
		{PhaseSow, 32 * MiBPerGiB},
		{PhaseHarvest, 32 * MiBPerGiB},
	} {
		s := &spec
		if tc.phase != PhaseTill {
			s = &sow
		}
		b.Run(tc.phase+"/1s", func(b *testing.B) {
			b.ReportAllocs()
			r, err := p.NewRun(s, tc.phase, tc.helpers)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				r.Advance(time.Second)
				if r.Done() {
					b.StopTimer()
					r, _ = p.NewRun(s, tc.phase, tc.helpers)
					b.StartTimer()
				}
			}
		})
	}
}
