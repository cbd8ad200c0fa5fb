package bus

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// The selector is the fleet's memory manager (the memory-manager protocol,
// see schemas.AllocRequest). The service's part:
//
//   - it serves tasks.alloc as the endpoint protocol.EndpointAlloc of its
//     micro service. A request is decoded strictly; a malformed one is
//     counted (source alloc_request), logged rate-limited, fed to the engine
//     as Malformed and answered with the error invalid. A valid one gets an
//     ID and is stepped as selector.AllocRequested; the reply is the
//     engine's CmdAllocReply for that ID, which may come several steps later
//     (once the helpers it grants have been started). A request never waits
//     longer than ServiceConfig.AllocTimeout: it is then answered with the
//     error unavailable, and the engine's late answer is dropped (its grants
//     stand, and the task learns of them from "held" in its next reply).
//     Before the engine exists, and after shutdown began, requests are
//     answered with unavailable at once.
//   - it carries out CmdHelper like a kill or a ps: through the host's
//     request queue (requests.go), on tasks.helper.<host>, and feeds the
//     reply back as HelperReplied (a reply with an error included: the
//     engine refunds a refused start), or its absence as HelperUnanswered.
//     A worker that does not serve helpers (v1) makes NATS answer no
//     responders, which the engine takes as a host that runs no fleet
//     helpers. A malformed reply is counted (source helper_reply) and taken
//     as no reply.
//
// Replies with an error carry micro's error headers, with the HTTP-like
// codes of AllocErrorCode. Only the replies sent from within the handler (a
// malformed request, a selector not ready) count in micro's num_errors: the
// engine's answers, which come later, are published on the reply subject
// directly.

// Sources of malformed memory-manager messages, as counted in status.
const (
	SourceAllocRequest = "alloc_request"
	SourceHelperReply  = "helper_reply"
)

// AllocErrorCode maps an AllocReply error code to its Nats-Service-Error-Code
// header: invalid 400, over_budget 403, unknown_task 404, unavailable 503,
// insufficient_ram 507; any other 500.
func AllocErrorCode(code string) string {
	switch code {
	case schemas.CodeInvalid:
		return "400"
	case schemas.CodeOverBudget:
		return "403"
	case schemas.CodeUnknownTask:
		return "404"
	case schemas.CodeUnavailable:
		return "503"
	case schemas.CodeInsufficientRAM:
		return "507"
	}
	return "500"
}

// allocTable holds the alloc requests awaiting the engine's answer.
type allocTable struct {
	mu      sync.Mutex
	next    uint64
	pending map[uint64]*allocWait
	closed  bool
}

// responder sends a request's reply: its body, and its error (nil: none)
// for the error headers.
type responder func(data []byte, re *schemas.ReplyError)

// allocWait is one request awaiting its answer.
type allocWait struct {
	respond responder
	taskID  string
	timer   *time.Timer
}

// add registers a request, answered through respond, and returns its ID,
// or false once the table is closed.
func (t *allocTable) add(respond responder, taskID string, timeout time.Duration, expire func(uint64)) (uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, false
	}
	if t.pending == nil {
		t.pending = make(map[uint64]*allocWait)
	}
	t.next++
	id := t.next
	w := &allocWait{respond: respond, taskID: taskID}
	w.timer = time.AfterFunc(timeout, func() { expire(id) })
	t.pending[id] = w
	return id, true
}

// take removes and returns the request of id, if it still waits.
func (t *allocTable) take(id uint64) *allocWait {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := t.pending[id]
	if w != nil {
		delete(t.pending, id)
		w.timer.Stop()
	}
	return w
}

// close refuses new requests and returns those still waiting.
func (t *allocTable) close() []*allocWait {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	var out []*allocWait
	for id, w := range t.pending {
		w.timer.Stop()
		out = append(out, w)
		delete(t.pending, id)
	}
	return out
}

// waiting is the number of requests awaiting an answer.
func (t *allocTable) waiting() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending)
}

// AllocsWaiting is the number of alloc requests awaiting the engine's
// answer (for tests and metrics).
func (s *SelectorService) AllocsWaiting() int { return s.allocs.waiting() }

// AllocsTimedOut counts the alloc requests answered with unavailable
// because the engine did not answer within AllocTimeout.
func (s *SelectorService) AllocsTimedOut() uint64 { return s.allocTimeouts.Load() }

// addAllocEndpoint adds the alloc endpoint to the selector's micro service.
// Unlike status, it is served in a queue group: with a hot standby, one
// selector, not both, books each request.
func (s *SelectorService) addAllocEndpoint(svc micro.Service) error {
	subject := s.subj.Alloc()
	err := svc.AddEndpoint(protocol.EndpointAlloc, micro.HandlerFunc(s.handleAlloc),
		micro.WithEndpointSubject(subject), micro.WithEndpointQueueGroup(protocol.SelectorService))
	if err != nil {
		return fmt.Errorf("bus: add endpoint %s on %s: %w", protocol.EndpointAlloc, subject, err)
	}
	return nil
}

