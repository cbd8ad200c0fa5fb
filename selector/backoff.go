package selector

import (
	"math/rand/v2"
	"time"

	"github.com/taskselector/taskselector/internal/backoff"
)

// launchGate is the global launch backoff. Its level rises on RAM pressure
// and resets on a confirmed launch; it gates launches only, never message
// handling. The waits come from internal/backoff with the jitter applied
// before the cap (no wait exceeds BackoffMax), drawn from a source seeded
// by Config.Seed so that runs replay exactly.
type launchGate struct {
	backoff.Backoff
	next time.Time // no launch before this; zero when not backed off
}

func newBackoff(c Config) launchGate {
	rng := rand.New(rand.NewPCG(c.Seed, c.Seed^0x9e3779b97f4a7c15))
	return launchGate{Backoff: backoff.Backoff{
		Policy: backoff.Policy{Base: c.BackoffBase, Max: c.BackoffMax, Factor: c.BackoffFactor, Jitter: c.BackoffJitter},
		Rand:   rng.Float64,
	}}
}

// raise moves one level up, closes the gate for the level's wait and
// returns that wait.
func (b *launchGate) raise(now time.Time) time.Duration {
	d := b.Next()
	b.next = now.Add(d)
	return d
}

func (b *launchGate) reset() {
	b.Reset()
	b.next = time.Time{}
}

func (b *launchGate) open(now time.Time) bool { return b.next.IsZero() || !now.Before(b.next) }
