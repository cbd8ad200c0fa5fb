package schemas

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
)

// Marshal encodes a message for the wire. It works on a copy of m, which it
// normalizes first: a zero V becomes Version and every time is converted to
// UTC (so it is written as RFC 3339 with nanoseconds and a "Z" offset). It
// then validates the copy, so an invalid message never reaches the wire, and
// refuses an encoding larger than the message's size limit (MaxMessageBytes,
// or MaxStatusBytes for SelectorStatus). m may be a message value or a
// non-nil pointer to one; m itself is never modified.
//
// AppendHeartbeat is a faster, allocation-free encoder for heartbeats.
func Marshal(m Message) ([]byte, error) {
	if m == nil {
		return nil, errors.New("schemas: marshal: nil message")
	}
	rv := reflect.ValueOf(m)
	if rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return nil, fmt.Errorf("schemas: marshal: nil %T", m)
		}
		rv = rv.Elem()
	}
	cp := reflect.New(rv.Type())
	cp.Elem().Set(rv)
	n, ok := cp.Interface().(normalizer)
	if !ok {
		return nil, fmt.Errorf("schemas: marshal: unsupported message type %T", m)
	}
	n.normalize()
	msg := cp.Elem().Interface().(Message)
	if err := msg.Validate(); err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("schemas: marshal %s: %w", msg.MessageName(), err)
	}
	if limit := sizeLimit(msg.MessageName()); len(b) > limit {
		return nil, fmt.Errorf("marshal: %w", tooLarge(msg.MessageName(), len(b), limit))
	}
	return b, nil
}

// normalizer is implemented by pointers to every message type. normalize
// sets a zero V to Version and converts times to UTC, copying any slice or
// pointee it changes so that the original message is left alone.
type normalizer interface{ normalize() }

func setVersion(v *int) {
	if *v == 0 {
		*v = Version
	}
}

func (m *LaunchRequest) normalize() { setVersion(&m.V) }
func (m *LaunchReply) normalize()   { setVersion(&m.V) }
func (m *KillRequest) normalize()   { setVersion(&m.V) }
func (m *KillReply) normalize()     { setVersion(&m.V) }
func (m *PsRequest) normalize()     { setVersion(&m.V) }
func (m *TargetSpec) normalize()    { setVersion(&m.V) }

func (m *Heartbeat) normalize() {
	setVersion(&m.V)
	m.SentAt = m.SentAt.UTC()
}

func (m *TaskEvent) normalize() {
	setVersion(&m.V)
	m.At = m.At.UTC()
}

func (m *PsReply) normalize() {
	setVersion(&m.V)
	if m.Tasks != nil {
		tasks := make([]PsTask, len(m.Tasks))
		for i, t := range m.Tasks {
			t.StartedAt = t.StartedAt.UTC()
			tasks[i] = t
		}
		m.Tasks = tasks
	}
}

func (m *HostStatus) normalize() {
	setVersion(&m.V)
	m.SentAt = m.SentAt.UTC()
}

func (m *TaskState) normalize() {
	setVersion(&m.V)
	m.UpdatedAt = m.UpdatedAt.UTC()
	if m.Task != nil {
		t := *m.Task
		t.LaunchedAt = t.LaunchedAt.UTC()
		if t.ConfirmedAt != nil {
			c := t.ConfirmedAt.UTC()
			t.ConfirmedAt = &c
		}
		m.Task = &t
	}
}

func (m *SelectorStatus) normalize() {
	setVersion(&m.V)
	m.Backoff.NextLaunchAt = m.Backoff.NextLaunchAt.UTC()
	m.At = m.At.UTC()
}
