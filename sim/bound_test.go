package sim

import (
	"math"
	"testing"
	"time"

	"github.com/taskselector/taskselector/workload"
)

// handTarget is a hackable target with round numbers: T = 1 s (a round of
// 4 s), security 1.5 above min + 1 (10 weaken threads of till), money a
// factor e below 99 % of max, and k = 0.01.
func handTarget(name string) Target {
	tg := joesguns(0, 0)
	m := tg.Spec.Metrics
	m.HackTimeMS = 1000
	m.Security = m.MinSecurity + 1 + 0.5
	m.Money = 1e6
	m.MaxMoney = 1e6 * math.E / 0.99
	m.GrowthLogPerThread = 0.01
	return Target{Name: name, Spec: tg.Spec}
}

func TestPrepMiBSecondsByHand(t *testing.T) {
	params := workload.DefaultParams()
	m := *handTarget("x").Spec.Metrics
	// till: 0.5 / 0.05 = 10 weaken threads × 1792 MiB × 4 s = 71,680.
	// sow: ln(e) / (0.01 + 1e-6) grow threads × (1792 + 0.08 × 1792) MiB
	// × 4 s.
	till := 10 * 1792 * 4.0
	sow := 1 / (0.01 + 1e-6) * (1792 * 1.08) * 4
	if got := PrepMiBSeconds(params, m); math.Abs(got-(till+sow)) > 1e-6*(till+sow) {
		t.Errorf("P = %v, want %v + %v", got, till, sow)
	}
	// Prepped: nothing to do.
	m.Security, m.Money = m.MinSecurity, m.MaxMoney
	if got := PrepMiBSeconds(params, m); got != 0 {
		t.Errorf("prepped target: P = %v, want 0", got)
	}
	// Tilled but not sown; exactly min + 1 needs no till.
	m.Security, m.Money = m.MinSecurity+1, 1e6
	if got := PrepMiBSeconds(params, m); math.Abs(got-sow) > 1e-6*sow {
		t.Errorf("tilled target: P = %v, want %v", got, sow)
	}
}

func TestPrepAwareBoundByHand(t *testing.T) {
	params := workload.DefaultParams()
	raw := handTarget("raw")
	ready := handTarget("ready")
	rm := ready.Spec.Metrics
	rm.Security, rm.Money = rm.MinSecurity, rm.MaxMoney
	rm.HackFractionPerThread /= 2 // a lower rate than raw's
	rRaw, _ := params.IncomePerMiBSecond(*raw.Spec.Metrics)
	rReady, _ := params.IncomePerMiBSecond(*rm)
	if !(rRaw > rReady && rReady > 0) {
		t.Fatalf("rates raw %v, ready %v: want raw > ready > 0", rRaw, rReady)
	}
	P := PrepMiBSeconds(params, *raw.Spec.Metrics)
	host := func(gib int64) []Host {
		return []Host{{Name: "a", CapacityMiB: gib << 10}, {Name: "b", CapacityMiB: gib << 10, ForeignMiB: 1 << 10}}
	}
	cases := []struct {
		name  string
		hosts []Host
		d     time.Duration
		tgts  []Target
		want  float64
	}{
		// R - w = 2 × 32 GiB - 1 GiB - one wrapper; H = 1 h.
		{"raw alone", host(32), time.Hour, []Target{raw},
			rRaw * (float64(63<<10-params.WrapperMiB)*3600 - P) / 3600},
		// So short a run that raw's prep does not fit: nothing.
		{"raw, short run", host(2), time.Second, []Target{raw}, 0},
		// The ready target, no prep: its rate times all usable RAM.
		{"ready alone", host(2), time.Second, []Target{ready}, rReady * float64(3<<10-params.WrapperMiB)},
		// Both: the larger of the two terms.
		{"both, long", host(32), time.Hour, []Target{raw, ready},
			max(rRaw*(float64(63<<10-params.WrapperMiB)*3600-P)/3600, rReady*float64(63<<10-params.WrapperMiB))},
		{"both, short", host(2), time.Second, []Target{raw, ready}, rReady * float64(3<<10-params.WrapperMiB)},
	}
	for _, c := range cases {
		w := World{Name: c.name, Hosts: c.hosts, Targets: c.tgts}
		b, err := Bound(params, w, c.d)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(b.IncomePerSecond-c.want) > 1e-9*math.Max(c.want, 1) {
			t.Errorf("%s: bound %v, want %v", c.name, b.IncomePerSecond, c.want)
		}
		if b.Duration != c.d || !b.Hacking {
			t.Errorf("%s: duration %v hacking %v", c.name, b.Duration, b.Hacking)
		}
	}
	// The long case picks raw: its prep costs less than its rate gains.
	if c := cases[3]; c.want == rReady*float64(63<<10-params.WrapperMiB) {
		t.Errorf("hand case 'both, long' should be decided by raw")
	}
}

// The declared bound is unchanged: its old figure is the same.
func TestDeclaredBoundOldEqualsNew(t *testing.T) {
	b, err := Bound(workload.DefaultParams(), Fleet(25), 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if b.PhasesPerHour <= 0 || b.PhasesPerHourOld != b.PhasesPerHour {
		t.Errorf("fleet 25 %%: bound %v, old %v", b.PhasesPerHour, b.PhasesPerHourOld)
	}
}
