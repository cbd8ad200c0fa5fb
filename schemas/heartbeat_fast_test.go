package schemas

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/taskselector/taskselector/internal/strictjson"
)

func sampleHeartbeat() Heartbeat {
	return Heartbeat{V: 1, TaskID: "n00dles-7", Epoch: 7, PID: 4242, Host: "home", Target: "n00dles",
		Type: "harvest", Seq: 12, RAM: HeartbeatRAM{BudgetMiB: 4104, UsedMiB: 3900}, Progress: new(0.25),
		SentAt: time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)}
}

func TestDecodeHeartbeatIntoReusesStrings(t *testing.T) {
	h1 := sampleHeartbeat()
	b1 := AppendHeartbeat(nil, &h1)
	var h Heartbeat
	if err := DecodeHeartbeatInto(b1, &h); err != nil {
		t.Fatal(err)
	}
	task, host, prog := unsafe.StringData(h.TaskID), unsafe.StringData(h.Host), h.Progress
	// The next heartbeat of the same task: same names and progress, new seq and time.
	h2 := h1
	h2.Seq, h2.SentAt = 13, h1.SentAt.Add(time.Second)
	if err := DecodeHeartbeatInto(AppendHeartbeat(nil, &h2), &h); err != nil {
		t.Fatal(err)
	}
	if unsafe.StringData(h.TaskID) != task || unsafe.StringData(h.Host) != host || h.Progress != prog {
		t.Error("equal strings or progress were not reused")
	}
	if h.Seq != 13 || !h.SentAt.Equal(h2.SentAt) {
		t.Errorf("decoded %+v", h)
	}
	// A changed progress gets a fresh pointer: the old one is not overwritten.
	h2.Progress = new(0.5)
	if err := DecodeHeartbeatInto(AppendHeartbeat(nil, &h2), &h); err != nil {
		t.Fatal(err)
	}
	if h.Progress == prog || *prog != 0.25 || *h.Progress != 0.5 {
		t.Errorf("progress %v (old pointer now %v)", *h.Progress, *prog)
	}
	// Another task's heartbeat replaces the strings.
	h3 := h1
	h3.TaskID, h3.Host = "joesguns-1", "foodnstuff"
	if err := DecodeHeartbeatInto(AppendHeartbeat(nil, &h3), &h); err != nil {
		t.Fatal(err)
	}
	if h.TaskID != "joesguns-1" || h.Host != "foodnstuff" {
		t.Errorf("decoded %+v", h)
	}
}

func TestDecodeHeartbeatIntoAllocations(t *testing.T) {
	h1 := sampleHeartbeat()
	same := AppendHeartbeat(nil, &h1)
	h2 := h1
	h2.Progress = new(0.75)
	other := AppendHeartbeat(nil, &h2)
	var h Heartbeat
	if err := DecodeHeartbeatInto(same, &h); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = DecodeHeartbeatInto(same, &h) }); n != 0 {
		t.Errorf("repeated heartbeat: %v allocations, want 0", n)
	}
	flip := false
	if n := testing.AllocsPerRun(100, func() {
		flip = !flip
		if flip {
			_ = DecodeHeartbeatInto(other, &h)
		} else {
			_ = DecodeHeartbeatInto(same, &h)
		}
	}); n > 1 {
		t.Errorf("heartbeat with a new progress: %v allocations, want at most 1", n)
	}
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() { buf = AppendHeartbeat(buf[:0], &h1) }); n != 0 {
		t.Errorf("AppendHeartbeat: %v allocations, want 0", n)
	}
}

func TestDecodeHeartbeatIntoLeavesHOnError(t *testing.T) {
	h := sampleHeartbeat()
	before := h
	b := AppendHeartbeat(nil, &h)
	bad := []byte(strings.Replace(string(b), `"seq":12`, `"seq":0`, 1))
	if err := DecodeHeartbeatInto(bad, &h); err == nil {
		t.Fatal("seq 0 accepted")
	}
	if !reflect.DeepEqual(h, before) {
		t.Errorf("h changed on error: %+v", h)
	}
}

