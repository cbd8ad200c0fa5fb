package schemas

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"time"
	"unicode/utf8"
)

// Target states shown in SelectorStatus.Targets.
const (
	TargetPending   = "pending"
	TargetLaunching = "launching"
	TargetActive    = "active"
	TargetSuspect   = "suspect"
	TargetBlocked   = "blocked"
	TargetComplete  = "complete"
)

// Disruption modes shown in SelectorStatus.Disruption.
const (
	DisruptionNormal  = "normal"
	DisruptionPartial = "partial"
	DisruptionFull    = "full"
)

var (
	replyCodes   = []string{CodeInsufficientRAM, CodeUnknownType, CodeInvalid, CodeDraining}
	probeCodes   = []string{CodeInvalid, CodeFailed} // kill and ps replies
	disruptions  = []string{DisruptionNormal, DisruptionPartial, DisruptionFull}
	eventKinds   = []string{EventDone, EventFailed}
	profiles     = []string{ProfileDeclared, ProfileHacking}
	taskStates   = []string{TaskLaunching, TaskActive, TaskSuspect}
	roles        = []string{RoleLeader, RoleStandby}
	targetStates = []string{TargetPending, TargetLaunching, TargetActive, TargetSuspect, TargetBlocked, TargetComplete}
)

// checker records the first rule a message breaks. Field paths are built
// only on failure, so checking a valid message does not allocate (except
// below an array element: tasks[2].ram).
type checker struct {
	msg     string
	prefix  string // path of the object being checked, "" at the top...
	inArray bool   // ...or of the array holding it, as element index
	index   int
	err     *FieldError
}

// path returns the path of the object being checked.
func (c *checker) path() string {
	if c.inArray {
		return indexPath(c.prefix, c.index)
	}
	return c.prefix
}

func (c *checker) fail(field, problem string) {
	if c.err == nil {
		c.err = &FieldError{Message: c.msg, Field: joinPath(c.path(), field), Problem: problem}
	}
}

func (c *checker) result() error {
	if c.err == nil {
		return nil
	}
	return c.err
}

// at returns a checker for the object in member name of c's object; its
// result must be merged back with c.merge.
func (c *checker) at(name string) checker {
	return checker{msg: c.msg, prefix: joinPath(c.path(), name), err: c.err}
}

// elem returns a checker for element index of the array in member name of
// c's object; its result must be merged back with c.merge.
func (c *checker) elem(name string, index int) checker {
	return checker{msg: c.msg, prefix: joinPath(c.path(), name), inArray: true, index: index, err: c.err}
}

func (c *checker) merge(sub checker) {
	if c.err == nil {
		c.err = sub.err
	}
}

func (c *checker) version(v int) {
	if v != Version {
		c.fail("v", "unsupported version "+strconv.Itoa(v)+" (want "+strconv.Itoa(Version)+")")
	}
}

// name checks a host, target, type or task_id: 1 to MaxNameBytes bytes of UTF-8.
func (c *checker) name(field, s string) {
	switch {
	case s == "":
		c.fail(field, probEmpty)
	case len(s) > MaxNameBytes:
		c.fail(field, "longer than "+strconv.Itoa(MaxNameBytes)+" bytes")
	case !utf8.ValidString(s):
		c.fail(field, probBadUTF8)
	}
}

// optName checks a name that may be empty.
func (c *checker) optName(field, s string) {
	if s != "" {
		c.name(field, s)
	}
}

// text checks free text: valid UTF-8.
func (c *checker) text(field, s string) {
	if !utf8.ValidString(s) {
		c.fail(field, probBadUTF8)
	}
}

func (c *checker) nonNeg(field string, n int64) {
	if n < 0 {
		c.fail(field, probNegative)
	}
}

// probOverMaxMiB is the problem of a RAM figure over MaxMiB.
var probOverMaxMiB = "greater than " + strconv.FormatInt(MaxMiB, 10) + " (the largest RAM figure, 1 EiB)"

// mib checks a RAM figure: not negative and at most MaxMiB.
func (c *checker) mib(field string, n int64) {
	switch {
	case n < 0:
		c.fail(field, probNegative)
	case n > MaxMiB:
		c.fail(field, probOverMaxMiB)
	}
}

func (c *checker) positive(field string, n int64) {
	switch {
	case n < 0:
		c.fail(field, probNegative)
	case n == 0:
		c.fail(field, probNotPositive)
	}
}

func (c *checker) positiveU(field string, n uint64) {
	if n == 0 {
		c.fail(field, probNotPositive)
	}
}

// finite checks that f is finite and not negative.
func (c *checker) finite(field string, f float64) {
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		c.fail(field, probNotFinite)
	case f < 0:
		c.fail(field, probNegative)
	}
}

