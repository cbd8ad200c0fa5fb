package strictjson_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/taskselector/taskselector/internal/strictjson"
)

// FuzzDecode checks Decode against the reference decoder on kitchen, whose
// fields cover every kind Decode supports: it must never panic, must judge
// every input as the reference does (equal results or equal errors), must
// fail only with a *SyntaxError or *ValueError, and whatever it accepts must
// survive encoding/json's Marshal and a second Decode.
func FuzzDecode(f *testing.F) {
	for _, doc := range kitchenDocs {
		f.Add([]byte(doc))
		f.Add([]byte(doc[:len(doc)/2]))
	}
	for _, s := range append(syntaxCases, validCases...) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sameAsReference(t, b)
		var k kitchen
		if err := strictjson.Decode(b, &k); err != nil {
			var se *strictjson.SyntaxError
			if errors.As(err, &se) != !json.Valid(b) {
				t.Fatalf("%q: %v, but encoding/json valid=%v", b, err, json.Valid(b))
			}
			return
		}
		enc, err := json.Marshal(&k)
		if err != nil {
			t.Fatalf("accepted %q does not marshal: %v", b, err)
		}
		var again kitchen
		if err := strictjson.Decode(enc, &again); err != nil {
			t.Fatalf("re-encoding %s does not decode: %v", enc, err)
		}
		enc2, _ := json.Marshal(&again)
		if string(enc) != string(enc2) {
			t.Fatalf("round trip changed the document:\n%s\n%s", enc, enc2)
		}
	})
}

// FuzzScanner checks that the Scanner accepts exactly what encoding/json
// accepts, and that Unescape decodes every string it accepts as
// encoding/json does.
func FuzzScanner(f *testing.F) {
	for _, s := range append(syntaxCases, validCases...) {
		f.Add([]byte(s))
	}
	f.Add([]byte(`"\ud83d\ude00\ud800x\u00e9"`))
	f.Fuzz(func(t *testing.T, b []byte) {
		err := scanAll(b)
		if (err == nil) != json.Valid(b) {
			t.Fatalf("%q: scanner %v, encoding/json valid=%v", b, err, json.Valid(b))
		}
		var se *strictjson.SyntaxError
		if err != nil && !errors.As(err, &se) {
			t.Fatalf("%q: %v is not a *SyntaxError", b, err)
		}
		if err != nil {
			return
		}
		var s strictjson.Scanner
		s.Reset(b)
		raw, _, err := s.Raw(0)
		if err != nil || raw[0] != '"' {
			return
		}
		var want string
		if err := json.Unmarshal(raw, &want); err != nil {
			t.Fatal(err)
		}
		if got := string(strictjson.Unescape(nil, raw[1:len(raw)-1])); got != want {
			t.Fatalf("Unescape(%q) = %q, want %q", raw, got, want)
		}
	})
}