// TestDepthLimit checks that the fast decoder nests exactly as deep as
// encoding/json accepts, and no deeper.
func TestDepthLimit(t *testing.T) {
	h := sampleHeartbeat()
	b := AppendHeartbeat(nil, &h)
	nest := func(open, close string, depth int) []byte {
		// depth counts the top-level object.
		inner := strings.Repeat(open, depth-1) + strings.Repeat(close, depth-1)
		return []byte(string(b[:len(b)-1]) + `,"zz":` + inner + "}")
	}
	for _, c := range []struct{ open, close string }{{"[", "]"}, {`{"a":`, "}"}} {
		for _, depth := range []int{2, strictjson.MaxDepth - 1, strictjson.MaxDepth, strictjson.MaxDepth + 1} {
			in := nest(c.open, c.close, depth)
			if c.open != "[" {
				// {"a":{"a":...}} needs a value at the bottom.
				in = []byte(string(b[:len(b)-1]) + `,"zz":` + strings.Repeat(c.open, depth-1) + "1" + strings.Repeat(c.close, depth-1) + "}")
			}
			_, strictErr := DecodeHeartbeat(in)
			var got Heartbeat
			fastErr := DecodeHeartbeatInto(in, &got)
			wantOK := depth <= strictjson.MaxDepth
			if (strictErr == nil) != wantOK || (fastErr == nil) != wantOK {
				t.Errorf("%s depth %d: strict %v, fast %v, want ok=%v", c.open, depth, strictErr, fastErr, wantOK)
			}
			if json.Valid(in) != wantOK {
				t.Errorf("%s depth %d: encoding/json's own limit differs", c.open, depth)
			}
		}
	}
}

func TestAppendHeartbeatRoundTrip(t *testing.T) {
	hs := []Heartbeat{sampleHeartbeat()}
	h := sampleHeartbeat()
	h.TaskID, h.Host, h.Target, h.Type = "a\"b\\c\n\t\r\x01\x1f", "hôte😀", "I.I.I.I", "x\u2028y\u2029z</script>&"
	h.Progress = new(1e-9)
	h.SentAt = time.Date(2025, 3, 1, 14, 0, 0, 0, time.FixedZone("x", 7200))
	h.Epoch, h.Seq, h.PID = 1<<64-1, 1<<63, 1<<63-1
	hs = append(hs, h)
	h = sampleHeartbeat()
	h.Progress = nil
	h.V = 0
	hs = append(hs, h)
	for _, h := range hs {
		b := AppendHeartbeat(nil, &h)
		if !json.Valid(b) {
			t.Fatalf("invalid JSON: %s", b)
		}
		var got Heartbeat
		if err := DecodeHeartbeatInto(b, &got); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		strict, err := DecodeHeartbeat(b)
		if err != nil {
			t.Fatal(err)
		}
		want := h
		want.V = Version
		want.SentAt = h.SentAt.UTC()
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(strict, want) {
			t.Errorf("round trip of %s:\n got %+v\nwant %+v", b, got, want)
		}
		// The same bytes as encoding/json would give the same message.
		m, err := Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		viaJSON, _ := DecodeHeartbeat(m)
		if !reflect.DeepEqual(viaJSON, want) {
			t.Errorf("Marshal and AppendHeartbeat disagree: %s vs %s", m, b)
		}
		if !strings.HasSuffix(string(b), `Z"}`) {
			t.Errorf("time not written in UTC: %s", b)
		}
	}
	// Invalid UTF-8 is written as U+FFFD, as encoding/json does.
	h = sampleHeartbeat()
	h.Host = "a\xffb"
	b := AppendHeartbeat(nil, &h)
	got, err := DecodeHeartbeat(b)
	if err != nil || got.Host != "a\uFFFDb" {
		t.Errorf("invalid UTF-8: %s: %+v %v", b, got, err)
	}
}

