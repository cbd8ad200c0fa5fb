package schemas

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// fuzzMessage fuzzes a strict decoder: it must never panic, must judge
// every input as the reference decoder it replaced does (equal results or
// equal errors), must fail only with a *FieldError, and whatever it accepts
// must survive Marshal and a second decode unchanged.
func fuzzMessage[T Message](f *testing.F, decode func([]byte) (T, error)) {
	var zero T
	name := zero.MessageName()
	for _, ex := range examples(f, name) {
		f.Add(ex)
		f.Add(ex[:len(ex)/2])
		if m, err := referenceDecode[T](ex); err == nil {
			f.Add(mustMarshal(f, m)) // keys in declaration order
		}
	}
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sameAsReference(t, b, decode, referenceDecode[T])
		m, err := decode(b)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Message != name {
				t.Fatalf("error %v is not a *FieldError for %s", err, name)
			}
			if !strings.HasPrefix(err.Error(), "schemas: "+name+": ") {
				t.Fatalf("error %q", err)
			}
			return
		}
		if len(b) > sizeLimit(name) {
			t.Fatalf("accepted a %d-byte message", len(b))
		}
		enc, err := Marshal(m)
		if err != nil {
			if strings.Contains(err.Error(), "-byte limit") {
				return // the canonical encoding can be longer than the input
			}
			t.Fatalf("accepted message does not marshal: %v", err)
		}
		m2, err := decode(enc)
		if err != nil {
			t.Fatalf("re-encoding %s does not decode: %v", enc, err)
		}
		if !looseEqual(m, m2) {
			t.Fatalf("round trip changed the message:\n%#v\n%#v", m, m2)
		}
	})
}

func FuzzDecodeLaunchRequest(f *testing.F)  { fuzzMessage(f, DecodeLaunchRequest) }
func FuzzDecodeLaunchReply(f *testing.F)    { fuzzMessage(f, DecodeLaunchReply) }
func FuzzDecodeTaskEvent(f *testing.F)      { fuzzMessage(f, DecodeTaskEvent) }
func FuzzDecodeKillRequest(f *testing.F)    { fuzzMessage(f, DecodeKillRequest) }
func FuzzDecodeKillReply(f *testing.F)      { fuzzMessage(f, DecodeKillReply) }
func FuzzDecodePsRequest(f *testing.F)      { fuzzMessage(f, DecodePsRequest) }
func FuzzDecodePsReply(f *testing.F)        { fuzzMessage(f, DecodePsReply) }
func FuzzDecodeHostStatus(f *testing.F)     { fuzzMessage(f, DecodeHostStatus) }
func FuzzDecodeTargetSpec(f *testing.F)     { fuzzMessage(f, DecodeTargetSpec) }
func FuzzDecodeTaskState(f *testing.F)      { fuzzMessage(f, DecodeTaskState) }
func FuzzDecodeSelectorStatus(f *testing.F) { fuzzMessage(f, DecodeSelectorStatus) }
func FuzzDecodeAllocRequest(f *testing.F)   { fuzzMessage(f, DecodeAllocRequest) }
func FuzzDecodeAllocReply(f *testing.F)     { fuzzMessage(f, DecodeAllocReply) }
func FuzzDecodeHelperRequest(f *testing.F)  { fuzzMessage(f, DecodeHelperRequest) }
func FuzzDecodeHelperReply(f *testing.F)    { fuzzMessage(f, DecodeHelperReply) }

// FuzzDecodeHeartbeat checks the strict decoder against the reference, and
// the fast decoder against the strict one: both accept with equal results, or both reject (with
// the same error when it concerns a field). The fast decoder is run on a
// fresh Heartbeat and on one holding another heartbeat, whose values it may
// reuse but must not leak into the result.
func FuzzDecodeHeartbeat(f *testing.F) {
	for _, ex := range examples(f, nameHeartbeat) {
		f.Add(ex)
	}
	for _, m := range heartbeatSequence(3) {
		f.Add(m) // AppendHeartbeat's key order: the fast path
	}
	for _, c := range heartbeatCases(f) {
		if len(c.in) < 4096 { // huge seeds only slow the fuzzer down
			f.Add(c.in)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sameAsReference(t, b, DecodeHeartbeat, referenceDecode[Heartbeat])
		strict, serr := DecodeHeartbeat(b)
		var fresh Heartbeat
		ferr := DecodeHeartbeatInto(b, &fresh)
		prev := sampleHeartbeat()
		reused := prev
		rerr := DecodeHeartbeatInto(b, &reused)
		if (serr == nil) != (ferr == nil) || (ferr == nil) != (rerr == nil) {
			t.Fatalf("decoders disagree on %q:\nstrict: %v\nfast:   %v\nreused: %v", b, serr, ferr, rerr)
		}
		if serr != nil {
			var sfe, ffe *FieldError
			if !errors.As(serr, &sfe) || !errors.As(ferr, &ffe) {
				t.Fatalf("errors are not *FieldError: %v / %v", serr, ferr)
			}
			if (sfe.Field != "" || ffe.Field != "") && serr.Error() != ferr.Error() {
				t.Fatalf("decoders report different problems for %q:\nstrict: %v\nfast:   %v", b, serr, ferr)
			}
			if ferr.Error() != rerr.Error() {
				t.Fatalf("fast decoder depends on its target: %v / %v", ferr, rerr)
			}
			if !reflect.DeepEqual(reused, prev) {
				t.Fatalf("failed decode changed its target: %+v", reused)
			}
			return
		}
		if !reflect.DeepEqual(strict, fresh) || !reflect.DeepEqual(strict, reused) {
			t.Fatalf("decoders disagree on %q:\nstrict: %+v\nfast:   %+v\nreused: %+v", b, strict, fresh, reused)
		}
		enc := AppendHeartbeat(nil, &fresh)
		var again Heartbeat
		if err := DecodeHeartbeatInto(enc, &again); err != nil {
			t.Fatalf("AppendHeartbeat output %s does not decode: %v", enc, err)
		}
		if !reflect.DeepEqual(again, fresh) {
			t.Fatalf("round trip changed the heartbeat:\n%+v\n%+v", fresh, again)
		}
	})
}
