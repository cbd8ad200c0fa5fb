package sim

import (
	"fmt"
	"runtime"
	"strconv"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/workload"
)

// ScaleWorld is the world of the scale runs: n declared targets of one
// repeating phase (256 MiB of helpers, a 32 MiB wrapper, 60 to 300 s of
// work) on hosts 8 GiB or larger, together 25 % larger than every task at
// full size.
func ScaleWorld(targets, hosts int) World {
	w := World{Name: fmt.Sprintf("scale/%d-targets/%d-hosts", targets, hosts)}
	for i := 0; i < targets; i++ {
		w.Targets = append(w.Targets, Target{Name: "t" + strconv.Itoa(i), Spec: schemas.TargetSpec{
			V: schemas.Version, Profile: schemas.ProfileDeclared,
			Phases: []schemas.Phase{{Type: "serve", WrapperMiB: 32, HelpersMinMiB: 64, HelpersFullMiB: 256,
				WorkS: float64(60 + (i*37)%241), Repeat: true}},
		}})
	}
	per := int64(targets) * 288 * 5 / 4 / int64(max(hosts, 1))
	per = max((per+1023)/1024*1024, 8*workload.MiBPerGiB)
	for i := 0; i < hosts; i++ {
		w.Hosts = append(w.Hosts, Host{Name: "h" + strconv.Itoa(i), CapacityMiB: per})
	}
	return w
}

// Timed wraps the selector engine and measures the CPU (wall) time of each
// Step, by what the step did: a step that returned launch commands counts as
// launch decisions (its time divided among them); other steps count by their
// event. The cost includes one time.Now pair per step (tens of ns).
type Timed struct {
	E *selector.Engine

	Launches, LaunchSteps uint64
	LaunchTime            time.Duration
	Heartbeats            uint64
	HeartbeatTime         time.Duration
	Ticks                 uint64
	TickTime              time.Duration
	Others                uint64
	OtherTime             time.Duration
}

// Step implements Policy.
func (t *Timed) Step(now time.Time, ev selector.Event) []selector.Command {
	start := time.Now()
	cmds := t.E.Step(now, ev)
	d := time.Since(start)
	n := 0
	for i := range cmds {
		if cmds[i].Kind == selector.CmdLaunch {
			n++
		}
	}
	switch {
	case n > 0:
		t.Launches += uint64(n)
		t.LaunchSteps++
		t.LaunchTime += d
	default:
		switch ev.(type) {
		case *selector.HeartbeatReceived:
			t.Heartbeats++
			t.HeartbeatTime += d
		case *selector.Tick:
			t.Ticks++
			t.TickTime += d
		default:
			t.Others++
			t.OtherTime += d
		}
	}
	return cmds
}

// Status returns the engine's status.
func (t *Timed) Status(now time.Time) schemas.SelectorStatus { return t.E.Status(now) }

// ScaleResult is what one scale run measured.
type ScaleResult struct {
	Targets, Hosts int
	Virtual        time.Duration // virtual time simulated
	Wall           time.Duration // real time the whole run took

	Launches    uint64
	LaunchNs    float64 // per launch decision
	Heartbeats  uint64
	HeartbeatNs float64 // per heartbeat of a known task (no launch)
	Ticks       uint64
	TickNs      float64 // per tick (no launch)

	Records        int     // task states persisted at the end
	RebuildMs      float64 // selector.New from those records
	BytesPerTarget float64 // heap of an engine rebuilt from them, per target
	Active         int     // tasks running at the end
}

// DecisionsPerSecond is the launch decision rate the CPU cost allows.
func (r ScaleResult) DecisionsPerSecond() float64 {
	if r.LaunchNs <= 0 {
		return 0
	}
	return 1e9 / r.LaunchNs
}

// Scale runs the selector on ScaleWorld(targets, hosts) for d of virtual
// time with zero bus latency (CPU costs do not depend on it), then rebuilds
// an engine from the task states it persisted, timing the rebuild and
// weighing the rebuilt engine.
func Scale(targets, hosts int, d time.Duration, seed uint64) (ScaleResult, error) {
	w := ScaleWorld(targets, hosts)
	cfg := DefaultConfig()
	cfg.Seed, cfg.Duration, cfg.NoLatency, cfg.NoMeasures = seed, d, true, true
	sc := selector.DefaultConfig()
	sc.Seed = seed
	e, err := NewSelector(sc, w)
	if err != nil {
		return ScaleResult{}, err
	}
	tp := &Timed{E: e}
	s, err := New(cfg, w, tp)
	if err != nil {
		return ScaleResult{}, err
	}
	start := time.Now()
	res, err := s.Run()
	if err != nil {
		return ScaleResult{}, err
	}
	out := ScaleResult{
		Targets: targets, Hosts: hosts, Virtual: d, Wall: time.Since(start),
		Launches: tp.Launches, Heartbeats: tp.Heartbeats, Ticks: tp.Ticks,
		LaunchNs:    perOp(tp.LaunchTime, tp.Launches),
		HeartbeatNs: perOp(tp.HeartbeatTime, tp.Heartbeats),
		TickNs:      perOp(tp.TickTime, tp.Ticks),
	}
	for _, h := range s.hosts {
		out.Active += len(h.procs)
	}
	if res.DuplicateTasks != 0 {
		return ScaleResult{}, fmt.Errorf("sim: scale %s: %d duplicate tasks", w.Name, res.DuplicateTasks)
	}
	snap := selector.Snapshot{Targets: make(map[string]schemas.TargetSpec, len(w.Targets))}
	for _, t := range w.Targets {
		snap.Targets[t.Name] = t.Spec
	}
	for _, st := range s.Store() {
		snap.Tasks = append(snap.Tasks, st)
	}
	out.Records = len(snap.Tasks)
	s = nil // let the run's memory go before weighing
	tp = nil
	e = nil
	rebuild, bytes, err := Rebuild(sc, snap)
	if err != nil {
		return ScaleResult{}, err
	}
	out.RebuildMs = float64(rebuild) / 1e6
	out.BytesPerTarget = float64(bytes) / float64(max(targets, 1))
	return out, nil
}

func perOp(d time.Duration, n uint64) float64 {
	if n == 0 {
		return 0
	}
	return float64(d.Nanoseconds()) / float64(n)
}

// Rebuild times selector.New from snap (the best of three) and returns the
// heap the engine holds, measured with runtime.MemStats around one build.
func Rebuild(sc selector.Config, snap selector.Snapshot) (time.Duration, int64, error) {
	best := time.Duration(1<<63 - 1)
	runtime.GC()
	for range 3 {
		start := time.Now()
		e, err := selector.New(sc, Epoch, snap)
		if err != nil {
			return 0, 0, fmt.Errorf("sim: rebuild: %w", err)
		}
		best = min(best, time.Since(start))
		runtime.KeepAlive(e)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	e, err := selector.New(sc, Epoch, snap)
	if err != nil {
		return 0, 0, fmt.Errorf("sim: rebuild: %w", err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(e)
	return best, int64(after.HeapAlloc) - int64(before.HeapAlloc), nil
}
