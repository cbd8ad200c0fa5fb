package bus

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// Status returns the engine's status snapshot with the bus-level counters
// merged in: slow-consumer drops (of the heartbeat and host status
// subscriptions), store errors and malformed messages.
func (s *SelectorService) Status() schemas.SelectorStatus {
	s.mu.Lock()
	var st schemas.SelectorStatus
	if s.eng != nil {
		st = s.eng.Status(time.Now())
	} else {
		st = schemas.SelectorStatus{V: schemas.Version, Recovering: true, Connected: s.nc.IsConnected(), At: time.Now().UTC()}
	}
	subs := [...]*nats.Subscription{s.hbSub, s.hostSub}
	s.leaderStatus(&st, s.eng != nil)
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
	c.HostMismatches = s.HostMismatches()
}

// The selector serves its status subject as the NATS micro service
// protocol.SelectorService, with the one endpoint protocol.EndpointStatus,
// so that `nats micro ls`, `info` and `stats` show it next to the workers.
// The endpoint has no queue group, as the plain subscription it replaces:
// with a hot standby, every selector answers a status request, a requester
// that takes the first reply gets either, and one that collects replies
// (`nats req --replies 0`) sees both; a queue group would instead hide one
// of them at random. The service is added last in start, so that its
// presence, like a status answer, means the selector listens; Run stops it
// last.

// startStatusService adds the micro service that answers status requests,
// and helper RAM requests with withAlloc. A standby serves status only: the
// alloc endpoint is in a queue group, and a standby in it would take its
// share of the requests only to answer them unavailable. It is added at
// takeover.
func (s *SelectorService) startStatusService(withAlloc bool) (micro.Service, error) {
	svc, err := micro.AddService(s.nc, micro.Config{
		Name:               protocol.SelectorService,
		Version:            protocol.ServiceVersion,
		Description:        "taskselector selector: decides which tasks run where; answers status snapshots and helper RAM requests",
		Metadata:           map[string]string{protocol.ServiceMetaPrefix: s.subj.Prefix},
		QueueGroupDisabled: true,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: add micro service %s: %w", protocol.SelectorService, err)
	}
	subject := s.subj.Status()
	err = svc.AddEndpoint(protocol.EndpointStatus, micro.HandlerFunc(s.handleStatus), micro.WithEndpointSubject(subject))
	if err != nil {
		err = fmt.Errorf("bus: add endpoint %s on %s: %w", protocol.EndpointStatus, subject, err)
	} else if withAlloc {
		err = s.addAllocEndpoint(svc)
	}
	if err != nil {
		if serr := svc.Stop(); serr != nil {
			err = errors.Join(err, fmt.Errorf("bus: stop micro service: %w", serr))
		}
		return nil, err
	}
	return svc, nil
}

// stopStatusService stops the status service, if any; the requests already
// delivered are still answered.
func (s *SelectorService) stopStatusService() {
	s.mu.Lock()
	svc := s.statusSvc
	s.mu.Unlock()
	if svc == nil {
		return
	}
	if err := svc.Stop(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		s.log.Warn("cannot stop the status service", "err", err)
	}
}

// handleStatus answers a status request with the status snapshot.
func (s *SelectorService) handleStatus(r micro.Request) {
	if r.Reply() == "" {
		return
	}
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
	if err := r.Respond(data); err != nil {
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
