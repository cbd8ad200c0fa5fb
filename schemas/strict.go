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

// The strict decoder shared by every message type (see decodeMessage for its
// rules). It reads a message in one pass with the scanner of scan.go,
// following a decoding plan (a codec) built once per Go type, and sets the
// fields through reflection as it goes: no intermediate maps, no second
// decode, and field paths built only for errors.
//
// The order in which problems are reported is fixed, whatever the order of
// the input: a syntax error anywhere comes first (the whole input is always
// scanned); then, for a struct, its fields in declaration order, each field
// being either missing, null where null is not allowed, or the first problem
// inside its value (array elements by index, map entries by key). Of
// duplicate keys the last one counts, problems included.

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
	fieldInfo
	nullable bool // a pointer, slice or map: null is nil, even when required
	codec    *codec
}

// maxFields is the most json-tagged fields a struct may have: the decoder
// keeps the fields it has seen in a bit set.
const maxFields = 64

var codecs sync.Map // reflect.Type -> *codec

// codecFor returns the decoding plan of t, building it on first use.
func codecFor(t reflect.Type) *codec {
	if c, ok := codecs.Load(t); ok {
		return c.(*codec)
	}
	c, _ := codecs.LoadOrStore(t, buildCodec(t, map[reflect.Type]*codec{}))
	return c.(*codec)
}

// buildCodec builds the plan of t; building holds the plans under
// construction, so that a recursive type refers to its own plan. It panics on
// a type the wire format does not use.
func buildCodec(t reflect.Type, building map[reflect.Type]*codec) *codec {
	if c, ok := building[t]; ok {
		return c
	}
	c := &codec{typ: t}
	building[t] = c
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
		c.kind, c.elem = cPointer, buildCodec(t.Elem(), building)
	case k == reflect.Slice:
		c.kind, c.elem = cSlice, buildCodec(t.Elem(), building)
	case k == reflect.Map && t.Key().Kind() == reflect.String && t.Elem().Kind() == reflect.Interface:
		c.kind = cFreeForm
	case k == reflect.Map && t.Key().Kind() == reflect.String:
		c.kind, c.elem = cMap, buildCodec(t.Elem(), building)
	case k == reflect.Struct:
		c.kind = cStruct
		fs := structFields(t)
		if len(fs) > maxFields {
			panic("schemas: too many fields in " + t.String())
		}
		for _, f := range fs {
			ft := t.Field(f.index).Type
			fk := ft.Kind()
			c.fields = append(c.fields, fieldCodec{
				fieldInfo: f,
				nullable:  fk == reflect.Pointer || fk == reflect.Slice || fk == reflect.Map,
				codec:     buildCodec(ft, building),
			})
		}
	default:
		panic("schemas: unsupported field type " + t.String())
	}
	return c
}

// decodeStrict decodes b, a message called name of at most limit bytes, into
// v (a zero value of a message type) with the strict rules.
func decodeStrict(b []byte, name string, limit int, v reflect.Value) error {
	if len(b) > limit {
		return tooLarge(name, len(b), limit)
	}
	d := decoder{scanner: scanner{b: b, msg: name}}
	p, err := d.message(codecFor(v.Type()), v)
	if err != nil {
		return jsonSyntaxError(name, b, err)
	}
	if p != nil {
		return p.fieldError(name)
	}
	return nil
}

// jsonSyntaxError reports b, which is not valid JSON, the way encoding/json
// words it (the offset and text of its *json.SyntaxError); the scanner's own
// error scanErr is the fallback.
func jsonSyntaxError(name string, b []byte, scanErr error) error {
	var se *json.SyntaxError
	if errors.As(json.Unmarshal(b, new(json.RawMessage)), &se) {
		return fieldErr(name, "", fmt.Sprintf("invalid JSON at offset %d: %v", se.Offset, se))
	}
	return scanErr
}

// problem is a rule broken somewhere inside the value being decoded: what is
// wrong, and where, as the path from that value down to the offending one,
// kept leaf first while the problem travels up. Only problems build paths.
type problem struct {
	what  string
	where []pathStep
}

// pathStep is a member name, or an array index when index >= 0.
type pathStep struct {
	name  string
	index int
}

func newProblem(what string) *problem { return &problem{what: what} }

// in adds the step of the path that leads to the value holding p.
func (p *problem) in(name string, index int) *problem {
	p.where = append(p.where, pathStep{name: name, index: index})
	return p
}

// fieldError turns p, a problem of message msg, into its error, with the
// path written as joinPath and indexPath write it.
func (p *problem) fieldError(msg string) *FieldError {
	path := ""
	for i := len(p.where) - 1; i >= 0; i-- {
		if step := p.where[i]; step.index >= 0 {
			path = indexPath(path, step.index)
		} else {
			path = joinPath(path, step.name)
		}
	}
	return fieldErr(msg, path, p.what)
}

