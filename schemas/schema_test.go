package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/taskselector/taskselector/internal/strictjson"
)

// msgCase ties a message name to its Go type and strict decoder.
type msgCase struct {
	name   string
	typ    reflect.Type
	decode func([]byte) (Message, error)
}

func dec[T Message](f func([]byte) (T, error)) func([]byte) (Message, error) {
	return func(b []byte) (Message, error) {
		m, err := f(b)
		if err != nil {
			return nil, err
		}
		return m, nil
	}
}

var timeType = reflect.TypeFor[time.Time]()

var allMessages = []msgCase{
	{nameLaunchRequest, reflect.TypeFor[LaunchRequest](), dec(DecodeLaunchRequest)},
	{nameLaunchReply, reflect.TypeFor[LaunchReply](), dec(DecodeLaunchReply)},
	{nameHeartbeat, reflect.TypeFor[Heartbeat](), dec(DecodeHeartbeat)},
	{nameTaskEvent, reflect.TypeFor[TaskEvent](), dec(DecodeTaskEvent)},
	{nameKillRequest, reflect.TypeFor[KillRequest](), dec(DecodeKillRequest)},
	{nameKillReply, reflect.TypeFor[KillReply](), dec(DecodeKillReply)},
	{namePsRequest, reflect.TypeFor[PsRequest](), dec(DecodePsRequest)},
	{namePsReply, reflect.TypeFor[PsReply](), dec(DecodePsReply)},
	{nameHostStatus, reflect.TypeFor[HostStatus](), dec(DecodeHostStatus)},
	{nameTargetSpec, reflect.TypeFor[TargetSpec](), dec(DecodeTargetSpec)},
	{nameTaskState, reflect.TypeFor[TaskState](), dec(DecodeTaskState)},
	{nameSelectorStatus, reflect.TypeFor[SelectorStatus](), dec(DecodeSelectorStatus)},
	{nameAllocRequest, reflect.TypeFor[AllocRequest](), dec(DecodeAllocRequest)},
	{nameAllocReply, reflect.TypeFor[AllocReply](), dec(DecodeAllocReply)},
	{nameHelperRequest, reflect.TypeFor[HelperRequest](), dec(DecodeHelperRequest)},
	{nameHelperReply, reflect.TypeFor[HelperReply](), dec(DecodeHelperReply)},
}

// schemaURL is where a message's schema is registered with the compiler:
// its "$id".
func schemaURL(name string) string {
	return "https://github.com/taskselector/taskselector/schemas/json/" + name + schemaSuffix
}

var (
	schemaMu       sync.Mutex
	compiledSchema = map[string]*jsonschema.Schema{}
)

