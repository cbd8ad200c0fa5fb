package sim

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/workload"
)

// Epoch is virtual time zero: every run starts at this instant.
var Epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// Policy decides which tasks run where. It gets the same events, and returns
// the same commands, as the selector engine; *selector.Engine is a Policy.
// The returned slice may be reused by the next call.
type Policy interface {
	Step(now time.Time, ev selector.Event) []selector.Command
}

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

// Config holds the simulator's knobs. Zero fields take the defaults of
// DefaultConfig through WithDefaults (LossProb, CrashRate, CrashEventProb,
// Jitter and Latency stay as given: zero is a meaningful value for them).
type Config struct {
	Seed     uint64
	Duration time.Duration // virtual time simulated

	Tick              time.Duration // period of the policy's Tick [100ms]
	HeartbeatInterval time.Duration // a task's heartbeat period [1s]
	StatusInterval    time.Duration // a host's HostStatus period [1s]
	ReplyTimeout      time.Duration // the edge's request timeout [1s]
	HelperDelay       time.Duration // wrapper start to helpers start [200ms]
	Latency           time.Duration // one-way bus latency [1ms unless NoLatency]
	Jitter            time.Duration // uniform ± added to each message's latency
	NoLatency         bool          // zero latency (Latency 0 means the default)

	LossProb       float64 // probability that a core NATS message is lost
	CrashRate      float64 // crashes per task-hour of running
	CrashEventProb float64 // share of crashes the worker reports as failed/crashed

	SampleInterval time.Duration // timeline sampling period [30s]; negative: none
	StrandedAfter  time.Duration // pending with room this long is stranded [1m]
	NoMeasures     bool          // skip per-second stranded checks and samples (scale runs)

	Params workload.Params // task model [workload.DefaultParams()]
}

// DefaultConfig returns the simulator's defaults, for a run of one hour.
func DefaultConfig() Config {
	return Config{
		Seed:              1,
		Duration:          time.Hour,
		Tick:              100 * time.Millisecond,
		HeartbeatInterval: time.Second,
		StatusInterval:    time.Second,
		ReplyTimeout:      time.Second,
		HelperDelay:       200 * time.Millisecond,
		Latency:           time.Millisecond,
		SampleInterval:    30 * time.Second,
		StrandedAfter:     time.Minute,
		Params:            workload.DefaultParams(),
	}
}

// WithDefaults fills the zero fields of c from DefaultConfig.
func (c Config) WithDefaults() Config {
	d := DefaultConfig()
	set := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	set(&c.Duration, d.Duration)
	set(&c.Tick, d.Tick)
	set(&c.HeartbeatInterval, d.HeartbeatInterval)
	set(&c.StatusInterval, d.StatusInterval)
	set(&c.ReplyTimeout, d.ReplyTimeout)
	set(&c.HelperDelay, d.HelperDelay)
	set(&c.SampleInterval, d.SampleInterval)
	set(&c.StrandedAfter, d.StrandedAfter)
	if c.NoLatency {
		c.Latency = 0
	} else {
		set(&c.Latency, d.Latency)
	}
	if c.Params == (workload.Params{}) {
		c.Params = d.Params
	}
	return c
}

// Validate reports the first knob out of range.
func (c Config) Validate() error {
	for _, p := range []struct {
		name string
		v    time.Duration
	}{
		{"Duration", c.Duration}, {"Tick", c.Tick}, {"HeartbeatInterval", c.HeartbeatInterval},
		{"StatusInterval", c.StatusInterval}, {"ReplyTimeout", c.ReplyTimeout}, {"HelperDelay", c.HelperDelay},
		{"StrandedAfter", c.StrandedAfter},
	} {
		if p.v <= 0 {
			return fmt.Errorf("sim: %s must be positive, got %v", p.name, p.v)
		}
	}
	switch {
	case c.Latency < 0 || c.Jitter < 0 || c.Jitter > c.Latency:
		return fmt.Errorf("sim: need 0 <= Jitter <= Latency, got latency %v jitter %v", c.Latency, c.Jitter)
	case !(c.LossProb >= 0 && c.LossProb < 1):
		return fmt.Errorf("sim: LossProb must be in [0, 1), got %v", c.LossProb)
	case !(c.CrashRate >= 0) || math.IsInf(c.CrashRate, 0):
		return fmt.Errorf("sim: CrashRate must be finite and >= 0, got %v", c.CrashRate)
	case !(c.CrashEventProb >= 0 && c.CrashEventProb <= 1):
		return fmt.Errorf("sim: CrashEventProb must be in [0, 1], got %v", c.CrashEventProb)
	}
	if err := c.Params.Validate(); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	return nil
}

