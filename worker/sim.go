package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

// SimExecutor is the name the sim executor is registered under.
const SimExecutor = "sim"

// Launch argument keys the sim executor reads (see the package doc).
const (
	ArgSpec           = "spec"
	ArgWorkS          = "work_s"
	ArgHelpersMinMiB  = "helpers_min_mib"
	ArgHelpersFullMiB = "helpers_full_mib"
)

// Defaults of SimConfig.
const (
	DefaultSimTick  = 50 * time.Millisecond
	DefaultFirstPID = 1000
)

// Faults are the sim executor's fault knobs. Random faults draw from a
// generator seeded with Seed, three draws per launch in a fixed order, so a
// given seed and launch sequence always gives the same faults. A targeted
// fault names targets: "name" hits every launch for that target on this host,
// "name:N" only the next N.
type Faults struct {
	Seed int64
	// CrashProb is the chance that a task crashes CrashAfter (game time)
	// after its helpers start: it vanishes without an event, its heartbeats
	// stop and its RAM is freed, as if its process died. Ps no longer lists it.
	CrashProb    float64
	CrashAfter   time.Duration
	CrashTargets []string
	// HangProb is the chance that a task hangs HangAfter (game time) after
	// its helpers start: it stays alive and listed by ps and holds its RAM,
	// but sends no heartbeats and makes no progress until killed. With
	// HangAfter 0 it never sends even its first heartbeat.
	HangProb    float64
	HangAfter   time.Duration
	HangTargets []string
	// HelpersFailProb is the chance that a task's helpers cannot start: the
	// task fails with helpers_unavailable at its first tick.
	HelpersFailProb    float64
	HelpersFailTargets []string
	// ForeignMiB is RAM held on the host by processes the selector does not
	// own. It is taken from free RAM (as much as there is, growing back to
	// the full amount as RAM frees up); see Sim.SetForeignMiB.
	ForeignMiB int64
}

// SimConfig configures a sim executor.
type SimConfig struct {
	Host   string
	RAMMiB int64
	// Speed multiplies elapsed real time into game time [1].
	Speed float64
	// Tick is the real-time period of the executor's single ticker
	// [DefaultSimTick]. A negative Tick starts no ticker: the caller drives
	// the tasks with Advance (tests).
	Tick time.Duration
	// FirstPID is the first PID handed out [DefaultFirstPID]; PIDs then count
	// up, unique per executor (per host and worker process).
	FirstPID int64
	// Params of the workload model; nil means workload.DefaultParams().
	Params *workload.Params
	Faults Faults
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	Log *slog.Logger
}

// Sim is the simulated executor: tasks are workload.Run models advanced by one
// ticker, holding RAM in a host RAM pool shared by all its tasks.
type Sim struct {
	cfg    SimConfig
	params workload.Params
	now    func() time.Time
	log    *slog.Logger

	mu          sync.Mutex
	usedMiB     int64 // everything held in the pool, foreign included
	foreignWant int64
	foreignHeld int64
	tasks       map[int64]*simTask
	nextPID     int64
	rng         *rand.Rand
	targeted    [faultKinds]map[string]int // remaining hits per target; -1: unlimited
	gameTime    time.Duration
	closed      bool

	stop chan struct{}
	done chan struct{}
}

type faultKind int

const (
	faultCrash faultKind = iota
	faultHang
	faultHelpers
	faultKinds
)

type simTask struct {
	s       *Sim
	pid     int64
	spec    LaunchSpec
	run     *workload.Run
	profile string
	hooks   Hooks

	wrapperHeld int64
	helpersHeld int64
	started     bool // helpers running
	age         time.Duration
	startedAt   time.Duration // executor game time at Start

	// Fleet helper RAM (fleet.go): the phase's full helper need, and what
	// the task holds on other hosts.
	fullMiB, fleetHeld int64

	crash, hang, helpersFail bool
	hung                     bool
}

