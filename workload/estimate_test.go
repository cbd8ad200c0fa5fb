package workload

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/taskselector/taskselector/schemas"
)

// server returns the early-game server with the given name.
func server(t testing.TB, name string) Server {
	t.Helper()
	for _, s := range EarlyGame() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no server %q", name)
	return Server{}
}

func hackingSpec(m schemas.HackingMetrics) *schemas.TargetSpec {
	return &schemas.TargetSpec{V: 1, Profile: schemas.ProfileHacking, Metrics: &m}
}

// Metrics as the reference's worked-sizes table gives them.
var (
	refNoodles = schemas.HackingMetrics{
		Security: 1, MinSecurity: 1, Money: 70e3, MaxMoney: 1.75e6,
		GrowthLogPerThread: 0.10482, HackFractionPerThread: 0.004125, HackChance: 1, HackTimeMS: 16750,
	}
	refJoesguns = schemas.HackingMetrics{
		Security: 15, MinSecurity: 5, Money: 2.5e6, MaxMoney: 62.5e6,
		GrowthLogPerThread: 6.9878e-4, HackFractionPerThread: 0.003602, HackChance: 0.9, HackTimeMS: 20833,
	}
)

func near(got, want, rel float64) bool {
	return math.Abs(got-want) <= rel*math.Abs(want)
}

func TestWorkedSizesSow(t *testing.T) {
	p := DefaultParams()
	for _, tc := range []struct {
		name string
		m    schemas.HackingMetrics
	}{
		{"reference metrics", refNoodles},
		{"derived metrics", server(t, "n00dles").Metrics(DemoLevel)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, w, err := p.SowThreads(tc.m)
			if err != nil {
				t.Fatal(err)
			}
			if g != 31 || w != 3 {
				t.Fatalf("sow threads = %d g + %d w, want 31 g + 3 w", g, w)
			}
			est, err := p.Estimate(hackingSpec(tc.m), PhaseSow)
			if err != nil {
				t.Fatal(err)
			}
			if gib := float64(est.HelpersFullMiB) / MiBPerGiB; gib != 59.5 {
				t.Errorf("full sow = %v GiB, want 59.5", gib)
			}
			// The minimum is one grow and one weaken thread (see hackingHelpers).
			if est.HelpersMinMiB != p.GrowThreadMiB+p.WeakenThreadMiB {
				t.Errorf("min sow = %d MiB, want 1 g + 1 w = %d", est.HelpersMinMiB, p.GrowThreadMiB+p.WeakenThreadMiB)
			}
			if est.WrapperMiB != p.WrapperMiB {
				t.Errorf("wrapper = %d, want %d", est.WrapperMiB, p.WrapperMiB)
			}
		})
	}
}

func TestWorkedSizesHarvest(t *testing.T) {
	type want struct{ h, g, w1, w2 int64 }
	wide := DefaultParams()
	wide.MaxBatchMiB = wide.MaxMiB // the reference's joesguns batch exceeds the default cap
	wide.HackFraction = 0.1
	for _, tc := range []struct {
		name string
		p    Params
		m    schemas.HackingMetrics
		want want
		gb   float64
	}{
		{"n00dles p=0.5 reference", DefaultParams(), refNoodles, want{122, 7, 5, 1}, 230},
		{"n00dles p=0.5 derived", DefaultParams(), server(t, "n00dles").Metrics(DemoLevel), want{122, 7, 5, 1}, 230},
		{"joesguns p=0.1 reference", wide, refJoesguns, want{28, 151, 2, 13}, 338},
		{"joesguns p=0.1 derived", wide, server(t, "joesguns").Metrics(DemoLevel), want{28, 151, 2, 13}, 338},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := tc.p.PlanHarvest(tc.m)
			if err != nil {
				t.Fatal(err)
			}
			b := h.Batch
			if got := (want{b.Hack, b.Grow, b.Weaken1, b.Weaken2}); got != tc.want {
				t.Fatalf("batch = %+v, want %+v", got, tc.want)
			}
			wantMiB := b.Hack*tc.p.HackThreadMiB + (b.Grow+b.Weaken1+b.Weaken2)*tc.p.GrowThreadMiB
			if b.MiB != wantMiB {
				t.Errorf("batch MiB = %d, want %d", b.MiB, wantMiB)
			}
			if gb := float64(b.MiB) / MiBPerGiB; !near(gb, tc.gb, 0.005) {
				t.Errorf("batch = %.2f GiB, want about %v", gb, tc.gb)
			}
			// The full harvest is overlap batches; the minimum is one batch with h = 1.
			sp := tc.p.Spacing.Seconds()
			overlap := int64(math.Ceil((4*tc.m.HackTimeMS/1000 + 2*sp) / (4 * sp)))
			if h.Overlap != overlap || h.FullMiB != overlap*b.MiB {
				t.Errorf("overlap %d, full %d; want %d, %d", h.Overlap, h.FullMiB, overlap, overlap*b.MiB)
			}
			est, err := tc.p.Estimate(hackingSpec(tc.m), PhaseHarvest)
			if err != nil {
				t.Fatal(err)
			}
			if est.HelpersFullMiB != h.FullMiB {
				t.Errorf("estimate full %d, plan %d", est.HelpersFullMiB, h.FullMiB)
			}
			if h.MinBatch.Hack != 1 || est.HelpersMinMiB != h.MinBatch.MiB {
				t.Errorf("min batch %+v, estimate min %d", h.MinBatch, est.HelpersMinMiB)
			}
			income := float64(b.Hack) * tc.m.HackFractionPerThread * tc.m.MaxMoney * tc.m.HackChance / (4 * sp)
			if !near(est.Value, income, 1e-12) {
				t.Errorf("value %v, want %v", est.Value, income)
			}
		})
	}
}

