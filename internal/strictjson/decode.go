package strictjson

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ValueError reports a value that breaks one of Decode's rules.
type ValueError struct {
	// Path leads from the top-level object to the value: member names
	// joined by dots, array indices in brackets, e.g. "ram.used_mib" or
	// "tasks[2].pid"; "" for the top-level value itself.
	Path string
	// Problem is what is wrong: one of the Problem constants, or, for a
	// free-form object holding a number too large for a float64, "holds a
	// number that is not finite".
	Problem string
}

// Error formats the error as `strictjson: field "ram.used_mib": negative`.
func (e *ValueError) Error() string {
	if e.Path == "" {
		return "strictjson: " + e.Problem
	}
	return "strictjson: field " + strconv.Quote(e.Path) + ": " + e.Problem
}

// Decode decodes data, one JSON object, into the struct v points to, under
// the rules of the package documentation. It first sets *v to its zero
// value; after an error, *v holds whatever was decoded so far.
//
// It returns a *SyntaxError when data is not valid JSON (worded as
// encoding/json words it), a *ValueError for the first value that breaks a
// rule, and another error when v is not a non-nil pointer to a struct or the
// struct has a field type Decode does not support (see Check).
func Decode(data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("strictjson: decode into %T: not a non-nil pointer to a struct", v)
	}
	c, err := codecFor(rv.Type().Elem())
	if err != nil {
		return err
	}
	target := rv.Elem()
	target.SetZero()
	d := decoder{Scanner: Scanner{b: data}}
	p, err := d.message(c, target)
	if err != nil {
		return jsonSyntaxError(data, err)
	}
	if p != nil {
		return p.valueError()
	}
	return nil
}

// Check reports whether Decode can decode into a pointer to t: it returns
// nil, or the error Decode would return for any input. t must be a struct
// type whose json-tagged fields have supported types (see the package
// documentation), recursively, and at most 64 json-tagged fields per struct.
func Check(t reflect.Type) error {
	_, err := codecFor(t)
	return err
}

// Field is a json-tagged field of a struct, as Decode reads it.
type Field struct {
	Name     string // the member name: the json tag's name, or the Go name
	Index    int    // the field's index in the struct, for reflect.Value.Field
	Required bool   // the json tag has no omitempty
}

// Fields lists the fields of struct type t that Decode reads, in
// declaration order.
func Fields(t reflect.Type) []Field {
	if t.Kind() != reflect.Struct {
		return nil
	}
	return slices.Clone(structFields(t))
}

// structFields lists t's json-tagged fields in declaration order.
func structFields(t reflect.Type) []Field {
	var fs []Field
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
		fs = append(fs, Field{Name: name, Index: i, Required: !hasOpt(opts, "omitempty")})
	}
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

// jsonSyntaxError reports data, which is not valid JSON, the way
// encoding/json words it (the offset and text of its *json.SyntaxError); the
// scanner's own error scanErr is the fallback.
func jsonSyntaxError(data []byte, scanErr error) error {
	var se *json.SyntaxError
	if errors.As(json.Unmarshal(data, new(json.RawMessage)), &se) {
		return &SyntaxError{Offset: se.Offset, Msg: se.Error()}
	}
	return scanErr
}

// codecKind says how a Go type is decoded.
type codecKind uint8

const (
	cString   codecKind = iota
	cBool               // true or false
	cInt                // int, int64: a non-negative integer within range
	cUint               // uint64: a non-negative integer within range
	cFloat              // float64: a finite number
	cTime               // time.Time: an RFC 3339 string
	cPointer            // a pointer to a non-null value of its element
	cStruct             // a JSON object with the struct's json-tagged fields
	cSlice              // a JSON array with no null elements
	cMap                // map[string]T: a JSON object with no null members
	cFreeForm           // map[string]any (args, metrics), decoded by encoding/json
)

