package bus

import (
	"math"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// Input lag: how far the service has handled an input subscription.
//
// A heartbeat or host status that has reached the selector but waits in its
// subscription's queue (the NATS client's pending messages) is no silence of
// its sender. The engine judges the silence of tasks and hosts only up to the
// time the input is known to be handled (selector.Tick's HeartbeatsAsOf and
// HostStatusesAsOf): the arrival of the oldest message not yet handled. The
// NATS client does not tell when a pending message arrived, so lagClock
// bounds it from below with samples taken every tick.

// maxLagSamples bounds the samples a lagClock keeps. When they run out, one
// is dropped, which coarsens the estimate (makes it earlier) but never makes
// it late.
const maxLagSamples = 128

// lagSample records that by at, at most received messages had reached the
// subscription (handled or waiting).
type lagSample struct {
	at       time.Time
	received uint64
}

// lagClock estimates, for one input subscription, the time up to which its
// messages are handled. Messages are handled in the order they arrive, so if
// handled ≥ received of a sample taken at time t, every message that arrived
// by t is handled, and the oldest one still waiting arrived after t. The
// estimate is the latest such t: a lower bound of the oldest waiting
// message's arrival, which only grows. It is not safe for concurrent use;
// the tick loop owns it.
type lagClock struct {
	samples []lagSample // taken since asOf, oldest first
	asOf    time.Time   // every message that arrived by then is handled
}

// newLagClock returns a clock for a subscription made at start: nothing had
// arrived before then.
func newLagClock(start time.Time) *lagClock {
	return &lagClock{samples: make([]lagSample, 0, maxLagSamples), asOf: start}
}

// observe takes a sample at time at: received bounds from above the messages
// that had reached the subscription by at, and handled counts those handled
// now (read after received). It returns the time up to which the input is
// known to be handled, or the zero time when nothing waits (the input is
// handled up to at).
func (c *lagClock) observe(at time.Time, received, handled uint64) time.Time {
	if received <= handled {
		c.samples = c.samples[:0]
		c.asOf = maxTime(c.asOf, at)
		return time.Time{}
	}
	for i := len(c.samples) - 1; i >= 0; i-- {
		if c.samples[i].received <= handled {
			c.asOf = maxTime(c.asOf, c.samples[i].at)
			c.samples = c.samples[:copy(c.samples, c.samples[i+1:])]
			break
		}
	}
	if len(c.samples) == maxLagSamples {
		// Drop the sample whose neighbours are closest in time. The
		// samples stay spread over the whole lag, so the estimate trails
		// the oldest waiting message by about lag/maxLagSamples, however
		// long the lag lasts; dropping one makes it earlier, never later.
		drop, gap := 1, time.Duration(math.MaxInt64)
		for i := 1; i < len(c.samples)-1; i++ {
			if d := c.samples[i+1].at.Sub(c.samples[i-1].at); d < gap {
				drop, gap = i, d
			}
		}
		c.samples = slices.Delete(c.samples, drop, drop+1)
	}
	c.samples = append(c.samples, lagSample{at: at, received: received})
	return c.asOf
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// inputLag follows how far the service has handled one input subscription.
type inputLag struct {
	source  string // selector.InputHeartbeats or selector.InputHostStatuses
	sub     *nats.Subscription
	handled *atomic.Uint64 // messages the subscription's callback has handled
	clock   *lagClock
	lagging bool // the last estimate was more than a warning threshold behind
}

// asOf samples the subscription and returns the time up to which its input is
// known to be handled, or the zero time when nothing waits. The NATS client
// counts a message as pending until its callback has returned, and the
// service counts it as handled just before, so pending + handled, read in
// that order, bounds from above the messages that had arrived when the
// sample was taken.
func (l *inputLag) asOf() time.Time {
	if l == nil || l.sub == nil {
		return time.Time{}
	}
	at := time.Now()
	pending, _, err := l.sub.Pending()
	if err != nil || pending < 0 {
		return time.Time{} // closed: nothing more will be handled
	}
	handled := l.handled.Load()
	return l.clock.observe(at, uint64(pending)+handled, handled)
}