// evKind is what a queued item does when its time comes.
type evKind uint8

const (
	kTick    evKind = iota + 1 // the policy gets a Tick
	kStatus                    // a host publishes its HostStatus
	kHelpers                   // a task's wrapper starts its helpers
	kBeat                      // a task advances and heartbeats
	kCrash                     // a task crashes
	kWorker                    // a request reaches its host's worker
	kPolicy                    // an event reaches the policy
	kTimeout                   // a request's reply deadline
	kMeasure                   // stranded check and timeline sample
)

// item is one entry of the event queue.
type item struct {
	at   int64 // virtual ns since Epoch
	seq  uint64
	kind evKind
	host *hostState
	proc *proc
	req  *request
	ev   selector.Event
	idx  int
}

// queue is a min-heap of items by (at, seq).
type queue []*item

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i]; q[i].idx = i; q[j].idx = j }

// Push implements heap.Interface.
func (q *queue) Push(x any) { it := x.(*item); it.idx = len(*q); *q = append(*q, it) }

// Pop implements heap.Interface.
func (q *queue) Pop() any {
	old := *q
	n := len(old) - 1
	it := old[n]
	old[n] = nil
	*q = old[:n]
	return it
}

// request is a launch, ps or kill on its way to a worker and back.
type request struct {
	kind     selector.CommandKind
	host     *hostState
	target   string
	launch   *schemas.LaunchRequest
	kill     *schemas.KillRequest
	ps       *schemas.PsRequest
	answered bool // its reply was delivered or it timed out
}

type hostState struct {
	name     string
	idx      int
	capacity int64
	foreign  int64
	used     int64 // RAM really held by tasks (wrappers + helpers)
	booked   int64 // Σ max(budget, used) over its tasks: admission
	procs    []*proc
	nextPID  int64
}

// free is the RAM really free on h.
func (h *hostState) free() int64 { return h.capacity - h.foreign - h.used }

type targetState struct {
	name    string
	spec    schemas.TargetSpec // with the true metrics (hacking)
	hacking bool
	phase   string // true current phase
	last    string // last phase of its lifecycle
	done    bool   // a declared target that completed its last phase
	live    int    // live tasks
	minMiB  int64  // smallest task of the current phase (-1: none possible)

	reachedAt int64 // first time in its last phase; -1 never
	since     int64 // start of the current pending-with-room stretch; -1 none
	stranded  bool
}

// proc is a task running on a simulated host.
type proc struct {
	id      string
	epoch   uint64
	pid     int64
	host    *hostState
	t       *targetState
	typ     string
	wrapper int64
	budget  int64 // wrapper + helpers asked
	helpers int64 // helpers the task may take
	used    int64 // wrapper + helpers held
	run     *workload.Run
	alive   bool
	started bool // helpers running
	dup     bool
	seq     uint64

	lastAdv  int64   // virtual ns of the last Advance
	earned   float64 // run.Earned() already counted
	helperMs float64 // helper MiB-seconds so far
}

// Sim is one simulation run. Build it with New and run it with Run.
type Sim struct {
	cfg    Config
	world  World
	policy Policy
	params workload.Params

	q    queue
	free []*item
	seq  uint64
	now  int64
	end  int64

	hosts    []*hostState
	hostByNm map[string]*hostState
	targets  []*targetState
	tgtByNm  map[string]*targetState

	rngLoss  *rand.Rand
	rngCrash *rand.Rand
	rngLat   *rand.Rand

	store map[string]schemas.TaskState // what the policy persisted

	res      Result
	earned   float64
	halfMark float64 // income earned by half time
	halfSeen bool
	lastFail uint64
	lastInc  float64

	// Hook, when set, is called with every event the policy gets and the
	// commands it returned (tests).
	Hook func(now time.Time, ev selector.Event, cmds []selector.Command)
}

