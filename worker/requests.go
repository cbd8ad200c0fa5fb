package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/micro"

	"github.com/taskselector/taskselector/schemas"
)

const (
	kindLaunch = iota
	kindKill
	kindPs
	kindHelper
	kinds
)

var kindNames = [kinds]string{"launch", "kill", "ps", "helper"}

// handleLaunch is the launch endpoint's handler. The fence barrier (see
// fence.go) comes on the same subject, without a reply subject.
func (a *Agent) handleLaunch(r micro.Request) {
	if a.handlers.enter() {
		// Once the gate is closed the agent is draining already: a launch
		// is refused, or answered from a task it knows, before any use of
		// the executor.
		defer a.handlers.leave()
	}
	launch, stale := a.passBarrier(r.Headers().Get(barrierHeader))
	if !launch {
		return
	}
	data := r.Data()
	req, err := schemas.DecodeLaunchRequest(data)
	if err != nil {
		a.malformedRequest(kindLaunch, r, err)
		re := replyError(schemas.CodeInvalid, err.Error())
		a.respond(r, schemas.LaunchReply{V: schemas.Version, TaskID: bestEffortTaskID(data), Error: re}, re, false)
		return
	}
	var reply schemas.LaunchReply
	if key := commandKey(data); key != "" {
		reply = a.refuseLaunch(&req, schemas.CodeInvalid, fmt.Sprintf(
			"the launch names a command (field %q): a launch names a task type, and only the worker's own configuration says what runs", key))
	} else if stale {
		reply = a.refuseLaunch(&req, schemas.CodeDraining,
			"sent before the host's fence lifted: the selector gave it up long ago")
	} else {
		var killed *entry
		reply, killed = a.launch(&req)
		if killed != nil {
			// A kill came while it was being started: it is stopped now.
			defer a.killStarted(killed)
		}
	}
	a.respond(r, reply, reply.Error, true)
}

// commandFields are the top-level fields by which a launch request could
// try to say what to run. The schema has none of them, and unknown fields are
// otherwise ignored; a launch that carries one is refused, so that no
// sender can believe it chose a command.
var commandFields = []string{"command", "cmd", "argv", "path", "exec", "executable", "program", "script", "shell", "dir", "env"}

// commandKey returns the first field of commandFields in the launch request
// data, or "". The data decoded already, so it is a JSON object.
func commandKey(data []byte) string {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return ""
	}
	for _, k := range commandFields {
		if _, ok := top[k]; ok {
			return k
		}
	}
	return ""
}

// refuseLaunch counts and logs the refusal of req and returns its reply.
func (a *Agent) refuseLaunch(req *schemas.LaunchRequest, code, msg string) schemas.LaunchReply {
	a.refusedMu.Lock()
	a.refused[code]++
	a.refusedMu.Unlock()
	a.log.Info("launch refused", "task_id", req.TaskID, "target", req.Target, "type", req.Type, "code", code, "reason", msg)
	return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, Error: replyError(code, msg)}
}

