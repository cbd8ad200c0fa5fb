// Package strictjsontest holds test helpers for strictjson and its users: a
// reference decoder to check strictjson.Decode against, and a generator of
// variants of a JSON document. It is meant for tests only.
package strictjsontest

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/taskselector/taskselector/internal/strictjson"
)

// The decoder that strictjson.Decode's single pass replaced: a map of raw
// members per object, decoded by encoding/json and walked by reflection. It
// is kept, unchanged but for its names and the types of its errors, as the
// reference Decode is checked against (by tests and fuzz tests, on
// strictjson's own test types and on its users' message types) and measured
// against (by benchmarks). It shares only ParseUint and ParseFloat with
// Decode.

// Reference decodes data into the struct v points to with the same rules,
// and the same errors, as strictjson.Decode, but by another, slower method:
// the two must agree on every input.
func Reference(data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("strictjsontest: decode into %T: not a non-nil pointer to a struct", v)
	}
	dst := rv.Elem()
	dst.SetZero()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return &strictjson.SyntaxError{Offset: se.Offset, Msg: se.Error()}
		}
		return fail("", strictjson.ProblemNotJSONObject)
	}
	if m == nil {
		return fail("", strictjson.ProblemNotJSONObject)
	}
	return object(m, dst, "")
}

func fail(path, problem string) error {
	return &strictjson.ValueError{Path: path, Problem: problem}
}

func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func indexPath(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// structFields lists t's json-tagged fields in declaration order: the
// fields strictjson reads (which fields to read is not what the reference
// checks).
func structFields(t reflect.Type) []strictjson.Field { return strictjson.Fields(t) }

var timeType = reflect.TypeFor[time.Time]()

func isNull(raw []byte) bool { return string(raw) == "null" }

func object(m map[string]json.RawMessage, v reflect.Value, path string) error {
	for _, f := range structFields(v.Type()) {
		fpath := joinPath(path, f.Name)
		raw, ok := m[f.Name]
		if !ok {
			if f.Required {
				return fail(fpath, strictjson.ProblemMissing)
			}
			continue
		}
		fv := v.Field(f.Index)
		if isNull(raw) {
			switch fv.Kind() {
			case reflect.Pointer, reflect.Slice, reflect.Map:
				fv.SetZero()
				continue
			}
			if f.Required {
				return fail(fpath, strictjson.ProblemNull)
			}
			fv.SetZero()
			continue
		}
		if err := value(raw, fv, fpath); err != nil {
			return err
		}
	}
	return nil
}

// value decodes raw, a non-null JSON value, into v.
func value(raw json.RawMessage, v reflect.Value, path string) error {
	t := v.Type()
	if t == timeType {
		if raw[0] != '"' {
			return fail(path, strictjson.ProblemNotString)
		}
		var tm time.Time
		if err := tm.UnmarshalJSON(raw); err != nil {
			return fail(path, strictjson.ProblemNotTime)
		}
		v.Set(reflect.ValueOf(tm.UTC()))
		return nil
	}
	switch t.Kind() {
	case reflect.String:
		if raw[0] != '"' {
			return fail(path, strictjson.ProblemNotString)
		}
		if !utf8.Valid(raw) {
			return fail(path, strictjson.ProblemBadUTF8)
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return fail(path, strictjson.ProblemNotString)
		}
		v.SetString(s)
	case reflect.Bool:
		switch string(raw) {
		case "true":
			v.SetBool(true)
		case "false":
			v.SetBool(false)
		default:
			return fail(path, strictjson.ProblemNotBool)
		}
	case reflect.Int, reflect.Int64:
		n, p := strictjson.ParseUint(raw, math.MaxInt64)
		if p != "" {
			return fail(path, p)
		}
		if v.OverflowInt(int64(n)) {
			return fail(path, strictjson.ProblemOutOfRange)
		}
		v.SetInt(int64(n))
	case reflect.Uint64:
		n, p := strictjson.ParseUint(raw, math.MaxUint64)
		if p != "" {
			return fail(path, p)
		}
		v.SetUint(n)
	case reflect.Float64:
		f, p := strictjson.ParseFloat(raw)
		if p != "" {
			return fail(path, p)
		}
		v.SetFloat(f)
	case reflect.Pointer:
		e := reflect.New(t.Elem())
		if err := value(raw, e.Elem(), path); err != nil {
			return err
		}
		v.Set(e)
	case reflect.Struct:
		if raw[0] != '{' {
			return fail(path, strictjson.ProblemNotObject)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return fail(path, strictjson.ProblemNotObject)
		}
		return object(m, v, path)
	case reflect.Slice:
		if raw[0] != '[' {
			return fail(path, strictjson.ProblemNotArray)
		}
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return fail(path, strictjson.ProblemNotArray)
		}
		s := reflect.MakeSlice(t, len(elems), len(elems))
		for i, e := range elems {
			ipath := indexPath(path, i)
			if isNull(e) {
				return fail(ipath, strictjson.ProblemNull)
			}
			if err := value(e, s.Index(i), ipath); err != nil {
				return err
			}
		}
		v.Set(s)
	case reflect.Map:
		if raw[0] != '{' {
			return fail(path, strictjson.ProblemNotObject)
		}
		if t.Key().Kind() != reflect.String {
			return fmt.Errorf("strictjsontest: unsupported map key type %v", t)
		}
		if t.Elem().Kind() == reflect.Interface {
			return freeForm(raw, v, path)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return fail(path, strictjson.ProblemNotObject)
		}
		mv := reflect.MakeMapWithSize(t, len(m))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			e := m[k]
			kpath := joinPath(path, k)
			if isNull(e) {
				return fail(kpath, strictjson.ProblemNull)
			}
			ev := reflect.New(t.Elem()).Elem()
			if err := value(e, ev, kpath); err != nil {
				return err
			}
			mv.SetMapIndex(reflect.ValueOf(k).Convert(t.Key()), ev)
		}
		v.Set(mv)
	default:
		return fmt.Errorf("strictjsontest: unsupported field type %v", t)
	}
	return nil
}

// freeForm decodes raw, a JSON object, into v, a map[string]any, with
// encoding/json.
func freeForm(raw []byte, v reflect.Value, path string) error {
	if !utf8.Valid(raw) {
		return fail(path, strictjson.ProblemBadUTF8)
	}
	mp := reflect.New(v.Type())
	if err := json.Unmarshal(raw, mp.Interface()); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && strings.HasPrefix(te.Value, "number") {
			return fail(path, "holds a number that is "+strictjson.ProblemNotFinite)
		}
		return fail(path, strictjson.ProblemNotObject)
	}
	v.Set(mp.Elem())
	return nil
}
