package selector

import (
	"math"
	"math/rand/v2"
	"time"
)

// backoff is the global launch gate. Its level rises on RAM pressure and
// resets on a confirmed launch; it gates launches only, never message handling.
type backoff struct {
	base, max time.Duration
	factor    float64
	jitter    float64
	rng       *rand.Rand

	level int
	next  time.Time // no launch before this; zero when not backed off
	last  time.Duration
}

func newBackoff(c Config) backoff {
	return backoff{
		base:   c.BackoffBase,
		max:    c.BackoffMax,
		factor: c.BackoffFactor,
		jitter: c.BackoffJitter,
		rng:    rand.New(rand.NewPCG(c.Seed, c.Seed^0x9e3779b97f4a7c15)),
	}
}

// raise moves one level up and returns the wait: base·factor^(level-1),
// with ±jitter applied before the cap so that no wait exceeds max.
func (b *backoff) raise(now time.Time) time.Duration {
	b.level++
	d := float64(b.base) * math.Pow(b.factor, float64(b.level-1))
	if b.jitter > 0 {
		d *= 1 + b.jitter*(2*b.rng.Float64()-1)
	}
	if !(d < float64(b.max)) { // also catches +Inf
		d = float64(b.max)
	}
	if d < 0 {
		d = 0
	}
	b.last = time.Duration(d)
	b.next = now.Add(b.last)
	return b.last
}

func (b *backoff) reset() {
	b.level = 0
	b.next = time.Time{}
	b.last = 0
}

func (b *backoff) open(now time.Time) bool { return b.next.IsZero() || !now.Before(b.next) }
