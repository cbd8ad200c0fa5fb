package workload

import (
	"math"
	"testing"

	"github.com/taskselector/taskselector/schemas"
)

func TestEarlyGameTable(t *testing.T) {
	servers := EarlyGame()
	if len(servers) != 14 {
		t.Fatalf("%d servers", len(servers))
	}
	servers[0].Name = "changed"
	if EarlyGame()[0].Name != "n00dles" {
		t.Fatal("EarlyGame shares its slice")
	}
	targets, hackable := 0, 0
	for _, s := range EarlyGame() {
		// A server's minimum security is max(1, round(base / 3)).
		if want := math.Max(1, math.Round(s.BaseSec/3)); s.MinSec != want {
			t.Errorf("%s: min security %v, want %v", s.Name, s.MinSec, want)
		}
		if s.IsTarget() != (s.MaxMoney > 0) || s.RAMMiB() != int64(s.RAMGiB)*1024 {
			t.Errorf("%s: target %v, RAM %d MiB", s.Name, s.IsTarget(), s.RAMMiB())
		}
		if s.IsTarget() {
			targets++
			// Start money is 4 % of max for every early-game target.
			if !near(s.StartMoney, s.MaxMoney/25, 1e-12) {
				t.Errorf("%s: start money %v of max %v", s.Name, s.StartMoney, s.MaxMoney)
			}
		}
		if s.Hackable(DemoLevel) {
			hackable++
		}
		for _, level := range []int{-50, 0, 1, 10, DemoLevel, 1000} {
			spec := s.Spec(level)
			if err := Validate(&spec); err != nil {
				t.Errorf("%s at level %d: %v", s.Name, level, err)
			}
			if spec.Profile != schemas.ProfileHacking || spec.V != schemas.Version {
				t.Errorf("%s: spec %+v", s.Name, spec)
			}
			if level < s.ReqLevel && spec.Metrics.HackFractionPerThread != 0 {
				t.Errorf("%s at level %d: hack fraction %v above the player's level", s.Name, level, spec.Metrics.HackFractionPerThread)
			}
		}
	}
	if targets != 13 {
		t.Errorf("%d targets, want 13 (all but CSEC)", targets)
	}
	if hackable != 12 {
		t.Errorf("%d targets hackable at level %d, want 12", hackable, DemoLevel)
	}
}

func TestServerMetrics(t *testing.T) {
	for _, tc := range []struct {
		name  string
		level int
		want  schemas.HackingMetrics
	}{
		// The reference's worked figures: k 0.10482, f 0.004125 for n00dles;
		// k 6.9878e-4, f 0.003602 for joesguns at level 100.
		{"n00dles", DemoLevel, schemas.HackingMetrics{
			Security: 1, MinSecurity: 1, Money: 70e3, MaxMoney: 1.75e6,
			GrowthLogPerThread: 0.10482, HackFractionPerThread: 0.004125,
			HackChance: (175.0 - 1) / 175 * 0.99, HackTimeMS: 16750,
		}},
		{"joesguns", DemoLevel, schemas.HackingMetrics{
			Security: 15, MinSecurity: 5, Money: 2.5e6, MaxMoney: 62.5e6,
			GrowthLogPerThread: 6.9878e-4, HackFractionPerThread: 0.003602,
			HackChance: (175.0 - 10) / 175 * 0.95, HackTimeMS: 5 * (2.5*10*5 + 500) / 150.0 * 1000,
		}},
		// Below the required level: nothing to steal (the chance formula still
		// gives a chance), and growth below the cap at security 10.
		{"silver-helix", DemoLevel, schemas.HackingMetrics{
			Security: 30, MinSecurity: 10, Money: 45e6, MaxMoney: 1.125e9,
			GrowthLogPerThread: math.Log1p(0.03/10) * 0.3, HackFractionPerThread: 0,
			HackChance: (175.0 - 150) / 175 * 0.9, HackTimeMS: 5 * (2.5*150*10 + 500) / 150.0 * 1000,
		}},
	} {
		got := server(t, tc.name).Metrics(tc.level)
		w := tc.want
		if got.Security != w.Security || got.MinSecurity != w.MinSecurity || got.Money != w.Money || got.MaxMoney != w.MaxMoney {
			t.Errorf("%s: %+v", tc.name, got)
		}
		for _, f := range []struct {
			name      string
			got, want float64
		}{
			{"growth", got.GrowthLogPerThread, w.GrowthLogPerThread},
			{"fraction", got.HackFractionPerThread, w.HackFractionPerThread},
			{"chance", got.HackChance, w.HackChance},
			{"time", got.HackTimeMS, w.HackTimeMS},
		} {
			if !near(f.got, f.want, 1e-4) {
				t.Errorf("%s: %s = %v, want %v", tc.name, f.name, f.got, f.want)
			}
		}
	}
}
