package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// The agent serves its launch, kill and ps subjects as an instance of the
// NATS micro service protocol.WorkerService, so that `nats micro ls`, `info`
// and `stats` show every worker, its host (metadata protocol.ServiceMetaHost)
// and per-endpoint request and error counts.
//
//   - The subjects are the ones the protocol always had; every endpoint is
//     subscribed without a queue group, as the plain subscriptions were: a
//     request reaches every agent that serves the subject. Two agents that
//     claim one host (a misconfiguration) then both see every launch and
//     kill, rather than each seeing a random share of them.
//   - A reply that carries an error (its "error" object) is sent with micro's
//     Error, which adds the headers Nats-Service-Error (the description:
//     "<code>: <message>") and Nats-Service-Error-Code (ServiceErrorCode of
//     the body's code) to the same body, and makes micro count the request
//     in the endpoint's num_errors. The body, which the selector reads, is
//     unchanged.
//   - Messages without a reply subject (the fence barrier, see fence.go) are
//     handled as before and answered with nothing; micro counts them in
//     num_requests all the same.

// ServiceErrorCode maps a reply error code (schemas.Code*) to the value of
// the Nats-Service-Error-Code header. micro's error codes are strings that
// clients in other languages read as numbers, so they follow HTTP status
// codes:
//
//	invalid          400  the request cannot be read, or names what it may not
//	unknown_type     422  the worker cannot run the task's type or args
//	failed           500  the worker could not carry out a kill or ps
//	draining         503  the host takes no launches (draining or fenced)
//	insufficient_ram 507  the task does not fit the host's free RAM
//
// Any other code maps to 500.
func ServiceErrorCode(code string) string {
	switch code {
	case schemas.CodeInvalid:
		return "400"
	case schemas.CodeUnknownType:
		return "422"
	case schemas.CodeDraining:
		return "503"
	case schemas.CodeInsufficientRAM:
		return "507"
	default:
		return "500"
	}
}

// serviceErrorDescription is the Nats-Service-Error header of a reply
// error: "<code>: <message>" on one line (a header value cannot hold a line
// break); "error" stands in for a missing code.
func serviceErrorDescription(re *schemas.ReplyError) string {
	desc := re.Code
	if desc == "" {
		desc = "error"
	}
	msg := strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, re.Message)
	if strings.TrimSpace(msg) != "" {
		desc += ": " + msg
	}
	return desc
}

// startService adds the agent's micro service and its endpoints on the
// agent's connection: launch, kill and ps, and helper when the executor runs
// fleet helpers (see helpers.go).
func (a *Agent) startService() (micro.Service, error) {
	svc, err := micro.AddService(a.nc, micro.Config{
		Name:        protocol.WorkerService,
		Version:     protocol.ServiceVersion,
		Description: "taskselector worker agent: launches, kills and lists the tasks of one host",
		Metadata: map[string]string{
			protocol.ServiceMetaHost:     a.cfg.Host,
			protocol.ServiceMetaPrefix:   a.cfg.Prefix,
			protocol.ServiceMetaExecutor: a.cfg.Executor,
		},
		QueueGroupDisabled: true,
	})
	if err != nil {
		return nil, fmt.Errorf("worker: add micro service %s: %w", protocol.WorkerService, err)
	}
	type endpoint struct {
		name, subject string
		h             micro.HandlerFunc
	}
	eps := []endpoint{
		{protocol.EndpointLaunch, a.subj.Launch(a.cfg.Host), a.handleLaunch},
		{protocol.EndpointKill, a.subj.Kill(a.cfg.Host), a.handleKill},
		{protocol.EndpointPs, a.subj.Ps(a.cfg.Host), a.handlePs},
	}
	if _, ok := a.exec.(HelperExecutor); ok && !a.cfg.NoHelpers {
		eps = append(eps, endpoint{protocol.EndpointHelper, a.subj.Helper(a.cfg.Host), a.handleHelper})
	}
	for _, ep := range eps {
		if err := svc.AddEndpoint(ep.name, ep.h, micro.WithEndpointSubject(ep.subject)); err != nil {
			err = fmt.Errorf("worker: add endpoint %s on %s: %w", ep.name, ep.subject, err)
			if serr := svc.Stop(); serr != nil {
				err = errors.Join(err, fmt.Errorf("worker: stop micro service: %w", serr))
			}
			return nil, err
		}
	}
	return svc, nil
}

// stopService stops svc (its subscriptions drain: the requests already
// delivered are still handled) and waits, until ctx ends, for the request
// handlers in flight. Handlers that start afterwards leave the executor
// alone (see handlerGate). It reports whether every handler was done.
func (a *Agent) stopService(ctx context.Context, svc micro.Service) bool {
	if err := svc.Stop(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		a.log.Warn("stopping the micro service", "err", err)
	}
	select {
	case <-a.handlers.close():
		return true
	case <-ctx.Done():
		return false
	}
}

// handlerGate counts the request handlers in flight, so that shutdown can
// wait for them before it closes the executor. Once it is closed, enter
// reports false and counts nothing: the handler must then leave the
// executor and its tasks alone.
type handlerGate struct {
	mu     sync.Mutex
	closed bool
	n      int
	idle   chan struct{} // closed once n is 0 after close
}

// enter counts a handler in, unless the gate is closed; a handler that
// entered calls leave when it is done.
func (g *handlerGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.n++
	return true
}

func (g *handlerGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n--
	if g.n == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// close closes the gate and returns a channel closed once no handler that
// entered is left.
func (g *handlerGate) close() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	ch := make(chan struct{})
	if g.n == 0 {
		close(ch)
	} else {
		g.idle = ch
	}
	return ch
}

// respond answers r with the reply v, whose error is re (nil: none). Strict
// replies are encoded through schemas.Marshal (which validates), the others
// through encoding/json. A reply with an error goes through micro's Error
// (see ServiceErrorCode). A request without a reply subject is not
// answered.
func (a *Agent) respond(r micro.Request, v any, re *schemas.ReplyError, strict bool) {
	if r.Reply() == "" {
		return
	}
	var b []byte
	var err error
	if msg, ok := v.(schemas.Message); ok && strict {
		b, err = schemas.Marshal(msg)
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		a.log.Error("encoding reply", "subject", r.Subject(), "err", err)
		return
	}
	if re != nil {
		err = r.Error(ServiceErrorCode(re.Code), serviceErrorDescription(re), b)
	} else {
		err = r.Respond(b)
	}
	if err != nil {
		a.log.Warn("reply failed", "subject", r.Subject(), "err", err)
	}
}
