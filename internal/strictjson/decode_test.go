package strictjson_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/internal/strictjson"
	"github.com/taskselector/taskselector/internal/strictjson/strictjsontest"
)

// label is a named string type, as message enums are.
type label string

type inner struct {
	A int64   `json:"a"`
	B *string `json:"b,omitempty"`
}

// kitchen has a field of every kind Decode supports, required and optional,
// and refers to itself.
type kitchen struct {
	S      string           `json:"s"`
	L      label            `json:"l,omitempty"`
	B      bool             `json:"b"`
	I      int              `json:"i"`
	I64    int64            `json:"i64,omitempty"`
	U      uint64           `json:"u"`
	F      float64          `json:"f,omitempty"`
	T      time.Time        `json:"t"`
	PT     *time.Time       `json:"pt"`
	PF     *float64         `json:"pf,omitempty"`
	In     inner            `json:"in"`
	PIn    *inner           `json:"pin,omitempty"`
	List   []inner          `json:"list"`
	Strs   []string         `json:"strs,omitempty"`
	Ints   map[string]int64 `json:"ints,omitempty"`
	Inners map[label]inner  `json:"inners,omitempty"`
	Free   map[string]any   `json:"free,omitempty"`
	Rec    *kitchen         `json:"rec,omitempty"`
	Skip   string           `json:"-"`
	NoTag  string
	Name   string `json:",omitempty"` // the Go name is the member name
}

// kitchenDocs are valid kitchen documents.
var kitchenDocs = []string{
	`{"s":"x","l":"lbl","b":true,"i":1,"i64":2,"u":18446744073709551615,"f":1.5,"t":"2025-03-01T14:00:00.5+02:00",` +
		`"pt":"2025-03-01T12:00:00Z","pf":0.25,"in":{"a":3,"b":"y"},"pin":{"a":4},"list":[{"a":5},{"a":6,"b":"z"}],` +
		`"strs":["p","q"],"ints":{"k":7,"j":8},"inners":{"m":{"a":9}},"free":{"a":[1,{"b":null}],"c":"\u00e9"},` +
		`"rec":{"s":"r","b":false,"i":0,"u":0,"t":"2025-03-01T12:00:00Z","pt":null,"in":{"a":0},"list":[]},"Name":"n"}`,
	`{"s":"","b":false,"i":0,"u":0,"t":"0001-01-01T00:00:00Z","pt":null,"in":{"a":0},"list":null}`,
}

// decodeBoth decodes b with Decode and with the reference.
func decodeBoth(b []byte) (got, want kitchen, gerr, werr error) {
	gerr = strictjson.Decode(b, &got)
	werr = strictjsontest.Reference(b, &want)
	return
}

// sameAsReference checks that Decode and the reference accept b with equal
// results, or reject it with equal errors of strictjson's types.
func sameAsReference(t testing.TB, b []byte) {
	t.Helper()
	got, want, gerr, werr := decodeBoth(b)
	if !reflect.DeepEqual(gerr, werr) {
		t.Fatalf("errors differ on %q:\n got  %v\n want %v", b, gerr, werr)
	}
	var se *strictjson.SyntaxError
	var ve *strictjson.ValueError
	if gerr != nil && !errors.As(gerr, &se) && !errors.As(gerr, &ve) {
		t.Fatalf("error %v on %q is neither a *SyntaxError nor a *ValueError", gerr, b)
	}
	if gerr == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("results differ on %q:\n got  %#v\n want %#v", b, got, want)
	}
}

// TestDecodeMatchesReference checks Decode against the reference on every
// one-place variant of the kitchen documents, and on every truncation and
// one-byte corruption of them.
func TestDecodeMatchesReference(t *testing.T) {
	check := func(b []byte) { sameAsReference(t, b) }
	for _, doc := range kitchenDocs {
		b := []byte(doc)
		check(b)
		var indented bytes.Buffer
		if err := json.Indent(&indented, b, "", "  "); err != nil {
			t.Fatal(err)
		}
		check(indented.Bytes())
		if err := strictjsontest.Variants(b, strictjsontest.Values, strictjsontest.Dups, check); err != nil {
			t.Fatal(err)
		}
		for i := range b {
			check(b[:i])
			for _, c := range []byte{'"', '}', ']', ',', ':', 'x', ' ', '\\', 0, 0xff} {
				corrupt := bytes.Clone(b)
				corrupt[i] = c
				check(corrupt)
			}
		}
	}
	for _, s := range []string{``, ` `, `null`, `[]`, `"x"`, `1`, `{}`, "\xef\xbb\xbf{}", `{} {}`, `{}}`, `{"s":1`, `{"s"`} {
		check([]byte(s))
	}
}