// handleAlloc decodes an alloc request and steps it into the engine; the
// reply goes out when the engine answers (answerAlloc) or the request
// times out.
func (s *SelectorService) handleAlloc(r micro.Request) {
	if r.Reply() == "" {
		return // nobody to answer: nothing to book
	}
	req, err := schemas.DecodeAllocRequest(r.Data())
	if err != nil {
		c := s.countMalformed(SourceAllocRequest, r.Subject(), err)
		s.step(&c.ev, nil)
		s.respondAlloc(r, &schemas.AllocReply{TaskID: guessTaskID(r.Data()),
			Error: &schemas.ReplyError{Code: schemas.CodeInvalid, Message: err.Error()}})
		return
	}
	s.mu.Lock()
	ready := s.eng != nil
	s.mu.Unlock()
	if !ready {
		s.respondAlloc(r, unavailable(req.TaskID, "the selector is not ready"))
		return
	}
	// The answer comes after the handler returned: it is published on the
	// reply subject directly, since micro's Request must not be used then
	// (micro reads its error state when the handler returns). Such answers
	// carry the same error headers, but micro's stats do not count them.
	id, ok := s.allocs.add(s.publisher(r.Reply()), req.TaskID, s.cfg.AllocTimeout, s.expireAlloc)
	if !ok {
		s.respondAlloc(r, unavailable(req.TaskID, "the selector is shutting down"))
		return
	}
	s.step(&selector.AllocRequested{ID: id, Req: &req}, nil)
}

// expireAlloc answers a request the engine did not answer in time.
func (s *SelectorService) expireAlloc(id uint64) {
	w := s.allocs.take(id)
	if w == nil {
		return
	}
	s.allocTimeouts.Add(1)
	s.logLimit.Log("alloc-timeout", s.log, slog.LevelWarn, "alloc request not answered in time", "task_id", w.taskID,
		"timeout", s.cfg.AllocTimeout)
	sendAlloc(w.respond, unavailable(w.taskID, "no answer within "+s.cfg.AllocTimeout.String()), s.log)
}

// answerAlloc sends the engine's answer to the request it names.
func (s *SelectorService) answerAlloc(c outCmd) {
	w := s.allocs.take(c.allocID)
	if w == nil {
		s.log.Debug("late alloc answer dropped", "alloc_id", c.allocID)
		return
	}
	w.respond(c.data, c.allocErr)
}

// closeAllocs answers every request still waiting with unavailable and
// refuses new ones.
func (s *SelectorService) closeAllocs() {
	for _, w := range s.allocs.close() {
		sendAlloc(w.respond, unavailable(w.taskID, "the selector is shutting down"), s.log)
	}
}

func unavailable(taskID, msg string) *schemas.AllocReply {
	return &schemas.AllocReply{TaskID: taskID, Error: &schemas.ReplyError{Code: schemas.CodeUnavailable, Message: msg}}
}

// respondAlloc answers r from within its handler.
func (s *SelectorService) respondAlloc(r micro.Request, rep *schemas.AllocReply) {
	sendAlloc(func(data []byte, re *schemas.ReplyError) {
		var err error
		if re != nil {
			err = r.Error(AllocErrorCode(re.Code), errorDescription(re), data)
		} else {
			err = r.Respond(data)
		}
		if err != nil {
			s.logLimit.Log("alloc-respond", s.log, slog.LevelWarn, "cannot answer alloc request", "err", err)
		}
	}, rep, s.log)
}

// publisher answers a request after its handler returned, on its reply
// subject, with micro's error headers when the reply carries an error.
func (s *SelectorService) publisher(reply string) responder {
	return func(data []byte, re *schemas.ReplyError) {
		msg := &nats.Msg{Subject: reply, Data: data}
		if re != nil {
			msg.Header = nats.Header{}
			msg.Header.Set(micro.ErrorHeader, errorDescription(re))
			msg.Header.Set(micro.ErrorCodeHeader, AllocErrorCode(re.Code))
		}
		if err := s.nc.PublishMsg(msg); err != nil {
			s.logLimit.Log("alloc-respond", s.log, slog.LevelWarn, "cannot answer alloc request", "err", err)
		}
	}
}

// sendAlloc encodes rep and sends it through respond.
func sendAlloc(respond responder, rep *schemas.AllocReply, log *slog.Logger) {
	data, err := schemas.Marshal(rep)
	if err != nil {
		log.Error("cannot encode alloc reply", "err", err)
		return
	}
	respond(data, rep.Error)
}

// errorDescription is the Nats-Service-Error header of a reply error.
func errorDescription(re *schemas.ReplyError) string {
	desc := re.Code
	if re.Message != "" {
		desc += ": " + oneLine(re.Message)
	}
	return desc
}

// oneLine replaces line breaks, which a header value cannot hold.
func oneLine(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return string(b)
}

// guessTaskID returns the task_id of a malformed request when it has a
// usable one, so that its error reply names the task; "unknown" otherwise.
func guessTaskID(data []byte) string {
	var v struct {
		TaskID string `json:"task_id"`
	}
	if len(data) <= schemas.MaxMessageBytes && json.Unmarshal(data, &v) == nil &&
		v.TaskID != "" && len(v.TaskID) <= schemas.MaxNameBytes && utf8.ValidString(v.TaskID) {
		return v.TaskID
	}
	return "unknown"
}

// decodeHelperReply turns a helper reply into its event; a malformed reply
// is counted and taken as no reply.
func (s *SelectorService) decodeHelperReply(c *outCmd, data []byte) selector.Event {
	r, err := schemas.DecodeHelperReply(data)
	if err == nil && r.HelperID != c.helper.HelperID {
		err = errors.New("reply names helper " + r.HelperID + ", not " + c.helper.HelperID)
	}
	if err != nil {
		s.countMalformed(SourceHelperReply, c.host, err)
		return unanswered(c, false)
	}
	return &selector.HelperReplied{Host: c.host, Req: c.helper, Reply: r}
}
