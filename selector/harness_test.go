package selector

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/workload"
)

// t0 is the fake clock's start. It carries no monotonic reading; the engine
// only ever subtracts the times it is given.
var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// harness drives an Engine with a fake clock, a fake tasks bucket (the last
// Persist or Delete per target) and the declared targets, and remembers what
// each launch asked for so that tests can answer by target#epoch.
type harness struct {
	tb    testing.TB
	cfg   Config
	e     *Engine
	now   time.Time
	specs map[string]schemas.TargetSpec
	kv    map[string]schemas.TaskState

	tasks   map[string]*launched // by stable name target#epoch
	byReal  map[string]string    // real task id -> stable name
	lastPs  map[string][]int64   // host -> PIDs of the last ps sent to it (nil: all)
	nextPID int64
	check   bool // run checkInvariants after every step

	hostRAM map[string][2]int64 // total, used of every host a status was sent for
	silent  map[string]bool     // hosts that send no status in refresh

	helperNames map[string]string // real helper id -> stable name task#epoch/hN
	helperReqs  map[string]*schemas.HelperRequest
	helperSeq   map[string]int // per stable task name: helpers named so far
}

// launched is what the harness knows of a task the engine launched.
type launched struct {
	id, name, target, host, typ string
	epoch                       uint64
	wrapper, helpers            int64
	pid                         int64
}

func newHarness(tb testing.TB, cfg Config) *harness {
	tb.Helper()
	return &harness{
		tb:      tb,
		cfg:     cfg,
		now:     t0,
		specs:   map[string]schemas.TargetSpec{},
		kv:      map[string]schemas.TaskState{},
		tasks:   map[string]*launched{},
		byReal:  map[string]string{},
		lastPs:  map[string][]int64{},
		nextPID: 100,
		check:   true,
		hostRAM: map[string][2]int64{},
		silent:  map[string]bool{},

		helperNames: map[string]string{},
		helperReqs:  map[string]*schemas.HelperRequest{},
		helperSeq:   map[string]int{},
	}
}

// testConfig is the defaults with a fixed seed.
func testConfig() Config {
	c := DefaultConfig()
	c.Seed = 7
	return c
}

// start builds the engine from the declared targets and the fake bucket.
func (h *harness) start() {
	h.tb.Helper()
	snap := Snapshot{Targets: maps.Clone(h.specs)}
	for _, name := range slices.Sorted(maps.Keys(h.kv)) {
		snap.Tasks = append(snap.Tasks, h.kv[name])
	}
	e, err := New(h.cfg, h.now, snap)
	if err != nil {
		h.tb.Fatalf("New: %v", err)
	}
	h.e = e
	h.lastPs = map[string][]int64{}
	for _, st := range snap.Tasks {
		if st.Task != nil {
			h.learn(st.Task.TaskID, st.Target, st.Epoch, st.Task.Host, st.Task.Type, st.Task.WrapperMiB, st.Task.BudgetMiB-st.Task.WrapperMiB, st.Task.PID)
		}
	}
	if h.check {
		if err := e.checkInvariants(); err != nil {
			h.tb.Fatalf("after New: %v", err)
		}
	}
}

func (h *harness) learn(id, target string, epoch uint64, host, typ string, wrapper, helpers, pid int64) *launched {
	if name, ok := h.byReal[id]; ok {
		return h.tasks[name]
	}
	name := target + "#" + strconv.FormatUint(epoch, 10)
	if _, taken := h.tasks[name]; taken {
		name = id
	}
	l := &launched{id: id, name: name, target: target, host: host, typ: typ, epoch: epoch, wrapper: wrapper, helpers: helpers, pid: pid}
	h.tasks[name] = l
	h.byReal[id] = name
	return l
}

func (h *harness) advance(d time.Duration) { h.now = h.now.Add(d) }

// step feeds one event, applies persist/delete to the fake bucket, records
// launches and ps requests, checks the invariants and returns a copy of the
// commands.
func (h *harness) step(ev Event) []Command {
	h.tb.Helper()
	if h.e == nil {
		h.start()
	}
	out := slices.Clone(h.e.Step(h.now, ev))
	for _, c := range out {
		h.observe(c)
	}
	if h.check {
		if err := h.e.checkInvariants(); err != nil {
			h.tb.Fatalf("after %T at +%v: %v", ev, h.now.Sub(t0), err)
		}
	}
	return out
}

