package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestEncodeNameRoundTrip(t *testing.T) {
	cases := []struct {
		name    string
		encoded string // "" means: any encoded (non-verbatim) form
	}{
		{"n00dles", "n00dles"},
		{"foodnstuff", "foodnstuff"},
		{"host-1_a", "host-1_a"},
		{"I.I.I.I", "=SS5JLkkuSQ"},
		{".", "=Lg"},
		{"a b", ""},
		{"a.b.c", ""},
		{"*", ""},
		{">", ""},
		{"=abc", ""},
		{"=", ""},
		{"==", ""},
		{"héllo", ""},
		{"日本語", ""},
		{"\x00", ""},
		{"tab\there", ""},
		{"a/b", ""},
		{strings.Repeat("x", 256), strings.Repeat("x", 256)},
	}
	for _, c := range cases {
		enc := EncodeName(c.name)
		if c.encoded != "" && enc != c.encoded {
			t.Errorf("EncodeName(%q) = %q, want %q", c.name, enc, c.encoded)
		}
		if c.encoded == "" && !strings.HasPrefix(enc, "=") {
			t.Errorf("EncodeName(%q) = %q, want the encoded form", c.name, enc)
		}
		if !tokenSafe(enc) {
			t.Errorf("EncodeName(%q) = %q is not a safe subject token / KV key", c.name, enc)
		}
		dec, err := DecodeName(enc)
		if err != nil {
			t.Errorf("DecodeName(%q): %v", enc, err)
			continue
		}
		if dec != c.name {
			t.Errorf("DecodeName(EncodeName(%q)) = %q", c.name, dec)
		}
	}
}

func TestDecodeNameRejects(t *testing.T) {
	bad := []string{
		"",             // empty
		"=",            // empty encoded form
		"=SS5JLkkuSQ=", // padding is not part of the encoding
		"=!!",          // not base64url
		"=bjAwZGxlcw",  // "n00dles" in encoded form: plain names have one form
		"=00\r0",       // the decoder skips CR and LF: "=000" in disguise
		"=00\n0",
		"a.b", // a raw dot
		"a b", // a raw space
		"*",
		">",
		"héllo",
	}
	for _, tok := range bad {
		if name, err := DecodeName(tok); err == nil {
			t.Errorf("DecodeName(%q) = %q, want an error", tok, name)
		} else if !errors.Is(err, ErrBadName) {
			t.Errorf("DecodeName(%q) error %v does not wrap ErrBadName", tok, err)
		}
	}
}

func TestSubjectsEncodeNames(t *testing.T) {
	s := NewSubjects("")
	if got, want := s.Heartbeat("home", "I.I.I.I"), "tasks.heartbeat.home.=SS5JLkkuSQ"; got != want {
		t.Fatalf("Heartbeat = %q, want %q", got, want)
	}
	h, tg, err := s.ParseHeartbeat(s.Heartbeat("h.1", "I.I.I.I"))
	if err != nil || h != "h.1" || tg != "I.I.I.I" {
		t.Fatalf("ParseHeartbeat round trip = %q, %q, %v", h, tg, err)
	}
	for _, bad := range []string{"tasks.heartbeat.h", "tasks.heartbeat.h.t.x", "other.heartbeat.h.t", "tasks.heartbeat.h.=="} {
		if _, _, err := s.ParseHeartbeat(bad); err == nil {
			t.Errorf("ParseHeartbeat(%q) succeeded", bad)
		}
	}
	if got, want := s.Event("a b"), "tasks.event.=YSBi"; got != want {
		t.Fatalf("Event = %q, want %q", got, want)
	}
}

// tokenSafe reports whether s can be one NATS subject token and a JetStream
// KV key: non-empty, printable ASCII, no '.', '*', '>' or whitespace.
func tokenSafe(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '.' || c == '*' || c == '>' {
			return false
		}
	}
	return true
}

func FuzzEncodeName(f *testing.F) {
	for _, s := range []string{"n00dles", "I.I.I.I", ".", "", "=", "=abc", "日本語", "\xff", "a b", "*", ">"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		enc := EncodeName(name)
		if name == "" {
			// The empty name is not a valid name; its encoding must not
			// decode to anything.
			if _, err := DecodeName(enc); err == nil {
				t.Fatalf("DecodeName(EncodeName(\"\")) succeeded")
			}
			return
		}
		if !tokenSafe(enc) {
			t.Fatalf("EncodeName(%q) = %q is not token safe", name, enc)
		}
		dec, err := DecodeName(enc)
		if err != nil {
			t.Fatalf("DecodeName(EncodeName(%q)=%q): %v", name, enc, err)
		}
		if dec != name {
			t.Fatalf("round trip of %q gave %q", name, dec)
		}
	})
}

func FuzzDecodeName(f *testing.F) {
	for _, s := range []string{"n00dles", "=SS5JLkkuSQ", "=Lg", "", "=", "==", "=bjAwZGxlcw", "a.b", "=_-_-", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		name, err := DecodeName(tok)
		if err != nil {
			if !errors.Is(err, ErrBadName) {
				t.Fatalf("DecodeName(%q) error %v does not wrap ErrBadName", tok, err)
			}
			return
		}
		// Every accepted token is the one encoding of its name.
		if enc := EncodeName(name); enc != tok {
			t.Fatalf("DecodeName(%q) = %q, but EncodeName gives %q", tok, name, enc)
		}
		if !tokenSafe(tok) {
			t.Fatalf("accepted token %q is not token safe", tok)
		}
	})
}

func FuzzParseHeartbeat(f *testing.F) {
	s := NewSubjects("")
	for _, sub := range []string{s.Heartbeat("h", "I.I.I.I"), "tasks.heartbeat.h", "tasks.heartbeat.h.t.u", "tasks.heartbeat..", "tasksx.heartbeat.h.t", ""} {
		f.Add(sub)
	}
	f.Fuzz(func(t *testing.T, subject string) {
		host, target, err := s.ParseHeartbeat(subject)
		if err != nil {
			return
		}
		// Whatever parses is exactly the subject of its host and target.
		if got := s.Heartbeat(host, target); got != subject {
			t.Fatalf("ParseHeartbeat(%q) = %q, %q, which builds %q", subject, host, target, got)
		}
	})
}
