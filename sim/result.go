package sim

import (
	"math"
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// Result holds the measures of one run. Counts are over the whole run.
type Result struct {
	World        string
	Targets      int
	Hosts        int
	AvailableMiB int64 // RAM the hosts offer to tasks
	Duration     time.Duration

	Launches       uint64            // launch commands the policy sent
	Started        uint64            // tasks that started on a host
	FailedLaunches uint64            // launches that ran no helpers, by cause below
	FailureCauses  map[string]uint64 // insufficient_ram, helpers_unavailable, unanswered, invalid, ...
	Crashes        uint64
	Kills          uint64

	Income          float64 // money earned (hacking)
	IncomeLateHalf  float64 // money earned in the second half of the run
	PhasesCompleted uint64  // done events (declared: phases; hacking: till and sow)
	PhasesLateHalf  uint64  // of those, the ones in the second half of the run

	UsefulMiBs float64 // helper MiB-seconds of work that counted
	WastedMiBs float64 // helper MiB-seconds of work that was lost

	TargetsAtLast int           // targets that reached their last phase
	TimeToLast    time.Duration // until every target first reached it; -1: not all did

	StrandedTargets int // targets pending with room for over StrandedAfter at a stretch
	DuplicateTasks  int // tasks started while their target had a live task

	Timeline []Sample

	// PolicyCounters are the selector's own counters at the end (nil for
	// policies without a status).
	PolicyCounters *schemas.Counters
}

// Sample is one point of a run's timeline.
type Sample struct {
	At         time.Duration
	HelpersMiB int64 // helper RAM in use
	WrapperMiB int64 // wrapper RAM in use
	FreeMiB    int64 // RAM free for tasks
	Running    map[string]int
	Starting   int     // tasks whose helpers have not started
	Idle       int     // targets with no live task
	Failures   int     // failed launches since the previous sample
	IncomeRate float64 // money per second since the previous sample
}

// IncomePerSecond is the average income over the run.
func (r *Result) IncomePerSecond() float64 { return r.Income / r.Duration.Seconds() }

// PhasesPerHour is the average rate of completed phases.
func (r *Result) PhasesPerHour() float64 { return float64(r.PhasesCompleted) / r.Duration.Hours() }

// FailedPerHour is the rate of failed launches.
func (r *Result) FailedPerHour() float64 { return float64(r.FailedLaunches) / r.Duration.Hours() }

// UsefulFraction is useful helper MiB-seconds over all MiB-seconds offered.
func (r *Result) UsefulFraction() float64 {
	total := float64(r.AvailableMiB) * r.Duration.Seconds()
	if total <= 0 {
		return 0
	}
	return math.Min(r.UsefulMiBs/total, 1)
}

// measure runs every virtual second: stranded targets, the income mark at
// half time, and the timeline.
func (s *Sim) measure() {
	// Room as a worker would admit a launch: capacity minus foreign use
	// minus every task at the larger of its budget and its use.
	var maxFree int64 = math.MinInt64
	for _, h := range s.hosts {
		maxFree = max(maxFree, h.capacity-h.foreign-h.booked)
	}
	limit := int64(s.cfg.StrandedAfter)
	for _, t := range s.targets {
		if t.live > 0 || t.done || t.minMiB < 0 || maxFree < t.minMiB {
			t.since = -1
			continue
		}
		if t.since < 0 {
			t.since = s.now
		} else if s.now-t.since > limit && !t.stranded {
			t.stranded = true
			s.res.StrandedTargets++
		}
	}
	if !s.halfSeen && s.now >= s.end/2 {
		s.halfSeen = true
		s.halfMark = s.earned
		s.halfPhases = s.res.PhasesCompleted
	}
	if si := int64(s.cfg.SampleInterval); si > 0 && s.now%si == 0 {
		s.sample()
	}
}

func (s *Sim) sample() {
	sm := Sample{At: time.Duration(s.now), Running: map[string]int{}}
	for _, h := range s.hosts {
		sm.FreeMiB += max(h.free(), 0)
		for _, x := range h.helpers {
			sm.HelpersMiB += x.mib // fleet helpers hold helper RAM too
		}
		for _, p := range h.procs {
			s.advance(p)
			sm.WrapperMiB += p.wrapper
			sm.HelpersMiB += p.used - p.wrapper
			if p.started {
				sm.Running[p.typ]++
			} else {
				sm.Starting++
			}
		}
	}
	for _, t := range s.targets {
		if t.live == 0 {
			sm.Idle++
		}
	}
	sm.Failures = int(s.res.FailedLaunches - s.lastFail)
	s.lastFail = s.res.FailedLaunches
	if n := len(s.res.Timeline); n > 0 {
		if dt := (sm.At - s.res.Timeline[n-1].At).Seconds(); dt > 0 {
			sm.IncomeRate = (s.earned - s.lastInc) / dt
		}
	}
	s.lastInc = s.earned
	s.res.Timeline = append(s.res.Timeline, sm)
}

// finish books the work of tasks still running at the end.
func (s *Sim) finish() {
	for _, h := range s.hosts {
		for _, p := range h.procs {
			s.advance(p)
			// A task cut off by the end of the run: its work so far counts
			// for hacking; for declared, the share done counts.
			if p.dup {
				s.res.WastedMiBs += p.helperMs
			} else if p.t.hacking {
				s.res.UsefulMiBs += p.helperMs
			} else {
				s.res.UsefulMiBs += p.helperMs * p.run.Progress()
				s.res.WastedMiBs += p.helperMs * (1 - p.run.Progress())
			}
			p.helperMs = 0
		}
	}
	if st, ok := statusOf(s.policy, s.wall()); ok {
		c := st.Counters
		s.res.PolicyCounters = &c
	}
	s.res.Income = s.earned
	if s.halfSeen {
		s.res.IncomeLateHalf = s.earned - s.halfMark
		s.res.PhasesLateHalf = s.res.PhasesCompleted - s.halfPhases
	}
	s.res.TimeToLast = -1
	var latest int64
	for _, t := range s.targets {
		if t.reachedAt >= 0 {
			s.res.TargetsAtLast++
			latest = max(latest, t.reachedAt)
		}
	}
	if s.res.TargetsAtLast == len(s.targets) {
		s.res.TimeToLast = time.Duration(latest)
	}
}