func TestNoodlesOverlapAtDemoLevel(t *testing.T) {
	m := server(t, "n00dles").Metrics(DemoLevel)
	// T = 5 * (2.5*1*1 + 500) / 150 = 16.75 s; overlap = ceil((67 + 0.16) / 0.32) = 210.
	if m.HackTimeMS != 16750 {
		t.Fatalf("hack time %v ms, want 16750", m.HackTimeMS)
	}
	h, err := DefaultParams().PlanHarvest(m)
	if err != nil {
		t.Fatal(err)
	}
	if h.Overlap != 210 {
		t.Errorf("overlap %d, want 210", h.Overlap)
	}
}

func TestDefaultBatchCap(t *testing.T) {
	p := DefaultParams()
	m := server(t, "joesguns").Metrics(DemoLevel)
	h, err := p.PlanHarvest(m)
	if err != nil {
		t.Fatal(err)
	}
	if h.Batch.MiB > p.MaxBatchMiB {
		t.Fatalf("batch %d MiB above cap %d", h.Batch.MiB, p.MaxBatchMiB)
	}
	uncapped := int64(math.Ceil(p.HackFraction / m.HackFractionPerThread))
	if h.Batch.Hack >= uncapped || h.Batch.Hack < 1 {
		t.Fatalf("hack threads %d, want in [1, %d)", h.Batch.Hack, uncapped)
	}
	// The cap picks the largest batch that fits: one more hack thread does not.
	next, err := p.batch(m, h.Batch.Hack+1)
	if err != nil {
		t.Fatal(err)
	}
	if next.MiB <= p.MaxBatchMiB {
		t.Errorf("batch with %d hack threads (%d MiB) also fits", next.Hack, next.MiB)
	}
}

func TestWorkedSizesTill(t *testing.T) {
	p := DefaultParams()
	for _, tc := range []struct {
		name    string
		m       schemas.HackingMetrics
		threads int64
		fullMiB int64
	}{
		{"joesguns 15 -> 5", server(t, "joesguns").Metrics(DemoLevel), 200, 200 * 1792},
		{"n00dles already at min", server(t, "n00dles").Metrics(DemoLevel), 0, 1792},
		{"fraction rounds up", schemas.HackingMetrics{Security: 5.01, MinSecurity: 5}, 1, 1792},
		{"security below min", schemas.HackingMetrics{Security: 2, MinSecurity: 5}, 0, 1792},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.TillThreads(tc.m); got != tc.threads {
				t.Errorf("till threads %d, want %d", got, tc.threads)
			}
			est, err := p.Estimate(hackingSpec(tc.m), PhaseTill)
			if err != nil {
				t.Fatal(err)
			}
			if est.HelpersFullMiB != tc.fullMiB || est.HelpersMinMiB != p.WeakenThreadMiB {
				t.Errorf("till helpers min %d full %d, want %d %d", est.HelpersMinMiB, est.HelpersFullMiB, p.WeakenThreadMiB, tc.fullMiB)
			}
		})
	}
	if gb := float64(200*p.WeakenThreadMiB) / MiBPerGiB; gb != 350 {
		t.Errorf("200 weaken threads = %v GiB, want 350", gb)
	}
}

