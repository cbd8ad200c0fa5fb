package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/schemas"
)

// backlogFetch is how many events one fetch of the backlog reads.
const backlogFetch = 512

// readBacklog returns the task events of the TASK_EVENTS stream that the
// selector's durable consumer has not acked: from the message after its ack
// floor up to the stream's last message at the time of the call, in stream
// order. Events delivered to an earlier selector that stopped before acking
// them are included: the durable consumer would redeliver those only after
// AckWait. Malformed events are left out (the durable consumer terminates
// and counts them when it delivers them). It reads through a short-lived
// ephemeral consumer that it deletes before returning.
func (s *SelectorService) readBacklog(ctx context.Context) ([]*schemas.TaskEvent, error) {
	opCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ci, err := s.store.Consumer.Info(opCtx)
	if err != nil {
		return nil, fmt.Errorf("bus: backlog: consumer info: %w", err)
	}
	si, err := s.store.Events.Info(opCtx)
	if err != nil {
		return nil, fmt.Errorf("bus: backlog: stream info: %w", err)
	}
	from, last := ci.AckFloor.Stream+1, si.State.LastSeq
	if last < from || si.State.Msgs == 0 {
		return nil, nil
	}
	cons, err := s.store.Events.CreateConsumer(opCtx, jetstream.ConsumerConfig{
		Description:       "taskselector: start-up read of the unacked task events",
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from,
		AckPolicy:         jetstream.AckNonePolicy,
		FilterSubject:     s.subj.Events(),
		InactiveThreshold: time.Minute,
		MemoryStorage:     true,
		Replicas:          1,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: backlog: create consumer: %w", err)
	}
	defer func() {
		delCtx, cancelDel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancelDel()
		if err := s.store.Events.DeleteConsumer(delCtx, cons.CachedInfo().Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			s.log.Warn("backlog: cannot delete the reading consumer; the server removes it when idle", "err", err)
		}
	}()

	var out []*schemas.TaskEvent
	waited := false
	for {
		var batch jetstream.MessageBatch
		if waited {
			batch, err = cons.Fetch(backlogFetch, jetstream.FetchMaxWait(time.Second))
		} else {
			batch, err = cons.FetchNoWait(backlogFetch)
		}
		if err != nil {
			return nil, fmt.Errorf("bus: backlog: fetch: %w", err)
		}
		n, done := 0, false
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return nil, fmt.Errorf("bus: backlog: message metadata: %w", err)
			}
			if ev, err := s.parseEvent(m.Subject(), m.Data()); err == nil {
				out = append(out, ev)
			}
			if meta.Sequence.Stream >= last || meta.NumPending == 0 {
				done = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("bus: backlog: fetch: %w", err)
		}
		switch {
		case done:
			return out, nil
		case n > 0:
			waited = false
		case waited:
			// Nothing more within a second: the rest was deleted.
			return out, nil
		default:
			waited = true
		}
		if opCtx.Err() != nil {
			return nil, fmt.Errorf("bus: backlog: %w", opCtx.Err())
		}
	}
}

// parseEvent decodes a task event and checks it against its subject.
func (s *SelectorService) parseEvent(subject string, data []byte) (*schemas.TaskEvent, error) {
	ev, err := decodeTaskEvent(data)
	if err != nil {
		return nil, err
	}
	// Both subject forms: the host's (protocol.Subjects.TaskEvent) and the
	// first version's, without the host (Event).
	host, target, err := s.subj.ParseEvent(subject)
	switch {
	case err != nil:
		return nil, err
	case target != ev.Target:
		return nil, fmt.Errorf("subject %q does not match the target %q in the body", subject, ev.Target)
	case host != "":
		if err := checkHost(host, ev.Host); err != nil {
			return nil, err
		}
	}
	return ev, nil
}