// decoder holds the state of one decodeStrict call.
//
// Its methods decode one JSON value into a reflect.Value holding its type's
// zero value. They return a problem when the value breaks a rule, having
// stepped over all of the value so that the scan goes on, or an error when
// the input is not valid JSON, which ends the scan. depth is the nesting
// depth of the array or object holding the value (0 for the message).
type decoder struct {
	scanner
	scratch []byte // unescaped strings
}

// peek returns the next byte after whitespace, or 0 at the end of the input.
func (d *decoder) peek() byte {
	d.ws()
	if d.i >= len(d.b) {
		return 0
	}
	return d.b[d.i]
}

// mismatch steps over a value of the wrong JSON type and reports what.
func (d *decoder) mismatch(what string, depth int) (*problem, error) {
	if _, err := d.value(depth); err != nil {
		return nil, err
	}
	return newProblem(what), nil
}

// null consumes the next value when it is null, and then returns a problem
// unless nullOK.
func (d *decoder) null(nullOK bool) (isNull bool, p *problem, err error) {
	if d.peek() != 'n' {
		return false, nil, nil
	}
	if err := d.literal("null"); err != nil {
		return true, nil, err
	}
	if !nullOK {
		p = newProblem(probNull)
	}
	return true, p, nil
}

// message decodes the whole input, which must be one JSON object.
func (d *decoder) message(c *codec, v reflect.Value) (*problem, error) {
	var p *problem
	var err error
	if d.peek() == '{' {
		p, err = d.object(c, v, 0)
	} else {
		_, err = d.value(0)
		p = newProblem("not a JSON object")
	}
	if err == nil {
		err = d.end()
	}
	return p, err
}

// decode decodes a non-null value of any kind.
func (d *decoder) decode(c *codec, v reflect.Value, depth int) (*problem, error) {
	next := d.peek()
	switch c.kind {
	case cStruct:
		if next != '{' {
			return d.mismatch(probNotObject, depth)
		}
		return d.object(c, v, depth)
	case cSlice:
		if next != '[' {
			return d.mismatch(probNotArray, depth)
		}
		return d.array(c, v, depth)
	case cMap:
		if next != '{' {
			return d.mismatch(probNotObject, depth)
		}
		return d.stringMap(c, v, depth)
	case cPointer:
		e := reflect.New(c.elem.typ)
		p, err := d.decode(c.elem, e.Elem(), depth)
		if p == nil && err == nil {
			v.Set(e)
		}
		return p, err
	case cString:
		if next != '"' {
			return d.mismatch(probNotString, depth)
		}
		return d.decodeString(v)
	case cBool:
		switch next {
		case 't':
			v.SetBool(true)
			return nil, d.literal("true")
		case 'f':
			return nil, d.literal("false")
		}
		return d.mismatch(probNotBool, depth)
	case cFreeForm:
		if next != '{' {
			return d.mismatch(probNotObject, depth)
		}
	}
	// The other kinds are judged on the value's whole text.
	raw, _, err := d.raw(depth)
	if err != nil {
		return nil, err
	}
	if what := scalar(c.kind, raw, v); what != "" {
		return newProblem(what), nil
	}
	return nil, nil
}

// decodeString decodes a JSON string (at its opening quote) into v.
func (d *decoder) decodeString(v reflect.Value) (*problem, error) {
	start := d.i
	fl, err := d.str()
	if err != nil {
		return nil, err
	}
	s := d.b[start+1 : d.i-1]
	if fl&flHigh != 0 && !utf8.Valid(s) {
		return newProblem(probBadUTF8), nil
	}
	if fl&flEscape != 0 {
		d.scratch = unescape(d.scratch[:0], s)
		s = d.scratch
	}
	v.SetString(string(s))
	return nil, nil
}

// scalar decodes raw, the text of a whole JSON value, into v, a number, a
// time or a free-form object, and returns what is wrong with it or "".
func scalar(kind codecKind, raw []byte, v reflect.Value) string {
	switch kind {
	case cInt:
		n, what := uintValue(raw, math.MaxInt64)
		if what == "" && v.OverflowInt(int64(n)) {
			what = probOutOfRange
		}
		if what == "" {
			v.SetInt(int64(n))
		}
		return what
	case cUint:
		n, what := uintValue(raw, math.MaxUint64)
		if what == "" {
			v.SetUint(n)
		}
		return what
	case cFloat:
		f, what := floatValue(raw)
		if what == "" {
			v.SetFloat(f)
		}
		return what
	case cTime:
		if raw[0] != '"' {
			return probNotString
		}
		t := v.Addr().Interface().(*time.Time)
		if err := t.UnmarshalJSON(raw); err != nil {
			return probNotTime
		}
		*t = t.UTC()
		return ""
	case cFreeForm:
		return freeForm(raw, v)
	}
	panic("schemas: not a scalar kind")
}

// freeForm decodes raw, a JSON object, into v, a map[string]any, with
// encoding/json.
func freeForm(raw []byte, v reflect.Value) string {
	if !utf8.Valid(raw) {
		return probBadUTF8
	}
	mp := reflect.New(v.Type())
	if err := json.Unmarshal(raw, mp.Interface()); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && strings.HasPrefix(te.Value, "number") {
			return "holds a number that is " + probNotFinite
		}
		return probNotObject
	}
	v.Set(mp.Elem())
	return ""
}