// NewSim builds a sim executor and starts its ticker (unless cfg.Tick < 0).
func NewSim(cfg SimConfig) (*Sim, error) {
	if cfg.RAMMiB <= 0 {
		return nil, fmt.Errorf("sim: RAM must be positive, got %d MiB", cfg.RAMMiB)
	}
	if cfg.Speed == 0 {
		cfg.Speed = 1
	}
	if !(cfg.Speed > 0) || math.IsInf(cfg.Speed, 0) {
		return nil, fmt.Errorf("sim: speed must be a positive finite number, got %v", cfg.Speed)
	}
	if cfg.Tick == 0 {
		cfg.Tick = DefaultSimTick
	}
	if cfg.FirstPID <= 0 {
		cfg.FirstPID = DefaultFirstPID
	}
	for _, p := range []struct {
		name string
		v    float64
	}{{"crash probability", cfg.Faults.CrashProb}, {"hang probability", cfg.Faults.HangProb}, {"helpers-fail probability", cfg.Faults.HelpersFailProb}} {
		if !(p.v >= 0 && p.v <= 1) {
			return nil, fmt.Errorf("sim: %s must be in [0, 1], got %v", p.name, p.v)
		}
	}
	if cfg.Faults.CrashAfter < 0 || cfg.Faults.HangAfter < 0 || cfg.Faults.ForeignMiB < 0 {
		return nil, errors.New("sim: fault delays and foreign RAM must not be negative")
	}
	params := workload.DefaultParams()
	if cfg.Params != nil {
		params = *cfg.Params
	}
	s := &Sim{
		cfg:     cfg,
		params:  params,
		now:     cfg.Now,
		log:     cfg.Log,
		tasks:   make(map[int64]*simTask),
		nextPID: cfg.FirstPID,
		rng:     rand.New(rand.NewPCG(uint64(cfg.Faults.Seed), 0x7a5c5e1ec7)),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for k, list := range [faultKinds][]string{cfg.Faults.CrashTargets, cfg.Faults.HangTargets, cfg.Faults.HelpersFailTargets} {
		m, err := parseTargeted(list)
		if err != nil {
			return nil, fmt.Errorf("sim: %w", err)
		}
		s.targeted[k] = m
	}
	s.SetForeignMiB(cfg.Faults.ForeignMiB)
	if cfg.Tick > 0 {
		s.stop = make(chan struct{})
		s.done = make(chan struct{})
		go s.loop()
	}
	return s, nil
}

// parseTargeted reads "name" / "name:N" entries.
func parseTargeted(list []string) (map[string]int, error) {
	m := make(map[string]int, len(list))
	for _, e := range list {
		if e == "" {
			continue
		}
		name, n := e, -1
		if i := strings.LastIndexByte(e, ':'); i > 0 {
			if c, err := strconv.Atoi(e[i+1:]); err == nil {
				if c < 1 {
					return nil, fmt.Errorf("targeted fault %q: count must be at least 1", e)
				}
				name, n = e[:i], c
			}
		}
		m[name] = n
	}
	return m, nil
}

func (s *Sim) loop() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	last := s.now()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			now := s.now()
			real := now.Sub(last)
			last = now
			if real <= 0 {
				continue
			}
			game := float64(real) * s.cfg.Speed
			if game > float64(time.Hour*24*365) {
				game = float64(time.Hour * 24 * 365) // a long stall, sped up: cap the step
			}
			s.Advance(time.Duration(game))
		}
	}
}

// SetForeignMiB changes the RAM held by foreign processes. It takes what is
// free now and grows to n as RAM frees up (checked at every tick).
func (s *Sim) SetForeignMiB(n int64) {
	if n < 0 {
		n = 0
	}
	s.mu.Lock()
	s.foreignWant = n
	s.reconcileForeignLocked()
	s.mu.Unlock()
}

func (s *Sim) reconcileForeignLocked() {
	switch {
	case s.foreignHeld > s.foreignWant:
		s.usedMiB -= s.foreignHeld - s.foreignWant
		s.foreignHeld = s.foreignWant
	case s.foreignHeld < s.foreignWant:
		take := min(s.foreignWant-s.foreignHeld, s.cfg.RAMMiB-s.usedMiB)
		if take > 0 {
			s.usedMiB += take
			s.foreignHeld += take
		}
	}
}

// ForeignMiB is the foreign RAM held now.
func (s *Sim) ForeignMiB() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.foreignHeld
}

func (s *Sim) takeLocked(n int64) bool {
	if n < 0 || s.usedMiB+n > s.cfg.RAMMiB {
		return false
	}
	s.usedMiB += n
	return true
}

func (s *Sim) releaseLocked(t *simTask) {
	s.usedMiB -= t.wrapperHeld + t.helpersHeld
	t.wrapperHeld, t.helpersHeld = 0, 0
	delete(s.tasks, t.pid)
}

// MemoryAccounting implements MemoryAccounter: the sim's RAM is modelled.
func (s *Sim) MemoryAccounting() string { return "sim" }

// UsedMiB implements Executor.
func (s *Sim) UsedMiB() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.usedMiB
}

// GameTime is the total game time the executor has advanced.
func (s *Sim) GameTime() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gameTime
}

// TaskAge is the game time task pid has run since its helpers started, and
// whether it still runs.
func (s *Sim) TaskAge(pid int64) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[pid]
	if !ok {
		return 0, false
	}
	return t.age, true
}

// Check implements Executor.
func (s *Sim) Check(spec *LaunchSpec) error {
	_, _, err := s.newRun(spec)
	return err
}

