package schemas

// A small JSON Schema (draft 2020-12) validator, for tests only. It supports
// the keywords the schema files use and fails on any other, so a schema
// cannot silently rely on an unchecked keyword.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// decodeJSON decodes b into generic values, with numbers as json.Number.
func decodeJSON(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

type jsonSchema struct {
	root map[string]any
}

func newJSONSchema(b []byte) (*jsonSchema, error) {
	v, err := decodeJSON(b)
	if err != nil {
		return nil, err
	}
	root, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("schema is not an object")
	}
	return &jsonSchema{root: root}, nil
}

// Validate checks inst (a value from decodeJSON) against the root schema.
func (s *jsonSchema) Validate(inst any) error {
	return s.validate(s.root, inst, "$")
}

// resolve follows a local $ref ("#/$defs/name" or any "#/..." pointer).
func (s *jsonSchema) resolve(ref string) (map[string]any, error) {
	p, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, fmt.Errorf("unsupported $ref %q", ref)
	}
	var cur any = s.root
	for _, part := range strings.Split(p, "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("$ref %q: not an object at %q", ref, part)
		}
		if cur, ok = m[part]; !ok {
			return nil, fmt.Errorf("$ref %q: no %q", ref, part)
		}
	}
	m, ok := cur.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("$ref %q: not a schema", ref)
	}
	return m, nil
}

var annotationKeywords = []string{"$schema", "$id", "title", "description", "$comment", "$defs", "examples"}

func rat(v any) (*big.Rat, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return nil, false
	}
	r, ok := new(big.Rat).SetString(string(n))
	return r, ok
}

func jsonType(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case json.Number:
		if r, ok := rat(x); ok && r.IsInt() {
			return "integer"
		}
		return "number"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("unknown(%T)", v)
}

func typeMatches(want string, v any) bool {
	got := jsonType(v)
	return got == want || (want == "number" && got == "integer")
}

// jsonEqual compares two generic JSON values, numbers by value.
func jsonEqual(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		ra, ok1 := rat(x)
		rb, ok2 := rat(b)
		return ok1 && ok2 && ra.Cmp(rb) == 0
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !jsonEqual(v, w) {
				return false
			}
		}
		return true
	default:
		return a == b
	}
}

func (s *jsonSchema) validate(sch map[string]any, inst any, path string) error {
	for kw, arg := range sch {
		if slices.Contains(annotationKeywords, kw) {
			continue
		}
		if err := s.keyword(sch, kw, arg, inst, path); err != nil {
			return err
		}
	}
	return nil
}

func (s *jsonSchema) sub(arg any, inst any, path string) error {
	switch a := arg.(type) {
	case bool:
		if !a {
			return fmt.Errorf("%s: false schema", path)
		}
		return nil
	case map[string]any:
		return s.validate(a, inst, path)
	}
	return fmt.Errorf("%s: bad subschema %T", path, arg)
}

func (s *jsonSchema) keyword(sch map[string]any, kw string, arg, inst any, path string) error {
	switch kw {
	case "$ref":
		target, err := s.resolve(arg.(string))
		if err != nil {
			return err
		}
		return s.validate(target, inst, path)
	case "type":
		var types []string
		switch a := arg.(type) {
		case string:
			types = []string{a}
		case []any:
			for _, t := range a {
				types = append(types, t.(string))
			}
		}
		for _, t := range types {
			if typeMatches(t, inst) {
				return nil
			}
		}
		return fmt.Errorf("%s: type %s, want %v", path, jsonType(inst), types)
	case "enum":
		for _, e := range arg.([]any) {
			if jsonEqual(e, inst) {
				return nil
			}
		}
		return fmt.Errorf("%s: %v not in enum", path, inst)
	case "const":
		if !jsonEqual(arg, inst) {
			return fmt.Errorf("%s: %v is not the const %v", path, inst, arg)
		}
	case "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum":
		v, ok := rat(inst)
		if !ok {
			return nil
		}
		limit, ok := rat(arg)
		if !ok {
			return fmt.Errorf("%s: bad %s", path, kw)
		}
		c := v.Cmp(limit)
		bad := (kw == "minimum" && c < 0) || (kw == "maximum" && c > 0) ||
			(kw == "exclusiveMinimum" && c <= 0) || (kw == "exclusiveMaximum" && c >= 0)
		if bad {
			return fmt.Errorf("%s: %v breaks %s %v", path, inst, kw, arg)
		}
	case "minLength", "maxLength":
		str, ok := inst.(string)
		if !ok {
			return nil
		}
		n, _ := arg.(json.Number).Int64()
		l := int64(utf8.RuneCountInString(str))
		if (kw == "minLength" && l < n) || (kw == "maxLength" && l > n) {
			return fmt.Errorf("%s: length %d breaks %s %d", path, l, kw, n)
		}
	case "minItems", "maxItems":
		arr, ok := inst.([]any)
		if !ok {
			return nil
		}
		n, _ := arg.(json.Number).Int64()
		l := int64(len(arr))
		if (kw == "minItems" && l < n) || (kw == "maxItems" && l > n) {
			return fmt.Errorf("%s: %d items breaks %s %d", path, l, kw, n)
		}
	case "items":
		arr, ok := inst.([]any)
		if !ok {
			return nil
		}
		for i, e := range arr {
			if err := s.sub(arg, e, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case "required":
		obj, ok := inst.(map[string]any)
		if !ok {
			return nil
		}
		for _, r := range arg.([]any) {
			if _, ok := obj[r.(string)]; !ok {
				return fmt.Errorf("%s: missing %q", path, r)
			}
		}
	case "properties":
		obj, ok := inst.(map[string]any)
		if !ok {
			return nil
		}
		for name, ps := range arg.(map[string]any) {
			if v, ok := obj[name]; ok {
				if err := s.sub(ps, v, path+"."+name); err != nil {
					return err
				}
			}
		}
	case "additionalProperties":
		obj, ok := inst.(map[string]any)
		if !ok {
			return nil
		}
		props, _ := sch["properties"].(map[string]any)
		for name, v := range obj {
			if _, known := props[name]; known {
				continue
			}
			if err := s.sub(arg, v, path+"."+name); err != nil {
				return err
			}
		}
	case "allOf", "anyOf", "oneOf":
		n := 0
		var first error
		for _, b := range arg.([]any) {
			if err := s.sub(b, inst, path); err != nil {
				if first == nil {
					first = err
				}
				continue
			}
			n++
		}
		branches := len(arg.([]any))
		switch {
		case kw == "allOf" && n != branches:
			return first
		case kw == "anyOf" && n == 0:
			return fmt.Errorf("%s: no anyOf branch matches: %v", path, first)
		case kw == "oneOf" && n != 1:
			return fmt.Errorf("%s: %d oneOf branches match (first failure: %v)", path, n, first)
		}
	case "not":
		if s.sub(arg, inst, path) == nil {
			return fmt.Errorf("%s: matches a \"not\" schema", path)
		}
	case "if":
		branch := "else"
		if s.sub(arg, inst, path) == nil {
			branch = "then"
		}
		if b, ok := sch[branch]; ok {
			return s.sub(b, inst, path)
		}
	case "then", "else":
		// handled by "if"
	case "format":
		str, ok := inst.(string)
		if !ok {
			return nil
		}
		if arg != "date-time" {
			return fmt.Errorf("%s: unsupported format %v", path, arg)
		}
		if _, err := time.Parse(time.RFC3339Nano, str); err != nil {
			return fmt.Errorf("%s: not a date-time: %v", path, err)
		}
	default:
		return fmt.Errorf("%s: unsupported keyword %q", path, kw)
	}
	return nil
}
