package workload

import (
	"fmt"
	"math"
	"time"
)

// MiBPerGiB converts the game's "GB" (read as GiB) to MiB.
const MiBPerGiB = 1024

// Params are the constants of the hacking profile's model. The zero value is
// not usable; start from DefaultParams and change what you need.
type Params struct {
	// RAM of one helper thread, in MiB: 1.75 GB for grow and weaken, 1.70 GB
	// for hack (rounded up to whole MiB).
	GrowThreadMiB   int64
	WeakenThreadMiB int64
	HackThreadMiB   int64
	// WrapperMiB is the RAM of a hacking task's wrapper process (1.6 GB).
	WrapperMiB int64

	// WeakenPerThread is the security one weaken thread removes (0.05).
	WeakenPerThread float64
	// GrowSecPerThread is the security one grow thread adds (0.004).
	GrowSecPerThread float64
	// HackSecPerThread is the security one hack thread adds (0.002).
	HackSecPerThread float64

	// Spacing is the time between the landings of a batch's four steps;
	// a new batch starts every 4*Spacing (80 ms). It is also the shortest
	// round of a till or sow run.
	Spacing time.Duration
	// HackFraction is the share p of max money one harvest batch aims to
	// steal, in (0, 1) (0.5).
	HackFraction float64
	// MaxBatchMiB caps the RAM of one harvest batch: when the batch for
	// HackFraction would be larger, it hacks with fewer threads (at least
	// one) so that it fits (256 GiB).
	MaxBatchMiB int64

	// MaxThreads bounds every thread and batch count (1<<20).
	MaxThreads int64
	// MaxMiB bounds every RAM figure (1<<40 MiB).
	MaxMiB int64
	// MinValue and MaxValue bound Estimate.Value: a target worth nothing
	// (no money, no chance) still gets MinValue > 0 (1e-9, 1e300).
	MinValue float64
	MaxValue float64
}

// DefaultParams returns the game's figures and generous bounds.
func DefaultParams() Params {
	return Params{
		GrowThreadMiB:    1792, // 1.75 GiB
		WeakenThreadMiB:  1792, // 1.75 GiB
		HackThreadMiB:    1741, // 1.70 GiB, rounded up
		WrapperMiB:       1638, // 1.6 GiB
		WeakenPerThread:  0.05,
		GrowSecPerThread: 0.004,
		HackSecPerThread: 0.002,
		Spacing:          80 * time.Millisecond,
		HackFraction:     0.5,
		MaxBatchMiB:      256 * MiBPerGiB,
		MaxThreads:       1 << 20,
		MaxMiB:           1 << 40,
		MinValue:         1e-9,
		MaxValue:         1e300,
	}
}

// Validate reports the first field that is out of range.
func (p Params) Validate() error {
	ints := []struct {
		name string
		v    int64
	}{
		{"GrowThreadMiB", p.GrowThreadMiB},
		{"WeakenThreadMiB", p.WeakenThreadMiB},
		{"HackThreadMiB", p.HackThreadMiB},
		{"WrapperMiB", p.WrapperMiB},
		{"MaxBatchMiB", p.MaxBatchMiB},
		{"MaxThreads", p.MaxThreads},
		{"MaxMiB", p.MaxMiB},
	}
	for _, f := range ints {
		if f.v <= 0 {
			return fmt.Errorf("%w: %s is %d, want > 0", ErrInvalidParams, f.name, f.v)
		}
	}
	if p.WrapperMiB > p.MaxMiB {
		return fmt.Errorf("%w: WrapperMiB %d exceeds MaxMiB %d", ErrInvalidParams, p.WrapperMiB, p.MaxMiB)
	}
	if !finite(p.WeakenPerThread) || p.WeakenPerThread <= 0 {
		return fmt.Errorf("%w: WeakenPerThread is %v, want > 0", ErrInvalidParams, p.WeakenPerThread)
	}
	if !finite(p.GrowSecPerThread) || p.GrowSecPerThread < 0 {
		return fmt.Errorf("%w: GrowSecPerThread is %v, want >= 0", ErrInvalidParams, p.GrowSecPerThread)
	}
	if !finite(p.HackSecPerThread) || p.HackSecPerThread < 0 {
		return fmt.Errorf("%w: HackSecPerThread is %v, want >= 0", ErrInvalidParams, p.HackSecPerThread)
	}
	if p.Spacing <= 0 {
		return fmt.Errorf("%w: Spacing is %v, want > 0", ErrInvalidParams, p.Spacing)
	}
	if !(p.HackFraction > 0 && p.HackFraction < 1) {
		return fmt.Errorf("%w: HackFraction is %v, want in (0, 1)", ErrInvalidParams, p.HackFraction)
	}
	if !finite(p.MinValue) || p.MinValue <= 0 || !finite(p.MaxValue) || p.MaxValue < p.MinValue {
		return fmt.Errorf("%w: MinValue %v and MaxValue %v, want 0 < MinValue <= MaxValue, finite",
			ErrInvalidParams, p.MinValue, p.MaxValue)
	}
	return nil
}

// growsPerWeaken is how many grow threads one weaken thread cancels (12).
func (p Params) growsPerWeaken() int64 {
	if p.GrowSecPerThread == 0 {
		return p.MaxThreads
	}
	r := math.Floor(p.WeakenPerThread / p.GrowSecPerThread)
	if r < 1 {
		return 1
	}
	if r > float64(p.MaxThreads) {
		return p.MaxThreads
	}
	return int64(r)
}

// finite reports whether x is neither NaN nor infinite.
func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// ceilCount rounds a thread count up to an integer in [0, limit]. A tiny
// tolerance absorbs floating-point noise (10/0.05 is 200, not 201). NaN and
// non-positive inputs give 0; +Inf gives limit.
func ceilCount(x float64, limit int64) int64 {
	if !(x > 0) {
		return 0
	}
	if x >= float64(limit) {
		return limit
	}
	c := math.Ceil(x - 1e-9*math.Max(1, x))
	if c <= 0 {
		return 0
	}
	if c > float64(limit) {
		return limit
	}
	return int64(c)
}

// mulSat returns a*b for non-negative a, b, saturated at limit.
func mulSat(a, b, limit int64) int64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	if a > limit/b {
		return limit
	}
	if v := a * b; v < limit {
		return v
	}
	return limit
}

// addSat returns a+b for non-negative a, b, saturated at limit.
func addSat(a, b, limit int64) int64 {
	if a > limit-b {
		return limit
	}
	return a + b
}

// clampValue keeps a value in [MinValue, MaxValue]; NaN gives MinValue.
func (p Params) clampValue(v float64) float64 {
	if !(v >= p.MinValue) {
		return p.MinValue
	}
	if v > p.MaxValue {
		return p.MaxValue
	}
	return v
}
