package sim

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/workload"
)

// Epoch is virtual time zero: every run starts at this instant.
var Epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// request is a launch, ps or kill on its way to a worker and back.
type request struct {
	kind     selector.CommandKind
	host     *hostState
	target   string
	launch   *schemas.LaunchRequest
	kill     *schemas.KillRequest
	ps       *schemas.PsRequest
	helper   *schemas.HelperRequest
	answered bool // its reply was delivered or it timed out
}

type hostState struct {
	name     string
	idx      int
	capacity int64
	foreign  int64
	used     int64 // RAM really held by tasks (wrappers + helpers)
	booked   int64 // Σ max(budget, used) over its tasks, and its fleet helpers: admission
	procs    []*proc
	nextPID  int64
	helpers  []*simHelper // fleet helpers it runs, for tasks on any host
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
	wrapper int64 // wrapper RAM held: the larger of the asked and true size
	asked   int64 // wrapper the launch asked for
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

	// Fleet helpers (the memory-manager protocol): fleet is the helper
	// RAM the task uses on other hosts' helpers, known the ones its last
	// alloc reply listed, and askAt when its last request left (-1:
	// none out).
	fleet   int64
	known   []string
	askAt   int64
	askNext int64 // no request before then (virtual ns)
	askWait int64 // the wait after the last refusal in a row (0: none)
	// waiting: its helpers wait for the answer to its first request
	// before they begin (the first round is planned with what it gets).
	waiting bool
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

	procByID map[string]*proc        // live tasks by id
	allocs   map[uint64]*proc        // helper RAM requests out, by id
	allocSeq uint64                  // the last request id
	helperOf map[string][]*simHelper // running fleet helpers by task id

	res      Result
	earned   float64
	halfMark float64 // income earned by half time
	// halfPhases is the phases completed by half time.
	halfPhases uint64
	halfSeen   bool
	lastFail   uint64
	lastInc    float64

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
		procByID: make(map[string]*proc),
		allocs:   make(map[uint64]*proc),
		helperOf: make(map[string][]*simHelper),
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
	case kAlloc:
		s.allocReplied(it.alloc)
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
	case selector.CmdAllocReply:
		// The reply travels back to the task that asked.
		it := s.push(s.now+s.latency(), kAlloc)
		cc := *c
		it.alloc = &cc
		return
	}
	h := s.hostByNm[c.Host]
	r := &request{kind: c.Kind, host: h, target: c.Target, launch: c.Launch, kill: c.Kill, ps: c.Ps, helper: c.Helper}
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
	case selector.CmdHelper:
		return &selector.HelperUnanswered{Host: hostName(r.host), Req: r.helper, NoResponders: noResponders}
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