// New builds a run of policy on world.
func New(cfg Config, world World, policy Policy) (*Sim, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if policy == nil {
		return nil, errors.New("sim: nil policy")
	}
	s := &Sim{
		cfg:      cfg,
		world:    world,
		policy:   policy,
		params:   cfg.Params,
		end:      int64(cfg.Duration),
		hostByNm: make(map[string]*hostState, len(world.Hosts)),
		tgtByNm:  make(map[string]*targetState, len(world.Targets)),
		rngLoss:  rand.New(rand.NewPCG(cfg.Seed, 0x10550)),
		rngCrash: rand.New(rand.NewPCG(cfg.Seed, 0xc2a54)),
		rngLat:   rand.New(rand.NewPCG(cfg.Seed, 0x1a7e)),
		store:    make(map[string]schemas.TaskState),
	}
	for i, h := range world.Hosts {
		if h.Name == "" || s.hostByNm[h.Name] != nil {
			return nil, fmt.Errorf("sim: host %d: empty or repeated name %q", i, h.Name)
		}
		if h.CapacityMiB < 0 || h.ForeignMiB < 0 || h.ForeignMiB > h.CapacityMiB {
			return nil, fmt.Errorf("sim: host %q: need 0 <= foreign (%d) <= capacity (%d)", h.Name, h.ForeignMiB, h.CapacityMiB)
		}
		hs := &hostState{name: h.Name, idx: i, capacity: h.CapacityMiB, foreign: h.ForeignMiB, nextPID: 100}
		s.hosts = append(s.hosts, hs)
		s.hostByNm[h.Name] = hs
	}
	for i, t := range world.Targets {
		if t.Name == "" || s.tgtByNm[t.Name] != nil {
			return nil, fmt.Errorf("sim: target %d: empty or repeated name %q", i, t.Name)
		}
		if err := workload.Validate(&t.Spec); err != nil {
			return nil, fmt.Errorf("sim: target %q: %w", t.Name, err)
		}
		ts := &targetState{name: t.Name, spec: cloneSpec(t.Spec), hacking: t.Spec.Profile == schemas.ProfileHacking,
			reachedAt: -1, since: -1}
		if ts.hacking {
			ts.last = workload.PhaseHarvest
		} else {
			ts.last = t.Spec.Phases[len(t.Spec.Phases)-1].Type
		}
		ph, err := workload.InitialPhase(&ts.spec)
		if err != nil {
			return nil, fmt.Errorf("sim: target %q: %w", t.Name, err)
		}
		s.setPhase(ts, ph)
		s.targets = append(s.targets, ts)
		s.tgtByNm[t.Name] = ts
	}
	s.res = Result{
		World:         world.Name,
		Targets:       len(world.Targets),
		Hosts:         len(world.Hosts),
		AvailableMiB:  world.AvailableMiB(),
		Duration:      cfg.Duration,
		FailureCauses: map[string]uint64{},
	}
	return s, nil
}

// cloneSpec copies a spec deeply enough that the simulator's changes to its
// metrics never reach the caller's.
func cloneSpec(sp schemas.TargetSpec) schemas.TargetSpec {
	if sp.Metrics != nil {
		m := *sp.Metrics
		sp.Metrics = &m
	}
	sp.Phases = slices.Clone(sp.Phases)
	return sp
}

// Store is what the policy has persisted (CmdPersist minus CmdDelete), by
// target, for restart tests.
func (s *Sim) Store() map[string]schemas.TaskState { return s.store }

func (s *Sim) wall() time.Time { return Epoch.Add(time.Duration(s.now)) }