func (h *harness) observe(c Command) {
	h.tb.Helper()
	if b, err := json.Marshal(c); err != nil {
		h.tb.Fatalf("command %v does not encode (NaN?): %v", c.Kind, err)
	} else if strings.Contains(string(b), "NaN") {
		h.tb.Fatalf("command carries NaN: %s", b)
	}
	switch c.Kind {
	case CmdPersist:
		h.kv[c.State.Target] = *c.State
	case CmdDelete:
		delete(h.kv, c.Target)
	case CmdLaunch:
		l := c.Launch
		if l.RAM.WrapperMiB < 0 || l.RAM.HelpersMiB < 0 {
			h.tb.Fatalf("launch with negative RAM: %+v", l.RAM)
		}
		h.learn(l.TaskID, l.Target, l.Epoch, c.Host, l.Type, l.RAM.WrapperMiB, l.RAM.HelpersMiB, 0)
	case CmdPs:
		h.lastPs[c.Host] = slices.Clone(c.Ps.PIDs)
	case CmdHelper:
		h.helperName(c.Helper.HelperID, c.Helper.TaskID)
		r := *c.Helper
		h.helperReqs[c.Helper.HelperID] = &r
	}
}

// helperName gives helper id of task taskID a stable name: the task's,
// then /h and its number among that task's helpers.
func (h *harness) helperName(id, taskID string) string {
	if n, ok := h.helperNames[id]; ok {
		return n
	}
	task := h.stable(taskID)
	h.helperSeq[task]++
	n := task + "/h" + strconv.Itoa(h.helperSeq[task])
	h.helperNames[id] = n
	return n
}

// helperID returns the real id of the helper with stable name name.
func (h *harness) helperID(name string) string {
	h.tb.Helper()
	for id, n := range h.helperNames {
		if n == name {
			return id
		}
	}
	h.tb.Fatalf("no helper %s", name)
	return ""
}

// task returns what the harness knows of a task by its stable name.
func (h *harness) task(name string) *launched {
	h.tb.Helper()
	l := h.tasks[name]
	if l == nil {
		h.tb.Fatalf("no task %s (known: %v)", name, slices.Sorted(maps.Keys(h.tasks)))
	}
	return l
}

// stray makes up a task the engine never launched, known by id.
func (h *harness) stray(id, target string, epoch uint64, host string, pid int64) *launched {
	if _, taken := h.tasks[id]; taken {
		h.tb.Fatalf("stray %s: name taken", id)
	}
	l := &launched{id: id, name: id, target: target, host: host, epoch: epoch, pid: pid}
	h.tasks[id] = l
	h.byReal[id] = id
	return l
}

// ----- events -----

func (h *harness) declare(name string, spec schemas.TargetSpec) []Command {
	h.specs[name] = spec
	if h.e == nil {
		return nil
	}
	return h.step(&TargetUpserted{Target: name, Spec: spec})
}

func (h *harness) undeclare(name string) []Command {
	delete(h.specs, name)
	return h.step(&TargetDeleted{Target: name})
}

func (h *harness) hostStatus(name string, total, used int64, tasks ...string) []Command {
	h.hostRAM[name] = [2]int64{total, used}
	return h.step(&HostStatusReceived{Status: &schemas.HostStatus{
		V: schemas.Version, Host: name, RAM: schemas.HostRAM{TotalMiB: total, UsedMiB: used}, Tasks: tasks, SentAt: h.now,
	}})
}

func (h *harness) tick() []Command { return h.step(&Tick{}) }

// heartbeatMsg builds a heartbeat of the task l, with its PID (assigned
// when it has none yet).
func (h *harness) heartbeatMsg(l *launched, used int64) *schemas.Heartbeat {
	if l.pid == 0 {
		h.nextPID++
		l.pid = h.nextPID
	}
	return &schemas.Heartbeat{
		V: schemas.Version, TaskID: l.id, Epoch: l.epoch, PID: l.pid, Host: l.host, Target: l.target,
		Type: l.typ, Seq: 1, RAM: schemas.HeartbeatRAM{BudgetMiB: l.wrapper + l.helpers, UsedMiB: used}, SentAt: h.now,
	}
}

func (h *harness) heartbeat(name string) []Command {
	l := h.task(name)
	return h.step(&HeartbeatReceived{Heartbeat: h.heartbeatMsg(l, 0)})
}

func (h *harness) reply(name string, pid int64) []Command {
	l := h.task(name)
	if pid == 0 {
		if l.pid == 0 {
			h.nextPID++
			l.pid = h.nextPID
		}
		pid = l.pid
	}
	l.pid = pid
	return h.step(&LaunchReplied{Host: l.host, Target: l.target, Epoch: l.epoch,
		Reply: schemas.LaunchReply{V: schemas.Version, TaskID: l.id, PID: pid}})
}

func (h *harness) replyError(name, code string) []Command {
	l := h.task(name)
	return h.step(&LaunchReplied{Host: l.host, Target: l.target, Epoch: l.epoch,
		Reply: schemas.LaunchReply{V: schemas.Version, TaskID: l.id, Error: &schemas.ReplyError{Code: code, Message: "refused"}}})
}