func (c *checker) atMost(field string, f, max float64) {
	if f > max {
		c.fail(field, "greater than "+strconv.FormatFloat(max, 'g', -1, 64))
	}
}

func (c *checker) enum(field, s string, allowed []string) {
	for _, a := range allowed {
		if s == a {
			return
		}
	}
	if s == "" {
		c.fail(field, probEmpty)
		return
	}
	c.fail(field, fmt.Sprintf("unknown value %q", s))
}

// time checks that t can be written as RFC 3339 (years 0 to 9999).
func (c *checker) time(field string, t time.Time) {
	if y := t.Year(); y < 0 || y > 9999 {
		c.fail(field, probOutOfRange)
	}
}

func (c *checker) taskRAM(field string, r TaskRAM) {
	s := c.at(field)
	s.mib("wrapper_mib", r.WrapperMiB)
	s.mib("helpers_mib", r.HelpersMiB)
	c.merge(s)
}

// Validate implements Message.
func (m LaunchRequest) Validate() error {
	c := checker{msg: nameLaunchRequest}
	c.version(m.V)
	c.name("task_id", m.TaskID)
	c.positiveU("epoch", m.Epoch)
	c.name("target", m.Target)
	c.name("type", m.Type)
	c.taskRAM("ram", m.RAM)
	return c.result()
}

// Validate implements Message. A reply carries either a PID (> 0) or an
// error, never both.
func (m LaunchReply) Validate() error {
	c := checker{msg: nameLaunchReply}
	c.version(m.V)
	c.name("task_id", m.TaskID)
	switch {
	case m.Error != nil && m.PID != 0:
		c.fail("pid", "set together with error")
	case m.Error != nil:
		c.replyError(m.Error, replyCodes)
	default:
		if m.PID == 0 {
			c.fail("pid", "missing (a reply carries pid or error)")
		}
		c.positive("pid", m.PID)
	}
	return c.result()
}

// replyError checks the error of a reply, whose code is one of codes.
func (c *checker) replyError(e *ReplyError, codes []string) {
	s := c.at("error")
	s.enum("code", e.Code, codes)
	s.text("message", e.Message)
	c.merge(s)
}

// Validate implements Message.
func (m Heartbeat) Validate() error { return m.validate() }

func (m *Heartbeat) validate() error {
	c := checker{msg: nameHeartbeat}
	c.version(m.V)
	c.name("task_id", m.TaskID)
	c.positiveU("epoch", m.Epoch)
	c.positive("pid", m.PID)
	c.name("host", m.Host)
	c.name("target", m.Target)
	c.name("type", m.Type)
	c.positiveU("seq", m.Seq)
	c.mib("ram.budget_mib", m.RAM.BudgetMiB)
	c.mib("ram.used_mib", m.RAM.UsedMiB)
	c.mib("ram.fleet_helpers_mib", m.RAM.FleetHelpersMiB)
	if m.Progress != nil {
		c.finite("progress", *m.Progress)
		c.atMost("progress", *m.Progress, 1)
	}
	c.time("sent_at", m.SentAt)
	return c.result()
}

// Validate implements Message. A failed event needs a reason; numbers in
// metrics must be finite and not negative.
func (m TaskEvent) Validate() error {
	c := checker{msg: nameTaskEvent}
	c.version(m.V)
	c.name("task_id", m.TaskID)
	c.positiveU("epoch", m.Epoch)
	c.positive("pid", m.PID)
	c.name("host", m.Host)
	c.name("target", m.Target)
	c.name("type", m.Type)
	c.enum("kind", m.Kind, eventKinds)
	c.text("reason", m.Reason)
	if m.Kind == EventFailed && m.Reason == "" {
		c.fail("reason", "missing (required when kind is failed)")
	}
	if m.ExitCode != nil {
		c.nonNeg("exit_code", int64(*m.ExitCode))
		c.atMost("exit_code", float64(*m.ExitCode), 255)
	}
	for _, k := range sortedKeys(m.Metrics) {
		c.metric(joinPath("metrics", k), m.Metrics[k])
	}
	c.time("at", m.At)
	return c.result()
}

// metric checks a free-form metric value: every number in it must be finite
// and not negative.
func (c *checker) metric(field string, v any) {
	switch x := v.(type) {
	case nil, bool, string:
	case float64:
		c.finite(field, x)
	case float32:
		c.finite(field, float64(x))
	case map[string]any:
		for _, k := range sortedKeys(x) {
			c.metric(joinPath(field, k), x[k])
		}
	case []any:
		for i, e := range x {
			c.metric(indexPath(field, i), e)
		}
	default:
		rv := reflect.ValueOf(v)
		switch rv.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			c.nonNeg(field, rv.Int())
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		default:
			if s, ok := v.(fmt.Stringer); ok { // json.Number and the like
				f, err := strconv.ParseFloat(s.String(), 64)
				if err != nil {
					c.fail(field, probNotNumber)
					return
				}
				c.finite(field, f)
				return
			}
			c.fail(field, "unsupported type "+rv.Type().String())
		}
	}
}