func (s *Sim) push(at int64, kind evKind) *item {
	var it *item
	if n := len(s.free); n > 0 {
		it = s.free[n-1]
		s.free = s.free[:n-1]
	} else {
		it = new(item)
	}
	s.seq++
	it.at, it.seq, it.kind = at, s.seq, kind
	heap.Push(&s.q, it)
	return it
}

func (s *Sim) recycle(it *item) {
	*it = item{}
	s.free = append(s.free, it)
}

// latency draws one message's transit time.
func (s *Sim) latency() int64 {
	d := int64(s.cfg.Latency)
	if j := int64(s.cfg.Jitter); j > 0 {
		d += s.rngLat.Int64N(2*j+1) - j
	}
	return d
}

func (s *Sim) lost() bool { return s.cfg.LossProb > 0 && s.rngLoss.Float64() < s.cfg.LossProb }

// toPolicy sends ev to the policy; lossy messages may vanish. A reply (req
// set) is dropped when its request has already timed out.
func (s *Sim) toPolicy(ev selector.Event, req *request, lossy bool) {
	if lossy && s.lost() {
		return
	}
	it := s.push(s.now+s.latency(), kPolicy)
	it.ev, it.req = ev, req
}

// Run simulates until Config.Duration and returns the measures.
func (s *Sim) Run() (*Result, error) {
	s.push(0, kTick)
	nh := int64(len(s.hosts))
	for i, h := range s.hosts {
		it := s.push(int64(s.cfg.StatusInterval)*int64(i)/max(nh, 1), kStatus)
		it.host = h
	}
	if !s.cfg.NoMeasures {
		s.push(0, kMeasure)
	}
	for s.q.Len() > 0 {
		it := heap.Pop(&s.q).(*item)
		if it.at > s.end {
			s.recycle(it)
			break
		}
		s.now = it.at
		s.handle(it)
		s.recycle(it)
	}
	s.now = s.end
	s.finish()
	return &s.res, nil
}

func (s *Sim) handle(it *item) {
	switch it.kind {
	case kTick:
		s.deliver(&selector.Tick{})
		s.push(s.now+int64(s.cfg.Tick), kTick)
	case kStatus:
		s.status(it.host)
		n := s.push(s.now+int64(s.cfg.StatusInterval), kStatus)
		n.host = it.host
	case kHelpers:
		s.helpers(it.proc)
	case kBeat:
		s.beat(it.proc)
	case kCrash:
		s.crash(it.proc)
	case kWorker:
		s.atWorker(it.req)
	case kPolicy:
		if r := it.req; r != nil {
			if r.answered {
				return // the edge gave up on it already
			}
			r.answered = true
		}
		s.deliver(it.ev)
	case kTimeout:
		s.timeout(it.req)
	case kMeasure:
		s.measure()
		s.push(s.now+int64(time.Second), kMeasure)
	}
}

// deliver hands ev to the policy and carries out its commands.
func (s *Sim) deliver(ev selector.Event) {
	now := s.wall()
	cmds := s.policy.Step(now, ev)
	if s.Hook != nil {
		s.Hook(now, ev, cmds)
	}
	for i := range cmds {
		s.command(&cmds[i])
	}
}

func (s *Sim) command(c *selector.Command) {
	switch c.Kind {
	case selector.CmdPersist:
		if c.State != nil {
			s.store[c.State.Target] = *c.State
		}
		return
	case selector.CmdDelete:
		delete(s.store, c.Target)
		return
	}
	h := s.hostByNm[c.Host]
	r := &request{kind: c.Kind, host: h, target: c.Target, launch: c.Launch, kill: c.Kill, ps: c.Ps}
	if c.Kind == selector.CmdLaunch {
		s.res.Launches++
	}
	if h == nil {
		// Nobody listens on that subject: NATS answers at once.
		r.answered = true
		s.toPolicy(s.unanswered(r, true), nil, false)
		return
	}
	t := s.push(s.now+int64(s.cfg.ReplyTimeout), kTimeout)
	t.req = r
	if s.lost() {
		return
	}
	w := s.push(s.now+s.latency(), kWorker)
	w.req = r
}

