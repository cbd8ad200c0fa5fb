package schemas

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// MaxStatusBytes is the largest SelectorStatus a decoder accepts, and the
// largest one Marshal writes. The status lists every target and host, so it
// gets the size of a default NATS payload rather than MaxMessageBytes.
const MaxStatusBytes = 1 << 20

// Message is implemented by every top-level wire type (as a value and as a
// pointer): LaunchRequest, LaunchReply, Heartbeat, TaskEvent, KillRequest,
// KillReply, PsRequest, PsReply, HostStatus, TargetSpec, TaskState and
// SelectorStatus.
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

// DecodeHeartbeat strictly decodes and validates a Heartbeat with
// encoding/json. DecodeHeartbeatInto applies the same rules much faster.
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
//   - the message is at most sizeLimit bytes of valid JSON whose top level is
//     an object;
//   - every field whose json tag lacks omitempty is required: a missing key is
//     an error; null is accepted (as nil) only for pointer, slice and map
//     fields, and is an error for other required fields;
//   - a null optional field is the same as an absent one;
//   - unknown keys are ignored; of duplicate keys the last one counts;
//   - keys match exactly (case-sensitive);
//   - integer fields take JSON integers without fraction or exponent, never
//     negative, within the Go type's range;
//   - float fields take finite JSON numbers (1e400 is an error);
//   - string fields must be valid UTF-8; times are RFC 3339 strings, returned
//     in UTC;
//   - then the message's Validate method runs.
func decodeMessage[T Message](b []byte) (T, error) {
	var zero, v T
	name := v.MessageName()
	if err := decodeStrict(b, name, sizeLimit(name), &v); err != nil {
		return zero, err
	}
	if err := v.Validate(); err != nil {
		return zero, err
	}
	return v, nil
}

func decodeStrict(b []byte, name string, limit int, dst any) error {
	if len(b) > limit {
		return tooLarge(name, len(b), limit)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return fieldErr(name, "", fmt.Sprintf("invalid JSON at offset %d: %v", se.Offset, se))
		}
		return fieldErr(name, "", "not a JSON object")
	}
	if m == nil {
		return fieldErr(name, "", "not a JSON object")
	}
	d := strictDecoder{msg: name}
	return d.object(m, reflect.ValueOf(dst).Elem(), "")
}

// fieldInfo describes one json-tagged field of a struct.
type fieldInfo struct {
	name     string
	index    int
	required bool // the tag has no omitempty
}

var fieldCache sync.Map // reflect.Type -> []fieldInfo

// structFields lists t's json-tagged fields in declaration order.
func structFields(t reflect.Type) []fieldInfo {
	if fs, ok := fieldCache.Load(t); ok {
		return fs.([]fieldInfo)
	}
	var fs []fieldInfo
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, ok := f.Tag.Lookup("json")
		if !ok || tag == "-" || !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		fs = append(fs, fieldInfo{name: name, index: i, required: !hasOpt(opts, "omitempty")})
	}
	fieldCache.Store(t, fs)
	return fs
}

func hasOpt(opts, want string) bool {
	for opts != "" {
		var o string
		o, opts, _ = strings.Cut(opts, ",")
		if o == want {
			return true
		}
	}
	return false
}

var timeType = reflect.TypeFor[time.Time]()

// strictDecoder walks a Go type and the raw JSON of a message together.
type strictDecoder struct{ msg string }

func (d *strictDecoder) fail(path, problem string) error {
	return fieldErr(d.msg, path, problem)
}

func isNull(raw []byte) bool { return string(raw) == "null" }

func (d *strictDecoder) object(m map[string]json.RawMessage, v reflect.Value, path string) error {
	for _, f := range structFields(v.Type()) {
		fpath := joinPath(path, f.name)
		raw, ok := m[f.name]
		if !ok {
			if f.required {
				return d.fail(fpath, probMissing)
			}
			continue
		}
		fv := v.Field(f.index)
		if isNull(raw) {
			switch fv.Kind() {
			case reflect.Pointer, reflect.Slice, reflect.Map:
				fv.SetZero()
				continue
			}
			if f.required {
				return d.fail(fpath, probNull)
			}
			fv.SetZero()
			continue
		}
		if err := d.value(raw, fv, fpath); err != nil {
			return err
		}
	}
	return nil
}