func TestValueSameForEveryPhase(t *testing.T) {
	p := DefaultParams()
	spec := server(t, "joesguns").Spec(DemoLevel)
	var values []float64
	for _, ph := range []string{PhaseTill, PhaseSow, PhaseHarvest} {
		est, err := p.Estimate(&spec, ph)
		if err != nil {
			t.Fatal(ph, err)
		}
		values = append(values, est.Value)
	}
	if values[0] != values[1] || values[1] != values[2] || values[0] <= p.MinValue {
		t.Fatalf("values %v: want equal and above the floor", values)
	}
	w := 3.0
	spec.Value = &w
	est, err := p.Estimate(&spec, PhaseTill)
	if err != nil {
		t.Fatal(err)
	}
	if !near(est.Value, 3*values[0], 1e-12) {
		t.Errorf("weighted value %v, want %v", est.Value, 3*values[0])
	}
}

func TestDeclaredEstimate(t *testing.T) {
	p := DefaultParams()
	spec := &schemas.TargetSpec{V: 1, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
		{Type: "build", WrapperMiB: 64, HelpersMinMiB: 256, HelpersFullMiB: 4096, WorkS: 30},
		{Type: "serve", WrapperMiB: 32, HelpersMinMiB: 0, HelpersFullMiB: 0, WorkS: 10, Repeat: true},
	}}
	est, err := p.Estimate(spec, "build")
	if err != nil {
		t.Fatal(err)
	}
	if est != (Estimate{64, 256, 4096, 1, 1.0 / 4160}) {
		t.Errorf("build estimate %+v", est)
	}
	if est.MinMiB() != 320 || est.FullMiB() != 4160 {
		t.Errorf("min %d full %d", est.MinMiB(), est.FullMiB())
	}
	v := 2.5
	spec.Value = &v
	est, err = p.Estimate(spec, "serve")
	if err != nil {
		t.Fatal(err)
	}
	if est != (Estimate{32, 0, 0, 2.5, 2.5 / 32}) {
		t.Errorf("serve estimate %+v", est)
	}
	if _, err := p.Estimate(spec, "till"); !errors.Is(err, ErrUnknownPhase) {
		t.Errorf("unknown phase: %v", err)
	}
	zero := 0.0
	spec.Value = &zero
	if est, err := p.Estimate(spec, "build"); err != nil || est.Value != p.MinValue {
		t.Errorf("value 0: %+v %v, want the floor", est, err)
	}
	for _, bad := range []float64{-1, math.NaN(), math.Inf(1)} {
		spec.Value = &bad
		if _, err := p.Estimate(spec, "build"); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("value %v: %v", bad, err)
		}
	}
	spec.Value = nil
	spec.Phases[0].HelpersMinMiB = 5000
	if _, err := p.Estimate(spec, "build"); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("min above full: %v", err)
	}
}

