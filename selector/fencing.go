package selector

import (
	"time"

	"github.com/taskselector/taskselector/schemas"
)

// fenceHeartbeat answers a heartbeat from an impostor with a kill.
func (e *Engine) fenceHeartbeat(now time.Time, hb *schemas.Heartbeat, reason string) {
	e.counters.FencedHeartbeats++
	e.fence(now, hb.Host, hb.Target, hb.TaskID, hb.PID, reason)
}

// fence answers an impostor with a kill, at most once per reply timeout per
// task.
func (e *Engine) fence(now time.Time, hostName, targetName, taskID string, pid int64, reason string) {
	if last, ok := e.fenced[taskID]; ok && now.Sub(last) < e.cfg.ReplyTimeout {
		return
	}
	e.fenced[taskID] = now
	e.counters.Fences++
	e.counters.Kills++
	e.emit(Command{Kind: CmdKill, Host: hostName, Target: targetName, Fence: true, Kill: &schemas.KillRequest{
		V: schemas.Version, TaskID: taskID, PID: pid, Reason: "fenced: " + reason,
	}})
}

// wouldFence reports whether a message from the given task is answered with
// a kill: it is neither the target's task nor a task the engine would adopt.
func (e *Engine) wouldFence(targetName, taskID string, epoch uint64) bool {
	t := e.targets[targetName]
	switch {
	case t == nil:
		return true
	case t.task != nil:
		return t.task.id != taskID || t.task.epoch != epoch
	}
	return t.deleted || epoch <= t.epoch
}