// loadSchema compiles the schema of a message (once per test binary) with
// github.com/santhosh-tekuri/jsonschema, which checks it against the draft
// 2020-12 meta-schema; "format" is asserted, not just an annotation.
func loadSchema(t testing.TB, name string) *jsonschema.Schema {
	t.Helper()
	schemaMu.Lock()
	defer schemaMu.Unlock()
	if s, ok := compiledSchema[name]; ok {
		return s
	}
	b, ok := Schema(name)
	if !ok {
		t.Fatalf("no schema for %s", name)
	}
	doc, err := decodeJSON(b)
	if err != nil {
		t.Fatalf("schema %s: %v", name, err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource(schemaURL(name), doc); err != nil {
		t.Fatalf("schema %s: %v", name, err)
	}
	s, err := c.Compile(schemaURL(name))
	if err != nil {
		t.Fatalf("schema %s does not compile: %v", name, err)
	}
	compiledSchema[name] = s
	return s
}

// decodeJSON decodes b into generic values, with numbers as json.Number, as
// the schema library expects them.
func decodeJSON(b []byte) (any, error) {
	return jsonschema.UnmarshalJSON(bytes.NewReader(b))
}

// examples returns the encoded examples of a message's schema.
func examples(t testing.TB, name string) [][]byte {
	t.Helper()
	exs := loadSchema(t, name).Examples
	if len(exs) == 0 {
		t.Fatalf("schema %s has no examples", name)
	}
	var out [][]byte
	for _, ex := range exs {
		b, err := json.Marshal(ex)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// sameJSON reports whether a and b, decoded by decodeJSON, are the same JSON
// value (numbers compared by value), as the schema {"const": a} judges it.
func sameJSON(t testing.TB, a, b any) error {
	t.Helper()
	c := jsonschema.NewCompiler()
	if err := c.AddResource("mem://const.json", map[string]any{"const": a}); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("mem://const.json")
	if err != nil {
		t.Fatal(err)
	}
	return s.Validate(b)
}

// looseEqual compares two messages, treating nil and empty slices and maps
// as equal (an omitempty field cannot tell them apart on the wire).
func looseEqual(a, b any) bool {
	return reflect.DeepEqual(emptyToNil(reflect.ValueOf(a)).Interface(), emptyToNil(reflect.ValueOf(b)).Interface())
}

func emptyToNil(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Slice:
		if v.Len() == 0 {
			return reflect.Zero(v.Type())
		}
		out := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := range v.Len() {
			out.Index(i).Set(emptyToNil(v.Index(i)))
		}
		return out
	case reflect.Map:
		if v.Len() == 0 {
			return reflect.Zero(v.Type())
		}
		out := reflect.MakeMapWithSize(v.Type(), v.Len())
		for _, k := range v.MapKeys() {
			out.SetMapIndex(k, emptyToNil(v.MapIndex(k)))
		}
		return out
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		out := reflect.New(v.Type().Elem())
		out.Elem().Set(emptyToNil(v.Elem()))
		return out
	case reflect.Interface:
		if v.IsNil() {
			return v
		}
		e := emptyToNil(v.Elem())
		out := reflect.New(v.Type()).Elem()
		out.Set(e)
		return out
	case reflect.Struct:
		if v.Type() == timeType {
			return v
		}
		out := reflect.New(v.Type()).Elem()
		for i := range v.NumField() {
			if out.Field(i).CanSet() {
				out.Field(i).Set(emptyToNil(v.Field(i)))
			}
		}
		return out
	}
	return v
}

func TestSchemaFilesCoverEveryMessage(t *testing.T) {
	var want []string
	for _, m := range allMessages {
		want = append(want, m.name)
		if got := reflect.Zero(m.typ).Interface().(Message).MessageName(); got != m.name {
			t.Errorf("%v.MessageName() = %q, want %q", m.typ, got, m.name)
		}
	}
	slices.Sort(want)
	if got := SchemaNames(); !slices.Equal(got, want) {
		t.Fatalf("SchemaNames() = %v, want %v", got, want)
	}
	if _, ok := Schema("no_such_message"); ok {
		t.Fatal("Schema found a schema for an unknown message")
	}
}

// TestSchemaExamples validates every example against its schema, decodes it
// with the strict decoder, and round-trips it through Marshal.
func TestSchemaExamples(t *testing.T) {
	for _, m := range allMessages {
		t.Run(m.name, func(t *testing.T) {
			s := loadSchema(t, m.name)
			for i, ex := range examples(t, m.name) {
				inst, _ := decodeJSON(ex)
				if err := s.Validate(inst); err != nil {
					t.Fatalf("example %d does not match its schema: %v", i, err)
				}
				m1, err := m.decode(ex)
				if err != nil {
					t.Fatalf("example %d: decode: %v", i, err)
				}
				if reflect.TypeOf(m1) != m.typ {
					t.Fatalf("decoded %T, want %v", m1, m.typ)
				}
				enc1, err := Marshal(m1)
				if err != nil {
					t.Fatalf("example %d: marshal: %v", i, err)
				}
				encInst, _ := decodeJSON(enc1)
				if err := s.Validate(encInst); err != nil {
					t.Fatalf("example %d: Marshal output does not match the schema: %v\n%s", i, err, enc1)
				}
				m2, err := m.decode(enc1)
				if err != nil {
					t.Fatalf("example %d: decode of %s: %v", i, enc1, err)
				}
				if !looseEqual(m1, m2) {
					t.Fatalf("example %d: round trip changed the message:\n%#v\n%#v", i, m1, m2)
				}
				enc2, _ := Marshal(m2)
				if !bytes.Equal(enc1, enc2) {
					t.Fatalf("example %d: encodings differ:\n%s\n%s", i, enc1, enc2)
				}
				// The example and the re-encoding carry the same JSON.
				if err := sameJSON(t, inst, encInst); err != nil {
					t.Fatalf("example %d: re-encoding differs from the example: %v\n%s\n%s", i, err, ex, enc1)
				}
			}
		})
	}
}

// TestSchemaMatchesGoTypes walks each schema and Go type together: every
// object's properties are exactly the struct's json names, its required list
// exactly the fields without omitempty, and every property's JSON type (and
// nullability) matches the Go field's type.
func TestSchemaMatchesGoTypes(t *testing.T) {
	for _, m := range allMessages {
		t.Run(m.name, func(t *testing.T) {
			s := loadSchema(t, m.name)
			var errs []string
			driftCheck(m.typ, s, m.name, false, &errs)
			for _, e := range errs {
				t.Error(e)
			}
		})
	}
}

// deref follows a schema's $ref, if any.
func deref(s *jsonschema.Schema) *jsonschema.Schema {
	for s.Ref != nil {
		s = s.Ref
	}
	return s
}

// jsonType is the JSON type of v, a value from decodeJSON.
func jsonType(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case json.Number:
		if r, ok := new(big.Rat).SetString(string(x)); ok && r.IsInt() {
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

// nodeTypes lists the JSON types a schema allows: its "type", or else the
// types of its const and enum values.
func nodeTypes(s *jsonschema.Schema) []string {
	if s.Types != nil && !s.Types.IsEmpty() {
		return s.Types.ToStrings()
	}
	var vals []any
	if s.Const != nil {
		vals = append(vals, *s.Const)
	}
	if s.Enum != nil {
		vals = append(vals, s.Enum.Values...)
	}
	var out []string
	for _, v := range vals {
		if t := jsonType(v); !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out
}

func driftCheck(typ reflect.Type, node *jsonschema.Schema, path string, wantNull bool, errs *[]string) {
	fail := func(format string, args ...any) {
		*errs = append(*errs, path+": "+fmt.Sprintf(format, args...))
	}
	node = deref(node)
	nullable := false
	if len(node.AnyOf) > 0 {
		var nonNull []*jsonschema.Schema
		for _, b := range node.AnyOf {
			b = deref(b)
			if slices.Equal(nodeTypes(b), []string{"null"}) {
				nullable = true
				continue
			}
			nonNull = append(nonNull, b)
		}
		if len(nonNull) != 1 {
			if typ.Kind() == reflect.Interface {
				return
			}
			fail("anyOf with %d non-null branches for Go type %v", len(nonNull), typ)
			return
		}
		node = nonNull[0]
	}
	types := nodeTypes(node)
	if slices.Contains(types, "null") {
		nullable = true
		types = slices.DeleteFunc(types, func(s string) bool { return s == "null" })
	}
	if nullable != wantNull {
		fail("schema nullable=%v, Go type %v nullable=%v", nullable, typ, wantNull)
	}
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	want := ""
	switch {
	case typ == timeType:
		want = "string"
		if node.Format == nil || node.Format.Name != "date-time" {
			fail("time without format date-time")
		}
	case typ.Kind() == reflect.Struct:
		want = "object"
	case typ.Kind() == reflect.String:
		want = "string"
	case typ.Kind() == reflect.Bool:
		want = "boolean"
	case typ.Kind() == reflect.Int || typ.Kind() == reflect.Int64 || typ.Kind() == reflect.Uint64:
		want = "integer"
		if node.Const == nil && (node.Minimum == nil || node.Minimum.Sign() < 0) {
			fail("integer without a non-negative minimum")
		}
	case typ.Kind() == reflect.Float64:
		want = "number"
	case typ.Kind() == reflect.Slice:
		want = "array"
	case typ.Kind() == reflect.Map:
		want = "object"
	case typ.Kind() == reflect.Interface:
		return
	default:
		fail("unexpected Go type %v", typ)
		return
	}
	if !slices.Equal(types, []string{want}) {
		fail("schema type %v, Go type %v wants %q", types, typ, want)
	}
	switch {
	case typ == timeType:
	case typ.Kind() == reflect.Struct:
		var names, wantReq []string
		for _, f := range strictjson.Fields(typ) {
			names = append(names, f.Name)
			if f.Required {
				wantReq = append(wantReq, f.Name)
			}
			ps, ok := node.Properties[f.Name]
			if !ok {
				fail("property %q of Go type %v missing from schema", f.Name, typ)
				continue
			}
			if strings.HasSuffix(f.Name, "_mib") {
				mibBound(ps, path+"."+f.Name, fail)
			}
			fk := typ.Field(f.Index).Type.Kind()
			fieldNull := f.Required && (fk == reflect.Pointer || fk == reflect.Slice || fk == reflect.Map)
			driftCheck(typ.Field(f.Index).Type, ps, path+"."+f.Name, fieldNull, errs)
		}
		for p := range node.Properties {
			if !slices.Contains(names, p) {
				fail("schema property %q not in Go type %v", p, typ)
			}
		}
		req := slices.Sorted(slices.Values(node.Required))
		slices.Sort(wantReq)
		if !slices.Equal(req, wantReq) {
			fail("required %v, Go type %v has required (no omitempty) %v", req, typ, wantReq)
		}
	case typ.Kind() == reflect.Slice:
		if node.Items2020 == nil {
			fail("array without items")
			return
		}
		driftCheck(typ.Elem(), node.Items2020, path+"[]", false, errs)
	case typ.Kind() == reflect.Map:
		if typ.Elem().Kind() == reflect.Interface {
			return // free-form object
		}
		ap, ok := node.AdditionalProperties.(*jsonschema.Schema)
		if !ok {
			fail("map without an additionalProperties schema")
			return
		}
		driftCheck(typ.Elem(), ap, path+".*", false, errs)
	}
}

// mibBound checks that the schema of a RAM figure (a property named *_mib)
// caps it at MaxMiB, as the decoders do.
func mibBound(node *jsonschema.Schema, path string, fail func(string, ...any)) {
	node = deref(node)
	if node.Maximum == nil || node.Maximum.Cmp(big.NewRat(MaxMiB, 1)) != 0 {
		fail("RAM figure %s without maximum %d (MaxMiB), has %v", path, int64(MaxMiB), node.Maximum)
	}
}

// jsonPaths lists the paths of every object member in v, depth first,
// except inside free-form "args" objects.
func jsonPaths(v any, prefix []any, out *[][]any) {
	switch x := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range x {
				if !yield(k) {
					return
				}
			}
		}) {
			p := append(slices.Clip(prefix), k)
			*out = append(*out, p)
			if k != "args" {
				jsonPaths(x[k], p, out)
			}
		}
	case []any:
		for i, e := range x {
			jsonPaths(e, append(slices.Clip(prefix), i), out)
		}
	}
}

// mutate returns a copy of the JSON in b with the member at path set to
// value, or deleted when del is true.
func mutate(t testing.TB, b []byte, path []any, value any, del bool) []byte {
	t.Helper()
	root, err := decodeJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	cur := root
	for i, p := range path {
		last := i == len(path)-1
		switch c := cur.(type) {
		case map[string]any:
			k := p.(string)
			if last {
				if del {
					delete(c, k)
				} else {
					c[k] = value
				}
			}
			cur = c[k]
		case []any:
			idx := p.(int)
			if last {
				c[idx] = value
			}
			cur = c[idx]
		}
	}
	out, err := json.Marshal(root)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func pathString(p []any) string {
	var sb strings.Builder
	for i, e := range p {
		switch x := e.(type) {
		case string:
			if i > 0 {
				sb.WriteByte('.')
			}
			sb.WriteString(x)
		case int:
			fmt.Fprintf(&sb, "[%d]", x)
		}
	}
	return sb.String()
}

// TestSchemaAndDecoderAgree mutates every example, field by field, and
// checks that the schema and the Go decoder judge the result alike.
func TestSchemaAndDecoderAgree(t *testing.T) {
	for _, m := range allMessages {
		t.Run(m.name, func(t *testing.T) {
			s := loadSchema(t, m.name)
			verdicts := func(b []byte) (schemaErr, goErr error) {
				inst, err := decodeJSON(b)
				if err != nil {
					t.Fatal(err)
				}
				_, goErr = m.decode(b)
				return s.Validate(inst), goErr
			}
			for i, ex := range examples(t, m.name) {
				var paths [][]any
				inst := mustDecodeJSON(t, ex)
				jsonPaths(inst, nil, &paths)
				for _, p := range paths {
					ps := pathString(p)
					// A time that is not one: both reject (the schema asserts
					// its format).
					if v, ok := valueAt(inst, p).(string); ok {
						if _, err := time.Parse(time.RFC3339Nano, v); err == nil {
							for _, bad := range []string{"2025-02-30T12:00:00Z", "2025-03-01T12:00:00", "2025-03-01 12:00:00Z"} {
								if se, ge := verdicts(mutate(t, ex, p, bad, false)); se == nil || ge == nil {
									t.Errorf("example %d with %s = %q: schema error %v, Go error %v", i, ps, bad, se, ge)
								}
							}
						}
					}
					// Deleting a member: both accept or both reject.
					b := mutate(t, ex, p, nil, true)
					if se, ge := verdicts(b); (se == nil) != (ge == nil) {
						t.Errorf("example %d without %s: schema error %v, Go error %v", i, ps, se, ge)
					}
					// -1 is wrong for every field outside "args".
					b = mutate(t, ex, p, json.Number("-1"), false)
					se, ge := verdicts(b)
					if se == nil || ge == nil {
						t.Errorf("example %d with %s = -1: schema error %v, Go error %v", i, ps, se, ge)
					}
					if fe, ok := ge.(*FieldError); ok && fe.Field != ps && !strings.HasPrefix(ps, fe.Field+".") {
						// The error names the field or its container (the map of a metric).
						if !strings.HasPrefix(ps, "metrics") {
							t.Errorf("example %d with %s = -1: error names %q: %v", i, ps, fe.Field, ge)
						}
					}
					// null: whatever the schema accepts, the decoder accepts too.
					b = mutate(t, ex, p, nil, false)
					if se, ge := verdicts(b); se == nil && ge != nil {
						t.Errorf("example %d with %s = null: schema accepts, Go rejects: %v", i, ps, ge)
					}
				}
				// An unknown version: both reject.
				b := mutate(t, ex, []any{"v"}, json.Number("2"), false)
				if se, ge := verdicts(b); se == nil || ge == nil {
					t.Errorf("example %d with v=2: schema error %v, Go error %v", i, se, ge)
				}
				// An unknown extra field: both accept.
				b = mutate(t, ex, []any{"zz_future"}, map[string]any{"a": []any{json.Number("1"), "x"}}, false)
				if se, ge := verdicts(b); se != nil || ge != nil {
					t.Errorf("example %d with an extra field: schema error %v, Go error %v", i, se, ge)
				}
			}
		})
	}
}

// valueAt returns the value at path in v, a value from decodeJSON.
func valueAt(v any, path []any) any {
	for _, p := range path {
		switch x := v.(type) {
		case map[string]any:
			v = x[p.(string)]
		case []any:
			v = x[p.(int)]
		}
	}
	return v
}

func mustDecodeJSON(t *testing.T, b []byte) any {
	t.Helper()
	v, err := decodeJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestSchemaKeywords checks that the schema files use only keywords of JSON
// Schema draft 2020-12, and only formats the library asserts: the library
// ignores an unknown keyword (a typo such as "minimun" would silently check
// nothing) and an unknown format.
func TestSchemaKeywords(t *testing.T) {
	known := strings.Fields(`$schema $id $ref $anchor $dynamicRef $dynamicAnchor $vocabulary $comment $defs
		allOf anyOf oneOf not if then else dependentSchemas prefixItems items contains properties
		patternProperties additionalProperties propertyNames unevaluatedItems unevaluatedProperties
		type enum const multipleOf maximum exclusiveMaximum minimum exclusiveMinimum maxLength minLength
		pattern maxItems minItems uniqueItems maxContains minContains maxProperties minProperties required
		dependentRequired format contentEncoding contentMediaType contentSchema
		title description default deprecated readOnly writeOnly examples`)
	asserted := []string{"date-time"} // formats the schemas use; the library asserts them
	// Keywords whose value is a schema, a map of schemas or a list of them.
	single := []string{"not", "if", "then", "else", "items", "contains", "additionalProperties",
		"propertyNames", "unevaluatedItems", "unevaluatedProperties", "contentSchema"}
	maps := []string{"$defs", "properties", "patternProperties", "dependentSchemas"}
	lists := []string{"allOf", "anyOf", "oneOf", "prefixItems"}
	for _, name := range SchemaNames() {
		b, _ := Schema(name)
		doc, err := decodeJSON(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var walk func(v any, path string)
		walk = func(v any, path string) {
			s, ok := v.(map[string]any)
			if !ok {
				return // a boolean schema
			}
			for kw, arg := range s {
				switch {
				case !slices.Contains(known, kw):
					t.Errorf("%s: %s: unknown keyword %q", name, path, kw)
				case kw == "format" && !slices.Contains(asserted, fmt.Sprint(arg)):
					t.Errorf("%s: %s: format %q is not asserted", name, path, arg)
				case slices.Contains(single, kw):
					walk(arg, path+"/"+kw)
				case slices.Contains(maps, kw):
					for k, sub := range arg.(map[string]any) {
						walk(sub, path+"/"+kw+"/"+k)
					}
				case slices.Contains(lists, kw):
					for i, sub := range arg.([]any) {
						walk(sub, fmt.Sprintf("%s/%s/%d", path, kw, i))
					}
				}
			}
		}
		walk(doc, "#")
	}
}

// TestEncodersMatchSchema validates what Marshal, and AppendHeartbeat, write
// for representative values against the schemas.
func TestEncodersMatchSchema(t *testing.T) {
	h := sampleHeartbeat()
	h2 := h
	h2.Progress, h2.SentAt = nil, h.SentAt.In(time.FixedZone("x", -3*3600))
	ts := sampleTaskState()
	empty := TaskState{Target: "t", Phase: "p", UpdatedAt: ts.UpdatedAt}
	msgs := []Message{&h, &h2, &ts, &empty}
	for _, spec := range sampleTargetSpecs() {
		msgs = append(msgs, &spec)
	}
	check := func(name string, b []byte) {
		t.Helper()
		inst, err := decodeJSON(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := loadSchema(t, name).Validate(inst); err != nil {
			t.Errorf("%s does not match its schema: %v\n%s", name, err, b)
		}
	}
	for _, m := range msgs {
		check(m.MessageName(), mustMarshal(t, m))
	}
	check(nameHeartbeat, AppendHeartbeat(nil, &h))
	check(nameHeartbeat, AppendHeartbeat(nil, &h2))
}
