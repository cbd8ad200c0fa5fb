package strictjson

import (
	"encoding/json"
	"errors"
	"maps"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Decode reads a document in one pass with the Scanner, following the plan
// (codec) of the target's type, and sets the fields through reflection as it
// goes: no intermediate maps, no second decode, and paths built only for
// errors.

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

// valueError turns p into its error, with the path written as
// ValueError.Path documents.
func (p *problem) valueError() *ValueError {
	path := ""
	for i := len(p.where) - 1; i >= 0; i-- {
		switch step := p.where[i]; {
		case step.index >= 0:
			path += "[" + strconv.Itoa(step.index) + "]"
		case path == "":
			path = step.name
		default:
			path += "." + step.name
		}
	}
	return &ValueError{Path: path, Problem: p.what}
}

// decoder holds the state of one Decode call.
//
// Its methods decode one JSON value into a reflect.Value holding its type's
// zero value. They return a problem when the value breaks a rule, having
// stepped over all of the value so that the scan goes on, or an error when
// the input is not valid JSON, which ends the scan. depth is the nesting
// depth of the array or object holding the value (0 for the document).
type decoder struct {
	Scanner
	scratch []byte // unescaped strings
}

// mismatch steps over a value of the wrong JSON type and reports what.
func (d *decoder) mismatch(what string, depth int) (*problem, error) {
	if _, err := d.Value(depth); err != nil {
		return nil, err
	}
	return newProblem(what), nil
}

// null consumes the next value when it is null, and then returns a problem
// unless nullOK.
func (d *decoder) null(nullOK bool) (isNull bool, p *problem, err error) {
	if d.Peek() != 'n' {
		return false, nil, nil
	}
	if err := d.literal("null"); err != nil {
		return true, nil, err
	}
	if !nullOK {
		p = newProblem(ProblemNull)
	}
	return true, p, nil
}

// message decodes the whole input, which must be one JSON object.
func (d *decoder) message(c *codec, v reflect.Value) (*problem, error) {
	var p *problem
	var err error
	if d.Peek() == '{' {
		p, err = d.object(c, v, 0)
	} else {
		_, err = d.Value(0)
		p = newProblem(ProblemNotJSONObject)
	}
	if err == nil {
		err = d.End()
	}
	return p, err
}

// decode decodes a non-null value of any kind.
func (d *decoder) decode(c *codec, v reflect.Value, depth int) (*problem, error) {
	next := d.Peek()
	switch c.kind {
	case cStruct:
		if next != '{' {
			return d.mismatch(ProblemNotObject, depth)
		}
		return d.object(c, v, depth)
	case cSlice:
		if next != '[' {
			return d.mismatch(ProblemNotArray, depth)
		}
		return d.array(c, v, depth)
	case cMap:
		if next != '{' {
			return d.mismatch(ProblemNotObject, depth)
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
			return d.mismatch(ProblemNotString, depth)
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
		return d.mismatch(ProblemNotBool, depth)
	case cFreeForm:
		if next != '{' {
			return d.mismatch(ProblemNotObject, depth)
		}
	}
	// The other kinds are judged on the value's whole text.
	raw, _, err := d.Raw(depth)
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
	if fl&NonASCII != 0 && !utf8.Valid(s) {
		return newProblem(ProblemBadUTF8), nil
	}
	if fl&Escaped != 0 {
		d.scratch = Unescape(d.scratch[:0], s)
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
		n, what := ParseUint(raw, math.MaxInt64)
		if what == "" && v.OverflowInt(int64(n)) {
			what = ProblemOutOfRange
		}
		if what == "" {
			v.SetInt(int64(n))
		}
		return what
	case cUint:
		n, what := ParseUint(raw, math.MaxUint64)
		if what == "" {
			v.SetUint(n)
		}
		return what
	case cFloat:
		f, what := ParseFloat(raw)
		if what == "" {
			v.SetFloat(f)
		}
		return what
	case cTime:
		if raw[0] != '"' {
			return ProblemNotString
		}
		t := v.Addr().Interface().(*time.Time)
		if err := t.UnmarshalJSON(raw); err != nil {
			return ProblemNotTime
		}
		*t = t.UTC()
		return ""
	default: // cFreeForm: decode only calls scalar for the kinds above and this one
		return freeForm(raw, v)
	}
}

// freeForm decodes raw, a JSON object, into v, a map[string]any, with
// encoding/json.
func freeForm(raw []byte, v reflect.Value) string {
	if !utf8.Valid(raw) {
		return ProblemBadUTF8
	}
	mp := reflect.New(v.Type())
	if err := json.Unmarshal(raw, mp.Interface()); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && strings.HasPrefix(te.Value, "number") {
			return "holds a number that is " + ProblemNotFinite
		}
		return ProblemNotObject
	}
	v.Set(mp.Elem())
	return ""
}

// key reads an object key and the colon after it, and returns the key
// unescaped (into the scratch buffer when needed) as encoding/json would:
// invalid UTF-8 becomes U+FFFD.
func (d *decoder) key() ([]byte, error) {
	key, fl, err := d.Key()
	if err != nil || fl == 0 {
		return key, err
	}
	d.scratch = Unescape(d.scratch[:0], key)
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
			_, err = d.Value(depth)
		} else {
			want = f + 1
			fc := &c.fields[f]
			fv := v.Field(fc.Index)
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
			more, err = d.Next('}')
		}
	}
	if err != nil {
		return nil, err
	}
	for f := range c.fields {
		fc := &c.fields[f]
		if problems != nil && problems[f] != nil {
			return problems[f].in(fc.Name, -1), nil
		}
		if seen&(1<<f) == 0 && fc.Required {
			return newProblem(ProblemMissing).in(fc.Name, -1), nil
		}
	}
	return nil, nil
}

// field returns the index of the field named key, or -1; the field at want
// is tried first.
func (c *codec) field(key []byte, want int) int {
	if want < len(c.fields) && string(key) == c.fields[want].Name {
		return want
	}
	for i := range c.fields {
		if string(key) == c.fields[i].Name {
			return i
		}
	}
	return -1
}

// field decodes the value of a struct field, which may be null.
func (d *decoder) field(fc *fieldCodec, v reflect.Value, depth int) (*problem, error) {
	if isNull, p, err := d.null(fc.nullable || !fc.Required); isNull {
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
	more := d.Peek() != ']'
	if !more {
		d.i++
		v.Set(reflect.MakeSlice(c.typ, 0, 0))
	}
	for i := 0; more; i++ {
		var p *problem
		var err error
		if first != nil {
			_, err = d.Value(depth)
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
			more, err = d.Next(']')
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
			more, err = d.Next('}')
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
