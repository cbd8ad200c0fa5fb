package strictjson_test

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/taskselector/taskselector/internal/strictjson"
)

// scanAll steps over one value, and what follows it, with a Scanner.
func scanAll(b []byte) error {
	var s strictjson.Scanner
	s.Reset(b)
	if _, err := s.Value(0); err != nil {
		return err
	}
	return s.End()
}

// syntaxCases are invalid JSON values, each of which is also tried inside
// an array and an object.
var syntaxCases = []string{
	`tru`, `nul`, `falsy`, `t`, `-`, `1.`, `1e`, `1e+`, `.5`, `+1`, `01`, `-01`, `Infinity`, `NaN`, `'x'`,
	`"\u12"`, `"\u12g4"`, `"\q"`, `"x`, `"x\`, `"x\u`, `[1,]`, `[1 2]`, `[`, `[}`, `{"b"}`, `{"b":}`,
	`{,}`, `{1:2}`, `{"b":1,}`, `{"b" 1}`, "\"a\x00b\"", "\"\x1f\"", `{"a":1}}`, `1 2`, ``, ` `, "\xef\xbb\xbf1",
}

// validCases are valid JSON values.
var validCases = []string{
	`0`, `-0`, `1.5e-3`, `-12E+4`, `true`, `false`, `null`, `""`, `"\"\\\/\b\f\n\r\t\u00e9"`, "\"\xff\"",
	`[]`, `{}`, ` [ 1 , { "a" : [ ] } ] `, `{"a":{"a":{"a":null}},"a":"dup"}`, "\t\r\n{}\n",
}

// TestScannerMatchesEncodingJSON checks that the Scanner accepts exactly
// what encoding/json accepts, and reports the rest as a *SyntaxError.
func TestScannerMatchesEncodingJSON(t *testing.T) {
	var ins []string
	for _, v := range append(syntaxCases, validCases...) {
		ins = append(ins, v, `[`+v+`]`, `{"k":`+v+`}`, `{"k":1,"z":`+v+`}`)
	}
	for _, in := range ins {
		err := scanAll([]byte(in))
		if (err == nil) != json.Valid([]byte(in)) {
			t.Errorf("%q: scanner %v, encoding/json valid=%v", in, err, json.Valid([]byte(in)))
		}
		var se *strictjson.SyntaxError
		if err != nil && !errors.As(err, &se) {
			t.Errorf("%q: %v is not a *SyntaxError", in, err)
		}
	}
}

// TestDepthLimit checks that the Scanner and Decode nest exactly as deep as
// encoding/json accepts, and no deeper.
func TestDepthLimit(t *testing.T) {
	for _, c := range []struct{ open, bottom, close string }{{"[", "", "]"}, {`{"a":`, "1", "}"}} {
		for _, depth := range []int{1, 2, strictjson.MaxDepth - 1, strictjson.MaxDepth, strictjson.MaxDepth + 1} {
			// depth counts the top-level value.
			nested := strings.Repeat(c.open, depth) + c.bottom + strings.Repeat(c.close, depth)
			wantOK := depth <= strictjson.MaxDepth
			if json.Valid([]byte(nested)) != wantOK {
				t.Errorf("%s depth %d: encoding/json's own limit differs", c.open, depth)
			}
			if err := scanAll([]byte(nested)); (err == nil) != wantOK {
				t.Errorf("%s depth %d: scanner %v, want ok=%v", c.open, depth, err, wantOK)
			}
			if depth < 2 {
				continue
			}
			// As an unknown member of a decoded object, one level down.
			doc := `{"s":"","b":false,"i":0,"u":0,"t":"0001-01-01T00:00:00Z","pt":null,"in":{"a":0},"list":null,"zz":` +
				strings.Repeat(c.open, depth-1) + c.bottom + strings.Repeat(c.close, depth-1) + `}`
			var k kitchen
			if err := strictjson.Decode([]byte(doc), &k); (err == nil) != wantOK {
				t.Errorf("%s depth %d: Decode %v, want ok=%v", c.open, depth, err, wantOK)
			}
		}
	}
}

// TestUnescapeMatchesEncodingJSON checks Unescape on strings the Scanner
// accepts.
func TestUnescapeMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{
		`plain`, `\"\\\/\b\f\n\r\t`, `\u00e9\u0000\u001f`, `\ud83d\ude00`, `\ud800`, `\udc00`,
		`\ud800\u0041`, `\ud800\ud800\udc00`, `\udc00\ud800`, `a\ud83dx`, `\uD83D\uDE00`, "caf\xc3\xa9", "\xff\xfe",
		`\u2028`, `x\ud83d\u`, // the last one is not valid JSON; skipped below
	} {
		checkUnescape(t, s)
	}
}