func TestEstimateRejects(t *testing.T) {
	p := DefaultParams()
	m := server(t, "n00dles").Metrics(DemoLevel)
	for _, tc := range []struct {
		name  string
		spec  *schemas.TargetSpec
		phase string
		want  error
	}{
		{"nil spec", nil, PhaseTill, ErrInvalidSpec},
		{"unknown profile", &schemas.TargetSpec{Profile: "batch"}, PhaseTill, ErrInvalidSpec},
		{"hacking without metrics", &schemas.TargetSpec{Profile: schemas.ProfileHacking}, PhaseTill, ErrInvalidSpec},
		{"unknown hacking phase", hackingSpec(m), "reap", ErrUnknownPhase},
	} {
		if _, err := p.Estimate(tc.spec, tc.phase); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	bad := p
	bad.Spacing = 0
	if _, err := bad.Estimate(hackingSpec(m), PhaseTill); !errors.Is(err, ErrInvalidParams) {
		t.Errorf("bad params: %v", err)
	}
}

func TestParamsValidate(t *testing.T) {
	if err := DefaultParams().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Params){
		"grow MiB":      func(p *Params) { p.GrowThreadMiB = 0 },
		"max threads":   func(p *Params) { p.MaxThreads = -1 },
		"weaken":        func(p *Params) { p.WeakenPerThread = 0 },
		"weaken NaN":    func(p *Params) { p.WeakenPerThread = math.NaN() },
		"grow sec":      func(p *Params) { p.GrowSecPerThread = -0.1 },
		"fraction 1":    func(p *Params) { p.HackFraction = 1 },
		"fraction NaN":  func(p *Params) { p.HackFraction = math.NaN() },
		"min value":     func(p *Params) { p.MinValue = 0 },
		"max value":     func(p *Params) { p.MaxValue = p.MinValue / 2 },
		"wrapper > max": func(p *Params) { p.MaxMiB = 100 },
	} {
		p := DefaultParams()
		mod(&p)
		if err := p.Validate(); !errors.Is(err, ErrInvalidParams) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// checkEstimate fails unless est is finite, non-negative and bounded.
func checkEstimate(t *testing.T, p Params, est Estimate, ctx string) {
	t.Helper()
	if est.WrapperMiB < 0 || est.HelpersMinMiB < 0 || est.HelpersFullMiB < est.HelpersMinMiB ||
		est.WrapperMiB > p.MaxMiB || est.HelpersFullMiB > p.MaxMiB {
		t.Errorf("%s: estimate out of bounds: %+v", ctx, est)
	}
	if !finite(est.Value) || est.Value < p.MinValue || est.Value > p.MaxValue {
		t.Errorf("%s: value %v not in [%v, %v]", ctx, est.Value, p.MinValue, p.MaxValue)
	}
}

func TestDegenerateMetrics(t *testing.T) {
	p := DefaultParams()
	base := server(t, "joesguns").Metrics(DemoLevel)
	with := func(f func(*schemas.HackingMetrics)) schemas.HackingMetrics {
		m := base
		f(&m)
		return m
	}
	type outcome struct {
		till, sow, harvest error // nil: a sane estimate
	}
	for _, tc := range []struct {
		name string
		m    schemas.HackingMetrics
		want outcome
	}{
		{"zero money", with(func(m *schemas.HackingMetrics) { m.Money = 0 }), outcome{}},
		{"zero max money", with(func(m *schemas.HackingMetrics) { m.MaxMoney = 0 }), outcome{nil, nil, ErrCannotHarvest}},
		{"zero money and max", with(func(m *schemas.HackingMetrics) { m.Money, m.MaxMoney = 0, 0 }), outcome{nil, nil, ErrCannotHarvest}},
		{"zero growth", with(func(m *schemas.HackingMetrics) { m.GrowthLogPerThread = 0 }), outcome{nil, ErrCannotGrow, ErrCannotGrow}},
		{"zero growth at max money", with(func(m *schemas.HackingMetrics) { m.GrowthLogPerThread, m.Money = 0, m.MaxMoney }), outcome{nil, nil, ErrCannotGrow}},
		{"tiny growth", with(func(m *schemas.HackingMetrics) { m.GrowthLogPerThread = 1e-300 }), outcome{}},
		{"zero hack fraction", with(func(m *schemas.HackingMetrics) { m.HackFractionPerThread = 0 }), outcome{nil, nil, ErrCannotHarvest}},
		{"full hack fraction", with(func(m *schemas.HackingMetrics) { m.HackFractionPerThread = 1 }), outcome{}},
		{"zero chance", with(func(m *schemas.HackingMetrics) { m.HackChance = 0 }), outcome{}},
		{"security at min", with(func(m *schemas.HackingMetrics) { m.Security = m.MinSecurity }), outcome{}},
		{"zero security", with(func(m *schemas.HackingMetrics) { m.Security, m.MinSecurity = 0, 0 }), outcome{}},
		{"huge security", with(func(m *schemas.HackingMetrics) { m.Security = 1e300 }), outcome{}},
		{"huge money", with(func(m *schemas.HackingMetrics) { m.Money, m.MaxMoney = 1e308, math.MaxFloat64 }), outcome{}},
		{"money above max", with(func(m *schemas.HackingMetrics) { m.Money = 2 * m.MaxMoney }), outcome{}},
		{"zero hack time", with(func(m *schemas.HackingMetrics) { m.HackTimeMS = 0 }), outcome{}},
		{"huge hack time", with(func(m *schemas.HackingMetrics) { m.HackTimeMS = 1e300 }), outcome{}},
		{"all zero", schemas.HackingMetrics{}, outcome{nil, nil, ErrCannotHarvest}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, ph := range []string{PhaseTill, PhaseSow, PhaseHarvest} {
				want := [...]error{tc.want.till, tc.want.sow, tc.want.harvest}[i]
				est, err := p.Estimate(hackingSpec(tc.m), ph)
				if want != nil {
					if !errors.Is(err, want) {
						t.Errorf("%s: got %v, want %v", ph, err, want)
					}
					continue
				}
				if err != nil {
					t.Errorf("%s: %v", ph, err)
					continue
				}
				checkEstimate(t, p, est, ph)
			}
		})
	}

	// Thread counts saturate rather than overflow.
	m := with(func(m *schemas.HackingMetrics) { m.GrowthLogPerThread = 1e-300 })
	if g, _, _ := p.SowThreads(m); g != p.MaxThreads {
		t.Errorf("tiny growth: %d grow threads, want MaxThreads", g)
	}
	if h, _ := p.PlanHarvest(with(func(m *schemas.HackingMetrics) { m.HackTimeMS = 1e300 })); h.Overlap != p.MaxThreads || h.FullMiB > p.MaxMiB {
		t.Errorf("huge hack time: overlap %d, full %d", h.Overlap, h.FullMiB)
	}
	if h, _ := p.PlanHarvest(with(func(m *schemas.HackingMetrics) { m.HackTimeMS = 0 })); h.Overlap != 1 {
		t.Errorf("zero hack time: overlap %d, want 1", h.Overlap)
	}
}

func TestInvalidMetricsNamed(t *testing.T) {
	p := DefaultParams()
	base := server(t, "joesguns").Metrics(DemoLevel)
	fields := []struct {
		name string
		ptr  func(*schemas.HackingMetrics) *float64
	}{
		{"security", func(m *schemas.HackingMetrics) *float64 { return &m.Security }},
		{"min_security", func(m *schemas.HackingMetrics) *float64 { return &m.MinSecurity }},
		{"money", func(m *schemas.HackingMetrics) *float64 { return &m.Money }},
		{"max_money", func(m *schemas.HackingMetrics) *float64 { return &m.MaxMoney }},
		{"growth_log_per_thread", func(m *schemas.HackingMetrics) *float64 { return &m.GrowthLogPerThread }},
		{"hack_fraction_per_thread", func(m *schemas.HackingMetrics) *float64 { return &m.HackFractionPerThread }},
		{"hack_chance", func(m *schemas.HackingMetrics) *float64 { return &m.HackChance }},
		{"hack_time_ms", func(m *schemas.HackingMetrics) *float64 { return &m.HackTimeMS }},
	}
	for _, f := range fields {
		for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1), -1} {
			m := base
			*f.ptr(&m) = v
			for _, ph := range []string{PhaseTill, PhaseSow, PhaseHarvest} {
				est, err := p.Estimate(hackingSpec(m), ph)
				if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "metrics."+f.name+" ") {
					t.Errorf("%s = %v, %s: got %+v, %v; want an error naming it", f.name, v, ph, est, err)
				}
				if est != (Estimate{}) {
					t.Errorf("%s = %v, %s: estimate %+v returned with an error", f.name, v, ph, est)
				}
			}
		}
	}
	for _, name := range []string{"hack_chance", "hack_fraction_per_thread"} {
		m := base
		if name == "hack_chance" {
			m.HackChance = 1.5
		} else {
			m.HackFractionPerThread = 1.5
		}
		if _, err := p.Estimate(hackingSpec(m), PhaseHarvest); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s above 1: %v", name, err)
		}
	}
}