// Validate implements Message. PID 0 means the task's PID is unknown (its
// launch was never answered): the worker kills by task_id.
func (m KillRequest) Validate() error {
	c := checker{msg: nameKillRequest}
	c.version(m.V)
	c.name("task_id", m.TaskID)
	c.nonNeg("pid", m.PID)
	c.text("reason", m.Reason)
	return c.result()
}

// Validate implements Message. An error's code is invalid or failed; with
// an error, running says nothing.
func (m KillReply) Validate() error {
	c := checker{msg: nameKillReply}
	c.version(m.V)
	c.name("task_id", m.TaskID)
	c.nonNeg("pid", m.PID)
	if m.Error != nil {
		c.replyError(m.Error, probeCodes)
	}
	return c.result()
}

// Validate implements Message.
func (m PsRequest) Validate() error {
	c := checker{msg: namePsRequest}
	c.version(m.V)
	for i, p := range m.PIDs {
		if p <= 0 {
			c.positive(indexPath("pids", i), p)
		}
	}
	return c.result()
}

// Validate implements Message. An error's code is invalid or failed; with
// an error, tasks says nothing.
func (m PsReply) Validate() error {
	c := checker{msg: namePsReply}
	c.version(m.V)
	c.name("host", m.Host)
	for i := range m.Tasks {
		t := &m.Tasks[i]
		s := c.elem("tasks", i)
		s.name("task_id", t.TaskID)
		s.positiveU("epoch", t.Epoch)
		s.positive("pid", t.PID)
		s.name("target", t.Target)
		s.name("type", t.Type)
		s.taskRAM("ram", t.RAM)
		s.time("started_at", t.StartedAt)
		s.text("log", t.Log)
		if len(t.Log) > 4096 {
			s.fail("log", "longer than 4096 bytes")
		}
		c.merge(s)
		if c.err != nil {
			break
		}
	}
	for i := range m.Starting {
		st := &m.Starting[i]
		s := c.elem("starting", i)
		s.name("task_id", st.TaskID)
		s.positiveU("epoch", st.Epoch)
		s.name("target", st.Target)
		c.merge(s)
		if c.err != nil {
			break
		}
	}
	for i := range m.Ended {
		d := &m.Ended[i]
		s := c.elem("ended", i)
		s.name("task_id", d.TaskID)
		s.positiveU("epoch", d.Epoch)
		s.enum("kind", d.Kind, eventKinds)
		c.merge(s)
		if c.err != nil {
			break
		}
	}
	if m.Error != nil {
		c.replyError(m.Error, probeCodes)
	}
	return c.result()
}

// Validate implements Message.
func (m HostStatus) Validate() error {
	c := checker{msg: nameHostStatus}
	c.version(m.V)
	c.name("host", m.Host)
	c.mib("ram.total_mib", m.RAM.TotalMiB)
	c.mib("ram.used_mib", m.RAM.UsedMiB)
	for i, id := range m.Tasks {
		if id == "" || len(id) > MaxNameBytes || !utf8.ValidString(id) {
			c.name(indexPath("tasks", i), id)
		}
	}
	if len(m.Memory) > 64 {
		c.fail("memory", "longer than 64 bytes")
	}
	c.text("memory", m.Memory)
	c.helperStatuses(m.Helpers)
	c.time("sent_at", m.SentAt)
	return c.result()
}

// Validate implements Message. The declared profile needs at least one phase;
// every phase has a type, RAM figures in 0..MaxMiB, helpers_min_mib <=
// helpers_full_mib and a finite work_s > 0, and only the last phase may
// repeat. The hacking profile needs metrics, all finite and non-negative,
// with hack_chance and hack_fraction_per_thread at most 1. A value, when
// present, is finite and > 0.
func (m TargetSpec) Validate() error {
	c := checker{msg: nameTargetSpec}
	c.version(m.V)
	c.enum("profile", m.Profile, profiles)
	if m.Value != nil {
		c.finite("value", *m.Value)
		if *m.Value == 0 {
			c.fail("value", "must be greater than 0")
		}
	}
	if m.Profile == ProfileDeclared && len(m.Phases) == 0 {
		c.fail("phases", "missing (the declared profile needs at least one phase)")
	}
	for i := range m.Phases {
		p := &m.Phases[i]
		s := c.elem("phases", i)
		s.name("type", p.Type)
		s.mib("wrapper_mib", p.WrapperMiB)
		s.mib("helpers_min_mib", p.HelpersMinMiB)
		s.mib("helpers_full_mib", p.HelpersFullMiB)
		if p.HelpersFullMiB < p.HelpersMinMiB {
			s.fail("helpers_full_mib", "less than helpers_min_mib")
		}
		s.finite("work_s", p.WorkS)
		if p.WorkS == 0 {
			s.fail("work_s", "must be greater than 0")
		}
		if p.Repeat && i != len(m.Phases)-1 {
			s.fail("repeat", "only the last phase may repeat")
		}
		for _, k := range sortedKeys(p.Args) {
			s.metric(joinPath("args", k), p.Args[k])
		}
		c.merge(s)
	}
	if m.Profile == ProfileHacking && m.Metrics == nil {
		c.fail("metrics", "missing (the hacking profile needs metrics)")
	}
	if x := m.Metrics; x != nil {
		s := c.at("metrics")
		s.finite("security", x.Security)
		s.finite("min_security", x.MinSecurity)
		s.finite("money", x.Money)
		s.finite("max_money", x.MaxMoney)
		s.finite("growth_log_per_thread", x.GrowthLogPerThread)
		s.finite("hack_fraction_per_thread", x.HackFractionPerThread)
		s.atMost("hack_fraction_per_thread", x.HackFractionPerThread, 1)
		s.finite("hack_chance", x.HackChance)
		s.atMost("hack_chance", x.HackChance, 1)
		s.finite("hack_time_ms", x.HackTimeMS)
		c.merge(s)
	}
	return c.result()
}

