package soak

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// recorded is one message as the sniffer saw it.
type recorded struct {
	subject string
	data    []byte
	host    string // heartbeats, host statuses, kills, ps: the host it concerns
	target  string // heartbeats, events, launches
	taskID  string // heartbeats, events, launches, kills
	at      time.Time
}

// ring keeps the last messages of one subject family.
type ring struct {
	items []recorded
	next  int
	full  bool
}

func newRing(n int) *ring { return &ring{items: make([]recorded, n)} }

func (r *ring) add(m recorded) {
	r.items[r.next] = m
	r.next++
	if r.next == len(r.items) {
		r.next, r.full = 0, true
	}
}

// all returns the messages oldest first.
func (r *ring) all() []recorded {
	if !r.full {
		return append([]recorded(nil), r.items[:r.next]...)
	}
	return append(append([]recorded(nil), r.items[r.next:]...), r.items[:r.next]...)
}

// sniffer records, from the bus, the recent messages the duplicates and
// flood faults replay, and the launch requests that left (so that a
// restart's recovery does not count a launch sent before it). It
// subscribes to what is published (heartbeats, host statuses, events) and
// is fed the selector's requests from the tap on its proxy (package netproxy).
type sniffer struct {
	subj protocol.Subjects
	subs []*nats.Subscription
	log  *slog.Logger // traces every request and event at debug level

	mu       sync.Mutex
	hbs      *ring
	latestHB map[string]recorded // by task id: the latest heartbeat
	hosts    *ring
	events   *ring
	kills    *ring
	ps       *ring
	launches map[string]recorded // by task id
}

func startSniffer(nc *nats.Conn, subj protocol.Subjects, log *slog.Logger) (*sniffer, error) {
	s := &sniffer{
		subj:     subj,
		log:      log,
		hbs:      newRing(512),
		latestHB: make(map[string]recorded),
		hosts:    newRing(128),
		events:   newRing(256),
		kills:    newRing(128),
		ps:       newRing(128),
		launches: make(map[string]recorded),
	}
	for subject, fn := range map[string]nats.MsgHandler{
		subj.Heartbeats(): s.onHeartbeat,
		subj.Hosts():      s.onHost,
		subj.Events():     s.onEvent,
	} {
		sub, err := nc.Subscribe(subject, fn)
		if err != nil {
			s.stop()
			return nil, fmt.Errorf("soak: sniff %s: %w", subject, err)
		}
		// Floods overrun it: dropping is fine, blocking the connection not.
		_ = sub.SetPendingLimits(1<<16, 64<<20)
		s.subs = append(s.subs, sub)
	}
	if err := nc.Flush(); err != nil {
		s.stop()
		return nil, fmt.Errorf("soak: sniff: %w", err)
	}
	return s, nil
}

func (s *sniffer) stop() {
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
}

// hostOf decodes the last token of subject as a host name.
func hostOf(subject string) string {
	h, err := protocol.DecodeName(subject[strings.LastIndexByte(subject, '.')+1:])
	if err != nil {
		return ""
	}
	return h
}

func (s *sniffer) onHeartbeat(m *nats.Msg) {
	hb, err := schemas.DecodeHeartbeat(m.Data)
	if err != nil {
		return // hostile input, some of it ours
	}
	r := recorded{subject: m.Subject, data: m.Data, host: hb.Host, target: hb.Target, taskID: hb.TaskID, at: time.Now()}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hbs.add(r)
	s.latestHB[hb.TaskID] = r
	if len(s.latestHB) > 4096 {
		s.pruneLocked(time.Minute)
	}
}

func (s *sniffer) onHost(m *nats.Msg) {
	hs, err := schemas.DecodeHostStatus(m.Data)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hosts.add(recorded{subject: m.Subject, data: m.Data, host: hs.Host, at: time.Now()})
}

func (s *sniffer) onEvent(m *nats.Msg) {
	ev, err := schemas.DecodeTaskEvent(m.Data)
	if err != nil {
		return
	}
	s.log.Debug("trace: event", "target", ev.Target, "task_id", ev.TaskID, "host", ev.Host, "type", ev.Type, "kind", ev.Kind, "reason", ev.Reason)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events.add(recorded{subject: m.Subject, data: m.Data, host: ev.Host, target: ev.Target, taskID: ev.TaskID, at: time.Now()})
}

// request records a request the selector sent.
func (s *sniffer) request(subject string, data []byte) {
	p := s.subj.Prefix + "."
	switch {
	case strings.HasPrefix(subject, p+"launch."):
		s.onLaunch(&nats.Msg{Subject: subject, Data: data})
	case strings.HasPrefix(subject, p+"kill."):
		s.onKill(&nats.Msg{Subject: subject, Data: data})
	case strings.HasPrefix(subject, p+"ps."):
		s.onPs(&nats.Msg{Subject: subject, Data: data})
	}
}

func (s *sniffer) onKill(m *nats.Msg) {
	req, err := schemas.DecodeKillRequest(m.Data)
	if err != nil {
		return
	}
	s.log.Debug("trace: kill", "host", hostOf(m.Subject), "task_id", req.TaskID, "pid", req.PID, "reason", req.Reason)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kills.add(recorded{subject: m.Subject, data: m.Data, host: hostOf(m.Subject), taskID: req.TaskID, at: time.Now()})
}

func (s *sniffer) onPs(m *nats.Msg) {
	req, err := schemas.DecodePsRequest(m.Data)
	if err != nil {
		return
	}
	s.log.Debug("trace: ps", "host", hostOf(m.Subject), "pids", req.PIDs)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ps.add(recorded{subject: m.Subject, data: m.Data, host: hostOf(m.Subject), at: time.Now()})
}

func (s *sniffer) onLaunch(m *nats.Msg) {
	req, err := schemas.DecodeLaunchRequest(m.Data)
	if err != nil {
		return
	}
	s.log.Debug("trace: launch", "host", hostOf(m.Subject), "target", req.Target, "task_id", req.TaskID, "type", req.Type,
		"budget_mib", req.RAM.WrapperMiB+req.RAM.HelpersMiB)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.launches[req.TaskID] = recorded{subject: m.Subject, host: hostOf(m.Subject), target: req.Target, taskID: req.TaskID, at: time.Now()}
	if len(s.launches) > 4096 {
		s.pruneLocked(time.Minute)
	}
}

// pruneLocked forgets the heartbeats and launches older than age.
func (s *sniffer) pruneLocked(age time.Duration) {
	cut := time.Now().Add(-age)
	for id, r := range s.latestHB {
		if r.at.Before(cut) {
			delete(s.latestHB, id)
		}
	}
	for id, r := range s.launches {
		if r.at.Before(cut) {
			delete(s.launches, id)
		}
	}
}

// launched returns the task ids of the launches seen so far.
func (s *sniffer) launched() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]bool, len(s.launches))
	for id := range s.launches {
		out[id] = true
	}
	return out
}

// launchSeen reports whether a launch for target was seen after since.
func (s *sniffer) launchSeen(target string, since time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.launches {
		if r.target == target && !r.at.Before(since) {
			return true
		}
	}
	return false
}

// latestHeartbeat returns the latest heartbeat of taskID.
func (s *sniffer) latestHeartbeat(taskID string) (recorded, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.latestHB[taskID]
	return r, ok
}

// recent returns copies of the recorded heartbeats, host statuses, events,
// kills and ps requests, oldest first within each family.
func (s *sniffer) recent() (hbs, hosts, events, kills, ps []recorded) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hbs.all(), s.hosts.all(), s.events.all(), s.kills.all(), s.ps.all()
}