// codec is the decoding plan of one Go type.
type codec struct {
	kind   codecKind
	typ    reflect.Type
	elem   *codec       // cPointer, cSlice and cMap: the element's plan
	fields []fieldCodec // cStruct, in declaration order
}

// fieldCodec is the plan of one struct field.
type fieldCodec struct {
	Field
	nullable bool // a pointer, slice or map: null is nil, even when required
	codec    *codec
}

// maxFields is the most json-tagged fields a struct may have: the decoder
// keeps the fields it has seen in a bit set.
const maxFields = 64

var timeType = reflect.TypeFor[time.Time]()

// codecs caches, per top-level type, its plan (a *codec) or the error that
// prevented building it.
var codecs sync.Map // reflect.Type -> *codec or error

// codecFor returns the decoding plan of t, a struct type, building it on
// first use.
func codecFor(t reflect.Type) (*codec, error) {
	v, ok := codecs.Load(t)
	if !ok {
		v, _ = codecs.LoadOrStore(t, newCodec(t))
	}
	if c, ok := v.(*codec); ok {
		return c, nil
	}
	return nil, v.(error)
}

// newCodec builds the plan of t, a struct type, and returns it, or the
// error that prevents it.
func newCodec(t reflect.Type) any {
	if t.Kind() != reflect.Struct || t == timeType {
		return fmt.Errorf("strictjson: cannot decode into %v: not a struct", t)
	}
	c, err := buildCodec(t, map[reflect.Type]*codec{})
	if err != nil {
		return fmt.Errorf("strictjson: cannot decode into %v: %w", t, err)
	}
	return c
}

// buildCodec builds the plan of t; building holds the plans under
// construction, so that a recursive type refers to its own plan. It returns
// an error for a type Decode does not support.
func buildCodec(t reflect.Type, building map[reflect.Type]*codec) (*codec, error) {
	if c, ok := building[t]; ok {
		return c, nil
	}
	c := &codec{typ: t}
	building[t] = c
	var err error
	switch k := t.Kind(); {
	case t == timeType:
		c.kind = cTime
	case k == reflect.String:
		c.kind = cString
	case k == reflect.Bool:
		c.kind = cBool
	case k == reflect.Int || k == reflect.Int64:
		c.kind = cInt
	case k == reflect.Uint64:
		c.kind = cUint
	case k == reflect.Float64:
		c.kind = cFloat
	case k == reflect.Pointer:
		c.kind = cPointer
		c.elem, err = buildCodec(t.Elem(), building)
	case k == reflect.Slice:
		c.kind = cSlice
		c.elem, err = buildCodec(t.Elem(), building)
	case k == reflect.Map && t.Key().Kind() == reflect.String &&
		t.Elem().Kind() == reflect.Interface && t.Elem().NumMethod() == 0:
		c.kind = cFreeForm
	case k == reflect.Map && t.Key().Kind() == reflect.String:
		c.kind = cMap
		c.elem, err = buildCodec(t.Elem(), building)
	case k == reflect.Struct:
		c.kind = cStruct
		err = buildFields(c, building)
	default:
		return nil, fmt.Errorf("unsupported type %v", t)
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// buildFields builds the plans of the fields of c, a struct's plan.
func buildFields(c *codec, building map[reflect.Type]*codec) error {
	fs := structFields(c.typ)
	if len(fs) > maxFields {
		return fmt.Errorf("%v has %d json-tagged fields, over the limit of %d", c.typ, len(fs), maxFields)
	}
	for _, f := range fs {
		ft := c.typ.Field(f.Index).Type
		fc, err := buildCodec(ft, building)
		if err != nil {
			return fmt.Errorf("field %s.%s: %w", c.typ, f.Name, err)
		}
		fk := ft.Kind()
		c.fields = append(c.fields, fieldCodec{
			Field:    f,
			nullable: fk == reflect.Pointer || fk == reflect.Slice || fk == reflect.Map,
			codec:    fc,
		})
	}
	return nil
}
