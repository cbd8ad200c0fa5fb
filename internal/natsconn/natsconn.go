// Package natsconn makes NATS client connections that stay up for good: the
// first connection is retried with backoff, a lost one is re-established
// forever with exponential backoff and jitter, and asynchronous errors are
// logged and counted per connection.
//
// It depends on the NATS client alone (not on nats-server), so a program
// that only speaks to a server may use it without linking one.
package natsconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/internal/backoff"
)

// reconnectBackoff spaces reconnects and start retries: the n-th wait is
// 100ms·2^(n-1), capped at 5s, then ±20% of itself at random (cap first, so
// that many clients of a restarted server do not reconnect in lockstep even
// at the cap).
var reconnectBackoff = backoff.Policy{
	Base:     100 * time.Millisecond,
	Max:      5 * time.Second,
	Jitter:   0.2,
	CapFirst: true,
}

// ReconnectDelay is the wait before reconnect attempt n (n >= 1). It also
// spaces other retries against the server, such as a service's start steps,
// so that they back off like the connection does.
func ReconnectDelay(n int) time.Duration { return reconnectBackoff.Delay(n, rand.Float64) }

// Stats counts what happened to a connection made by Connect.
type Stats struct {
	// SlowConsumers counts slow-consumer episodes reported by the client
	// (one per episode per subscription; sub.Dropped() counts the
	// messages lost).
	SlowConsumers atomic.Uint64
	// AsyncErrors counts every asynchronous error, slow consumers included.
	AsyncErrors atomic.Uint64
	// Disconnects and Reconnects count connection losses and recoveries.
	Disconnects atomic.Uint64
	Reconnects  atomic.Uint64
}

var connStats sync.Map // *nats.Conn -> *Stats

// StatsOf returns the counters of a connection made by Connect, or nil for
// any other connection (or once it is closed).
func StatsOf(nc *nats.Conn) *Stats {
	if v, ok := connStats.Load(nc); ok {
		return v.(*Stats)
	}
	return nil
}

// Connect connects to the NATS server at url as the client name and keeps
// the connection up for good: the first connection is retried with backoff
// until it succeeds or ctx ends, and a lost connection is re-established
// forever, with exponential backoff and jitter (ReconnectDelay). While it is
// down, publishes are buffered by the client.
//
// onDisconnect and onReconnect (either may be nil) are called, from the
// client's callback goroutine, on each loss and recovery. Asynchronous errors
// are logged and counted; see StatsOf. Options in extra are applied after
// these (a test, say, adds nats.SetCustomDialer to watch the connection).
func Connect(ctx context.Context, url string, name string, log *slog.Logger, onDisconnect, onReconnect func(), extra ...nats.Option) (*nats.Conn, error) {
	if log == nil {
		log = slog.Default()
	}
	stats := &Stats{}
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(reconnectBackoff.Base),
		nats.ReconnectJitter(reconnectBackoff.Base/5, reconnectBackoff.Base/5),
		nats.CustomReconnectDelay(ReconnectDelay),
		nats.PingInterval(5 * time.Second),
		nats.Timeout(2 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			stats.Disconnects.Add(1)
			if err == nil {
				// Closed on purpose (shutdown): not worth a warning.
				log.Debug("nats connection closed", "name", name)
			} else {
				log.Warn("nats disconnected", "name", name, "err", err)
			}
			if onDisconnect != nil {
				onDisconnect()
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			stats.Reconnects.Add(1)
			log.Info("nats reconnected", "name", name, "url", nc.ConnectedUrlRedacted())
			if onReconnect != nil {
				onReconnect()
			}
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			connStats.Delete(nc)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			stats.AsyncErrors.Add(1)
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			if errors.Is(err, nats.ErrSlowConsumer) {
				stats.SlowConsumers.Add(1)
				dropped := 0
				if sub != nil {
					dropped, _ = sub.Dropped()
				}
				log.Warn("nats slow consumer: messages dropped", "name", name, "subject", subject, "dropped_total", dropped)
				return
			}
			log.Warn("nats async error", "name", name, "subject", subject, "err", err)
		}),
	}
	opts = append(opts, extra...)
	for attempt := 1; ; attempt++ {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			connStats.Store(nc, stats)
			return nc, nil
		}
		wait := ReconnectDelay(attempt)
		log.Warn("nats connect failed; retrying", "name", name, "url", RedactURL(url), "attempt", attempt, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("natsconn: connect to %s: %w (last error: %w)", RedactURL(url), ctx.Err(), err)
		case <-t.C:
		}
	}
}