// launch carries out one decoded launch request and returns the reply, and
// the task it started if a kill of it came while it was being started.
func (a *Agent) launch(req *schemas.LaunchRequest) (_ schemas.LaunchReply, killed *entry) {
	refuse := func(code, msg string) (schemas.LaunchReply, *entry) { return a.refuseLaunch(req, code, msg), nil }
	spec := LaunchSpec{TaskID: req.TaskID, Epoch: req.Epoch, Target: req.Target, Type: req.Type, RAM: req.RAM, Args: req.Args}

	a.mu.Lock()
	defer a.mu.Unlock()
	// A retried request while the first one's Start is under way is answered
	// from its outcome.
	for a.waitStartLocked(req.TaskID) {
	}
	if e, ok := a.tasks[req.TaskID]; ok {
		if e.spec.Target != req.Target || e.spec.Epoch != req.Epoch {
			return refuse(schemas.CodeInvalid, fmt.Sprintf("task_id %s already runs for target %q epoch %d", req.TaskID, e.spec.Target, e.spec.Epoch))
		}
		a.relaunches.Add(1)
		return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: e.pid}, nil
	}
	if pid, ok := a.ended.get(req.TaskID); ok {
		// Ended already (its event is on its way or delivered): answer with
		// its PID and start nothing, so a retried request never runs twice.
		a.relaunches.Add(1)
		return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: pid}, nil
	}
	if a.draining {
		return refuse(schemas.CodeDraining, "host is draining")
	}
	if a.fence.fenced.Load() {
		// Not a code of its own: the selector takes unknown codes for a
		// permanent refusal of the target, and this one passes.
		return refuse(schemas.CodeDraining, "host is fenced: cut off from NATS, it stopped its tasks and takes no launches until NATS answers again")
	}
	if err := a.exec.Check(&spec); err != nil {
		return refuse(launchCode(err), err.Error())
	}
	budget := spec.BudgetMiB()
	if free := a.freeLocked(); budget > free {
		return refuse(schemas.CodeInsufficientRAM, fmt.Sprintf("needs %d MiB, %d MiB free of %d", budget, max(free, 0), a.cfg.RAMMiB))
	}
	var hooks Hooks
	hooks.Exited = func(t Task, ex Exit) { a.exited(spec.TaskID, t, ex) }
	st := &starting{spec: spec, done: make(chan struct{})}
	a.starts[spec.TaskID] = st
	startedAt := a.cfg.Now()
	a.mu.Unlock()
	task, err := a.exec.Start(&spec, hooks)
	a.mu.Lock()
	delete(a.starts, spec.TaskID)
	defer close(st.done) // after the outcome is recorded, before the unlock
	if err != nil {
		return refuse(launchCode(err), err.Error())
	}
	e := &entry{
		spec:      spec,
		task:      task,
		pid:       task.PID(),
		startedAt: startedAt,
		hbSubject: a.subj.Heartbeat(a.cfg.Host, spec.Target),
		fleet:     a.newFleetState(task),
	}
	a.launches.Add(1)
	if st.exit != nil {
		// It ended before its start was recorded: it is reported as any
		// task that ended, and the reply gives its PID.
		ex := *st.exit
		a.removeLocked(e, ex.Kind, ex.Reason)
		if ex.Kind != "" {
			a.log.Info("task ended as it started", "task_id", spec.TaskID, "pid", e.pid, "target", spec.Target,
				"kind", ex.Kind, "reason", ex.Reason)
			a.emit(e, ex)
		}
		return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: e.pid}, nil
	}
	a.tasks[spec.TaskID] = e
	// The first heartbeat goes out before the reply, not at the next tick.
	a.heartbeatLocked(e)
	a.log.Info("task started", "task_id", spec.TaskID, "pid", e.pid, "target", spec.Target, "type", spec.Type,
		"epoch", spec.Epoch, "budget_mib", budget)
	if st.killed {
		killed = e
	}
	return schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: e.pid}, killed
}

func launchCode(err error) string {
	switch {
	case errors.Is(err, ErrUnknownType):
		return schemas.CodeUnknownType
	case errors.Is(err, ErrInsufficientRAM):
		return schemas.CodeInsufficientRAM
	default:
		return schemas.CodeInvalid
	}
}

// handleKill is the kill endpoint's handler.
func (a *Agent) handleKill(r micro.Request) {
	data := r.Data()
	req, err := schemas.DecodeKillRequest(data)
	if err != nil {
		a.malformedRequest(kindKill, r, err)
		// Running true: a reader that ignores the error must not take the
		// task for gone.
		re := replyError(schemas.CodeInvalid, err.Error())
		a.respond(r, schemas.KillReply{V: schemas.Version, TaskID: bestEffortTaskID(data), Running: true, Error: re}, re, false)
		return
	}
	if !a.handlers.enter() {
		// The agent is shutting down and its executor may be closed: the
		// task is left as it is, and said to run.
		re := replyError(schemas.CodeFailed, "the worker is shutting down")
		a.respond(r, schemas.KillReply{V: schemas.Version, TaskID: req.TaskID, PID: req.PID, Running: true, Error: re}, re, true)
		return
	}
	defer a.handlers.leave()
	reply := a.kill(&req)
	a.respond(r, reply, reply.Error, true)
}

// kill stops the task req names (by task_id, and by PID when it is not 0)
// and reports whether it still runs. A task that is not there is gone. A
// request whose PID is not the task's, or a stop that fails, is answered
// with an error (and running true), never with a "gone" that could be wrong.
func (a *Agent) kill(req *schemas.KillRequest) schemas.KillReply {
	reply := schemas.KillReply{V: schemas.Version, TaskID: req.TaskID, PID: req.PID}
	a.mu.Lock()
	if st, ok := a.starts[req.TaskID]; ok {
		// Answering "gone" now would let it run unknown, and waiting for
		// its start would hold up every other kill: it is stopped once it
		// runs, and this reply says it still runs.
		st.killed = true
		a.mu.Unlock()
		reply.Running = true
		reply.Error = replyError(schemas.CodeFailed, "the task is being started; it is stopped as soon as it runs")
		return reply
	}
	e, ok := a.tasks[req.TaskID]
	a.mu.Unlock()
	if !ok {
		return reply
	}
	if req.PID != 0 && e.pid != req.PID {
		reply.Running = true
		reply.Error = replyError(schemas.CodeInvalid, fmt.Sprintf("task %s runs with pid %d, not %d", req.TaskID, e.pid, req.PID))
		return reply
	}
	stopped, err := a.stop(e, schemas.ReasonKilled)
	if err != nil {
		reply.Running = true
		reply.Error = replyError(schemas.CodeFailed, err.Error())
		return reply
	}
	if stopped {
		a.kills.Add(1)
		a.log.Info("task killed", "task_id", req.TaskID, "pid", e.pid, "target", e.spec.Target, "reason", req.Reason)
	}
	return reply
}

