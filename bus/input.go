package bus

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/internal/ratelog"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/selector"
)

// onHeartbeat is the hot path: decode into the subscription's scratch
// heartbeat, check it against its subject, step. No allocation beyond the
// decoder's.
func (s *SelectorService) onHeartbeat(m *nats.Msg) {
	s.cfg.Faults.beforeInput(selector.InputHeartbeats)
	defer s.heartbeats.Add(1)
	if err := decodeHeartbeat(m.Data, &s.hb); err != nil {
		s.malformedMsg(SourceHeartbeat, m.Subject, err)
		return
	}
	host, target, err := s.subj.ParseHeartbeat(m.Subject)
	if err != nil {
		s.malformedMsg(SourceHeartbeat, m.Subject, err)
		return
	}
	if err := checkHost(host, s.hb.Host); err != nil {
		s.malformedMsg(SourceHeartbeat, m.Subject, err)
		return
	}
	if target != s.hb.Target {
		s.malformedMsg(SourceHeartbeat, m.Subject, fmt.Errorf("body names target %q", s.hb.Target))
		return
	}
	s.step(&s.hbEv, nil)
}

// onHostStatus decodes and checks a host status, and steps it. It counts
// every message handled (malformed ones included) once its step is done, for
// inputLag.
func (s *SelectorService) onHostStatus(m *nats.Msg) {
	s.cfg.Faults.beforeInput(selector.InputHostStatuses)
	defer s.hostStatuses.Add(1)
	hs, err := decodeHostStatus(m.Data)
	if err == nil {
		err = s.checkHostSubject(m.Subject, hs.Host)
	}
	if err != nil {
		s.malformedMsg(SourceHost, m.Subject, err)
		return
	}
	s.step(&selector.HostStatusReceived{Status: hs}, nil)
}

func (s *SelectorService) onEvent(m jetstream.Msg) {
	ev, err := s.parseEvent(m.Subject(), m.Data())
	if err != nil {
		s.malformedMsg(SourceEvent, m.Subject(), err)
		// Redelivering it would not make it any better.
		if terr := m.Term(); terr != nil {
			s.logLimit.Log("term", s.log, slog.LevelWarn, "cannot terminate malformed event", "err", terr)
		}
		return
	}
	s.step(&selector.TaskEventReceived{Event: ev}, func() {
		if err := m.Ack(); err != nil {
			// It will be redelivered and handled again, idempotently.
			s.logLimit.Log("ack", s.log, slog.LevelWarn, "cannot ack event", "target", ev.Target, "task_id", ev.TaskID, "err", err)
		}
	})
}

// checkHostSubject checks that a host status subject names host: a subject
// of another host is a host mismatch (hostMismatchError), one that is not a
// host status subject an error.
func (s *SelectorService) checkHostSubject(subject, host string) error {
	tok, ok := strings.CutPrefix(subject, s.subj.Prefix+".host.")
	if !ok || strings.Contains(tok, ".") {
		return fmt.Errorf("unexpected subject %q", subject)
	}
	name, err := protocol.DecodeName(tok)
	if err != nil {
		return err
	}
	return checkHost(name, host)
}

// malformedMsg counts and (rate-limited) logs a dropped message, and tells
// the engine, whose status counts it.
func (s *SelectorService) malformedMsg(source, subject string, err error) {
	c := s.countMalformed(source, subject, err)
	s.step(&c.ev, nil)
}

func (s *SelectorService) countMalformed(source, where string, err error) *sourceCounter {
	c := s.malformed[source]
	c.n.Add(1)
	if isHostMismatch(err) {
		c.mismatches.Add(1)
	}
	c.limit.Log(s.log, slog.LevelWarn, "malformed message dropped", "source", source, "where", where, "err", err)
	return c
}

// sourceCounter counts one source's malformed messages.
type sourceCounter struct {
	n          atomic.Uint64
	mismatches atomic.Uint64 // of n, the host mismatches (hostMismatchError)
	limit      ratelog.Limiter
	ev         selector.Malformed
}

// subscribeInput subscribes h to subject with the given pending limits.
func (s *SelectorService) subscribeInput(subject string, h nats.MsgHandler, lim PendingLimits) (*nats.Subscription, error) {
	sub, err := s.nc.Subscribe(subject, h)
	if err != nil {
		return nil, fmt.Errorf("bus: subscribe %s: %w", subject, err)
	}
	if lim.Msgs != 0 || lim.Bytes != 0 {
		msgs, bytes := lim.Msgs, lim.Bytes
		if msgs == 0 {
			msgs = nats.DefaultSubPendingMsgsLimit
		}
		if bytes == 0 {
			bytes = nats.DefaultSubPendingBytesLimit
		}
		if err := sub.SetPendingLimits(msgs, bytes); err != nil {
			_ = sub.Unsubscribe()
			return nil, fmt.Errorf("bus: pending limits of %s: %w", subject, err)
		}
	}
	return sub, nil
}

// tickLoop steps the engine with a Tick every cfg.Tick. Before each, it
// reports input drops (checkDrops) and estimates how far each input is
// handled (inputAsOf), so that the engine judges silence only up to then.
func (s *SelectorService) tickLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	s.mu.Lock()
	watches := []dropWatch{
		{sub: s.hbSub, ev: selector.InputDropped{Source: selector.InputHeartbeats}},
		{sub: s.hostSub, ev: selector.InputDropped{Source: selector.InputHostStatuses}},
	}
	s.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for i := range watches {
				s.checkDrops(&watches[i])
			}
			s.tickEv.HeartbeatsAsOf = s.inputAsOf(s.hbLag)
			s.tickEv.HostStatusesAsOf = s.inputAsOf(s.hostLag)
			s.step(&s.tickEv, nil)
		}
	}
}

// dropWatch follows the drops of one input subscription.
type dropWatch struct {
	sub  *nats.Subscription
	seen int // drops already reported
	ev   selector.InputDropped
}

// checkDrops tells the engine when w's subscription has dropped messages
// since the last check (it hit its pending limit): the silence of the
// tasks or hosts whose messages were lost is then no evidence.
func (s *SelectorService) checkDrops(w *dropWatch) {
	if w.sub == nil {
		return
	}
	n, err := w.sub.Dropped()
	if err != nil || n <= w.seen {
		return
	}
	s.dropLog.Log(s.log, slog.LevelWarn, "slow consumer: input dropped; staleness is measured afresh", "source", w.ev.Source,
		"subject", w.sub.Subject, "dropped", n-w.seen, "dropped_total", n)
	w.seen = n
	s.step(&w.ev, nil)
}

// inputAsOf returns the time up to which l's input is known to be handled
// (the zero time: up to now), for the Tick. It logs when the input starts to
// be handled more than half a heartbeat-stale threshold late, and when it
// catches up again: silence is then judged that much later.
func (s *SelectorService) inputAsOf(l *inputLag) time.Time {
	if l == nil {
		return time.Time{}
	}
	asOf := l.asOf()
	lag := time.Duration(0)
	if !asOf.IsZero() {
		lag = time.Since(asOf)
	}
	switch late := lag > s.cfg.Engine.HeartbeatStale/2; {
	case late && !l.lagging:
		l.lagging = true
		s.lagLog.Log(s.log, slog.LevelWarn, "input handled late; silence is judged as of the oldest message waiting", "source", l.source,
			"subject", l.sub.Subject, "lag", lag.Round(time.Millisecond))
	case !late && l.lagging:
		l.lagging = false
		s.lagLog.Log(s.log, slog.LevelInfo, "input caught up", "source", l.source, "subject", l.sub.Subject)
	}
	return asOf
}