// TestDecodeValues checks what Decode makes of a valid document.
func TestDecodeValues(t *testing.T) {
	var k kitchen
	k.Skip, k.NoTag = "kept?", "kept?"
	if err := strictjson.Decode([]byte(kitchenDocs[0]), &k); err != nil {
		t.Fatal(err)
	}
	if k.Skip != "" || k.NoTag != "" {
		t.Errorf("Decode did not zero the target first: %q, %q", k.Skip, k.NoTag)
	}
	if want := time.Date(2025, 3, 1, 12, 0, 0, 5e8, time.UTC); !k.T.Equal(want) || k.T.Location() != time.UTC {
		t.Errorf("t = %v, want %v in UTC", k.T, want)
	}
	if k.U != math.MaxUint64 || k.L != "lbl" || k.Name != "n" || *k.In.B != "y" || k.PIn.B != nil {
		t.Errorf("decoded %+v", k)
	}
	if k.Rec.List == nil || len(k.Rec.List) != 0 || k.Rec.PT != nil {
		t.Errorf("rec: an empty array must give an empty slice, null a nil pointer: %+v", k.Rec)
	}
	if k.Inners["m"].A != 9 || k.Ints["j"] != 8 || k.List[1].A != 6 {
		t.Errorf("decoded %+v", k)
	}
	if got := k.Free["a"].([]any)[0]; got != 1.0 {
		t.Errorf("free-form number %v (%T)", got, got)
	}
}

// TestDecodeErrors checks the path and problem of one error per rule.
func TestDecodeErrors(t *testing.T) {
	base := kitchenDocs[1]
	set := func(member, value string) string {
		return strings.Replace(base, `"in":{"a":0}`, `"in":{"a":0},`+strconv.Quote(member)+`:`+value, 1)
	}
	for _, c := range []struct {
		in, path, problem string
	}{
		{base, "", ""},
		{`[]`, "", strictjson.ProblemNotJSONObject},
		{strings.Replace(base, `"s":"",`, ``, 1), "s", strictjson.ProblemMissing},
		{strings.Replace(base, `"s":""`, `"s":null`, 1), "s", strictjson.ProblemNull},
		{set("i64", "null"), "", ""},
		{set("i64", "-1"), "i64", strictjson.ProblemNegative},
		{set("i64", "1.0"), "i64", strictjson.ProblemNotInteger},
		{set("i64", "9223372036854775808"), "i64", strictjson.ProblemOutOfRange},
		{set("i64", `"1"`), "i64", strictjson.ProblemNotNumber},
		{set("f", "1e400"), "f", strictjson.ProblemNotFinite},
		{set("l", "1"), "l", strictjson.ProblemNotString},
		{set("l", "\"\xff\""), "l", strictjson.ProblemBadUTF8},
		{strings.Replace(base, `"b":false`, `"b":0`, 1), "b", strictjson.ProblemNotBool},
		{strings.Replace(base, `"t":"0001-01-01T00:00:00Z"`, `"t":"yesterday"`, 1), "t", strictjson.ProblemNotTime},
		{strings.Replace(base, `"t":"0001-01-01T00:00:00Z"`, `"t":0`, 1), "t", strictjson.ProblemNotString},
		{strings.Replace(base, `"in":{"a":0}`, `"in":[]`, 1), "in", strictjson.ProblemNotObject},
		{strings.Replace(base, `"list":null`, `"list":{}`, 1), "list", strictjson.ProblemNotArray},
		{strings.Replace(base, `"list":null`, `"list":[{"a":1},null,{"a":-1}]`, 1), "list[1]", strictjson.ProblemNull},
		{strings.Replace(base, `"list":null`, `"list":[{"a":1},{"a":-1},null]`, 1), "list[1].a", strictjson.ProblemNegative},
		{set("inners", `{"z":{"a":-1},"y":{},"x":{"a":1}}`), "inners.y.a", strictjson.ProblemMissing},
		{set("ints", `{"k":-1,"k":1}`), "", ""},
		{set("free", `{"a":1e400}`), "free", "holds a number that is " + strictjson.ProblemNotFinite},
		{set("rec", `{"s":1}`), "rec.s", strictjson.ProblemNotString},
		{set("rec", strings.Replace(base, `"s":""`, `"s":"","rec":{"u":-1}`, 1)), "rec.rec.s", strictjson.ProblemMissing},
		{set("zz", `[1,{"a":}]`), "", "invalid character '}' looking for beginning of value"},
	} {
		var k kitchen
		err := strictjson.Decode([]byte(c.in), &k)
		if c.problem == "" {
			if err != nil {
				t.Errorf("%s: %v", c.in, err)
			}
			continue
		}
		var ve *strictjson.ValueError
		var se *strictjson.SyntaxError
		switch {
		case errors.As(err, &ve):
			if ve.Path != c.path || ve.Problem != c.problem {
				t.Errorf("%s: got %v, want field %q: %s", c.in, err, c.path, c.problem)
			}
		case errors.As(err, &se):
			if c.path != "" || !strings.Contains(se.Msg, c.problem) {
				t.Errorf("%s: got %v, want a syntax error %q", c.in, err, c.problem)
			}
		default:
			t.Errorf("%s: got %v, want field %q: %s", c.in, err, c.path, c.problem)
		}
	}
}