// value decodes raw, a non-null JSON value, into v.
func (d *strictDecoder) value(raw json.RawMessage, v reflect.Value, path string) error {
	t := v.Type()
	if t == timeType {
		if raw[0] != '"' {
			return d.fail(path, probNotString)
		}
		var tm time.Time
		if err := tm.UnmarshalJSON(raw); err != nil {
			return d.fail(path, probNotTime)
		}
		v.Set(reflect.ValueOf(tm.UTC()))
		return nil
	}
	switch t.Kind() {
	case reflect.String:
		if raw[0] != '"' {
			return d.fail(path, probNotString)
		}
		if !utf8.Valid(raw) {
			return d.fail(path, probBadUTF8)
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return d.fail(path, probNotString)
		}
		v.SetString(s)
	case reflect.Bool:
		switch string(raw) {
		case "true":
			v.SetBool(true)
		case "false":
			v.SetBool(false)
		default:
			return d.fail(path, probNotBool)
		}
	case reflect.Int, reflect.Int64:
		n, p := uintValue(raw, math.MaxInt64)
		if p != "" {
			return d.fail(path, p)
		}
		if v.OverflowInt(int64(n)) {
			return d.fail(path, probOutOfRange)
		}
		v.SetInt(int64(n))
	case reflect.Uint64:
		n, p := uintValue(raw, math.MaxUint64)
		if p != "" {
			return d.fail(path, p)
		}
		v.SetUint(n)
	case reflect.Float64:
		f, p := floatValue(raw)
		if p != "" {
			return d.fail(path, p)
		}
		v.SetFloat(f)
	case reflect.Pointer:
		e := reflect.New(t.Elem())
		if err := d.value(raw, e.Elem(), path); err != nil {
			return err
		}
		v.Set(e)
	case reflect.Struct:
		if raw[0] != '{' {
			return d.fail(path, probNotObject)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return d.fail(path, probNotObject)
		}
		return d.object(m, v, path)
	case reflect.Slice:
		if raw[0] != '[' {
			return d.fail(path, probNotArray)
		}
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return d.fail(path, probNotArray)
		}
		s := reflect.MakeSlice(t, len(elems), len(elems))
		for i, e := range elems {
			ipath := indexPath(path, i)
			if isNull(e) {
				return d.fail(ipath, probNull)
			}
			if err := d.value(e, s.Index(i), ipath); err != nil {
				return err
			}
		}
		v.Set(s)
	case reflect.Map:
		if raw[0] != '{' {
			return d.fail(path, probNotObject)
		}
		if t.Key().Kind() != reflect.String {
			panic("schemas: unsupported map key type " + t.String())
		}
		if t.Elem().Kind() == reflect.Interface {
			// A free-form object (args, metrics).
			if !utf8.Valid(raw) {
				return d.fail(path, probBadUTF8)
			}
			mp := reflect.New(t)
			if err := json.Unmarshal(raw, mp.Interface()); err != nil {
				var te *json.UnmarshalTypeError
				if errors.As(err, &te) && strings.HasPrefix(te.Value, "number") {
					return d.fail(path, "holds a number that is "+probNotFinite)
				}
				return d.fail(path, probNotObject)
			}
			v.Set(mp.Elem())
			return nil
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return d.fail(path, probNotObject)
		}
		mv := reflect.MakeMapWithSize(t, len(m))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			e := m[k]
			kpath := joinPath(path, k)
			if isNull(e) {
				return d.fail(kpath, probNull)
			}
			ev := reflect.New(t.Elem()).Elem()
			if err := d.value(e, ev, kpath); err != nil {
				return err
			}
			mv.SetMapIndex(reflect.ValueOf(k).Convert(t.Key()), ev)
		}
		v.Set(mv)
	default:
		panic("schemas: unsupported field type " + t.String())
	}
	return nil
}