// newRun resolves the target spec from the launch args and builds the model.
func (s *Sim) newRun(spec *LaunchSpec) (*workload.Run, string, error) {
	ts, err := simTargetSpec(spec)
	if err != nil {
		return nil, "", err
	}
	run, err := s.params.NewRun(ts, spec.Type, spec.RAM.HelpersMiB)
	switch {
	case errors.Is(err, workload.ErrUnknownPhase):
		return nil, "", fmt.Errorf("%w: %q: %v", ErrUnknownType, spec.Type, err)
	case err != nil:
		return nil, "", fmt.Errorf("%w: %v", ErrInvalidLaunch, err)
	}
	return run, ts.Profile, nil
}

// simTargetSpec reads args["spec"], or builds a one-phase declared spec from
// args["work_s"] (and the optional helper sizes).
func simTargetSpec(spec *LaunchSpec) (*schemas.TargetSpec, error) {
	if raw, ok := spec.Args[ArgSpec]; ok {
		b, err := json.Marshal(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: args.%s: %v", ErrInvalidLaunch, ArgSpec, err)
		}
		ts, err := schemas.DecodeTargetSpec(b)
		if err != nil {
			return nil, fmt.Errorf("%w: args.%s: %v", ErrInvalidLaunch, ArgSpec, err)
		}
		return &ts, nil
	}
	work, ok, err := argNumber(spec.Args, ArgWorkS)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: args needs %q (the target spec) or %q", ErrInvalidLaunch, ArgSpec, ArgWorkS)
	}
	if !(work > 0) {
		return nil, fmt.Errorf("%w: args.%s must be positive", ErrInvalidLaunch, ArgWorkS)
	}
	full := spec.RAM.HelpersMiB
	if v, ok, err := argNumber(spec.Args, ArgHelpersFullMiB); err != nil {
		return nil, err
	} else if ok {
		full = int64(v)
	}
	minimum := min(full, spec.RAM.HelpersMiB)
	if v, ok, err := argNumber(spec.Args, ArgHelpersMinMiB); err != nil {
		return nil, err
	} else if ok {
		minimum = int64(v)
	}
	return &schemas.TargetSpec{
		V:       schemas.Version,
		Profile: schemas.ProfileDeclared,
		Phases: []schemas.Phase{{
			Type:           spec.Type,
			WrapperMiB:     spec.RAM.WrapperMiB,
			HelpersMinMiB:  minimum,
			HelpersFullMiB: full,
			WorkS:          work,
		}},
	}, nil
}

// argNumber reads a finite, non-negative number from args.
func argNumber(args map[string]any, key string) (float64, bool, error) {
	raw, ok := args[key]
	if !ok {
		return 0, false, nil
	}
	var f float64
	switch v := raw.(type) {
	case float64:
		f = v
	case int:
		f = float64(v)
	case int64:
		f = float64(v)
	case json.Number:
		var err error
		if f, err = v.Float64(); err != nil {
			return 0, false, fmt.Errorf("%w: args.%s: %v", ErrInvalidLaunch, key, err)
		}
	default:
		return 0, false, fmt.Errorf("%w: args.%s: not a number", ErrInvalidLaunch, key)
	}
	if math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1e15 {
		return 0, false, fmt.Errorf("%w: args.%s: want a finite non-negative number, got %v", ErrInvalidLaunch, key, f)
	}
	return f, true, nil
}

// Start implements Executor. The wrapper takes its RAM at once; the helpers
// take theirs at the task's first tick, from whatever the host has free then.
func (s *Sim) Start(spec *LaunchSpec, hooks Hooks) (Task, error) {
	run, profile, err := s.newRun(spec)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("sim: executor closed")
	}
	if !s.takeLocked(spec.RAM.WrapperMiB) {
		return nil, fmt.Errorf("%w: wrapper needs %d MiB, %d MiB free", ErrInsufficientRAM, spec.RAM.WrapperMiB, s.cfg.RAMMiB-s.usedMiB)
	}
	t := &simTask{
		s:           s,
		pid:         s.nextPID,
		spec:        *spec,
		run:         run,
		profile:     profile,
		hooks:       hooks,
		wrapperHeld: spec.RAM.WrapperMiB,
		startedAt:   s.gameTime,
		fullMiB:     s.fullHelpersMiB(spec),
	}
	s.nextPID++
	f := &s.cfg.Faults
	// Always three draws, so that one knob does not shift the others.
	t.crash = s.rng.Float64() < f.CrashProb
	t.hang = s.rng.Float64() < f.HangProb
	t.helpersFail = s.rng.Float64() < f.HelpersFailProb
	t.crash = s.targetedLocked(faultCrash, spec.Target) || t.crash
	t.hang = s.targetedLocked(faultHang, spec.Target) || t.hang
	t.helpersFail = s.targetedLocked(faultHelpers, spec.Target) || t.helpersFail
	if t.hang && f.HangAfter == 0 {
		t.hung = true
	}
	s.tasks[t.pid] = t
	s.log.Debug("sim task started", "pid", t.pid, "task_id", spec.TaskID, "target", spec.Target, "type", spec.Type,
		"crash", t.crash, "hang", t.hang, "helpers_fail", t.helpersFail)
	return t, nil
}

