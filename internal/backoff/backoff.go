// Package backoff computes capped exponential waits with optional jitter.
//
// It is pure: it reads no clock, starts no goroutines and draws randomness
// only from a source the caller passes in, so a seeded source gives the same
// waits on every run. Callers do the waiting (a timer, a gate time in a pure
// engine) themselves.
//
// The wait before attempt n (n >= 1) is
//
//	Base · Factor^(n-1) · (1 + Jitter·(2u-1))
//
// where u is one draw in [0, 1) from the source, capped at Max. By default
// the jitter is applied before the cap, so Max bounds every wait; with
// CapFirst the cap is applied first, so waits at the cap still spread by
// ±Jitter around Max. No attempt number, however large, overflows: growth
// saturates at the cap.
package backoff

import (
	"math"
	"time"
)

// Policy is a capped exponential backoff. The zero Factor means 2.
type Policy struct {
	Base   time.Duration // wait before the first attempt's retry; <= 0 gives no wait
	Max    time.Duration // cap on the wait (see CapFirst)
	Factor float64       // growth per attempt; values below 1 (and 0) mean 2
	Jitter float64       // ± fraction of the wait drawn at random, in [0, 1); 0 draws nothing

	// CapFirst caps the wait before applying the jitter, so that clients
	// at the cap still spread out; a wait may then exceed Max by up to
	// Jitter·Max. Without it Max is a hard bound.
	CapFirst bool
}

// maxDuration as a float: conversions at or above it overflow.
const maxDurationF = float64(math.MaxInt64)

// Delay returns the wait before retry attempt n; attempts below 1 count as
// 1. rnd returns a value in [0, 1) and is called exactly once when Jitter
// is positive and rnd is not nil, never otherwise.
func (p Policy) Delay(n int, rnd func() float64) time.Duration {
	if p.Base <= 0 {
		return 0
	}
	n = max(n, 1)
	f := p.Factor
	if !(f >= 1) { // also catches NaN
		f = 2
	}
	// math.Pow saturates to +Inf rather than wrapping, and Base > 0, so d
	// is never NaN and never negative here.
	d := float64(p.Base) * math.Pow(f, float64(n-1))
	j := 1.0
	if p.Jitter > 0 && rnd != nil {
		j = 1 + p.Jitter*(2*rnd()-1)
	}
	if p.CapFirst {
		if !(d < float64(p.Max)) {
			d = float64(p.Max)
		}
		d *= j
	} else {
		d *= j
		if !(d < float64(p.Max)) { // also catches +Inf
			return max(p.Max, 0)
		}
	}
	switch {
	case d <= 0:
		return 0
	case d >= maxDurationF:
		return math.MaxInt64
	}
	return time.Duration(d)
}

// Backoff counts consecutive failures against a Policy. The zero Backoff
// (with a Policy set) is at level 0, with no failures counted.
type Backoff struct {
	Policy Policy
	Rand   func() float64 // jitter source; nil means no jitter

	level int
}

// Next counts one more failure and returns the wait that follows it.
func (b *Backoff) Next() time.Duration {
	if b.level < math.MaxInt {
		b.level++
	}
	return b.Policy.Delay(b.level, b.Rand)
}

// Reset forgets the failures counted so far.
func (b *Backoff) Reset() { b.level = 0 }

// Level is the number of failures counted since the last Reset.
func (b *Backoff) Level() int { return b.level }