// handlePs is the ps endpoint's handler.
func (a *Agent) handlePs(r micro.Request) {
	if a.handlers.enter() {
		// ps reads the agent's own records of the tasks alone.
		defer a.handlers.leave()
	}
	req, err := schemas.DecodePsRequest(r.Data())
	if err != nil {
		a.malformedRequest(kindPs, r, err)
		re := replyError(schemas.CodeInvalid, err.Error())
		a.respond(r, schemas.PsReply{V: schemas.Version, Host: a.cfg.Host, Error: re}, re, true)
		return
	}
	if r.Reply() != "" {
		a.respond(r, a.ps(&req), nil, true)
	}
}

// psEndedMax bounds the ended tasks a ps reply that names no PID lists:
// the most recent ones.
const psEndedMax = 64

// ps lists the running tasks (hung ones included), only those with the
// requested PIDs when there are any, ordered by PID; when there are none,
// it lists in Starting the tasks being started. It also lists, in
// Ended, the tasks that ended on their own with those PIDs (or the most
// recent ones), so that the selector can tell a task whose done event is
// on its way from one that vanished.
func (a *Agent) ps(req *schemas.PsRequest) schemas.PsReply {
	a.mu.Lock()
	reply := schemas.PsReply{V: schemas.Version, Host: a.cfg.Host, Tasks: make([]schemas.PsTask, 0, len(a.tasks))}
	for _, e := range a.tasks {
		if len(req.PIDs) > 0 && !slices.Contains(req.PIDs, e.pid) {
			continue
		}
		pt := schemas.PsTask{
			TaskID: e.spec.TaskID, Epoch: e.spec.Epoch, PID: e.pid, Target: e.spec.Target,
			Type: e.spec.Type, RAM: e.spec.RAM, StartedAt: e.startedAt.UTC(),
		}
		if l, ok := e.task.(TaskLogger); ok {
			pt.Log = l.LogPath()
		}
		reply.Tasks = append(reply.Tasks, pt)
	}
	if len(req.PIDs) == 0 {
		for _, st := range a.starts {
			reply.Starting = append(reply.Starting, schemas.PsStarting{TaskID: st.spec.TaskID, Epoch: st.spec.Epoch, Target: st.spec.Target})
		}
		slices.SortFunc(reply.Starting, func(x, y schemas.PsStarting) int { return strings.Compare(x.TaskID, y.TaskID) })
	}
	a.ended.recent(func(sp TaskSpan) bool {
		if sp.Kind == "" || sp.Epoch == 0 {
			return true // vanished without a word: no event will come
		}
		if len(req.PIDs) > 0 {
			if slices.Contains(req.PIDs, sp.PID) {
				reply.Ended = append(reply.Ended, schemas.PsEnded{TaskID: sp.TaskID, Epoch: sp.Epoch, Kind: sp.Kind})
			}
			return true
		}
		reply.Ended = append(reply.Ended, schemas.PsEnded{TaskID: sp.TaskID, Epoch: sp.Epoch, Kind: sp.Kind})
		return len(reply.Ended) < psEndedMax
	})
	a.mu.Unlock()
	sort.Slice(reply.Tasks, func(i, j int) bool { return reply.Tasks[i].PID < reply.Tasks[j].PID })
	return reply
}

// malformedRequest counts an undecodable request and logs it, at most once
// per malformedLogEvery per kind.
func (a *Agent) malformedRequest(kind int, r micro.Request, err error) {
	a.malformed[kind].Add(1)
	if ok, n := a.malformedLog[kind].Allow(); ok {
		a.log.Warn("malformed request", "kind", kindNames[kind], "subject", r.Subject(), "bytes", len(r.Data()),
			"err", truncate(err.Error(), 256), "suppressed", n)
	}
}

// replyError builds a reply's error, its message cut to 512 bytes.
func replyError(code, msg string) *schemas.ReplyError {
	return &schemas.ReplyError{Code: code, Message: truncate(msg, 512)}
}

// bestEffortTaskID pulls a task_id out of a request that failed strict
// decoding, so that its error reply can still be matched; "" when none.
func bestEffortTaskID(b []byte) string {
	if len(b) > schemas.MaxMessageBytes {
		return ""
	}
	var v struct {
		TaskID string `json:"task_id"`
	}
	if json.Unmarshal(b, &v) != nil || len(v.TaskID) > schemas.MaxNameBytes {
		return ""
	}
	return v.TaskID
}

// truncate makes s valid UTF-8 and cuts it to at most n bytes (plus "...")
// at a rune boundary.
func truncate(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// malformedLogEvery is the shortest gap between two logs of one malformed
// kind.
const malformedLogEvery = 5 * time.Second
