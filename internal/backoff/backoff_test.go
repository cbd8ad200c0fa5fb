package backoff

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// fixed returns a source that always yields u.
func fixed(u float64) func() float64 { return func() float64 { return u } }

func TestDelayTable(t *testing.T) {
	ms := time.Millisecond
	doubling := Policy{Base: 100 * ms, Max: 5 * time.Second}
	jittered := Policy{Base: 500 * ms, Max: 10 * time.Second, Factor: 2, Jitter: 0.2}
	capFirst := Policy{Base: 100 * ms, Max: 5 * time.Second, Jitter: 0.2, CapFirst: true}
	tests := []struct {
		name string
		p    Policy
		n    int
		rnd  func() float64
		want time.Duration
	}{
		{"first attempt is Base", doubling, 1, nil, 100 * ms},
		{"grows by the factor", doubling, 2, nil, 200 * ms},
		{"grows by the factor again", doubling, 4, nil, 800 * ms},
		{"reaches the cap", doubling, 6, nil, 3200 * ms},
		{"stops at the cap", doubling, 7, nil, 5 * time.Second},
		{"attempt zero counts as one", doubling, 0, nil, 100 * ms},
		{"negative attempt counts as one", doubling, -5, nil, 100 * ms},
		{"zero factor means two", Policy{Base: ms, Max: time.Hour}, 3, nil, 4 * ms},
		{"factor below one means two", Policy{Base: ms, Max: time.Hour, Factor: 0.5}, 3, nil, 4 * ms},
		{"NaN factor means two", Policy{Base: ms, Max: time.Hour, Factor: math.NaN()}, 3, nil, 4 * ms},
		{"factor one is constant", Policy{Base: ms, Max: time.Hour, Factor: 1}, 50, nil, ms},
		{"factor three", Policy{Base: ms, Max: time.Hour, Factor: 3}, 3, nil, 9 * ms},
		{"zero base waits nothing", Policy{Max: time.Second}, 1 << 30, nil, 0},
		{"negative base waits nothing", Policy{Base: -ms, Max: time.Second}, 3, nil, 0},
		{"nil source means no jitter", jittered, 1, nil, 500 * ms},
		{"jitter at the middle draw", jittered, 2, fixed(0.5), time.Second},
		{"jitter at the lowest draw", jittered, 1, fixed(0), 400 * ms},
		{"jitter near the highest draw", jittered, 1, fixed(0.75), 550 * ms},
		{"jitter before the cap is capped", jittered, 6, fixed(0.99), 10 * time.Second},
		{"low jitter above the cap is still capped", jittered, 6, fixed(0), 10 * time.Second},
		{"high jitter just below the cap", jittered, 5, fixed(0.99), 9568 * ms},
		{"cap first spreads waits at the cap down", capFirst, 20, fixed(0), 4 * time.Second},
		{"cap first spreads waits at the cap up", capFirst, 20, fixed(0.75), 5500 * ms},
		{"cap first below the cap", capFirst, 2, fixed(0), 160 * ms},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.p.Delay(tc.n, tc.rnd); got != tc.want {
				t.Fatalf("Delay(%d) = %v, want %v", tc.n, got, tc.want)
			}
		})
	}
}

func TestDelayNeverOverflows(t *testing.T) {
	policies := []Policy{
		{Base: time.Millisecond, Max: time.Minute},
		{Base: time.Millisecond, Max: time.Minute, Factor: 1e6, Jitter: 0.9},
		{Base: time.Millisecond, Max: time.Minute, Jitter: 0.5, CapFirst: true},
		{Base: time.Hour, Max: math.MaxInt64},
		{Base: time.Hour, Max: math.MaxInt64, Jitter: 0.9},
		{Base: time.Hour, Max: math.MaxInt64, Jitter: 0.9, CapFirst: true},
		{Base: math.MaxInt64, Max: math.MaxInt64, Factor: 1e6},
	}
	attempts := []int{1, 2, 31, 62, 63, 64, 65, 1000, 1 << 20, math.MaxInt32, math.MaxInt}
	draws := []float64{0, 0.5, 0.999999}
	for i, p := range policies {
		for _, n := range attempts {
			for _, u := range draws {
				d := p.Delay(n, fixed(u))
				if d < 0 {
					t.Fatalf("policy %d attempt %d draw %v: negative wait %v", i, n, u, d)
				}
				limit := p.Max
				if p.CapFirst {
					limit = time.Duration(min(float64(p.Max)*(1+p.Jitter), float64(math.MaxInt64)))
				}
				if p.Max < math.MaxInt64 && d > limit {
					t.Fatalf("policy %d attempt %d draw %v: wait %v above %v", i, n, u, d, limit)
				}
			}
		}
	}
	// Large attempts saturate at the cap exactly.
	p := Policy{Base: time.Millisecond, Max: time.Minute}
	for _, n := range []int{100, 1 << 40, math.MaxInt} {
		if d := p.Delay(n, nil); d != time.Minute {
			t.Fatalf("Delay(%d) = %v, want the cap", n, d)
		}
	}
}

func TestJitterBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, capFirst := range []bool{false, true} {
		p := Policy{Base: 100 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2, CapFirst: capFirst}
		for n := 1; n <= 40; n++ {
			nominal := min(float64(p.Base)*math.Pow(2, float64(n-1)), float64(p.Max))
			lo, hi := nominal*(1-p.Jitter), nominal*(1+p.Jitter)
			if !capFirst {
				hi = min(hi, float64(p.Max))
				lo = min(float64(p.Base)*math.Pow(2, float64(n-1))*(1-p.Jitter), float64(p.Max))
			}
			seen := map[time.Duration]bool{}
			for range 200 {
				d := p.Delay(n, rng.Float64)
				if float64(d) < math.Floor(lo) || float64(d) > hi {
					t.Fatalf("capFirst=%v attempt %d: wait %v outside [%v, %v]", capFirst, n, d, time.Duration(lo), time.Duration(hi))
				}
				seen[d] = true
			}
			if capFirst || n <= 5 { // below the cap (or cap first) the waits vary
				if len(seen) < 2 {
					t.Fatalf("capFirst=%v attempt %d: no jitter", capFirst, n)
				}
			}
		}
	}
}

func TestSourceDrawnOnlyWithJitter(t *testing.T) {
	calls := 0
	src := func() float64 { calls++; return 0.5 }
	Policy{Base: time.Second, Max: time.Minute}.Delay(3, src)
	if calls != 0 {
		t.Fatalf("source drawn %d times without jitter", calls)
	}
	Policy{Base: time.Second, Max: time.Minute, Jitter: 0.1}.Delay(30, src)
	if calls != 1 {
		t.Fatalf("source drawn %d times with jitter, want 1", calls)
	}
}

// TestSeededDeterminism: the same seed gives the same waits.
func TestSeededDeterminism(t *testing.T) {
	run := func() []time.Duration {
		rng := rand.New(rand.NewPCG(7, 7^0x9e3779b97f4a7c15))
		b := Backoff{Policy: Policy{Base: 500 * time.Millisecond, Max: 10 * time.Second, Jitter: 0.2}, Rand: rng.Float64}
		var out []time.Duration
		for range 10 {
			out = append(out, b.Next())
		}
		return out
	}
	a, b := run(), run()
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("wait %d: %v then %v", i, a[i], b[i])
		}
	}
}

func TestBackoffNextAndReset(t *testing.T) {
	b := Backoff{Policy: Policy{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond}}
	if b.Level() != 0 {
		t.Fatalf("zero Backoff at level %d", b.Level())
	}
	want := []time.Duration{10, 20, 40, 50, 50}
	for i, w := range want {
		if d := b.Next(); d != w*time.Millisecond {
			t.Fatalf("Next #%d = %v, want %v", i+1, d, w*time.Millisecond)
		}
		if b.Level() != i+1 {
			t.Fatalf("level %d after %d failures", b.Level(), i+1)
		}
	}
	b.Reset()
	if b.Level() != 0 {
		t.Fatalf("level %d after Reset", b.Level())
	}
	if d := b.Next(); d != 10*time.Millisecond {
		t.Fatalf("Next after Reset = %v, want Base", d)
	}
}

func TestBackoffLevelSaturates(t *testing.T) {
	b := Backoff{Policy: Policy{Base: time.Millisecond, Max: time.Second}, level: math.MaxInt}
	if d := b.Next(); d != time.Second || b.Level() != math.MaxInt {
		t.Fatalf("Next at the top level = %v (level %d), want the cap at MaxInt", d, b.Level())
	}
}