// randomMetric draws a metric value, often a degenerate one.
func randomMetric(r *rand.Rand, typical float64) float64 {
	switch r.IntN(10) {
	case 0:
		return 0
	case 1:
		return math.SmallestNonzeroFloat64 * float64(r.IntN(100)+1)
	case 2:
		return math.MaxFloat64 / float64(r.IntN(100)+1)
	case 3:
		return []float64{math.NaN(), math.Inf(1), math.Inf(-1), -typical}[r.IntN(4)]
	default:
		return typical * math.Exp(r.NormFloat64()*3)
	}
}

func randomMetrics(r *rand.Rand) schemas.HackingMetrics {
	return schemas.HackingMetrics{
		Security:              randomMetric(r, 20),
		MinSecurity:           randomMetric(r, 5),
		Money:                 randomMetric(r, 1e6),
		MaxMoney:              randomMetric(r, 1e8),
		GrowthLogPerThread:    randomMetric(r, 1e-3),
		HackFractionPerThread: math.Min(randomMetric(r, 1e-3), 1),
		HackChance:            math.Min(randomMetric(r, 0.5), 1),
		HackTimeMS:            randomMetric(r, 2e4),
	}
}

func TestEstimateProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	p := DefaultParams()
	var ok, failed int
	for i := 0; i < 20000; i++ {
		m := randomMetrics(r)
		for _, ph := range []string{PhaseTill, PhaseSow, PhaseHarvest} {
			est, err := p.Estimate(hackingSpec(m), ph)
			if err != nil {
				if !errors.Is(err, ErrInvalidSpec) && !isCannot(err) {
					t.Fatalf("%+v %s: unexpected error kind %v", m, ph, err)
				}
				if CheckMetrics(m) == nil && errors.Is(err, ErrInvalidSpec) {
					t.Fatalf("%+v %s: valid metrics rejected: %v", m, ph, err)
				}
				failed++
				continue
			}
			if CheckMetrics(m) != nil {
				t.Fatalf("%+v %s: invalid metrics accepted", m, ph)
			}
			ok++
			checkEstimate(t, p, est, ph)
			if est.HelpersMinMiB < 1 {
				t.Fatalf("%+v %s: a hacking task needs at least one helper: %+v", m, ph, est)
			}
		}
	}
	if ok < 1000 || failed < 1000 {
		t.Fatalf("poor coverage: %d sane estimates, %d errors", ok, failed)
	}
}

