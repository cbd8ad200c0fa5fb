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