func (s *Sim) targetedLocked(k faultKind, target string) bool {
	m := s.targeted[k]
	n, ok := m[target]
	if !ok {
		return false
	}
	if n > 0 {
		if n == 1 {
			delete(m, target)
		} else {
			m[target] = n - 1
		}
	}
	return true
}

type simExit struct {
	t    *simTask
	exit Exit
}

// Advance moves every task forward by game time dt, as one tick does. Tests
// that set a negative Tick call it to drive the executor in game time.
func (s *Sim) Advance(dt time.Duration) {
	if dt < 0 {
		dt = 0
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.gameTime += dt
	s.reconcileForeignLocked()
	pids := make([]int64, 0, len(s.tasks))
	for pid := range s.tasks {
		pids = append(pids, pid)
	}
	sort.Slice(pids, func(i, j int) bool { return pids[i] < pids[j] })
	var exits []simExit
	for _, pid := range pids {
		t := s.tasks[pid]
		if ex, ended := s.stepLocked(t, dt); ended {
			exits = append(exits, simExit{t, ex})
		}
	}
	s.reconcileForeignLocked() // foreign processes grab what the tasks freed
	s.mu.Unlock()
	for _, e := range exits {
		if e.exit.Kind == "" {
			s.log.Info("sim task crashed", "pid", e.t.pid, "task_id", e.t.spec.TaskID, "target", e.t.spec.Target)
		}
		if e.t.hooks.Exited != nil {
			e.t.hooks.Exited(e.t, e.exit)
		}
	}
}

// stepLocked advances one task; it reports an exit when the task ended.
func (s *Sim) stepLocked(t *simTask, dt time.Duration) (Exit, bool) {
	if !t.started {
		// The wrapper spawns its helpers now, from the host's free RAM.
		want := min(t.run.UsedMiB(), t.spec.RAM.HelpersMiB)
		if t.helpersFail || !s.takeLocked(want) {
			s.releaseLocked(t)
			return Exit{Kind: schemas.EventFailed, Reason: schemas.ReasonHelpersUnavailable}, true
		}
		t.helpersHeld = want
		t.started = true
		if t.hung {
			return Exit{}, false
		}
	} else if !t.hung {
		t.age += dt
	}
	if t.crash && t.age >= s.cfg.Faults.CrashAfter {
		s.releaseLocked(t)
		return Exit{}, true
	}
	if t.hang && !t.hung && t.age >= s.cfg.Faults.HangAfter {
		t.hung = true
	}
	if t.hung || t.age == 0 {
		return Exit{}, false
	}
	t.run.Advance(dt)
	if !t.run.Done() {
		// Rounds may need fewer (or again more) helper threads: give back
		// what is no longer used, take more only when it is free.
		want := min(t.run.UsedMiB(), t.spec.RAM.HelpersMiB)
		if want < t.helpersHeld {
			s.usedMiB -= t.helpersHeld - want
			t.helpersHeld = want
		} else if want > t.helpersHeld && s.takeLocked(want-t.helpersHeld) {
			t.helpersHeld = want
		}
	}
	if t.run.Done() {
		s.releaseLocked(t)
		var metrics map[string]any
		if t.profile == schemas.ProfileHacking {
			metrics = workload.MetricsMap(t.run.Metrics())
		}
		return Exit{Kind: schemas.EventDone, Metrics: metrics}, true
	}
	return Exit{}, false
}

// Close implements Executor: it stops the ticker; running tasks end silently.
func (s *Sim) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for _, t := range s.tasks {
		s.releaseLocked(t)
	}
	s.mu.Unlock()
	if s.stop != nil {
		close(s.stop)
		<-s.done
	}
	return nil
}

// PID implements Task.
func (t *simTask) PID() int64 { return t.pid }

// Sample implements Task.
func (t *simTask) Sample() Sample {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	return Sample{
		UsedMiB:     t.wrapperHeld + t.helpersHeld,
		Progress:    t.run.Progress(),
		HasProgress: true,
		Silent:      t.hung,
	}
}

// Kill implements Task.
func (t *simTask) Kill() error {
	s := t.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.tasks[t.pid]; !ok || cur != t {
		return ErrGone
	}
	s.releaseLocked(t)
	return nil
}