func TestMarshal(t *testing.T) {
	h := sampleHeartbeat()
	h.V = 0
	h.SentAt = time.Date(2025, 3, 1, 14, 0, 0, 5, time.FixedZone("x", 7200))
	b, err := Marshal(&h)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"v":1`) || !strings.Contains(string(b), `"sent_at":"2025-03-01T12:00:00.000000005Z"`) {
		t.Errorf("Marshal: %s", b)
	}
	if h.V != 0 || h.SentAt.Location().String() != "x" {
		t.Error("Marshal modified its argument")
	}
	// Nested times are converted on a copy.
	conf := time.Date(2025, 1, 1, 3, 0, 0, 0, time.FixedZone("y", 3600))
	st := TaskState{Target: "t", Phase: "till", Epoch: 1, UpdatedAt: conf,
		Task: &TaskRecord{TaskID: "t-1", Type: "till", Host: "h", State: TaskLaunching, LaunchedAt: conf, ConfirmedAt: &conf}}
	b, err = Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "+01:00") || strings.Count(string(b), "2025-01-01T02:00:00Z") != 3 {
		t.Errorf("Marshal: %s", b)
	}
	if st.Task.LaunchedAt.Location().String() != "y" || st.Task.ConfirmedAt.Location().String() != "y" {
		t.Error("Marshal modified the task record")
	}
	ps := PsReply{Host: "h", Tasks: []PsTask{{TaskID: "a", Epoch: 1, PID: 1, Target: "t", Type: "x", StartedAt: conf}}}
	if b, err = Marshal(ps); err != nil || !strings.Contains(string(b), "02:00:00Z") || ps.Tasks[0].StartedAt.Location().String() != "y" {
		t.Errorf("Marshal ps: %s %v", b, err)
	}
	// Invalid messages are refused, with the field named.
	h.PID = 0
	if _, err := Marshal(h); err == nil || !strings.Contains(err.Error(), `field "pid"`) {
		t.Errorf("Marshal of pid 0: %v", err)
	}
	h.PID, h.V = 1, 2
	if _, err := Marshal(h); err == nil || !strings.Contains(err.Error(), "unsupported version 2") {
		t.Errorf("Marshal of v 2: %v", err)
	}
	if _, err := Marshal(nil); err == nil {
		t.Error("Marshal(nil) succeeded")
	}
	if _, err := Marshal((*Heartbeat)(nil)); err == nil {
		t.Error("Marshal of a nil pointer succeeded")
	}
	// Too large.
	big := LaunchRequest{TaskID: "a", Epoch: 1, Target: "t", Type: "x", Args: map[string]any{"pad": strings.Repeat("x", MaxMessageBytes)}}
	if _, err := Marshal(big); err == nil || !strings.Contains(err.Error(), "over the 65536-byte limit") {
		t.Errorf("Marshal of a large message: %v", err)
	}
}

// TestSyntaxErrors feeds malformed JSON to both heartbeat decoders: each must
// reject it as invalid JSON, as encoding/json does.
func TestSyntaxErrors(t *testing.T) {
	h := sampleHeartbeat()
	good := string(AppendHeartbeat(nil, &h))
	prefix := good[:len(good)-1] + `,"zz":`
	for _, v := range []string{
		`tru`, `nul`, `falsy`, `t`, `-`, `1.`, `1e`, `1e+`, `.5`, `+1`, `01`, `Infinity`, `NaN`, `'x'`,
		`"\u12"`, `"\u12g4"`, `"\q"`, `"x`, `"x\`, `"x\u`, `[1,]`, `[1 2]`, `[`, `[}`, `{"b"}`, `{"b":}`,
		`{,}`, `{1:2}`, `{"b":1,}`, `{"b" 1}`, "\"a\x00b\"", "\"\x1f\"",
	} {
		for _, in := range []string{prefix + v + "}", prefix + v} {
			if json.Valid([]byte(in)) {
				t.Fatalf("%q is valid JSON", in)
			}
			_, e1 := DecodeHeartbeat([]byte(in))
			var got Heartbeat
			e2 := DecodeHeartbeatInto([]byte(in), &got)
			for _, err := range []error{e1, e2} {
				var fe *FieldError
				if !errors.As(err, &fe) || fe.Field != "" || !strings.Contains(fe.Problem, "invalid JSON") {
					t.Errorf("%q: got %v, want an invalid JSON error", in, err)
				}
			}
		}
	}
	for _, in := range []string{"\xef\xbb\xbf" + good, good + "}", "{", "", " ", "[]", `"x"`, "1", good[:1], `{"v"`, `{"v":1`} {
		_, e1 := DecodeHeartbeat([]byte(in))
		var got Heartbeat
		e2 := DecodeHeartbeatInto([]byte(in), &got)
		if e1 == nil || e2 == nil {
			t.Errorf("%q accepted: %v / %v", in, e1, e2)
		}
	}
}

// TestAnyByteAfterRAM puts every byte where the key after "ram" starts.
// The fast decoder's table of expected keys used to hold "\x00" for the two
// nested ram fields, so that a NUL byte there was taken for a key: the fast
// decoder accepted what DecodeHeartbeat rejects as invalid JSON.
func TestAnyByteAfterRAM(t *testing.T) {
	h := sampleHeartbeat()
	b := string(AppendHeartbeat(nil, &h))
	i := strings.Index(b, `"progress":`)
	for c := range 256 {
		for _, in := range []string{b[:i] + string(rune(c)) + " 5," + b[i:], b[:i] + string([]byte{byte(c)}) + `":5,` + b[i:]} {
			_, serr := DecodeHeartbeat([]byte(in))
			var got Heartbeat
			ferr := DecodeHeartbeatInto([]byte(in), &got)
			if (serr == nil) != (ferr == nil) {
				t.Errorf("%q: strict %v, fast %v", in, serr, ferr)
			}
		}
	}
}
