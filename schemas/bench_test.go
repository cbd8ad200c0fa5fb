package schemas

import (
	"encoding/json"
	"testing"
	"time"
)

// heartbeatSequence returns n successive heartbeats of one task, as a worker
// sends them: seq, time, used RAM and progress change; the names do not.
func heartbeatSequence(n int) [][]byte {
	h := sampleHeartbeat()
	out := make([][]byte, n)
	for i := range out {
		h.Seq = uint64(i + 1)
		h.SentAt = h.SentAt.Add(time.Second + time.Duration(i)*time.Microsecond)
		h.RAM.UsedMiB = 3900 + int64(i%50)
		h.Progress = new(float64(i) / float64(n))
		out[i] = AppendHeartbeat(nil, &h)
	}
	return out
}

// BenchmarkHeartbeatDecodeFast decodes the same heartbeat over and over into
// one Heartbeat (every string and the progress are reused).
func BenchmarkHeartbeatDecodeFast(b *testing.B) {
	h0 := sampleHeartbeat()
	msg := AppendHeartbeat(nil, &h0)
	var h Heartbeat
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if err := DecodeHeartbeatInto(msg, &h); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHeartbeatDecodeFastSequence decodes a task's successive
// heartbeats (new seq, time and progress each time).
func BenchmarkHeartbeatDecodeFastSequence(b *testing.B) {
	msgs := heartbeatSequence(64)
	var h Heartbeat
	b.ReportAllocs()
	b.SetBytes(int64(len(msgs[0])))
	i := 0
	for b.Loop() {
		if err := DecodeHeartbeatInto(msgs[i%len(msgs)], &h); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkHeartbeatDecodeJSON is the strict, encoding/json based decoder.
func BenchmarkHeartbeatDecodeJSON(b *testing.B) {
	h0 := sampleHeartbeat()
	msg := AppendHeartbeat(nil, &h0)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := DecodeHeartbeat(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHeartbeatDecodePlainJSON is plain json.Unmarshal with no
// strictness at all, for reference.
func BenchmarkHeartbeatDecodePlainJSON(b *testing.B) {
	h0 := sampleHeartbeat()
	msg := AppendHeartbeat(nil, &h0)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		var h Heartbeat
		if err := json.Unmarshal(msg, &h); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHeartbeatEncodeFast(b *testing.B) {
	h := sampleHeartbeat()
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendHeartbeat(buf[:0], &h)
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkHeartbeatEncodeMarshal is Marshal (validation + encoding/json).
func BenchmarkHeartbeatEncodeMarshal(b *testing.B) {
	h := sampleHeartbeat()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Marshal(&h); err != nil {
			b.Fatal(err)
		}
	}
}

// sampleTaskState is a TaskState as the selector persists it: a confirmed,
// active task.
func sampleTaskState() TaskState {
	launched := time.Date(2025, 3, 1, 11, 59, 58, 987654321, time.UTC)
	confirmed := launched.Add(1234567 * time.Microsecond)
	return TaskState{V: 1, Target: "omega-net", Phase: "harvest", Epoch: 41,
		Task: &TaskRecord{TaskID: "omega-net-41", PID: 183422, Type: "harvest", Host: "worker-17",
			State: TaskActive, BudgetMiB: 28672, WrapperMiB: 8, LaunchedAt: launched, ConfirmedAt: &confirmed},
		UpdatedAt: confirmed.Add(3 * time.Millisecond)}
}

// sampleTargetSpecs are TargetSpecs as operators declare them: one of each
// profile.
func sampleTargetSpecs() []TargetSpec {
	return []TargetSpec{
		{V: 1, Profile: ProfileHacking, Value: new(3.5), Metrics: &HackingMetrics{Security: 11.234, MinSecurity: 5,
			Money: 1234567.89, MaxMoney: 62500000, GrowthLogPerThread: 0.0237, HackFractionPerThread: 0.0021875,
			HackChance: 0.8731, HackTimeMS: 41234.5}},
		{V: 1, Profile: ProfileDeclared, Phases: []Phase{
			{Type: "index", WrapperMiB: 16, HelpersMinMiB: 64, HelpersFullMiB: 1024, WorkS: 120},
			{Type: "serve", WrapperMiB: 16, HelpersMinMiB: 128, HelpersFullMiB: 512, WorkS: 60.5, Repeat: true}}},
	}
}

func mustMarshal(tb testing.TB, m Message) []byte {
	tb.Helper()
	b, err := Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// benchDecode times a decoder on msgs, in turn. The Decode benchmarks run
// the strict decoder, the reference (the decoder it replaced) and plain
// encoding/json with no strictness, so that their ratios come from one run.
func benchDecode[T any](b *testing.B, msgs [][]byte, decode func([]byte) (T, error)) {
	b.ReportAllocs()
	b.SetBytes(int64(len(msgs[0])))
	i := 0
	for b.Loop() {
		if _, err := decode(msgs[i%len(msgs)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func plainJSON[T any](b []byte) (T, error) {
	var v T
	err := json.Unmarshal(b, &v)
	return v, err
}

func BenchmarkDecodeTaskState(b *testing.B) {
	ts := sampleTaskState()
	msgs := [][]byte{mustMarshal(b, &ts)}
	b.Run("strict", func(b *testing.B) { benchDecode(b, msgs, DecodeTaskState) })
	b.Run("reference", func(b *testing.B) { benchDecode(b, msgs, referenceDecode[TaskState]) })
	b.Run("plainjson", func(b *testing.B) { benchDecode(b, msgs, plainJSON[TaskState]) })
}

func BenchmarkDecodeTargetSpec(b *testing.B) {
	var msgs [][]byte
	for _, s := range sampleTargetSpecs() {
		msgs = append(msgs, mustMarshal(b, &s))
	}
	b.Run("strict", func(b *testing.B) { benchDecode(b, msgs, DecodeTargetSpec) })
	b.Run("reference", func(b *testing.B) { benchDecode(b, msgs, referenceDecode[TargetSpec]) })
	b.Run("plainjson", func(b *testing.B) { benchDecode(b, msgs, plainJSON[TargetSpec]) })
}
