package schemas

import (
	"fmt"
	"strconv"

	"github.com/taskselector/taskselector/internal/strictjson"
)

// MaxStatusBytes is the largest SelectorStatus a decoder accepts, and the
// largest one Marshal writes. The status lists every target and host, so it
// gets the size of a default NATS payload rather than MaxMessageBytes.
const MaxStatusBytes = 1 << 20

// Message is implemented by every top-level wire type (as a value and as a
// pointer): LaunchRequest, LaunchReply, Heartbeat, TaskEvent, KillRequest,
// KillReply, PsRequest, PsReply, HostStatus, TargetSpec, TaskState,
// SelectorStatus, and the memory-manager messages AllocRequest, AllocReply,
// HelperRequest and HelperReply (alloc.go).
type Message interface {
	// Validate checks the message's semantic rules (version, names, ranges,
	// enums) and returns a *FieldError naming the first field that breaks one.
	Validate() error
	// MessageName is the message's name in errors and schema files, e.g. "heartbeat".
	MessageName() string
}

// Message names, as used in errors and in the schema file names.
const (
	nameLaunchRequest  = "launch_request"
	nameLaunchReply    = "launch_reply"
	nameHeartbeat      = "heartbeat"
	nameTaskEvent      = "task_event"
	nameKillRequest    = "kill_request"
	nameKillReply      = "kill_reply"
	namePsRequest      = "ps_request"
	namePsReply        = "ps_reply"
	nameHostStatus     = "host_status"
	nameTargetSpec     = "target_spec"
	nameTaskState      = "task_state"
	nameSelectorStatus = "selector_status"
)

// MessageName implements Message.
func (LaunchRequest) MessageName() string { return nameLaunchRequest }

// MessageName implements Message.
func (LaunchReply) MessageName() string { return nameLaunchReply }

// MessageName implements Message.
func (Heartbeat) MessageName() string { return nameHeartbeat }

// MessageName implements Message.
func (TaskEvent) MessageName() string { return nameTaskEvent }

// MessageName implements Message.
func (KillRequest) MessageName() string { return nameKillRequest }

// MessageName implements Message.
func (KillReply) MessageName() string { return nameKillReply }

// MessageName implements Message.
func (PsRequest) MessageName() string { return namePsRequest }

// MessageName implements Message.
func (PsReply) MessageName() string { return namePsReply }

// MessageName implements Message.
func (HostStatus) MessageName() string { return nameHostStatus }

// MessageName implements Message.
func (TargetSpec) MessageName() string { return nameTargetSpec }

// MessageName implements Message.
func (TaskState) MessageName() string { return nameTaskState }

// MessageName implements Message.
func (SelectorStatus) MessageName() string { return nameSelectorStatus }

// sizeLimit is the largest encoding of a message named name.
func sizeLimit(name string) int {
	if name == nameSelectorStatus {
		return MaxStatusBytes
	}
	return MaxMessageBytes
}

// DecodeLaunchRequest strictly decodes and validates a LaunchRequest.
func DecodeLaunchRequest(b []byte) (LaunchRequest, error) { return decodeMessage[LaunchRequest](b) }

// DecodeLaunchReply strictly decodes and validates a LaunchReply.
func DecodeLaunchReply(b []byte) (LaunchReply, error) { return decodeMessage[LaunchReply](b) }

// DecodeHeartbeat strictly decodes and validates a Heartbeat.
// DecodeHeartbeatInto applies the same rules faster and with fewer
// allocations.
func DecodeHeartbeat(b []byte) (Heartbeat, error) { return decodeMessage[Heartbeat](b) }

// DecodeTaskEvent strictly decodes and validates a TaskEvent.
func DecodeTaskEvent(b []byte) (TaskEvent, error) { return decodeMessage[TaskEvent](b) }

// DecodeKillRequest strictly decodes and validates a KillRequest.
func DecodeKillRequest(b []byte) (KillRequest, error) { return decodeMessage[KillRequest](b) }

// DecodeKillReply strictly decodes and validates a KillReply.
func DecodeKillReply(b []byte) (KillReply, error) { return decodeMessage[KillReply](b) }

// DecodePsRequest strictly decodes and validates a PsRequest.
func DecodePsRequest(b []byte) (PsRequest, error) { return decodeMessage[PsRequest](b) }

// DecodePsReply strictly decodes and validates a PsReply.
func DecodePsReply(b []byte) (PsReply, error) { return decodeMessage[PsReply](b) }

// DecodeHostStatus strictly decodes and validates a HostStatus.
func DecodeHostStatus(b []byte) (HostStatus, error) { return decodeMessage[HostStatus](b) }

// DecodeTargetSpec strictly decodes and validates a TargetSpec.
func DecodeTargetSpec(b []byte) (TargetSpec, error) { return decodeMessage[TargetSpec](b) }

// DecodeTaskState strictly decodes and validates a TaskState.
func DecodeTaskState(b []byte) (TaskState, error) { return decodeMessage[TaskState](b) }

// DecodeSelectorStatus strictly decodes and validates a SelectorStatus. Its
// size limit is MaxStatusBytes.
func DecodeSelectorStatus(b []byte) (SelectorStatus, error) { return decodeMessage[SelectorStatus](b) }

// decodeMessage is the strict decoder shared by every message type.
//
// The rules, common to all messages:
//   - the message is at most sizeLimit bytes;
//   - it is decoded by strictjson.Decode, whose rules apply: valid JSON whose
//     top level is an object; every field whose json tag lacks omitempty is
//     required (a missing key is an error; null is accepted, as nil, only for
//     pointer, slice and map fields); a null optional field is the same as an
//     absent one; unknown keys are ignored; of duplicate keys the last one
//     counts; keys match exactly (case-sensitive); integer fields take JSON
//     integers without fraction or exponent, never negative, within the Go
//     type's range; float fields take finite JSON numbers (1e400 is an
//     error); string fields must be valid UTF-8; times are RFC 3339 strings,
//     returned in UTC;
//   - then the message's Validate method runs.
func decodeMessage[T Message](b []byte) (T, error) { return decodeWith[T](b, strictjson.Decode) }

// decodeFunc decodes b into v, a pointer to a zero message, and returns the
// errors strictjson.Decode returns.
type decodeFunc func(b []byte, v any) error

// decodeWith checks the size of a message, decodes it with decode, then
// validates it.
func decodeWith[T Message](b []byte, decode decodeFunc) (T, error) {
	var zero, v T
	name := v.MessageName()
	if limit := sizeLimit(name); len(b) > limit {
		return zero, tooLarge(name, len(b), limit)
	}
	if err := decode(b, &v); err != nil {
		return zero, decodeError(name, err)
	}
	if err := v.Validate(); err != nil {
		return zero, err
	}
	return v, nil
}

// decodeError turns an error of strictjson (its Decode, or a Scanner) about
// the message called name into a *FieldError. A *FieldError is returned as
// it is; any other error, which means that the message type is not one
// strictjson supports (a bug caught by TestEveryMessageDecodable), is
// wrapped.
func decodeError(name string, err error) error {
	switch e := err.(type) {
	case *FieldError:
		return e
	case *strictjson.SyntaxError:
		return fieldErr(name, "", "invalid JSON at offset "+strconv.FormatInt(e.Offset, 10)+": "+e.Msg)
	case *strictjson.ValueError:
		return fieldErr(name, e.Path, e.Problem)
	}
	return fmt.Errorf("schemas: decode %s: %w", name, err)
}
