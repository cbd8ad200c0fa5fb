package audit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// This file holds how the auditor follows the bus: the task-event stream,
// which it reads with a JetStream consumer, and the selector's launch and
// kill requests, which it is handed (ObserveRequest).
//
// The auditor never subscribes to a request subject: a subscription there is
// interest in it, so a request to a host nobody serves (it died) would wait
// for its timeout instead of failing at once with "no responders", and the
// audited system would not behave as it does unwatched. Whoever runs the
// auditor reads the requests off the selector's connection instead (package
// wiretap) and passes them to ObserveRequest.

// WatchEvents follows the task-event stream on nc from its start until ctx
// ends. It waits for the stream (the selector creates it at its start) and
// returns once the consumer runs. It subscribes to no request subject; feed
// the selector's requests with ObserveRequest.
func (a *Auditor) WatchEvents(ctx context.Context, nc *nats.Conn) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("audit: jetstream: %w", err)
	}
	for attempt := 0; ; attempt++ {
		cc, err := a.consumeEvents(ctx, js)
		if err == nil {
			go func() {
				<-ctx.Done()
				cc.Stop()
			}()
			return nil
		}
		if !errors.Is(err, jetstream.ErrStreamNotFound) || attempt > 100 {
			return err
		}
		select { // the selector creates the stream at its start
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ObserveRequest records a message the selector published on subject, as
// read off its connection: a launch or kill request under subj is judged,
// anything else (a ps request, a reply, a malformed request) is ignored. It
// is safe to call from the connection's goroutine.
func (a *Auditor) ObserveRequest(subj protocol.Subjects, subject string, data []byte) {
	switch {
	case strings.HasPrefix(subject, subj.Prefix+".launch."):
		a.onLaunch(data)
	case strings.HasPrefix(subject, subj.Prefix+".kill."):
		a.onKill(subject, data)
	}
}

// consumeEvents starts an ordered consumer of the whole event stream.
func (a *Auditor) consumeEvents(ctx context.Context, js jetstream.JetStream) (jetstream.ConsumeContext, error) {
	cons, err := js.OrderedConsumer(ctx, protocol.EventStream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return nil, fmt.Errorf("audit: event stream: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ev, err := schemas.DecodeTaskEvent(m.Data())
		if err != nil {
			return // hostile input is some tests' own doing
		}
		a.onEvent(&ev)
	})
	if err != nil {
		return nil, fmt.Errorf("audit: consume events: %w", err)
	}
	return cc, nil
}

// onEvent records a task event.
func (a *Auditor) onEvent(ev *schemas.TaskEvent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events++
	if ev.Kind != schemas.EventDone {
		return
	}
	m := a.done[ev.Target]
	if m == nil {
		m = make(map[string]uint64)
		a.done[ev.Target] = m
	}
	m[ev.Type] = max(m[ev.Type], ev.Epoch)
}

// onLaunch records a launch request.
func (a *Auditor) onLaunch(data []byte) {
	req, err := schemas.DecodeLaunchRequest(data)
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.launched[req.Target]++
	if ep, ok := a.done[req.Target][req.Type]; ok && req.Epoch > ep && !repeats(req.Args, req.Type) {
		a.violate("finished phase runs again: %q phase %q finished at epoch %d, launched again at epoch %d",
			req.Target, req.Type, ep, req.Epoch)
	}
}

// repeats reports whether phase typ of the spec a launch carries repeats
// (the last phase of a declared spec marked repeat, or any phase of a
// profile whose phases cycle).
func repeats(args map[string]any, typ string) bool {
	spec, ok := args["spec"].(map[string]any)
	if !ok {
		return true // no spec to judge by: assume the worst case, no violation
	}
	if spec["profile"] != schemas.ProfileDeclared {
		return true
	}
	phases, _ := spec["phases"].([]any)
	for _, p := range phases {
		if ph, ok := p.(map[string]any); ok && ph["type"] == typ {
			r, _ := ph["repeat"].(bool)
			return r
		}
	}
	return true
}

// onKill records a kill request sent on subject.
func (a *Auditor) onKill(subject string, data []byte) {
	req, err := schemas.DecodeKillRequest(data)
	if err != nil {
		return
	}
	host, err := protocol.DecodeName(subject[strings.LastIndexByte(subject, '.')+1:])
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.kills = append(a.kills, kill{at: a.cfg.Now(), host: host, taskID: req.TaskID, reason: req.Reason})
}
