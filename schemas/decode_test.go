package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// del marks a member to delete in a strictCase mutation.
type delMarker struct{}

var del = delMarker{}

// raw is a JSON literal to put in place, verbatim.
func raw(s string) json.RawMessage { return json.RawMessage(s) }

var pathPart = regexp.MustCompile(`[^.\[\]]+|\[\d+\]`)

// parsePath turns "tasks[0].pid" into {"tasks", 0, "pid"}.
func parsePath(p string) []any {
	var out []any
	for _, part := range pathPart.FindAllString(p, -1) {
		if strings.HasPrefix(part, "[") {
			n, _ := strconv.Atoi(part[1 : len(part)-1])
			out = append(out, n)
			continue
		}
		out = append(out, part)
	}
	return out
}

// with returns base with the member at path set to v (or deleted for del).
func with(t testing.TB, base []byte, path string, v any) []byte {
	t.Helper()
	if v == del {
		return mutate(t, base, parsePath(path), nil, true)
	}
	return mutate(t, base, parsePath(path), v, false)
}

type strictCase struct {
	name    string
	in      []byte
	field   string // field the error names ("" for the whole message)
	problem string // substring of the problem; "" when the message is valid
}

func checkStrict(t *testing.T, msg string, decode func([]byte) error, cases []strictCase) {
	t.Helper()
	for _, c := range cases {
		err := decode(c.in)
		if c.problem == "" {
			if err != nil {
				t.Errorf("%s: %s: unexpected error: %v", msg, c.name, err)
			}
			continue
		}
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%s: %s: error %v, want a *FieldError", msg, c.name, err)
			continue
		}
		if fe.Message != msg || fe.Field != c.field || !strings.Contains(fe.Problem, c.problem) {
			t.Errorf("%s: %s: got %v, want field %q with problem %q", msg, c.name, err, c.field, c.problem)
		}
		if c.field != "" && !strings.Contains(err.Error(), `field "`+c.field+`"`) {
			t.Errorf("%s: %s: error %q does not name the field", msg, c.name, err)
		}
	}
}

func decodeErr[T any](f func([]byte) (T, error)) func([]byte) error {
	return func(b []byte) error { _, err := f(b); return err }
}

// padTo pads a message with an unknown field so that it is n bytes long.
func padTo(t testing.TB, base []byte, n int) []byte {
	t.Helper()
	b := with(t, base, "zz_pad", "")
	b = []byte(strings.Replace(string(b), `"zz_pad":""`, `"zz_pad":"`+strings.Repeat("x", n-len(b))+`"`, 1))
	if len(b) != n {
		t.Fatalf("padTo: %d bytes, want %d", len(b), n)
	}
	return b
}

