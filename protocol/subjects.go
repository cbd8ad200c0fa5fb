package protocol

import (
	"fmt"
	"strings"
)

// DefaultPrefix is the subject prefix when none is configured.
const DefaultPrefix = "tasks"

// Stream and bucket names.
const (
	EventStream   = "TASK_EVENTS"
	TargetsBucket = "targets"
	TasksBucket   = "tasks"
)

// Subjects builds every subject taskselector uses under one prefix. Host and
// target names are encoded with EncodeName.
type Subjects struct {
	Prefix string
}

// NewSubjects returns the subjects under prefix, or under DefaultPrefix when
// prefix is empty.
func NewSubjects(prefix string) Subjects {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Subjects{Prefix: prefix}
}

// Launch is the request subject of host's launches.
func (s Subjects) Launch(host string) string { return s.Prefix + ".launch." + EncodeName(host) }

// Kill is the request subject of host's kills.
func (s Subjects) Kill(host string) string { return s.Prefix + ".kill." + EncodeName(host) }

// Ps is the request subject of host's process listings.
func (s Subjects) Ps(host string) string { return s.Prefix + ".ps." + EncodeName(host) }

// Heartbeat is the subject a task on host publishes its heartbeats to.
func (s Subjects) Heartbeat(host, target string) string {
	return s.Prefix + ".heartbeat." + EncodeName(host) + "." + EncodeName(target)
}

// Heartbeats matches every heartbeat.
func (s Subjects) Heartbeats() string { return s.Prefix + ".heartbeat.>" }

// Host is the subject host publishes its HostStatus to.
func (s Subjects) Host(host string) string { return s.Prefix + ".host." + EncodeName(host) }

// Hosts matches every host status.
func (s Subjects) Hosts() string { return s.Prefix + ".host.*" }

// TaskEvent is the subject host's worker publishes target's task events to,
// captured by the EventStream. The host in the subject lets a per-host NATS
// user publish its own host's events and no one else's.
func (s Subjects) TaskEvent(host, target string) string {
	return s.Prefix + ".event." + EncodeName(host) + "." + EncodeName(target)
}

// Event is the first version's subject of target's task events, without the
// host. Workers now publish on TaskEvent; the stream, its consumer and the
// selector still accept this form, so that events stored or sent by older
// workers are read.
func (s Subjects) Event(target string) string { return s.Prefix + ".event." + EncodeName(target) }

// Events matches every task event.
func (s Subjects) Events() string { return s.Prefix + ".event.>" }

// WorkerInbox is the inbox prefix of host's worker agent: the replies to its
// requests (the JetStream acks of its task events among them) come to
// subjects under it, so that a NATS user for that host may subscribe to its
// own replies and to no one else's. It lies under "_INBOX.", so a user
// allowed "_INBOX.>" still reads it, and the token "worker" cannot be a
// random client inbox (those are 22 characters long).
func WorkerInbox(host string) string { return "_INBOX.worker." + EncodeName(host) }

// Alloc is the request subject of tasks' helper RAM requests to the
// selector, the fleet's memory manager.
func (s Subjects) Alloc() string { return s.Prefix + ".alloc" }

// Helper is the request subject of host's fleet helper starts and stops.
func (s Subjects) Helper(host string) string { return s.Prefix + ".helper." + EncodeName(host) }

// Status is the request subject of the selector's status snapshot.
func (s Subjects) Status() string { return s.Prefix + ".selector.status" }

// ParseHeartbeat returns the host and target a heartbeat subject names.
func (s Subjects) ParseHeartbeat(subject string) (host, target string, err error) {
	// Cut the prefix in two steps: concatenating it would allocate on the
	// heartbeat hot path.
	rest, ok := strings.CutPrefix(subject, s.Prefix)
	if ok {
		rest, ok = strings.CutPrefix(rest, ".heartbeat.")
	}
	if !ok {
		return "", "", fmt.Errorf("protocol: %q is not a heartbeat subject", subject)
	}
	h, t, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(t, ".") {
		return "", "", fmt.Errorf("protocol: %q is not a heartbeat subject", subject)
	}
	if host, err = DecodeName(h); err != nil {
		return "", "", err
	}
	if target, err = DecodeName(t); err != nil {
		return "", "", err
	}
	return host, target, nil
}

// ParseEvent returns the host and target an event subject names, in either
// form: TaskEvent's (host and target) or Event's (target alone; host is then
// empty).
func (s Subjects) ParseEvent(subject string) (host, target string, err error) {
	rest, ok := strings.CutPrefix(subject, s.Prefix)
	if ok {
		rest, ok = strings.CutPrefix(rest, ".event.")
	}
	if !ok {
		return "", "", fmt.Errorf("protocol: %q is not an event subject", subject)
	}
	h, t, two := strings.Cut(rest, ".")
	if !two {
		h, t = "", h
	} else if strings.Contains(t, ".") {
		return "", "", fmt.Errorf("protocol: %q is not an event subject", subject)
	}
	if two {
		if host, err = DecodeName(h); err != nil {
			return "", "", err
		}
	}
	if target, err = DecodeName(t); err != nil {
		return "", "", err
	}
	return host, target, nil
}