// Validate implements Message. Epoch 0 means no launch yet; a task's PID 0
// means it is still launching without a reply.
func (m TaskState) Validate() error {
	c := checker{msg: nameTaskState}
	c.version(m.V)
	c.name("target", m.Target)
	c.name("phase", m.Phase)
	if t := m.Task; t != nil {
		s := c.at("task")
		s.name("task_id", t.TaskID)
		s.nonNeg("pid", t.PID)
		s.name("type", t.Type)
		s.name("host", t.Host)
		s.enum("state", t.State, taskStates)
		s.mib("budget_mib", t.BudgetMiB)
		s.mib("wrapper_mib", t.WrapperMiB)
		s.time("launched_at", t.LaunchedAt)
		if t.ConfirmedAt != nil {
			s.time("confirmed_at", *t.ConfirmedAt)
		}
		c.merge(s)
	}
	c.text("blocked", m.Blocked)
	c.text("blocked_spec", m.BlockedSpec)
	c.time("updated_at", m.UpdatedAt)
	return c.result()
}

// Validate implements Message. Every count and MiB figure is non-negative
// (the selector reports free_mib clamped at 0 and heartbeat_age_ms 0 for a
// task without heartbeats), every MiB figure at most MaxMiB, and a
// disruption, when set, is normal, partial or full.
func (m SelectorStatus) Validate() error {
	c := checker{msg: nameSelectorStatus}
	c.version(m.V)
	c.text("degraded_reason", m.DegradedReason)
	if m.Disruption != "" {
		c.enum("disruption", m.Disruption, disruptions)
	}
	c.text("launches_stopped", m.LaunchesStopped)
	if m.Role != "" {
		c.enum("role", m.Role, roles)
	}
	c.text("leader", m.Leader)
	c.nonNeg("backoff.level", int64(m.Backoff.Level))
	c.time("backoff.next_launch_at", m.Backoff.NextLaunchAt)
	c.nonNeg("pending_launches", int64(m.PendingLaunches))
	for i := range m.Targets {
		t := &m.Targets[i]
		s := c.elem("targets", i)
		s.name("target", t.Target)
		s.optName("phase", t.Phase)
		s.enum("state", t.State, targetStates)
		s.optName("task_id", t.TaskID)
		s.nonNeg("pid", t.PID)
		s.optName("host", t.Host)
		s.mib("budget_mib", t.BudgetMiB)
		s.mib("full_mib", t.FullMiB)
		s.nonNeg("heartbeat_age_ms", t.HeartbeatAgeMS)
		s.text("reason", t.Reason)
		s.grants("helpers", t.Helpers)
		c.merge(s)
		if c.err != nil {
			break
		}
	}
	for i := range m.Hosts {
		h := &m.Hosts[i]
		s := c.elem("hosts", i)
		s.name("host", h.Host)
		s.mib("total_mib", h.TotalMiB)
		s.mib("used_mib", h.UsedMiB)
		s.mib("reserved_mib", h.ReservedMiB)
		s.mib("free_mib", h.FreeMiB)
		s.nonNeg("tasks", int64(h.Tasks))
		s.mib("helpers_mib", h.HelpersMiB)
		c.merge(s)
		if c.err != nil {
			break
		}
	}
	for _, k := range sortedKeys(m.Counters.Failures) {
		c.text(joinPath("counters.failures", k), k)
	}
	for _, k := range sortedKeys(m.Counters.MalformedMessages) {
		c.text(joinPath("counters.malformed_messages", k), k)
	}
	c.time("at", m.At)
	return c.result()
}