// TestValueErrorFormat checks the text of the errors.
func TestValueErrorFormat(t *testing.T) {
	for err, want := range map[error]string{
		&strictjson.ValueError{Path: "a[1].b", Problem: "negative"}: `strictjson: field "a[1].b": negative`,
		&strictjson.ValueError{Problem: "not a JSON object"}:        `strictjson: not a JSON object`,
		&strictjson.SyntaxError{Offset: 3, Msg: "invalid literal"}:  `strictjson: invalid JSON at offset 3: invalid literal`,
	} {
		if err.Error() != want {
			t.Errorf("%#v: %q, want %q", err, err.Error(), want)
		}
	}
}

// TestCheck checks that Check and Decode report, rather than panic on,
// every type Decode does not support, and accept the ones it does.
func TestCheck(t *testing.T) {
	if err := strictjson.Check(reflect.TypeFor[kitchen]()); err != nil {
		t.Errorf("kitchen: %v", err)
	}
	manyFields := make([]reflect.StructField, 65)
	for i := range manyFields {
		manyFields[i] = reflect.StructField{Name: "F" + strconv.Itoa(i), Type: reflect.TypeFor[int](), Tag: `json:"f` + reflect.StructTag(strconv.Itoa(i)) + `"`}
	}
	type withInt32 struct {
		N int32 `json:"n"`
	}
	type withNested struct {
		L []map[string]*withInt32 `json:"l"`
	}
	type withIface struct {
		V any `json:"v"`
	}
	type withIntMap struct {
		M map[int]string `json:"m"`
	}
	type withStringer struct {
		M map[string]interface{ String() string } `json:"m"`
	}
	type ignoredOnly struct {
		C complex128 `json:"-"`
		D complex128
	}
	if err := strictjson.Check(reflect.TypeFor[ignoredOnly]()); err != nil {
		t.Errorf("fields Decode does not read need no support: %v", err)
	}
	for _, c := range []struct {
		typ  reflect.Type
		want string
	}{
		{reflect.TypeFor[int](), "not a struct"},
		{reflect.TypeFor[time.Time](), "not a struct"},
		{reflect.TypeFor[*kitchen](), "not a struct"},
		{reflect.TypeFor[withInt32](), "field strictjson_test.withInt32.n: unsupported type int32"},
		{reflect.TypeFor[withNested](), "field strictjson_test.withNested.l: field strictjson_test.withInt32.n: unsupported type int32"},
		{reflect.TypeFor[withIface](), "unsupported type interface {}"},
		{reflect.TypeFor[withIntMap](), "unsupported type map[int]string"},
		{reflect.TypeFor[withStringer](), "unsupported type interface { String() string }"},
		{reflect.StructOf(manyFields), "65 json-tagged fields, over the limit of 64"},
	} {
		err := strictjson.Check(c.typ)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "strictjson: cannot decode into ") {
			t.Errorf("Check(%v) = %v, want an error with %q", c.typ, err, c.want)
			continue
		}
		if c.typ.Kind() == reflect.Struct {
			for range 2 { // the second time from the cache
				if derr := strictjson.Decode([]byte(`{}`), reflect.New(c.typ).Interface()); derr == nil || derr.Error() != err.Error() {
					t.Errorf("Decode into %v: %v, want %v", c.typ, derr, err)
				}
			}
		}
	}
	var nilPtr *kitchen
	for _, v := range []any{nil, kitchen{}, nilPtr} {
		if err := strictjson.Decode([]byte(`{}`), v); err == nil || !strings.Contains(err.Error(), "not a non-nil pointer to a struct") {
			t.Errorf("Decode into %T: %v", v, err)
		}
	}
	if err := strictjson.Decode([]byte(`{}`), new(int)); err == nil || !strings.Contains(err.Error(), "cannot decode into int: not a struct") {
		t.Errorf("Decode into *int: %v", err)
	}
}

// TestFields checks the fields Decode reads.
func TestFields(t *testing.T) {
	fs := strictjson.Fields(reflect.TypeFor[kitchen]())
	if len(fs) != 19 {
		t.Fatalf("%d fields: %+v", len(fs), fs)
	}
	if want := (strictjson.Field{Name: "l", Index: 1, Required: false}); fs[1] != want {
		t.Errorf("fields[1] = %+v, want %+v", fs[1], want)
	}
	if want := (strictjson.Field{Name: "Name", Index: 20, Required: false}); fs[18] != want {
		t.Errorf("fields[18] = %+v, want %+v", fs[18], want)
	}
	if !fs[0].Required || !fs[8].Required || fs[9].Required {
		t.Errorf("required: %+v", fs)
	}
	fs[0].Name = "changed"
	if strictjson.Fields(reflect.TypeFor[kitchen]())[0].Name != "s" {
		t.Error("Fields returns shared state")
	}
	if strictjson.Fields(reflect.TypeFor[int]()) != nil {
		t.Error("Fields of a non-struct")
	}
}
