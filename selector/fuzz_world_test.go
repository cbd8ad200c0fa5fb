package selector

import (
	"math/rand/v2"
	"testing"
	"time"
)

// FuzzWorld runs the simulated fleet of TestPropertyRandomClusters (see
// world) with every random choice taken from the fuzzer's bytes, one byte per
// choice: which fault strikes and when, which message is lost, late or
// duplicated, how long each delay is, how each task ends. The world checks
// the same properties as the property test: no two live processes of one
// target ever overlap on the workers' side, the engine's invariants, no
// stall while a reachable host has room, bounded recovery from permanent
// faults, and the settled end state. Its stages are shorter than the property
// test's, so that each input runs in a few milliseconds.
func FuzzWorld(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	f.Add([]byte{255, 200, 3, 9, 27, 81, 243, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233})
	f.Fuzz(func(t *testing.T, data []byte) {
		w := newWorld(t, rand.New(newByteSource(data)), 1)
		w.run(wPlan{chaos: time.Minute, settle: 40 * time.Second, calm: 80 * time.Second})
	})
}
