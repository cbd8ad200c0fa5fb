package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// strictPair is a message's strict decoder and the reference decoder it
// replaced (reference_test.go), which must judge every input alike.
type strictPair struct {
	name              string
	decode, reference func([]byte) (Message, error)
}

func pairOf[T Message](f func([]byte) (T, error)) strictPair {
	var zero T
	return strictPair{zero.MessageName(), dec(f), dec(referenceDecode[T])}
}

var strictPairs = []strictPair{
	pairOf(DecodeLaunchRequest), pairOf(DecodeLaunchReply), pairOf(DecodeHeartbeat), pairOf(DecodeTaskEvent),
	pairOf(DecodeKillRequest), pairOf(DecodeKillReply), pairOf(DecodePsRequest), pairOf(DecodePsReply),
	pairOf(DecodeHostStatus), pairOf(DecodeTargetSpec), pairOf(DecodeTaskState), pairOf(DecodeSelectorStatus),
}

// sameAsReference checks that decode and the reference accept in with equal
// results, or both reject it with equal errors.
func sameAsReference[T any](t testing.TB, in []byte, decode, reference func([]byte) (T, error)) {
	t.Helper()
	got, gerr := decode(in)
	want, werr := reference(in)
	if !reflect.DeepEqual(gerr, werr) {
		t.Fatalf("errors differ on %q:\n got  %v\n want %v", in, gerr, werr)
	}
	if gerr != nil {
		var fe *FieldError
		if !errors.As(gerr, &fe) {
			t.Fatalf("error %v on %q is not a *FieldError", gerr, in)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("results differ on %q:\n got  %#v\n want %#v", in, got, want)
	}
}

// jnode is a JSON value that keeps the order of its members, may have
// duplicate keys and may hold any raw text, even invalid JSON.
type jnode struct {
	raw     string // a scalar, or text put in place; "" for an array or object
	obj     bool
	members []jmember // of an object
	elems   []*jnode  // of an array (when raw == "" and !obj)
}

type jmember struct {
	key string // the key as written, with its quotes
	val *jnode
}

func parseJNode(t testing.TB, b []byte) *jnode {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var walk func() *jnode
	walk = func() *jnode {
		tok, err := d.Token()
		if err != nil {
			t.Fatal(err)
		}
		switch tok {
		case json.Delim('{'):
			n := &jnode{obj: true}
			for d.More() {
				k, err := d.Token()
				if err != nil {
					t.Fatal(err)
				}
				kb, _ := json.Marshal(k)
				n.members = append(n.members, jmember{string(kb), walk()})
			}
			_, _ = d.Token()
			return n
		case json.Delim('['):
			n := &jnode{elems: []*jnode{}}
			for d.More() {
				n.elems = append(n.elems, walk())
			}
			_, _ = d.Token()
			return n
		}
		rb, err := json.Marshal(tok)
		if err != nil {
			t.Fatal(err)
		}
		return &jnode{raw: string(rb)}
	}
	return walk()
}

func (n *jnode) appendTo(b []byte) []byte {
	switch {
	case n.raw != "":
		return append(b, n.raw...)
	case n.obj:
		b = append(b, '{')
		for i, m := range n.members {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(append(append(b, m.key...), ':'), m.val.appendTo(nil)...)
		}
		return append(b, '}')
	}
	b = append(b, '[')
	for i, e := range n.elems {
		if i > 0 {
			b = append(b, ',')
		}
		b = e.appendTo(b)
	}
	return append(b, ']')
}

// variants calls emit with every variant of root made by changing one place
// in it: each member deleted, given each value in values, given a duplicate
// key before and after it (holding each value in dups), and written with an
// escaped key; each array element deleted and given each value in values.
func variants(root *jnode, values, dups []string, emit func([]byte)) {
	out := func() { emit(root.appendTo(nil)) }
	var walk func(n *jnode)
	walk = func(n *jnode) {
		if n.obj {
			for i := range n.members {
				m := n.members[i]
				ms := n.members
				n.members = append(ms[:i:i], ms[i+1:]...)
				out()
				for _, v := range dups {
					dup := jmember{m.key, &jnode{raw: v}}
					n.members = append(append(ms[:i:i], dup), ms[i:]...)
					out()
					n.members = append(append(ms[:i+1:i+1], dup), ms[i+1:]...)
					out()
				}
				n.members = ms
				orig := *m.val
				for _, v := range values {
					*m.val = jnode{raw: v}
					out()
				}
				*m.val = orig
				if k := m.key; len(k) > 2 {
					n.members[i].key = `"\u00` + strings.ToLower(hexByte(k[1])) + k[2:]
					out()
					n.members[i].key = k
				}
				walk(m.val)
			}
			return
		}
		for i, e := range n.elems {
			es := n.elems
			n.elems = append(es[:i:i], es[i+1:]...)
			out()
			n.elems = es
			orig := *e
			for _, v := range values {
				*e = jnode{raw: v}
				out()
			}
			*e = orig
			walk(e)
		}
	}
	walk(root)
}

func hexByte(c byte) string { return string([]byte{hexDigits[c>>4], hexDigits[c&0xf]}) }

// strictValues are put in place of every member and element in turn: every
// JSON type, and the edge cases of every rule.
var strictValues = []string{
	`null`, `true`, `false`, `0`, `1`, `-1`, `-0`, `2`, `1.5`, `0.5`, `1e3`, `1E400`, `-1e400`, `1e-400`,
	`9223372036854775807`, `9223372036854775808`, `18446744073709551615`, `18446744073709551616`,
	`""`, `"x"`, `"é"`, "\"a\xffb\"", `"\u00e9\n"`, `"\ud800"`, `"2025-03-01T12:00:00Z"`, `"0000-01-01T00:00:00Z"`,
	`"2025-03-01T14:00:00.5+02:00"`, `"2025-13-01T00:00:00Z"`, `"2025\u002d03-01T12:00:00Z"`,
	`"launching"`, `"hacking"`, `"declared"`, `"failed"`, `"invalid"`, `"` + strings.Repeat("n", 257) + `"`,
	`[]`, `[null]`, `[1]`, `[-1]`, `["x"]`, `[{}]`, `[[]]`, `[1,null,-1]`,
	`{}`, `{"a":null}`, `{"a":1}`, `{"a":-1}`, `{"":-1}`, `{"a":1e400}`, "{\"\xff\":-1}", `{"a":{"b":[1,-2]}}`,
	`{"b":-1,"a":-2,"b":1}`, `{"b":-1,"a":"x"}`, `{"b":null,"a":-1,"c":null}`, ` { } `,
}

// strictDups are the values of duplicate keys.
var strictDups = []string{`null`, `-1`, `1`, `"x"`, `{}`, `[]`}

// TestStrictMatchesReference checks the strict decoder against the reference
// on every one-place variant of every schema example, and on every
// truncation and one-byte corruption of them: equal results, or equal
// errors. Each example is also tried in its Marshal encoding, with its keys
// in declaration order as the selector writes them (the examples have theirs
// sorted), with fewer variants.
func TestStrictMatchesReference(t *testing.T) {
	for _, p := range strictPairs {
		t.Run(p.name, func(t *testing.T) {
			check := func(b []byte) { sameAsReference(t, b, p.decode, p.reference) }
			var canonical []byte
			for _, ex := range examples(t, p.name) {
				m, err := p.reference(ex)
				if err != nil {
					t.Fatalf("example %s: %v", ex, err)
				}
				canonical = mustMarshal(t, m)
				check(ex)
				check(canonical)
				check(indented(t, ex))
				variants(parseJNode(t, ex), strictValues, strictDups, check)
				variants(parseJNode(t, canonical), strictDups, strictDups, check)
				// Every position of a small message; a sample of a big one.
				for i := 0; i < len(ex); i += 1 + len(ex)/512 {
					check(ex[:i])
					for _, c := range []byte{'"', '}', ',', ':', 'x', ' ', 0xff} {
						b := bytes.Clone(ex)
						b[i] = c
						check(b)
					}
				}
				for i := 0; i < len(canonical); i += 1 + len(canonical)/512 {
					check(canonical[:i])
				}
			}
			for _, s := range []string{``, ` `, `null`, `[]`, `"x"`, `1`, `{}`, "\xef\xbb\xbf{}", `{} {}`, `{}}`, `{"v":1`, `{"v"`} {
				check([]byte(s))
			}
			for _, n := range []int{MaxMessageBytes, MaxMessageBytes + 1, MaxStatusBytes + 1} {
				check(padTo(t, canonical, n))
			}
		})
	}
}

// TestStrictMatchesReferenceOnCases runs the hand-written heartbeat cases
// and the fast decoder's syntax error cases through both decoders.
func TestStrictMatchesReferenceOnCases(t *testing.T) {
	for _, c := range heartbeatCases(t) {
		sameAsReference(t, c.in, DecodeHeartbeat, referenceDecode[Heartbeat])
	}
	ts := sampleTaskState()
	for _, b := range [][]byte{mustMarshal(t, &ts), []byte(`{"v":1,"target":"t","phase":"p","epoch":0,"task":{"task_id":"a",` +
		`"pid":0,"type":"x","host":"h","state":"launching","budget_mib":0,"launched_at":"2025-03-01T12:00:00Z",` +
		`"confirmed_at":null},"updated_at":"2025-03-01T12:00:00Z"}`)} {
		sameAsReference(t, b, DecodeTaskState, referenceDecode[TaskState])
	}
}

// TestStrictDecodeAllocations guards the restart path's cost: a TaskState
// costs the message, its six strings and its two pointers; a hacking
// TargetSpec its profile, value and metrics; a declared one its profile, its
// phases and their types.
func TestStrictDecodeAllocations(t *testing.T) {
	ts := sampleTaskState()
	b := mustMarshal(t, &ts)
	if n := testing.AllocsPerRun(50, func() { _, _ = DecodeTaskState(b) }); n > 9 {
		t.Errorf("DecodeTaskState: %v allocations, want at most 9", n)
	}
	for i, want := range []float64{4, 5} {
		spec := sampleTargetSpecs()[i]
		b := mustMarshal(t, &spec)
		if n := testing.AllocsPerRun(50, func() { _, _ = DecodeTargetSpec(b) }); n > want {
			t.Errorf("DecodeTargetSpec of a %s spec: %v allocations, want at most %v", spec.Profile, n, want)
		}
	}
}
