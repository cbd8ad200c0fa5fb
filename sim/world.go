package sim

import (
	"github.com/taskselector/taskselector/schemas"
)

// Host is a worker machine of a World.
type Host struct {
	Name        string
	CapacityMiB int64
	// ForeignMiB is RAM held by processes the policy does not own.
	ForeignMiB int64
}

// Target is a named unit of work of a World.
type Target struct {
	Name string
	Spec schemas.TargetSpec
}

// World is what a run simulates: hosts and the targets declared on them.
type World struct {
	Name    string
	Hosts   []Host
	Targets []Target
}

// AvailableMiB is the RAM the hosts offer to tasks: capacity minus foreign use.
func (w *World) AvailableMiB() int64 {
	var n int64
	for _, h := range w.Hosts {
		n += max(h.CapacityMiB-h.ForeignMiB, 0)
	}
	return n
}
