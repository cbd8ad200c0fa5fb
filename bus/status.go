package bus

import (
	"encoding/json"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/schemas"
)

// Status returns the engine's status snapshot with the bus-level counters
// merged in: slow-consumer drops, store errors and malformed messages.
func (s *SelectorService) Status() schemas.SelectorStatus {
	s.mu.Lock()
	var st schemas.SelectorStatus
	if s.eng != nil {
		st = s.eng.Status(time.Now())
	} else {
		st = schemas.SelectorStatus{V: schemas.Version, Recovering: true, Connected: s.nc.IsConnected(), At: time.Now().UTC()}
	}
	subs := [...]*nats.Subscription{s.hbSub, s.hostSub, s.statusSub}
	s.mu.Unlock()
	s.mergeCounters(&st, subs[:])
	return st
}

func (s *SelectorService) mergeCounters(st *schemas.SelectorStatus, subs []*nats.Subscription) {
	c := &st.Counters
	var drops uint64
	for _, sub := range subs {
		if sub == nil {
			continue
		}
		if n, err := sub.Dropped(); err == nil && n > 0 {
			drops += uint64(n)
		}
	}
	c.SlowConsumerDrops += drops
	c.StoreErrors += s.storeErrors.Load()
	for src, sc := range s.malformed {
		n := sc.n.Load()
		if n == 0 {
			continue
		}
		if c.MalformedMessages == nil {
			c.MalformedMessages = make(map[string]uint64)
		}
		// Every malformed message is also fed to the engine, except those
		// found while replaying the buckets before the engine existed.
		c.MalformedMessages[src] = max(c.MalformedMessages[src], n)
	}
}

func (s *SelectorService) onStatus(m *nats.Msg) {
	st := s.Status()
	data, err := encodeStatus(st)
	if err == nil && len(data) > int(s.nc.MaxPayload()) {
		// Too big for one message: answer the summary without the
		// per-target and per-host lines.
		s.logLimit.Log("status-size", s.log, slog.LevelWarn, "status too large for one message; answering without targets and hosts",
			"bytes", len(data), "max_payload", s.nc.MaxPayload())
		st.Targets, st.Hosts = nil, nil
		data, err = encodeStatus(st)
	}
	if err != nil {
		s.log.Error("cannot encode status", "err", err)
		return
	}
	if err := m.Respond(data); err != nil {
		s.logLimit.Log("status-respond", s.log, slog.LevelWarn, "cannot answer status request", "err", err)
	}
}

// encodeStatus encodes st through the schema's validating encoder, falling
// back to plain JSON if the snapshot is too large or fails validation: an
// operator is better served by an imperfect status than by none.
func encodeStatus(st schemas.SelectorStatus) ([]byte, error) {
	if data, err := schemas.Marshal(&st); err == nil {
		return data, nil
	}
	return json.Marshal(st)
}