// unanswered is the event that tells the policy r got no reply.
func (s *Sim) unanswered(r *request, noResponders bool) selector.Event {
	switch r.kind {
	case selector.CmdLaunch:
		return &selector.LaunchUnanswered{Host: hostName(r.host), Target: r.launch.Target,
			TaskID: r.launch.TaskID, NoResponders: noResponders}
	case selector.CmdKill:
		return &selector.KillUnanswered{Host: hostName(r.host), TaskID: r.kill.TaskID, NoResponders: noResponders}
	default:
		return &selector.PsUnanswered{Host: hostName(r.host), NoResponders: noResponders}
	}
}

func hostName(h *hostState) string {
	if h == nil {
		return ""
	}
	return h.name
}

func (s *Sim) timeout(r *request) {
	if r.answered {
		return
	}
	r.answered = true
	if r.kind == selector.CmdLaunch {
		s.fail("unanswered")
	}
	s.deliver(s.unanswered(r, false))
}

// fail counts one failed launch.
func (s *Sim) fail(cause string) {
	s.res.FailedLaunches++
	s.res.FailureCauses[cause]++
}

// ----- hosts and workers -----

func (s *Sim) status(h *hostState) {
	st := &schemas.HostStatus{V: schemas.Version, Host: h.name, SentAt: s.wall(),
		RAM:   schemas.HostRAM{TotalMiB: h.capacity, UsedMiB: h.used + h.foreign},
		Tasks: make([]string, 0, len(h.procs))}
	for _, p := range h.procs {
		st.Tasks = append(st.Tasks, p.id)
	}
	s.toPolicy(&selector.HostStatusReceived{Status: st}, nil, true)
}

func (s *Sim) atWorker(r *request) {
	switch r.kind {
	case selector.CmdLaunch:
		s.workerLaunch(r)
	case selector.CmdKill:
		s.workerKill(r)
	case selector.CmdPs:
		s.workerPs(r)
	}
}

func (s *Sim) replyLaunch(r *request, pid int64, code, msg string) {
	rep := schemas.LaunchReply{V: schemas.Version, TaskID: r.launch.TaskID, PID: pid}
	if code != "" {
		rep.Error = &schemas.ReplyError{Code: code, Message: msg}
		s.fail(code)
	}
	s.toPolicy(&selector.LaunchReplied{Host: r.host.name, Target: r.launch.Target, Epoch: r.launch.Epoch, Reply: rep}, r, true)
}

func (s *Sim) workerLaunch(r *request) {
	h, req := r.host, r.launch
	for _, p := range h.procs {
		if p.id == req.TaskID { // a repeated request: answer, start nothing
			s.toPolicy(&selector.LaunchReplied{Host: h.name, Target: req.Target, Epoch: req.Epoch,
				Reply: schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: p.pid}}, r, true)
			return
		}
	}
	t := s.tgtByNm[req.Target]
	if t == nil {
		s.replyLaunch(r, 0, schemas.CodeInvalid, "unknown target")
		return
	}
	est, err := s.params.Estimate(&t.spec, req.Type)
	if err != nil {
		if errors.Is(err, workload.ErrUnknownPhase) {
			s.replyLaunch(r, 0, schemas.CodeUnknownType, err.Error())
		} else {
			s.replyLaunch(r, 0, schemas.CodeInvalid, err.Error())
		}
		return
	}
	wrapper, helpers := req.RAM.WrapperMiB, req.RAM.HelpersMiB
	if wrapper < 0 || helpers < 0 {
		s.replyLaunch(r, 0, schemas.CodeInvalid, "negative RAM")
		return
	}
	if wrapper+helpers > h.capacity-h.foreign-h.booked {
		s.replyLaunch(r, 0, schemas.CodeInsufficientRAM, "wrapper + helpers do not fit")
		return
	}
	ask := helpers
	if ask == 0 {
		ask = est.HelpersFullMiB // a task that sizes itself asks for its full size
	}
	run, err := s.params.NewRun(&t.spec, req.Type, ask)
	if err != nil {
		s.replyLaunch(r, 0, schemas.CodeInvalid, err.Error())
		return
	}
	h.nextPID++
	p := &proc{id: req.TaskID, epoch: req.Epoch, pid: h.nextPID, host: h, t: t, typ: req.Type,
		wrapper: wrapper, budget: wrapper + helpers, helpers: ask, used: wrapper, run: run, alive: true,
		lastAdv: s.now}
	p.dup = t.live > 0
	if p.dup {
		s.res.DuplicateTasks++
	}
	t.live++
	t.since = -1
	h.procs = append(h.procs, p)
	h.used += wrapper
	h.booked += max(p.budget, p.used)
	s.res.Started++
	// The first heartbeat leaves before the reply (as the worker does).
	s.heartbeat(p)
	s.replyLaunch(r, p.pid, "", "")
	it := s.push(s.now+int64(s.cfg.HelperDelay), kHelpers)
	it.proc = p
	it = s.push(s.now+int64(s.cfg.HeartbeatInterval), kBeat)
	it.proc = p
	if s.cfg.CrashRate > 0 {
		hours := s.rngCrash.ExpFloat64() / s.cfg.CrashRate
		if d := hours * float64(time.Hour); d < float64(s.end-s.now) {
			it = s.push(s.now+int64(d), kCrash)
			it.proc = p
		}
	}
}

