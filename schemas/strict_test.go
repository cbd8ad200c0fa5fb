package schemas

import (
	"bytes"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/taskselector/taskselector/internal/strictjson/strictjsontest"
)

// referenceDecode is decodeMessage with strictjsontest.Reference, the
// decoder strictjson.Decode replaced, in place of strictjson.Decode.
func referenceDecode[T Message](b []byte) (T, error) {
	return decodeWith[T](b, strictjsontest.Reference)
}

// strictPair is a message's strict decoder and the reference decoder, which
// must judge every input alike.
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

// strictValues are put in place of every member and element in turn: every
// JSON type, the edge cases of every rule of strictjson.Decode, and those of
// the messages' Validate methods.
var strictValues = append(slices.Clip(strictjsontest.Values),
	`"launching"`, `"hacking"`, `"declared"`, `"failed"`, `"invalid"`, `"`+strings.Repeat("n", 257)+`"`)

// strictDups are the values of duplicate keys.
var strictDups = strictjsontest.Dups

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
				if err := strictjsontest.Variants(ex, strictValues, strictDups, check); err != nil {
					t.Fatal(err)
				}
				if err := strictjsontest.Variants(canonical, strictDups, strictDups, check); err != nil {
					t.Fatal(err)
				}
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
