package soak

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// WhaleTarget is the target the soak declares that fits no host: it must
// stay pending, with a stated reason, and block nothing.
const WhaleTarget = "whale"

// declaredTargets returns n targets with two short phases and a long
// repeating last one ("serve"), so that done events flow and tasks run long
// enough to be hit.
func declaredTargets(rng *rand.Rand, n int) map[string]schemas.TargetSpec {
	out := make(map[string]schemas.TargetSpec, n)
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("t%02d", i)
		if i == n && n > 1 {
			name = "odd/target.ü" // names are data
		}
		out[name] = schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
			{Type: "fetch", WrapperMiB: 16, HelpersMinMiB: 16, HelpersFullMiB: 48, WorkS: 1 + 2*rng.Float64()},
			{Type: "build", WrapperMiB: 16, HelpersMinMiB: 32, HelpersFullMiB: 96, WorkS: 2 + 3*rng.Float64()},
			{Type: servePhase, WrapperMiB: 16, HelpersMinMiB: 24, HelpersFullMiB: 64, WorkS: 15 + 25*rng.Float64(), Repeat: true},
		}}
	}
	return out
}

// servePhase is the long repeating last phase of the declared targets.
const servePhase = "serve"

// whaleSpec is a target whose every RAM figure is the largest a message
// may carry: it fits nowhere, and its sums overflow a careless ledger.
func whaleSpec() schemas.TargetSpec {
	return schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
		{Type: "hoard", WrapperMiB: schemas.MaxMiB, HelpersMinMiB: schemas.MaxMiB, HelpersFullMiB: schemas.MaxMiB, WorkS: 60, Repeat: true},
	}}
}

// probeSpec is a short single-phase target, declared so that a launch is
// due (after a restart, for a silent launch, during slow writes).
func probeSpec() schemas.TargetSpec {
	return schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
		{Type: "probe", WrapperMiB: 8, HelpersMinMiB: 8, HelpersFullMiB: 16, WorkS: 1},
	}}
}

// putTarget declares a target, retrying while the bus is away.
func (w *world) putTarget(ctx context.Context, name string, spec schemas.TargetSpec) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := w.client.PutTarget(pctx, name, spec)
		cancel()
		if err == nil {
			w.mu.Lock()
			w.desired[name] = spec
			w.mu.Unlock()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("soak: declare %q: %w", name, err)
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
}

// lingerSpec is a probe whose single phase never ends in a soak: the
// target of a silent launch, whose task must not finish while silent.
func lingerSpec() schemas.TargetSpec {
	return schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared, Phases: []schemas.Phase{
		{Type: "linger", WrapperMiB: 8, HelpersMinMiB: 8, HelpersFullMiB: 16, WorkS: 1e6},
	}}
}

// putProbe declares a new probe target and returns its name.
func (w *world) putProbe(ctx context.Context) (string, error) {
	w.mu.Lock()
	w.probes++
	name := fmt.Sprintf("probe-%d", w.probes)
	w.mu.Unlock()
	return name, w.putTarget(ctx, name, probeSpec())
}

// dropCompleteProbes deletes the probe targets that have completed.
func (w *world) dropCompleteProbes(ctx context.Context) {
	st := w.status()
	for _, ts := range st.Targets {
		if !strings.HasPrefix(ts.Target, "probe-") || ts.State != selector.StateComplete {
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := w.client.DeleteTarget(dctx, ts.Target)
		cancel()
		if err == nil {
			w.mu.Lock()
			delete(w.desired, ts.Target)
			w.mu.Unlock()
		}
	}
}