// setUsed changes the RAM p holds, keeping its host's books.
func (s *Sim) setUsed(p *proc, used int64) {
	h := p.host
	h.booked -= max(p.budget, p.used)
	h.used += used - p.used
	p.used = used
	h.booked += max(p.budget, p.used)
}

func (s *Sim) helpers(p *proc) {
	if !p.alive {
		return
	}
	want := min(p.run.UsedMiB(), p.helpers)
	if want > p.host.free() {
		s.fail(schemas.ReasonHelpersUnavailable)
		s.end1(p, schemas.EventFailed, schemas.ReasonHelpersUnavailable, true)
		return
	}
	p.started = true
	p.lastAdv = s.now
	s.setUsed(p, p.wrapper+want)
}

// advance lets p's run catch up with now and books what it did.
func (s *Sim) advance(p *proc) {
	if !p.started || s.now <= p.lastAdv {
		return
	}
	dt := s.now - p.lastAdv
	p.helperMs += float64(p.used-p.wrapper) * float64(dt) / 1e9
	p.lastAdv = s.now
	p.run.Advance(time.Duration(dt))
	if e := p.run.Earned(); e != p.earned {
		s.earned += e - p.earned
		p.earned = e
	}
	if p.t.hacking && !p.dup {
		m := p.run.Metrics()
		p.t.spec.Metrics = &m
		s.setPhase(p.t, workload.HackingPhase(m))
	}
}

func (s *Sim) beat(p *proc) {
	if !p.alive {
		return
	}
	s.advance(p)
	if p.run.Done() {
		s.end1(p, schemas.EventDone, "", true)
		return
	}
	if p.started {
		want := min(p.run.UsedMiB(), p.helpers)
		if extra := want - (p.used - p.wrapper); extra > 0 && extra > p.host.free() {
			s.fail(schemas.ReasonHelpersUnavailable)
			s.end1(p, schemas.EventFailed, schemas.ReasonHelpersUnavailable, true)
			return
		}
		s.setUsed(p, p.wrapper+want)
	}
	s.heartbeat(p)
	it := s.push(s.now+int64(s.cfg.HeartbeatInterval), kBeat)
	it.proc = p
}

func (s *Sim) heartbeat(p *proc) {
	p.seq++
	prog := p.run.Progress()
	hb := &schemas.Heartbeat{V: schemas.Version, TaskID: p.id, Epoch: p.epoch, PID: p.pid, Host: p.host.name,
		Target: p.t.name, Type: p.typ, Seq: p.seq, RAM: schemas.HeartbeatRAM{BudgetMiB: p.budget, UsedMiB: p.used},
		Progress: &prog, SentAt: s.wall()}
	s.toPolicy(&selector.HeartbeatReceived{Heartbeat: hb}, nil, true)
}

