package schemas

// The strict decoder as it was before the single-pass decoder in strict.go
// replaced it: a map of raw members per object, decoded by encoding/json and
// walked by reflection. It is kept here, unchanged but for its names, as the
// reference the new decoder is checked against (TestStrictMatchesReference,
// the Fuzz tests) and measured against (the Decode benchmarks). Only its
// decoding of free-form objects, which did not change, is shared (freeForm).

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"time"
	"unicode/utf8"
)

// referenceDecode is decodeMessage with the reference decoder.
func referenceDecode[T Message](b []byte) (T, error) { return decodeWith[T](b, refDecodeStrict) }

func refDecodeStrict(b []byte, name string, limit int, dst reflect.Value) error {
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
	d := refDecoder{msg: name}
	return d.object(m, dst, "")
}

// refDecoder walks a Go type and the raw JSON of a message together.
type refDecoder struct{ msg string }

func (d *refDecoder) fail(path, problem string) error {
	return fieldErr(d.msg, path, problem)
}

func isNull(raw []byte) bool { return string(raw) == "null" }

func (d *refDecoder) object(m map[string]json.RawMessage, v reflect.Value, path string) error {
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
func (d *refDecoder) value(raw json.RawMessage, v reflect.Value, path string) error {
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
			// A free-form object (args, metrics): this code moved, unchanged,
			// into freeForm.
			if p := freeForm(raw, v); p != "" {
				return d.fail(path, p)
			}
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
