package worker

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/internal/backoff"
)

// outItem is one event waiting for its JetStream ack.
type outItem struct {
	subject string
	msgID   string
	data    []byte
}

// outbox publishes task events to JetStream in order, retrying each one with
// backoff until the stream acks it. It holds at most max events; when full,
// put refuses (and the agent logs loudly).
type outbox struct {
	js             jetstream.JetStream
	log            *slog.Logger
	max            int
	publishTimeout time.Duration
	retry          backoff.Policy // between publish attempts of one event; no jitter

	mu     sync.Mutex
	q      []outItem
	idle   chan struct{} // closed while q is empty and nothing is in flight
	wake   chan struct{}
	active bool // an item is being published

	published atomic.Uint64
	dropped   atomic.Uint64
	failures  atomic.Uint64
}

func newOutbox(js jetstream.JetStream, log *slog.Logger, max int, publishTimeout, retryBase, retryMax time.Duration) *outbox {
	idle := make(chan struct{})
	close(idle)
	return &outbox{
		js: js, log: log, max: max,
		publishTimeout: publishTimeout,
		retry:          backoff.Policy{Base: retryBase, Max: retryMax},
		idle:           idle, wake: make(chan struct{}, 1),
	}
}

// put queues an event; it returns false when the outbox is full.
func (o *outbox) put(it outItem) bool {
	o.mu.Lock()
	if len(o.q) >= o.max {
		o.mu.Unlock()
		o.dropped.Add(1)
		return false
	}
	if len(o.q) == 0 && !o.active {
		o.idle = make(chan struct{})
	}
	o.q = append(o.q, it)
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return true
}

// len is the number of events not yet acked.
func (o *outbox) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := len(o.q)
	if o.active {
		n++
	}
	return n
}

// idleCh returns a channel that is closed once every queued event is acked.
func (o *outbox) idleCh() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.idle
}

// run publishes until ctx ends; events still queued then are lost (and logged).
func (o *outbox) run(ctx context.Context) {
	defer func() {
		if n := o.len(); n > 0 {
			o.log.Error("event outbox closed with unpublished events", "events", n)
		}
	}()
	for {
		o.mu.Lock()
		if len(o.q) == 0 {
			o.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-o.wake:
				continue
			}
		}
		it := o.q[0]
		o.q[0] = outItem{}
		o.q = o.q[1:]
		o.active = true
		o.mu.Unlock()

		if !o.publish(ctx, it) {
			// Put it back at the head so that the order holds and a later
			// run (or the count) still sees it.
			o.mu.Lock()
			o.q = append([]outItem{it}, o.q...)
			o.active = false
			o.mu.Unlock()
			return
		}
		o.mu.Lock()
		o.active = false
		if len(o.q) == 0 {
			close(o.idle)
		}
		o.mu.Unlock()
	}
}

// publish retries one event until it is acked; false when ctx ended first.
// The client's own retry on "no responders" is off: this loop backs off.
func (o *outbox) publish(ctx context.Context, it outItem) bool {
	for attempt := 1; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, o.publishTimeout)
		_, err := o.js.Publish(pctx, it.subject, it.data, jetstream.WithMsgID(it.msgID), jetstream.WithRetryAttempts(0))
		cancel()
		if err == nil {
			o.published.Add(1)
			if attempt > 1 {
				o.log.Info("task event published after retries", "subject", it.subject, "msg_id", it.msgID, "attempts", attempt)
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		o.failures.Add(1)
		wait := o.retry.Delay(attempt, nil)
		// Log the first failure of an event, then every 10th.
		if attempt == 1 || attempt%10 == 0 {
			o.log.Warn("task event not acked, retrying", "subject", it.subject, "msg_id", it.msgID,
				"attempt", attempt, "retry_in", wait, "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
}