// key reads an object key and the colon after it, and returns the key
// unescaped (into the scratch buffer when needed) as encoding/json would:
// invalid UTF-8 becomes U+FFFD.
func (d *decoder) key() ([]byte, error) {
	key, fl, err := d.scanner.key()
	if err != nil || fl == 0 {
		return key, err
	}
	d.scratch = unescape(d.scratch[:0], key)
	return d.scratch, nil
}

// object decodes a JSON object (at its '{') into v, a struct.
func (d *decoder) object(c *codec, v reflect.Value, depth int) (*problem, error) {
	var seen uint64         // the fields present
	var problems []*problem // per field; allocated at the first problem
	depth++
	want := 0 // the field expected next: keys usually come in declaration order
	more, err := d.openObject()
	for more && err == nil {
		var key []byte
		if key, err = d.key(); err != nil {
			break
		}
		f := c.field(key, want)
		if f < 0 {
			_, err = d.value(depth)
		} else {
			want = f + 1
			fc := &c.fields[f]
			fv := v.Field(fc.index)
			if seen&(1<<f) != 0 {
				fv.SetZero() // a duplicate key: start over
			}
			seen |= 1 << f
			var p *problem
			p, err = d.field(fc, fv, depth)
			if p != nil && problems == nil {
				problems = make([]*problem, len(c.fields))
			}
			if problems != nil {
				problems[f] = p
			}
		}
		if err == nil {
			more, err = d.next('}')
		}
	}
	if err != nil {
		return nil, err
	}
	for f := range c.fields {
		fc := &c.fields[f]
		if problems != nil && problems[f] != nil {
			return problems[f].in(fc.name, -1), nil
		}
		if seen&(1<<f) == 0 && fc.required {
			return newProblem(probMissing).in(fc.name, -1), nil
		}
	}
	return nil, nil
}

// field returns the index of the field named key, or -1; the field at want
// is tried first.
func (c *codec) field(key []byte, want int) int {
	if want < len(c.fields) && string(key) == c.fields[want].name {
		return want
	}
	for i := range c.fields {
		if string(key) == c.fields[i].name {
			return i
		}
	}
	return -1
}

// field decodes the value of a struct field, which may be null.
func (d *decoder) field(fc *fieldCodec, v reflect.Value, depth int) (*problem, error) {
	if isNull, p, err := d.null(fc.nullable || !fc.required); isNull {
		return p, err // v stays zero
	}
	return d.decode(fc.codec, v, depth)
}

// array decodes a JSON array (at its '[') into v, a nil slice, in place. An
// empty array gives an empty, non-nil slice.
func (d *decoder) array(c *codec, v reflect.Value, depth int) (*problem, error) {
	depth++
	d.i++
	var first *problem // only the first problem is reported
	more := d.peek() != ']'
	if !more {
		d.i++
		v.Set(reflect.MakeSlice(c.typ, 0, 0))
	}
	for i := 0; more; i++ {
		var p *problem
		var err error
		if first != nil {
			_, err = d.value(depth)
		} else if isNull, np, nerr := d.null(false); isNull {
			p, err = np, nerr
		} else {
			if i == v.Cap() {
				v.Grow(max(i, 4))
			}
			v.SetLen(i + 1)
			p, err = d.decode(c.elem, v.Index(i), depth)
		}
		if p != nil {
			first = p.in("", i)
		}
		if err == nil {
			more, err = d.next(']')
		}
		if err != nil {
			return nil, err
		}
	}
	return first, nil
}

// stringMap decodes a JSON object (at its '{') into v, a map with string
// keys. Its problems are reported in key order.
func (d *decoder) stringMap(c *codec, v reflect.Value, depth int) (*problem, error) {
	depth++
	m := reflect.MakeMap(c.typ)
	var problems map[string]*problem // by key; allocated at the first problem
	more, err := d.openObject()
	for more && err == nil {
		var key []byte
		if key, err = d.key(); err != nil {
			break
		}
		k := string(key)
		var p *problem
		if isNull, np, nerr := d.null(false); isNull {
			p, err = np, nerr
		} else {
			e := reflect.New(c.elem.typ).Elem()
			if p, err = d.decode(c.elem, e, depth); p == nil && err == nil {
				m.SetMapIndex(reflect.ValueOf(k).Convert(c.typ.Key()), e)
			}
		}
		switch {
		case p != nil:
			if problems == nil {
				problems = map[string]*problem{}
			}
			problems[k] = p.in(k, -1)
		case problems != nil:
			delete(problems, k) // a duplicate key: the last one counts
		}
		if err == nil {
			more, err = d.next('}')
		}
	}
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		return problems[slices.Min(slices.Collect(maps.Keys(problems)))], nil
	}
	v.Set(m)
	return nil, nil
}
