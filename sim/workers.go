package sim

import (
	"errors"
	"slices"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
	"github.com/taskselector/taskselector/workload"
)

// ----- hosts and workers -----

func (s *Sim) status(h *hostState) {
	st := &schemas.HostStatus{V: schemas.Version, Host: h.name, SentAt: s.wall(),
		RAM:   schemas.HostRAM{TotalMiB: h.capacity, UsedMiB: h.used + h.foreign},
		Tasks: make([]string, 0, len(h.procs))}
	for _, p := range h.procs {
		st.Tasks = append(st.Tasks, p.id)
	}
	for _, x := range h.helpers {
		st.Helpers = append(st.Helpers, schemas.HelperStatus{HelperID: x.id, TaskID: x.taskID, Epoch: x.epoch, Target: x.target, MiB: x.mib})
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
	case selector.CmdHelper:
		s.workerHelper(r)
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
	// The wrapper process holds its true size whatever the request books:
	// a launch cannot make it smaller by asking for less.
	held := max(wrapper, est.WrapperMiB)
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
		wrapper: held, asked: wrapper, budget: wrapper + helpers, helpers: ask, used: held, run: run, alive: true,
		lastAdv: s.now, askAt: -1}
	s.procByID[p.id] = p
	p.dup = t.live > 0
	if p.dup {
		s.res.DuplicateTasks++
	}
	t.live++
	t.since = -1
	h.procs = append(h.procs, p)
	h.used += held
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
	if p.t.hacking && p.typ != p.t.phase {
		// A real hacking task reads its target when it starts and exits
		// when the target is not in its phase: it runs no helpers.
		s.fail(CauseWrongPhase)
		s.end1(p, schemas.EventFailed, schemas.ReasonExited, true)
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
	s.askFleet(p)
	p.waiting = p.askAt == s.now
}

// advance lets p's run catch up with now and books what it did.
func (s *Sim) advance(p *proc) {
	if !p.started || s.now <= p.lastAdv {
		return
	}
	if p.waiting {
		if s.now-p.askAt < askTimeout {
			p.lastAdv = s.now // no work before its helpers begin
			return
		}
		p.waiting = false // no answer: it begins with what it has
	}
	dt := s.now - p.lastAdv
	p.helperMs += float64(p.used-p.wrapper+p.fleet) * float64(dt) / 1e9
	p.lastAdv = s.now
	p.run.Advance(time.Duration(dt))
	if e := p.run.Earned(); e != p.earned {
		// A duplicate earns nothing: its target's money is taken by the
		// task that owns it. Harvest income follows the target's true
		// money and security (HarvestScale); harvest leaves them as they
		// are, so the scale holds over the whole step.
		if !p.dup {
			s.earned += (e - p.earned) * HarvestScale(*p.t.spec.Metrics)
		}
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
		s.askFleet(p)
	}
	s.heartbeat(p)
	it := s.push(s.now+int64(s.cfg.HeartbeatInterval), kBeat)
	it.proc = p
}

func (s *Sim) heartbeat(p *proc) {
	p.seq++
	prog := p.run.Progress()
	hb := &schemas.Heartbeat{V: schemas.Version, TaskID: p.id, Epoch: p.epoch, PID: p.pid, Host: p.host.name,
		Target: p.t.name, Type: p.typ, Seq: p.seq, RAM: schemas.HeartbeatRAM{BudgetMiB: p.budget, UsedMiB: p.used, FleetHelpersMiB: p.fleet},
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
	delete(s.procByID, p.id)
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
		// A duplicate completes nothing: its work never reached the
		// target. Its event reports the target as it truly is.
		if !p.dup {
			s.res.PhasesCompleted++
		}
		if p.t.hacking {
			metrics = workload.MetricsMap(*p.t.spec.Metrics)
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
			Type: p.typ, RAM: schemas.TaskRAM{WrapperMiB: p.asked, HelpersMiB: p.budget - p.asked}})
	}
	slices.SortFunc(rep.Tasks, func(a, b schemas.PsTask) int { return int(a.PID - b.PID) })
	var pids []int64
	if len(r.ps.PIDs) > 0 {
		pids = r.ps.PIDs
	}
	s.toPolicy(&selector.PsReplied{Host: h.name, PIDs: pids, Reply: rep}, r, true)
}

// CauseWrongPhase is the failure cause (Result.FailureCauses) of a hacking
// task launched for a phase its target is not in: it exits at its start
// (a failed event with reason exited) and runs no helpers.
const CauseWrongPhase = "wrong_phase"

// HarvestScale is the share of a harvest's planned income (planned at max
// money and minimum security) that a target with metrics m yields: a hack
// steals a share of the current money, and in the hacking model both the
// money share per hack thread and the hack chance carry the factor
// (100 - security) / 100, so each scales by (100 - sec) / (100 - min_sec)
// from its value at minimum security. The result is in [0, 1]. (When the
// chance at minimum security is clamped at 1, the true chance at a higher
// security may be larger than the scaled one; the scale then errs low.)
func HarvestScale(m schemas.HackingMetrics) float64 {
	money := 0.0
	if m.MaxMoney > 0 {
		money = min(max(m.Money/m.MaxMoney, 0), 1)
	}
	sec := 1.0
	if den := 100 - m.MinSecurity; den > 0 {
		sec = min(max((100-m.Security)/den, 0), 1)
	}
	return money * sec * sec
}