func (s *Sim) crash(p *proc) {
	if !p.alive {
		return
	}
	s.res.Crashes++
	s.advance(p)
	report := s.cfg.CrashEventProb > 0 && s.rngCrash.Float64() < s.cfg.CrashEventProb
	s.end1(p, schemas.EventFailed, schemas.ReasonCrashed, report)
}

// end1 ends p: frees its RAM, books its work and, when report, sends its
// task event.
func (s *Sim) end1(p *proc, kind, reason string, report bool) {
	s.advance(p)
	p.alive = false
	h := p.host
	h.booked -= max(p.budget, p.used)
	h.used -= p.used
	i := slices.Index(h.procs, p)
	h.procs = slices.Delete(h.procs, i, i+1)
	p.t.live--
	if !p.dup && (p.t.hacking || kind == schemas.EventDone) {
		s.res.UsefulMiBs += p.helperMs
	} else {
		s.res.WastedMiBs += p.helperMs
	}
	var metrics map[string]any
	if kind == schemas.EventDone {
		s.res.PhasesCompleted++
		if p.t.hacking {
			metrics = workload.MetricsMap(p.run.Metrics())
		} else if !p.dup {
			s.afterDeclared(p.t, p.typ)
		}
	}
	if !report {
		return
	}
	ev := &schemas.TaskEvent{V: schemas.Version, TaskID: p.id, Epoch: p.epoch, PID: p.pid, Host: h.name,
		Target: p.t.name, Type: p.typ, Kind: kind, Reason: reason, Metrics: metrics, At: s.wall()}
	s.toPolicy(&selector.TaskEventReceived{Event: ev}, nil, false)
}

// afterDeclared moves a declared target past a phase its task finished.
func (s *Sim) afterDeclared(t *targetState, typ string) {
	if typ != t.phase {
		return // an older phase, finished late
	}
	next, complete, _, err := workload.AfterDone(&t.spec, typ, nil)
	if err != nil {
		return
	}
	if complete {
		t.done = true
		t.minMiB = -1
		return
	}
	s.setPhase(t, next)
}

// setPhase records t's true phase and the smallest task it needs.
func (s *Sim) setPhase(t *targetState, phase string) {
	if phase == t.phase && t.minMiB != 0 {
		return
	}
	t.phase = phase
	if phase == t.last && t.reachedAt < 0 {
		t.reachedAt = s.now
	}
	est, err := s.params.Estimate(&t.spec, phase)
	if err != nil {
		t.minMiB = -1
		return
	}
	t.minMiB = est.MinMiB()
}

func (s *Sim) workerKill(r *request) {
	h, req := r.host, r.kill
	for _, p := range h.procs {
		if p.id == req.TaskID && (req.PID == 0 || req.PID == p.pid) {
			s.res.Kills++
			s.end1(p, schemas.EventFailed, schemas.ReasonKilled, true)
			break
		}
	}
	s.toPolicy(&selector.KillReplied{Host: h.name, Reply: schemas.KillReply{V: schemas.Version, TaskID: req.TaskID,
		PID: req.PID}}, r, true)
}

func (s *Sim) workerPs(r *request) {
	h := r.host
	rep := schemas.PsReply{V: schemas.Version, Host: h.name, Tasks: []schemas.PsTask{}}
	for _, p := range h.procs {
		if len(r.ps.PIDs) > 0 && !slices.Contains(r.ps.PIDs, p.pid) {
			continue
		}
		rep.Tasks = append(rep.Tasks, schemas.PsTask{TaskID: p.id, Epoch: p.epoch, PID: p.pid, Target: p.t.name,
			Type: p.typ, RAM: schemas.TaskRAM{WrapperMiB: p.wrapper, HelpersMiB: p.budget - p.wrapper}})
	}
	slices.SortFunc(rep.Tasks, func(a, b schemas.PsTask) int { return int(a.PID - b.PID) })
	var pids []int64
	if len(r.ps.PIDs) > 0 {
		pids = r.ps.PIDs
	}
	s.toPolicy(&selector.PsReplied{Host: h.name, PIDs: pids, Reply: rep}, r, true)
}