// checkUnescape checks Unescape on s, the content of a JSON string, when
// encoding/json accepts it.
func checkUnescape(t *testing.T, s string) {
	t.Helper()
	quoted := `"` + s + `"`
	var want string
	if err := json.Unmarshal([]byte(quoted), &want); err != nil {
		return
	}
	var sc strictjson.Scanner
	sc.Reset([]byte(quoted))
	raw, fl, err := sc.Raw(0)
	if err != nil {
		t.Errorf("%q: scanner: %v", s, err)
		return
	}
	content := raw[1 : len(raw)-1]
	if got := string(strictjson.Unescape(nil, content)); got != want {
		t.Errorf("Unescape(%q) = %q, want %q", s, got, want)
	}
	if (fl&strictjson.Escaped != 0) != strings.Contains(s, `\`) {
		t.Errorf("%q: flags %b", s, fl)
	}
	if (fl&strictjson.NonASCII != 0) != strings.ContainsFunc(s, func(r rune) bool { return r >= 0x80 }) {
		t.Errorf("%q: flags %b", s, fl)
	}
}

// TestUnescapeBrokenInput checks that Unescape does not panic on text the
// Scanner rejects.
func TestUnescapeBrokenInput(t *testing.T) {
	for _, s := range []string{`\`, `x\`, `\u`, `\u12`, `\ud800\`, `\ud800\u`, `\ud800\udc`, `\q`} {
		_ = strictjson.Unescape(nil, []byte(s))
	}
}

func TestParseUint(t *testing.T) {
	for _, c := range []struct {
		raw     string
		max     uint64
		want    uint64
		problem string
	}{
		{"0", math.MaxInt64, 0, ""},
		{"-0", math.MaxInt64, 0, ""},
		{"-000", math.MaxInt64, 0, ""},
		{"42", math.MaxInt64, 42, ""},
		{"9223372036854775807", math.MaxInt64, math.MaxInt64, ""},
		{"9223372036854775808", math.MaxInt64, 0, strictjson.ProblemOutOfRange},
		{"18446744073709551615", math.MaxUint64, math.MaxUint64, ""},
		{"18446744073709551616", math.MaxUint64, 0, strictjson.ProblemOutOfRange},
		{"99999999999999999999999", math.MaxUint64, 0, strictjson.ProblemOutOfRange},
		{"-1", math.MaxInt64, 0, strictjson.ProblemNegative},
		{"1.0", math.MaxInt64, 0, strictjson.ProblemNotInteger},
		{"1e2", math.MaxInt64, 0, strictjson.ProblemNotInteger},
		{"-1E400", math.MaxInt64, 0, strictjson.ProblemNotInteger},
		{`"1"`, math.MaxInt64, 0, strictjson.ProblemNotNumber},
		{"true", math.MaxInt64, 0, strictjson.ProblemNotNumber},
		{"", math.MaxInt64, 0, strictjson.ProblemNotNumber},
	} {
		n, p := strictjson.ParseUint([]byte(c.raw), c.max)
		if n != c.want || p != c.problem {
			t.Errorf("ParseUint(%s, %d) = %d, %q; want %d, %q", c.raw, c.max, n, p, c.want, c.problem)
		}
	}
}

func TestParseFloat(t *testing.T) {
	for _, c := range []struct {
		raw     string
		want    float64
		problem string
	}{
		{"0", 0, ""},
		{"-1.5e3", -1500, ""},
		{"1e-400", 0, ""},
		{"1.7976931348623157e308", math.MaxFloat64, ""},
		{"1e400", 0, strictjson.ProblemNotFinite},
		{"-1E400", 0, strictjson.ProblemNotFinite},
		{"null", 0, strictjson.ProblemNotNumber},
		{"", 0, strictjson.ProblemNotNumber},
	} {
		f, p := strictjson.ParseFloat([]byte(c.raw))
		if f != c.want || p != c.problem {
			t.Errorf("ParseFloat(%s) = %v, %q; want %v, %q", c.raw, f, p, c.want, c.problem)
		}
	}
}

// TestScannerWalk reads an object member by member, as a hand-written
// decoder does.
func TestScannerWalk(t *testing.T) {
	var s strictjson.Scanner
	s.Reset([]byte(` { "n" : 12345 , "big":99999999999999999999,"k\u0065y":"v\n", "f":1.5e0,"o":{"x":[1,2]} } `))
	if s.Peek() != '{' {
		t.Fatal("Peek")
	}
	more, err := s.OpenObject()
	var got []string
	for more && err == nil {
		s.SkipSpace()
		if s.Consume(`"n" : `) {
			n, ok := s.PlainUint()
			if !ok || n != 12345 {
				t.Errorf("PlainUint = %d, %v", n, ok)
			}
			got = append(got, "n")
		} else {
			var key []byte
			var fl strictjson.Flags
			if key, fl, err = s.Key(); err != nil {
				break
			}
			if fl&strictjson.Escaped != 0 {
				key = strictjson.Unescape(nil, key)
			}
			if string(key) == "big" {
				if _, ok := s.PlainUint(); ok {
					t.Error("PlainUint took a number that may overflow")
				}
			}
			var raw []byte
			if raw, _, err = s.Raw(1); err != nil {
				break
			}
			got = append(got, string(key)+"="+string(raw))
		}
		more, err = s.Next('}')
	}
	if err == nil {
		err = s.End()
	}
	if err != nil {
		t.Fatal(err)
	}
	if want := `n big=99999999999999999999 key="v\n" f=1.5e0 o={"x":[1,2]}`; strings.Join(got, " ") != want {
		t.Errorf("walked %q, want %q", strings.Join(got, " "), want)
	}
	for _, in := range []string{``, `[]`, ` x`} {
		s.Reset([]byte(in))
		if _, err := s.OpenObject(); err == nil {
			t.Errorf("OpenObject on %q: no error", in)
		}
	}
	if s.Reset([]byte(`1x`)); s.Consume("1x2") || !s.Consume("1") || s.Peek() != 'x' {
		t.Error("Consume")
	}
}
