// Package workload models the work tasks do: the RAM estimates of each task
// type (wrapper, minimum and full helpers) and the progress of a running task,
// for the declared and hacking profiles. It is pure (no I/O, no clock) and is
// shared by the selector's estimators, the worker's sim executor and the
// cluster simulator.
package workload

import (
	"errors"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// Estimate is the RAM a task of one type needs for one target, in MiB, and
// the value of running it. All fields are finite, non-negative and bounded.
type Estimate struct {
	WrapperMiB     int64
	HelpersMinMiB  int64
	HelpersFullMiB int64
	// Value is the worth of the target's work per second at full size
	// (income per second for hacking, the spec's value for declared); > 0.
	Value float64
}

// MinMiB is the smallest useful budget: wrapper plus minimum helpers.
func (e Estimate) MinMiB() int64 { return e.WrapperMiB + e.HelpersMinMiB }

// FullMiB is the budget that runs everything at once.
func (e Estimate) FullMiB() int64 { return e.WrapperMiB + e.HelpersFullMiB }

// ErrNotImplemented is returned by placeholders.
var ErrNotImplemented = errors.New("workload: not implemented")

var _ = time.Second
var _ schemas.TargetSpec