func TestIncomePerMiBSecond(t *testing.T) {
	p := DefaultParams()
	m := server(t, "n00dles").Metrics(DemoLevel)
	best, err := p.IncomePerMiBSecond(m)
	if err != nil {
		t.Fatal(err)
	}
	h, err := p.PlanHarvest(m)
	if err != nil {
		t.Fatal(err)
	}
	// A full harvest's income per MiB cannot beat the best batch.
	full := h.IncomePerSecond / float64(h.FullMiB)
	if !(best >= full) || !finite(best) {
		t.Errorf("best %v below full harvest's %v", best, full)
	}
	// Nor can any run's.
	for _, budget := range []int64{h.MinBatch.MiB, 3 * h.MinBatch.MiB, h.Batch.MiB, 5 * h.Batch.MiB, h.FullMiB} {
		run, err := p.NewRun(hackingSpec(m), PhaseHarvest, budget)
		if err != nil {
			t.Fatal(err)
		}
		if got := run.IncomeRate() / float64(run.UsedMiB()); got > best*(1+1e-12) {
			t.Errorf("budget %d: %v per MiB-s beats the bound %v", budget, got, best)
		}
	}
	if v, err := p.IncomePerMiBSecond(server(t, "silver-helix").Metrics(DemoLevel)); err != nil || v != 0 {
		t.Errorf("unhackable target: %v, %v", v, err)
	}
}

// TestPriorityRanksEarningPhasesFirst checks that, among the early-game
// targets, every harvest outranks every till and sow, and that each
// priority is the documented figure.
func TestPriorityRanksEarningPhasesFirst(t *testing.T) {
	p := DefaultParams()
	lowest := map[string]float64{}
	highest := map[string]float64{}
	for _, s := range EarlyGame() {
		if !s.IsTarget() || !s.Hackable(DemoLevel) {
			continue
		}
		spec := s.Spec(DemoLevel)
		perMiB, err := p.IncomePerMiBSecond(*spec.Metrics)
		if err != nil {
			t.Fatal(err)
		}
		for _, phase := range []string{PhaseTill, PhaseSow, PhaseHarvest} {
			est, err := p.Estimate(&spec, phase)
			if err != nil {
				continue // a phase this target does not need (e.g. no money to grow)
			}
			want := perMiB * PhaseWeight[phase]
			if phase != PhaseHarvest {
				want /= max(float64(est.FullMiB())/MiBPerGiB, 1)
			}
			if math.Abs(est.Priority-want) > 1e-12*want {
				t.Errorf("%s %s: priority %g, want %g", s.Name, phase, est.Priority, want)
			}
			if l, ok := lowest[phase]; !ok || est.Priority < l {
				lowest[phase] = est.Priority
			}
			highest[phase] = max(highest[phase], est.Priority)
		}
	}
	if !(lowest[PhaseHarvest] > highest[PhaseSow] && lowest[PhaseHarvest] > highest[PhaseTill]) {
		t.Errorf("phases overlap: lowest %v, highest %v", lowest, highest)
	}
}