// psReply answers the last ps sent to host with the named tasks running.
func (h *harness) psReply(host string, running ...string) []Command {
	rep := schemas.PsReply{V: schemas.Version, Host: host, Tasks: []schemas.PsTask{}}
	for _, name := range running {
		l := h.task(name)
		rep.Tasks = append(rep.Tasks, schemas.PsTask{TaskID: l.id, Epoch: l.epoch, PID: l.pid, Target: l.target, Type: l.typ,
			RAM: schemas.TaskRAM{WrapperMiB: l.wrapper, HelpersMiB: l.helpers}})
	}
	return h.step(&PsReplied{Host: host, PIDs: h.lastPs[host], Reply: rep})
}

func (h *harness) killReply(name string, running bool) []Command {
	l := h.task(name)
	return h.step(&KillReplied{Host: l.host, Reply: schemas.KillReply{V: schemas.Version, TaskID: l.id, PID: l.pid, Running: running}})
}

func (h *harness) event(name, kind, reason string, metrics map[string]any) []Command {
	l := h.task(name)
	return h.step(&TaskEventReceived{Event: &schemas.TaskEvent{
		V: schemas.Version, TaskID: l.id, Epoch: l.epoch, PID: l.pid, Host: l.host, Target: l.target, Type: l.typ,
		Kind: kind, Reason: reason, Metrics: metrics, At: h.now,
	}})
}

// ----- reading commands -----

// format renders commands one per line, in the canonical text form the
// scenario files use, with task ids as target#epoch.
func (h *harness) format(cmds []Command) []string {
	lines := make([]string, 0, len(cmds))
	for _, c := range cmds {
		lines = append(lines, h.formatOne(c))
	}
	return lines
}

func (h *harness) stable(id string) string {
	if name, ok := h.byReal[id]; ok {
		return name
	}
	return id
}

func (h *harness) formatOne(c Command) string {
	switch c.Kind {
	case CmdLaunch:
		l := c.Launch
		return fmt.Sprintf("launch %s %s type=%s ram=%d+%d", c.Host, h.stable(l.TaskID), l.Type, l.RAM.WrapperMiB, l.RAM.HelpersMiB)
	case CmdKill:
		return fmt.Sprintf("kill %s %s pid=%d reason=%q", c.Host, h.stable(c.Kill.TaskID), c.Kill.PID, c.Kill.Reason)
	case CmdPs:
		if c.Ps.PIDs == nil {
			return fmt.Sprintf("ps %s all", c.Host)
		}
		pids := make([]string, len(c.Ps.PIDs))
		for i, p := range c.Ps.PIDs {
			pids[i] = strconv.FormatInt(p, 10)
		}
		return fmt.Sprintf("ps %s pids=%s", c.Host, strings.Join(pids, ","))
	case CmdPersist:
		s := c.State
		line := fmt.Sprintf("persist %s phase=%s epoch=%d", s.Target, s.Phase, s.Epoch)
		if s.Task == nil {
			return line + " task=-"
		}
		r := s.Task
		return line + fmt.Sprintf(" task=%s state=%s host=%s pid=%d budget=%d", h.stable(r.TaskID), r.State, r.Host, r.PID, r.BudgetMiB)
	case CmdDelete:
		return "delete " + c.Target
	case CmdHelper:
		x := c.Helper
		return fmt.Sprintf("helper %s %s %s task=%s epoch=%d mib=%d", x.Op, c.Host, h.helperNames[x.HelperID], h.stable(x.TaskID), x.Epoch, x.MiB)
	case CmdAllocReply:
		r := c.Alloc
		line := fmt.Sprintf("alloc_reply %d", c.AllocID)
		if r.Error != nil {
			line += " error=" + r.Error.Code
		}
		return line + " grants=" + h.grants(r.Grants) + " held=" + h.grants(r.Held)
	}
	return "unknown command"
}

// grants renders grants as stable-name@host:MiB, comma-separated, or -.
func (h *harness) grants(gs []schemas.HelperGrant) string {
	if len(gs) == 0 {
		return "-"
	}
	parts := make([]string, len(gs))
	for i, g := range gs {
		parts[i] = fmt.Sprintf("%s@%s:%d", h.helperNames[g.HelperID], g.Host, g.MiB)
	}
	return strings.Join(parts, ",")
}

// only returns the commands of one kind.
func only(cmds []Command, kind CommandKind) []Command {
	var out []Command
	for _, c := range cmds {
		if c.Kind == kind {
			out = append(out, c)
		}
	}
	return out
}