func indented(t testing.TB, b []byte) []byte {
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// appendMember adds a member (raw text) at the end of an encoded object.
func appendMember(b []byte, member string) []byte {
	return []byte(string(b[:len(b)-1]) + "," + member + "}")
}

func heartbeatCases(t testing.TB) []strictCase {
	base := examples(t, nameHeartbeat)[0]
	name256 := strings.Repeat("é", 128)
	return []strictCase{
		{"valid", base, "", ""},
		{"exactly 64 KiB", padTo(t, base, MaxMessageBytes), "", ""},
		{"64 KiB + 1", padTo(t, base, MaxMessageBytes+1), "", "65537 bytes, over the 65536-byte limit"},
		{"unknown fields of every type", []byte(strings.Replace(string(base), `{`,
			`{"zz":{"a":[1,{"b":null}],"c":"\u00e9\ud83d\ude00"},"zy":[],"zx":true,"zw":-1.5e3,"zv":null,`, 1)), "", ""},
		{"indented", indented(t, base), "", ""},
		{"fast-path order, spaced", []byte(`{ "v" : 1 , "task_id":"a","epoch":1,"pid":2,"host":"h","target":"t","type":"x","seq":3,` +
			`"ram" : { "budget_mib" : 1 , "used_mib":2 } ,"sent_at":"2025-03-01T12:00:00Z" }`), "", ""},
		{"fast-path order, bad used_mib", []byte(`{"v":1,"task_id":"a","epoch":1,"pid":2,"host":"h","target":"t","type":"x","seq":3,` +
			`"ram":{"budget_mib":1,"used_mib":-2},"progress":0.5,"sent_at":"2025-03-01T12:00:00Z"}`), "ram.used_mib", "negative"},
		{"whitespace around", []byte(" \n\t" + string(base) + "\r\n "), "", ""},
		{"v missing", with(t, base, "v", del), "v", "missing"},
		{"v 2", with(t, base, "v", 2), "v", "unsupported version 2"},
		{"v 0", with(t, base, "v", 0), "v", "unsupported version 0"},
		{"v string", with(t, base, "v", "1"), "v", "not a number"},
		{"v 1.0", with(t, base, "v", raw("1.0")), "v", "not an integer"},
		{"v null", with(t, base, "v", nil), "v", "null"},
		{"task_id missing", with(t, base, "task_id", del), "task_id", "missing"},
		{"task_id empty", with(t, base, "task_id", ""), "task_id", "empty"},
		{"task_id null", with(t, base, "task_id", nil), "task_id", "null"},
		{"task_id number", with(t, base, "task_id", 5), "task_id", "not a string"},
		{"epoch missing", with(t, base, "epoch", del), "epoch", "missing"},
		{"epoch 0 (zero is not missing, but not valid)", with(t, base, "epoch", 0), "epoch", "at least 1"},
		{"epoch negative", with(t, base, "epoch", -3), "epoch", "negative"},
		{"epoch -0", with(t, base, "epoch", raw("-0")), "epoch", "at least 1"},
		{"epoch max uint64", with(t, base, "epoch", raw("18446744073709551615")), "", ""},
		{"epoch over uint64", with(t, base, "epoch", raw("18446744073709551616")), "epoch", "out of range"},
		{"epoch 1e400", with(t, base, "epoch", raw("1e400")), "epoch", "not an integer"},
		{"epoch fraction", with(t, base, "epoch", raw("1.5")), "epoch", "not an integer"},
		{"pid missing", with(t, base, "pid", del), "pid", "missing"},
		{"pid 0", with(t, base, "pid", 0), "pid", "at least 1"},
		{"pid negative", with(t, base, "pid", -1), "pid", "negative"},
		{"pid over int64", with(t, base, "pid", raw("9223372036854775808")), "pid", "out of range"},
		{"pid max int64", with(t, base, "pid", raw("9223372036854775807")), "", ""},
		{"pid bool", with(t, base, "pid", true), "pid", "not a number"},
		{"host missing", with(t, base, "host", del), "host", "missing"},
		{"host 256 bytes", with(t, base, "host", name256), "", ""},
		{"host 257 bytes", with(t, base, "host", name256+"x"), "host", "longer than 256 bytes"},
		{"host invalid UTF-8", []byte(strings.Replace(string(base), `"host":"home"`, "\"host\":\"ho\xffme\"", 1)), "host", "invalid UTF-8"},
		{"host escaped", []byte(strings.Replace(string(base), `"host":"home"`, `"host":"h\u00f4te\n\"\\"`, 1)), "", ""},
		{"target missing", with(t, base, "target", del), "target", "missing"},
		{"target empty", with(t, base, "target", ""), "target", "empty"},
		{"target 257 bytes", with(t, base, "target", strings.Repeat("t", 257)), "target", "longer than 256"},
		{"type missing", with(t, base, "type", del), "type", "missing"},
		{"type array", with(t, base, "type", []any{"till"}), "type", "not a string"},
		{"seq missing", with(t, base, "seq", del), "seq", "missing"},
		{"seq 0", with(t, base, "seq", 0), "seq", "at least 1"},
		{"ram missing", with(t, base, "ram", del), "ram", "missing"},
		{"ram null", with(t, base, "ram", nil), "ram", "null"},
		{"ram string", with(t, base, "ram", "x"), "ram", "not an object"},
		{"ram.used_mib negative", with(t, base, "ram.used_mib", -1), "ram.used_mib", "negative"},
		{"ram.used_mib missing", with(t, base, "ram.used_mib", del), "ram.used_mib", "missing"},
		{"ram.budget_mib 1e400", with(t, base, "ram.budget_mib", raw("1e400")), "ram.budget_mib", "not an integer"},
		{"ram.budget_mib null", with(t, base, "ram.budget_mib", nil), "ram.budget_mib", "null"},
		{"ram.used_mib MaxMiB", with(t, base, "ram.used_mib", raw("1099511627776")), "", ""},
		{"ram.used_mib MaxMiB+1", with(t, base, "ram.used_mib", raw("1099511627777")), "ram.used_mib", "greater than 1099511627776"},
		{"ram.used_mib MaxInt64-1", with(t, base, "ram.used_mib", raw("9223372036854775806")), "ram.used_mib", "greater than 1099511627776"},
		{"ram.budget_mib MaxInt64", with(t, base, "ram.budget_mib", raw("9223372036854775807")), "ram.budget_mib", "greater than 1099511627776"},
		{"ram.budget_mib over int64", with(t, base, "ram.budget_mib", raw("9223372036854775808")), "ram.budget_mib", "out of range"},
		{"progress absent", with(t, base, "progress", del), "", ""},
		{"progress null", with(t, base, "progress", nil), "", ""},
		{"progress 1", with(t, base, "progress", 1), "", ""},
		{"progress 1.5", with(t, base, "progress", 1.5), "progress", "greater than 1"},
		{"progress negative", with(t, base, "progress", -0.1), "progress", "negative"},
		{"progress 1e400", with(t, base, "progress", raw("1e400")), "progress", "not finite"},
		{"progress -1e400", with(t, base, "progress", raw("-1e400")), "progress", "not finite"},
		{"progress 1e-400 underflows to 0", with(t, base, "progress", raw("1e-400")), "", ""},
		{"progress string", with(t, base, "progress", "0.5"), "progress", "not a number"},
		{"sent_at missing", with(t, base, "sent_at", del), "sent_at", "missing"},
		{"sent_at garbage", with(t, base, "sent_at", "yesterday"), "sent_at", "not an RFC 3339 time"},
		{"sent_at number", with(t, base, "sent_at", 12), "sent_at", "not a string"},
		{"sent_at with offset", with(t, base, "sent_at", "2025-03-01T14:00:00.5+02:00"), "", ""},
		{"case-sensitive keys", []byte(strings.Replace(string(base), `"pid"`, `"PID"`, 1)), "pid", "missing"},
		{"escaped key", []byte(strings.Replace(string(base), `"task_id"`, `"task\u005fid"`, 1)), "", ""},
		{"duplicate key: last wins", []byte(strings.Replace(string(base), `{`, `{"pid":"bad","ram":7,`, 1)), "", ""},
		{"duplicate key: last is bad", appendMember(base, `"seq":0`), "seq", "at least 1"},
		{"empty input", []byte(""), "", "invalid JSON"},
		{"truncated", base[:len(base)-1], "", "invalid JSON"},
		{"trailing data", append(append([]byte{}, base...), " x"...), "", "invalid JSON"},
		{"two objects", append(append([]byte{}, base...), base...), "", "invalid JSON"},
		{"trailing comma", appendMember(base, ``), "", "invalid JSON"},
		{"top-level array", []byte(`[` + string(base) + `]`), "", "not a JSON object"},
		{"top-level null", []byte(`null`), "", "not a JSON object"},
		{"control character in string", []byte(strings.Replace(string(base), `"home"`, "\"ho\x01me\"", 1)), "", "invalid JSON"},
		{"bad escape", []byte(strings.Replace(string(base), `"home"`, `"ho\xme"`, 1)), "", "invalid JSON"},
		{"leading zero", with(t, base, "pid", raw("0")), "pid", "at least 1"},
		{"bad number", []byte(strings.Replace(string(base), `"pid":4242`, `"pid":04242`, 1)), "", "invalid JSON"},
	}
}

func TestHeartbeatStrictness(t *testing.T) {
	cases := heartbeatCases(t)
	checkStrict(t, nameHeartbeat, decodeErr(DecodeHeartbeat), cases)
	checkStrict(t, nameHeartbeat, func(b []byte) error {
		var h Heartbeat
		return DecodeHeartbeatInto(b, &h)
	}, cases)
	// Both decoders return the same errors, word for word, for field problems.
	for _, c := range cases {
		_, e1 := DecodeHeartbeat(c.in)
		var h Heartbeat
		e2 := DecodeHeartbeatInto(c.in, &h)
		if c.field != "" && (e1 == nil || e2 == nil || e1.Error() != e2.Error()) {
			t.Errorf("%s: strict %q, fast %q", c.name, e1, e2)
		}
	}
}

func TestHeartbeatDecodedValues(t *testing.T) {
	base := examples(t, nameHeartbeat)[0]
	in := with(t, base, "sent_at", "2025-03-01T14:00:00.5+02:00")
	in = []byte(strings.Replace(string(in), `"home"`, `"h\u00f4te\n\"\\\ud83d\ude00\ud800x"`, 1))
	in = []byte(strings.Replace(string(in), `{`, `{"pid":"bad","ram":{"budget_mib":-1},`, 1))
	want := Heartbeat{V: 1, TaskID: "n00dles-7", Epoch: 7, PID: 4242, Host: "hôte\n\"\\😀\uFFFDx",
		Target: "n00dles", Type: "harvest", Seq: 12, RAM: HeartbeatRAM{BudgetMiB: 4104, UsedMiB: 3900},
		Progress: new(0.25), SentAt: time.Date(2025, 3, 1, 12, 0, 0, 5e8, time.UTC)}
	strict, err := DecodeHeartbeat(in)
	if err != nil {
		t.Fatal(err)
	}
	var fast Heartbeat
	if err := DecodeHeartbeatInto(in, &fast); err != nil {
		t.Fatal(err)
	}
	for _, got := range []Heartbeat{strict, fast} {
		if *got.Progress != *want.Progress || got.SentAt != want.SentAt || got.SentAt.Location() != time.UTC {
			t.Errorf("got %+v, want %+v", got, want)
		}
		got.Progress, got.SentAt = want.Progress, want.SentAt
		if got != want {
			t.Errorf("got %+v\nwant %+v", got, want)
		}
	}
}

func TestLaunchRequestStrictness(t *testing.T) {
	base := examples(t, nameLaunchRequest)[0]
	checkStrict(t, nameLaunchRequest, decodeErr(DecodeLaunchRequest), []strictCase{
		{"valid", base, "", ""},
		{"64 KiB + 1", padTo(t, base, MaxMessageBytes+1), "", "over the 65536-byte limit"},
		{"v 3", with(t, base, "v", 3), "v", "unsupported version 3"},
		{"args missing", with(t, base, "args", del), "args", "missing"},
		{"args null", with(t, base, "args", nil), "", ""},
		{"args string", with(t, base, "args", "x"), "args", "not an object"},
		{"args huge number", with(t, base, "args", map[string]any{"n": raw("1e400")}), "args", "not finite"},
		{"args invalid UTF-8", []byte(strings.Replace(string(base), `"spacing_ms"`, "\"sp\xfe\"", 1)), "args", "invalid UTF-8"},
		{"epoch missing", with(t, base, "epoch", del), "epoch", "missing"},
		{"epoch 0", with(t, base, "epoch", 0), "epoch", "at least 1"},
		{"type 257 bytes", with(t, base, "type", strings.Repeat("y", 257)), "type", "longer than 256"},
		{"target empty", with(t, base, "target", ""), "target", "empty"},
		{"ram missing", with(t, base, "ram", del), "ram", "missing"},
		{"ram.helpers_mib negative", with(t, base, "ram.helpers_mib", -5), "ram.helpers_mib", "negative"},
		{"ram.wrapper_mib missing", with(t, base, "ram.wrapper_mib", del), "ram.wrapper_mib", "missing"},
		{"ram.wrapper_mib fraction", with(t, base, "ram.wrapper_mib", 1.5), "ram.wrapper_mib", "not an integer"},
	})
}

func TestLaunchReplyStrictness(t *testing.T) {
	ok, failed := examples(t, nameLaunchReply)[0], examples(t, nameLaunchReply)[1]
	checkStrict(t, nameLaunchReply, decodeErr(DecodeLaunchReply), []strictCase{
		{"pid", ok, "", ""},
		{"error", failed, "", ""},
		{"neither", with(t, ok, "pid", del), "pid", "missing"},
		{"pid 0", with(t, ok, "pid", 0), "pid", "missing"},
		{"both", with(t, ok, "error", map[string]any{"code": "invalid", "message": ""}), "pid", "set together with error"},
		{"pid negative", with(t, ok, "pid", -2), "pid", "negative"},
		{"unknown code", with(t, failed, "error.code", "oops"), "error.code", `unknown value "oops"`},
		{"code missing", with(t, failed, "error.code", del), "error.code", "missing"},
		{"message missing", with(t, failed, "error.message", del), "error.message", "missing"},
		{"error not an object", with(t, failed, "error", 5), "error", "not an object"},
		{"error null means none", with(t, ok, "error", nil), "", ""},
		{"task_id missing", with(t, ok, "task_id", del), "task_id", "missing"},
	})
}

func TestTaskEventStrictness(t *testing.T) {
	done, failed := examples(t, nameTaskEvent)[0], examples(t, nameTaskEvent)[1]
	checkStrict(t, nameTaskEvent, decodeErr(DecodeTaskEvent), []strictCase{
		{"done", done, "", ""},
		{"failed", failed, "", ""},
		{"unknown kind", with(t, done, "kind", "paused"), "kind", `unknown value "paused"`},
		{"kind missing", with(t, done, "kind", del), "kind", "missing"},
		{"failed without reason", with(t, failed, "reason", del), "reason", "required when kind is failed"},
		{"other reasons allowed", with(t, failed, "reason", "oom"), "", ""},
		{"metric negative", with(t, done, "metrics.money", -1), "metrics.money", "negative"},
		{"nested metric negative", with(t, done, "metrics.money", map[string]any{"a": []any{1, -2}}), "metrics.money.a[1]", "negative"},
		{"metric 1e400", with(t, done, "metrics.money", raw("1e400")), "metrics", "not finite"},
		{"metrics not an object", with(t, done, "metrics", []any{}), "metrics", "not an object"},
		{"pid 0", with(t, done, "pid", 0), "pid", "at least 1"},
		{"at missing", with(t, done, "at", del), "at", "missing"},
		{"host 257", with(t, done, "host", strings.Repeat("h", 257)), "host", "longer than 256"},
	})
}

func TestKillStrictness(t *testing.T) {
	req := examples(t, nameKillRequest)[0]
	checkStrict(t, nameKillRequest, decodeErr(DecodeKillRequest), []strictCase{
		{"valid", req, "", ""},
		{"pid 0 (unknown PID)", with(t, req, "pid", 0), "", ""},
		{"pid negative", with(t, req, "pid", -1), "pid", "negative"},
		{"pid missing", with(t, req, "pid", del), "pid", "missing"},
		{"reason missing", with(t, req, "reason", del), "reason", "missing"},
		{"reason invalid UTF-8", []byte(strings.Replace(string(req), "fenced", "fen\xc3ced", 1)), "reason", "invalid UTF-8"},
	})
	rep := examples(t, nameKillReply)[0]
	checkStrict(t, nameKillReply, decodeErr(DecodeKillReply), []strictCase{
		{"valid", rep, "", ""},
		{"running missing", with(t, rep, "running", del), "running", "missing"},
		{"running string", with(t, rep, "running", "no"), "running", "not a boolean"},
		{"running null", with(t, rep, "running", nil), "running", "null"},
		{"task_id empty", with(t, rep, "task_id", ""), "task_id", "empty"},
		{"error failed", with(t, rep, "error", map[string]any{"code": "failed", "message": "no"}), "", ""},
		{"error invalid", with(t, rep, "error", map[string]any{"code": "invalid", "message": ""}), "", ""},
		{"error null means none", with(t, rep, "error", nil), "", ""},
		{"error launch code", with(t, rep, "error", map[string]any{"code": "insufficient_ram", "message": ""}), "error.code", `unknown value "insufficient_ram"`},
		{"error code missing", with(t, rep, "error", map[string]any{"message": ""}), "error.code", "missing"},
		{"error message missing", with(t, rep, "error", map[string]any{"code": "failed"}), "error.message", "missing"},
		{"error not an object", with(t, rep, "error", "failed"), "error", "not an object"},
	})
}

func TestPsStrictness(t *testing.T) {
	req := examples(t, namePsRequest)[1]
	checkStrict(t, namePsRequest, decodeErr(DecodePsRequest), []strictCase{
		{"valid", req, "", ""},
		{"no pids", with(t, req, "pids", del), "", ""},
		{"pid 0", with(t, req, "pids[1]", 0), "pids[1]", "at least 1"},
		{"pid negative", with(t, req, "pids[0]", -1), "pids[0]", "negative"},
		{"pid null", with(t, req, "pids[0]", nil), "pids[0]", "null"},
		{"pids not an array", with(t, req, "pids", "1,2"), "pids", "not an array"},
		{"v missing", with(t, req, "v", del), "v", "missing"},
	})
	rep := examples(t, namePsReply)[0]
	checkStrict(t, namePsReply, decodeErr(DecodePsReply), []strictCase{
		{"valid", rep, "", ""},
		{"tasks missing", with(t, rep, "tasks", del), "tasks", "missing"},
		{"tasks null", with(t, rep, "tasks", nil), "", ""},
		{"task pid 0", with(t, rep, "tasks[0].pid", 0), "tasks[0].pid", "at least 1"},
		{"task epoch missing", with(t, rep, "tasks[0].epoch", del), "tasks[0].epoch", "missing"},
		{"task started_at bad", with(t, rep, "tasks[0].started_at", "2025-13-01T00:00:00Z"), "tasks[0].started_at", "not an RFC 3339 time"},
		{"task ram.helpers_mib negative", with(t, rep, "tasks[0].ram.helpers_mib", -1), "tasks[0].ram.helpers_mib", "negative"},
		{"task null", with(t, rep, "tasks[0]", nil), "tasks[0]", "null"},
		{"host 257", with(t, rep, "host", strings.Repeat("h", 257)), "host", "longer than 256"},
		{"error", with(t, with(t, rep, "tasks", nil), "error", map[string]any{"code": "invalid", "message": "bad"}), "", ""},
		{"error unknown code", with(t, rep, "error", map[string]any{"code": "draining", "message": ""}), "error.code", `unknown value "draining"`},
		{"error message number", with(t, rep, "error", map[string]any{"code": "failed", "message": 3}), "error.message", "not a string"},
		{"task helpers over MaxMiB", with(t, rep, "tasks[0].ram.helpers_mib", raw("1099511627777")), "tasks[0].ram.helpers_mib", "greater than"},
	})
}

func TestHostStatusStrictness(t *testing.T) {
	base := examples(t, nameHostStatus)[0]
	checkStrict(t, nameHostStatus, decodeErr(DecodeHostStatus), []strictCase{
		{"valid", base, "", ""},
		{"total negative", with(t, base, "ram.total_mib", -1), "ram.total_mib", "negative"},
		{"used 1e400", with(t, base, "ram.used_mib", raw("1e400")), "ram.used_mib", "not an integer"},
		{"task id empty", with(t, base, "tasks[0]", ""), "tasks[0]", "empty"},
		{"task id number", with(t, base, "tasks[0]", 3), "tasks[0]", "not a string"},
		{"draining missing", with(t, base, "draining", del), "draining", "missing"},
		{"sent_at missing", with(t, base, "sent_at", del), "sent_at", "missing"},
		{"tasks null", with(t, base, "tasks", nil), "", ""},
	})
}

func TestTargetSpecStrictness(t *testing.T) {
	hack, decl := examples(t, nameTargetSpec)[0], examples(t, nameTargetSpec)[1]
	checkStrict(t, nameTargetSpec, decodeErr(DecodeTargetSpec), []strictCase{
		{"hacking", hack, "", ""},
		{"declared", decl, "", ""},
		{"unknown profile", with(t, hack, "profile", "mining"), "profile", `unknown value "mining"`},
		{"profile missing", with(t, hack, "profile", del), "profile", "missing"},
		{"value absent", with(t, hack, "value", del), "", ""},
		{"value 0", with(t, hack, "value", 0), "value", "greater than 0"},
		{"value negative", with(t, hack, "value", -2), "value", "negative"},
		{"value 1e400", with(t, hack, "value", raw("1e400")), "value", "not finite"},
		{"hacking without metrics", with(t, hack, "metrics", del), "metrics", "needs metrics"},
		{"hack_chance over 1", with(t, hack, "metrics.hack_chance", 1.5), "metrics.hack_chance", "greater than 1"},
		{"hack_fraction over 1", with(t, hack, "metrics.hack_fraction_per_thread", 2), "metrics.hack_fraction_per_thread", "greater than 1"},
		{"money negative", with(t, hack, "metrics.money", -1), "metrics.money", "negative"},
		{"security 1e400", with(t, hack, "metrics.security", raw("1e400")), "metrics.security", "not finite"},
		{"metric missing", with(t, hack, "metrics.hack_time_ms", del), "metrics.hack_time_ms", "missing"},
		{"zero metrics are valid", with(t, hack, "metrics", map[string]any{"security": 0, "min_security": 0, "money": 0,
			"max_money": 0, "growth_log_per_thread": 0, "hack_fraction_per_thread": 0, "hack_chance": 0, "hack_time_ms": 0}), "", ""},
		{"declared without phases", with(t, decl, "phases", del), "phases", "needs at least one phase"},
		{"declared with no phases", with(t, decl, "phases", []any{}), "phases", "needs at least one phase"},
		{"repeat on a middle phase", with(t, decl, "phases[0].repeat", true), "phases[0].repeat", "only the last phase may repeat"},
		{"repeat false on a middle phase", with(t, decl, "phases[0].repeat", false), "", ""},
		{"helpers_full < helpers_min", with(t, decl, "phases[1].helpers_full_mib", 100), "phases[1].helpers_full_mib", "less than helpers_min_mib"},
		{"wrapper negative", with(t, decl, "phases[0].wrapper_mib", -1), "phases[0].wrapper_mib", "negative"},
		{"work_s 0", with(t, decl, "phases[0].work_s", 0), "phases[0].work_s", "greater than 0"},
		{"work_s 1e400", with(t, decl, "phases[0].work_s", raw("1e400")), "phases[0].work_s", "not finite"},
		{"work_s missing", with(t, decl, "phases[1].work_s", del), "phases[1].work_s", "missing"},
		{"phase type 257", with(t, decl, "phases[1].type", strings.Repeat("p", 257)), "phases[1].type", "longer than 256"},
		{"phase type invalid UTF-8", []byte(strings.Replace(string(decl), `"serve"`, "\"se\xedrve\"", 1)), "phases[1].type", "invalid UTF-8"},
	})
}

func TestTaskStateStrictness(t *testing.T) {
	live, empty := examples(t, nameTaskState)[0], examples(t, nameTaskState)[1]
	checkStrict(t, nameTaskState, decodeErr(DecodeTaskState), []strictCase{
		{"live", live, "", ""},
		{"no task", empty, "", ""},
		{"task missing", with(t, empty, "task", del), "task", "missing"},
		{"epoch 0 before any launch", with(t, empty, "epoch", 0), "", ""},
		{"epoch negative", with(t, empty, "epoch", -1), "epoch", "negative"},
		{"unknown state", with(t, live, "task.state", "zombie"), "task.state", `unknown value "zombie"`},
		{"pid 0 while launching", with(t, with(t, live, "task.pid", 0), "task.state", "launching"), "", ""},
		{"confirmed_at optional", with(t, live, "task.confirmed_at", del), "", ""},
		{"launched_at missing", with(t, live, "task.launched_at", del), "task.launched_at", "missing"},
		{"budget negative", with(t, live, "task.budget_mib", -1), "task.budget_mib", "negative"},
		{"phase empty", with(t, live, "phase", ""), "phase", "empty"},
		{"task not an object", with(t, live, "task", []any{}), "task", "not an object"},
		{"blocked", with(t, with(t, empty, "blocked", "launch refused"), "blocked_spec", "abc"), "", ""},
		{"blocked number", with(t, empty, "blocked", 5), "blocked", "not a string"},
		{"blocked_spec invalid UTF-8", []byte(strings.Replace(string(with(t, empty, "blocked_spec", "ab")), `"ab"`, "\"a\xffb\"", 1)), "blocked_spec", "invalid UTF-8"},
		{"budget over MaxMiB", with(t, live, "task.budget_mib", raw("1099511627777")), "task.budget_mib", "greater than"},
	})
}

func TestSelectorStatusStrictness(t *testing.T) {
	base := examples(t, nameSelectorStatus)[0]
	checkStrict(t, nameSelectorStatus, decodeErr(DecodeSelectorStatus), []strictCase{
		{"valid", base, "", ""},
		{"over 64 KiB is fine for status", padTo(t, base, MaxMessageBytes+1), "", ""},
		{"1 MiB + 1", padTo(t, base, MaxStatusBytes+1), "", "over the 1048576-byte limit"},
		{"unknown target state", with(t, base, "targets[1].state", "lost"), "targets[1].state", `unknown value "lost"`},
		{"free negative", with(t, base, "hosts[0].free_mib", -1), "hosts[0].free_mib", "negative"},
		{"failure count negative", with(t, base, "counters.failures.insufficient_ram", -1), "counters.failures.insufficient_ram", "negative"},
		{"counter missing", with(t, base, "counters.kills", del), "counters.kills", "missing"},
		{"optional counter absent", with(t, base, "counters.store_errors", del), "", ""},
		{"backoff level missing", with(t, base, "backoff.level", del), "backoff.level", "missing"},
		{"targets null", with(t, base, "targets", nil), "", ""},
		{"ready string", with(t, base, "ready", "yes"), "ready", "not a boolean"},
		{"disruption absent", with(t, base, "disruption", del), "", ""},
		{"disruption partial", with(t, base, "disruption", "partial"), "", ""},
		{"disruption full", with(t, base, "disruption", "full"), "", ""},
		{"disruption unknown", with(t, base, "disruption", "total"), "disruption", `unknown value "total"`},
		{"disruption not a string", with(t, base, "disruption", 2), "disruption", "not a string"},
		{"fences absent", with(t, base, "counters.fences", del), "", ""},
		{"input_gaps negative", with(t, base, "counters.input_gaps", -1), "counters.input_gaps", "negative"},
		{"reserved over MaxMiB", with(t, base, "hosts[0].reserved_mib", raw("9223372036854775806")), "hosts[0].reserved_mib", "greater than"},
		{"role leader", with(t, base, "role", "leader"), "", ""},
		{"role standby", with(t, base, "role", "standby"), "", ""},
		{"role absent", with(t, base, "role", del), "", ""},
		{"role unknown", with(t, base, "role", "follower"), "role", `unknown value "follower"`},
		{"term negative", with(t, base, "term", -1), "term", "negative"},
		{"leader not a string", with(t, base, "leader", 3), "leader", "not a string"},
		{"leader invalid UTF-8", []byte(strings.Replace(string(with(t, base, "leader", "ab")), `"ab"`, "\"a\xffb\"", 1)), "leader", "invalid UTF-8"},
	})
}

func TestValidateGoValues(t *testing.T) {
	good, err := DecodeHeartbeat(examples(t, nameHeartbeat)[0])
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		mod     func(h *Heartbeat)
		field   string
		problem string
	}{
		{"NaN progress", func(h *Heartbeat) { h.Progress = new(math.NaN()) }, "progress", "not finite"},
		{"Inf progress", func(h *Heartbeat) { h.Progress = new(math.Inf(1)) }, "progress", "not finite"},
		{"invalid UTF-8 host", func(h *Heartbeat) { h.Host = "a\xffb" }, "host", "invalid UTF-8"},
		{"negative budget", func(h *Heartbeat) { h.RAM.BudgetMiB = -1 }, "ram.budget_mib", "negative"},
		{"budget over MaxMiB", func(h *Heartbeat) { h.RAM.BudgetMiB = MaxMiB + 1 }, "ram.budget_mib", "greater than"},
		{"zero version", func(h *Heartbeat) { h.V = 0 }, "v", "unsupported version 0"},
		{"year 10000", func(h *Heartbeat) { h.SentAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, "sent_at", "out of range"},
	}
	for _, c := range cases {
		h := good
		c.mod(&h)
		err := h.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !strings.Contains(fe.Problem, c.problem) {
			t.Errorf("%s: got %v, want field %q problem %q", c.name, err, c.field, c.problem)
		}
	}
	spec := TargetSpec{V: 1, Profile: ProfileHacking, Metrics: &HackingMetrics{Security: math.NaN()}}
	if err := spec.Validate(); err == nil || !strings.Contains(err.Error(), `"metrics.security": not finite`) {
		t.Errorf("NaN metric: %v", err)
	}
	ev := TaskEvent{V: 1, TaskID: "a", Epoch: 1, PID: 1, Host: "h", Target: "t", Type: "x", Kind: EventDone,
		Metrics: map[string]any{"a": -1, "b": json.Number("-2"), "c": float32(math.Inf(1))}}
	if err := ev.Validate(); err == nil || !strings.Contains(err.Error(), `"metrics.a": negative`) {
		t.Errorf("negative int metric: %v", err)
	}
	ev.Metrics = map[string]any{"b": json.Number("-2")}
	if err := ev.Validate(); err == nil || !strings.Contains(err.Error(), `"metrics.b": negative`) {
		t.Errorf("negative json.Number metric: %v", err)
	}
	ev.Metrics = map[string]any{"c": float32(math.Inf(1))}
	if err := ev.Validate(); err == nil || !strings.Contains(err.Error(), `"metrics.c": not finite`) {
		t.Errorf("infinite float32 metric: %v", err)
	}
	ev.Metrics = map[string]any{"d": uint8(3), "e": "text", "f": []any{true, nil, 1.5}}
	if err := ev.Validate(); err != nil {
		t.Errorf("valid metrics: %v", err)
	}
}

func TestFieldErrorFormat(t *testing.T) {
	_, err := DecodeHeartbeat(with(t, examples(t, nameHeartbeat)[0], "ram.used_mib", -1))
	if got, want := err.Error(), `schemas: heartbeat: field "ram.used_mib": negative`; got != want {
		t.Fatalf("error %q, want %q", got, want)
	}
	_, err = DecodeHeartbeat([]byte("{"))
	if !strings.HasPrefix(err.Error(), "schemas: heartbeat: invalid JSON") {
		t.Fatalf("syntax error %q", err)
	}
}
