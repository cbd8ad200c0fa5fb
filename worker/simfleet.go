package worker

import (
	"errors"
	"fmt"

	"github.com/taskselector/taskselector/schemas"
)

// The sim executor's side of the memory-manager protocol: fleet helpers on
// this host hold RAM in its pool, and a task whose local helper budget is
// below its phase's full need asks for fleet helper RAM and works faster with
// what it holds.

// simHelper is a fleet helper of the sim executor: it holds its RAM in the
// host's pool until stopped.
type simHelper struct {
	s   *Sim
	mib int64
	on  bool
}

// StartHelper implements HelperExecutor: the helper takes its RAM from the
// pool at once.
func (s *Sim) StartHelper(spec *HelperSpec) (Helper, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("sim: executor closed")
	}
	if !s.takeLocked(spec.MiB) {
		return nil, fmt.Errorf("%w: helper needs %d MiB, %d MiB free", ErrInsufficientRAM, spec.MiB, s.cfg.RAMMiB-s.usedMiB)
	}
	return &simHelper{s: s, mib: spec.MiB, on: true}, nil
}

// Stop implements Helper.
func (h *simHelper) Stop() error {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	if h.on && !h.s.closed {
		h.s.usedMiB -= h.mib
	}
	h.on = false
	return nil
}

// fullHelpersMiB is the helper RAM the launch's phase could use at full
// size, or 0 when it cannot be told.
func (s *Sim) fullHelpersMiB(spec *LaunchSpec) int64 {
	ts, err := simTargetSpec(spec)
	if err != nil {
		return 0
	}
	est, err := s.params.Estimate(ts, spec.Type)
	if err != nil {
		return 0
	}
	return est.HelpersFullMiB
}

// FleetWant implements FleetHelperTask: a task whose local helper budget is
// below its phase's full helper need wants the difference from the fleet,
// once its helpers run (not while hung, nor once done). The least worth
// having is one weaken thread's RAM for the hacking profile, an eighth of
// the want for declared phases.
func (t *simTask) FleetWant() (mib, minMiB int64) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	if !t.started || t.hung || t.run.Done() {
		return 0, 0
	}
	want := t.fullMiB - t.spec.RAM.HelpersMiB
	if want <= 0 {
		return 0, 0
	}
	if t.profile == schemas.ProfileHacking {
		return want, min(want, max(t.s.params.WeakenThreadMiB, 1))
	}
	return want, min(want, max(want/8, 1))
}

// SetFleetHeld implements FleetHelperTask: the task's model works from now
// on with its local helper budget plus what it holds in the fleet
// (workload.Run.SetHelpers).
func (t *simTask) SetFleetHeld(mib int64) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	t.fleetHeld = max(mib, 0)
	t.run.SetHelpers(t.spec.RAM.HelpersMiB + t.fleetHeld)
}