// expect fails unless the commands, formatted, are exactly want.
func (h *harness) expect(cmds []Command, want ...string) {
	h.tb.Helper()
	got := h.format(cmds)
	if !slices.Equal(got, want) {
		h.tb.Fatalf("at +%v commands:\n  got  %q\n  want %q", h.now.Sub(t0), got, want)
	}
}

// expectKinds fails unless the commands have exactly these kinds, in order.
func (h *harness) expectKinds(cmds []Command, kinds ...CommandKind) {
	h.tb.Helper()
	got := make([]CommandKind, len(cmds))
	for i, c := range cmds {
		got[i] = c.Kind
	}
	if !slices.Equal(got, kinds) {
		h.tb.Fatalf("at +%v command kinds: got %v want %v\n%s", h.now.Sub(t0), got, kinds, strings.Join(h.format(cmds), "\n"))
	}
}

func (h *harness) targetStatus(name string) schemas.TargetStatus {
	h.tb.Helper()
	for _, ts := range h.e.Status(h.now).Targets {
		if ts.Target == name {
			return ts
		}
	}
	h.tb.Fatalf("no target %s in status", name)
	return schemas.TargetStatus{}
}

func (h *harness) hostLine(name string) schemas.HostStatusLine {
	h.tb.Helper()
	for _, hl := range h.e.Status(h.now).Hosts {
		if hl.Host == name {
			return hl
		}
	}
	h.tb.Fatalf("no host %s in status", name)
	return schemas.HostStatusLine{}
}

// ----- specs -----

// phase is one declared phase.
func phase(typ string, wrapper, minH, fullH int64) schemas.Phase {
	return schemas.Phase{Type: typ, WrapperMiB: wrapper, HelpersMinMiB: minH, HelpersFullMiB: fullH, WorkS: 5}
}

// declared is a declared spec with the given phases.
func declared(phases ...schemas.Phase) schemas.TargetSpec {
	return schemas.TargetSpec{V: schemas.Version, Profile: schemas.ProfileDeclared, Phases: phases}
}

// simple is a one-phase repeating declared target of the given sizes.
func simple(wrapper, minH, fullH int64) schemas.TargetSpec {
	p := phase("a", wrapper, minH, fullH)
	p.Repeat = true
	return declared(p)
}

func withValue(s schemas.TargetSpec, v float64) schemas.TargetSpec {
	s.Value = &v
	return s
}

// hacking is an early-game server as a hacking target at the demo level.
func hacking(tb testing.TB, server string) schemas.TargetSpec {
	tb.Helper()
	for _, s := range workload.EarlyGame() {
		if s.Name == server {
			return s.Spec(workload.DemoLevel)
		}
	}
	tb.Fatalf("no server %s", server)
	return schemas.TargetSpec{}
}

// warm starts the engine with hosts given as "name=totalMiB", lets the
// recovery grace pass with statuses flowing, and returns the commands of the
// first tick after it.
func (h *harness) warm(hosts ...string) []Command {
	h.tb.Helper()
	h.start()
	for _, hs := range hosts {
		name, total, ok := strings.Cut(hs, "=")
		n, err := strconv.ParseInt(total, 10, 64)
		if !ok || err != nil {
			h.tb.Fatalf("bad host %q", hs)
		}
		h.hostRAM[name] = [2]int64{n, 0}
	}
	h.refresh()
	h.advance(h.e.cfg.RecoveryGrace)
	h.refresh()
	return h.tick()
}

// refresh sends a status for every host that is not silent, in name order.
func (h *harness) refresh() []Command {
	var out []Command
	for _, name := range slices.Sorted(maps.Keys(h.hostRAM)) {
		if h.silent[name] {
			continue
		}
		r := h.hostRAM[name]
		out = append(out, h.hostStatus(name, r[0], r[1])...)
	}
	return out
}

// run lets d pass in steps of one second: every step, statuses from the hosts
// that are not silent, a heartbeat from each named task, then a tick. It
// returns every command.
func (h *harness) run(d time.Duration, alive ...string) []Command {
	h.tb.Helper()
	var out []Command
	for end := h.now.Add(d); h.now.Before(end); {
		h.advance(min(time.Second, end.Sub(h.now)))
		out = append(out, h.refresh()...)
		for _, name := range alive {
			out = append(out, h.heartbeat(name)...)
		}
		out = append(out, h.tick()...)
	}
	return out
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x5bd1e995)) }

// cloneSpec copies a spec deeply (the engine owns the specs it is given).
func cloneSpec(s schemas.TargetSpec) schemas.TargetSpec {
	if s.Value != nil {
		v := *s.Value
		s.Value = &v
	}
	if s.Metrics != nil {
		m := *s.Metrics
		s.Metrics = &m
	}
	s.Phases = slices.Clone(s.Phases)
	return s
}
