package process

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/taskselector/taskselector/internal/cgroup"
)

// stateRecord is the small JSON file kept in <state dir>/tasks/ for each live
// task, so that a restarted agent can find and kill what it left running.
type stateRecord struct {
	TaskID string `json:"task_id"`
	Epoch  uint64 `json:"epoch"`
	Target string `json:"target"`
	Type   string `json:"type"`
	PID    int    `json:"pid"`
	PGID   int    `json:"pgid"`
	Group  string `json:"group"`
	// StartTicks is the wrapper's start time in clock ticks since boot
	// (/proc/<pid>/stat), and BootID the kernel's boot id: together they
	// tell the task's processes from later ones that reuse the ids.
	StartTicks uint64    `json:"start_ticks"`
	BootID     string    `json:"boot_id"`
	StartedAt  time.Time `json:"started_at"`
	Log        string    `json:"log"`
}

// writeState writes rec to path atomically.
func writeState(path string, rec *stateRecord) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// cleanLeftovers kills the tasks a previous agent on this state directory
// left running (after kill -9 of the agent, or a Close without killing),
// rather than re-adopting them: their API token, log pipe and exit status
// died with the old agent, so the new one could neither serve nor classify
// them. For each state file it SIGKILLs the task's process group (only
// processes started since the task, on the same boot) and its memory group,
// waits until they are empty, and removes the group and the file; then it
// does the same for any memory group under the agent's parent with no state
// file. Each one is logged. The selector sees those tasks' heartbeats stop
// and requeues them.
func (e *Executor) cleanLeftovers() {
	ents, err := os.ReadDir(e.tasksDir)
	if err != nil {
		e.log.Warn("reading task state files", "dir", e.tasksDir, "err", err)
	}
	done := map[string]bool{}
	for _, d := range ents {
		path := filepath.Join(e.tasksDir, d.Name())
		if !strings.HasSuffix(d.Name(), ".json") {
			if strings.HasSuffix(d.Name(), ".tmp") {
				_ = os.Remove(path)
			}
			continue
		}
		b, err := os.ReadFile(path)
		var rec stateRecord
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err != nil {
			e.log.Warn("leftover task state file unreadable; removed", "path", path, "err", err)
			_ = os.Remove(path)
			continue
		}
		log := e.log.With("task_id", rec.TaskID, "pid", rec.PID, "group", rec.Group, "started_at", rec.StartedAt)
		killed := 0
		if rec.PGID > 1 && rec.BootID != "" && rec.BootID == e.boot {
			killed = killPGroup(rec.PGID, rec.StartTicks)
		}
		if rec.Group != "" && cgroup.ValidName(rec.Group) == nil {
			if err := e.killGroup(rec.Group); err != nil {
				log.Error("leftover task: memory group not cleared", "err", err)
				continue // keep the file: the next start tries again
			}
			done[rec.Group] = true
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Warn("removing leftover task state file", "err", err)
		}
		log.Warn("leftover task from a previous agent killed", "processes", killed, "type", rec.Type, "target", rec.Target)
	}
	names, err := e.cg.List()
	if err != nil {
		e.log.Warn("listing memory groups", "err", err)
		return
	}
	for _, n := range names {
		if done[n] {
			continue
		}
		if err := e.killGroup(n); err != nil {
			e.log.Error("leftover memory group not cleared", "group", n, "err", err)
			continue
		}
		e.log.Warn("leftover memory group without state file: processes killed, group removed", "group", n)
	}
}

// killGroup SIGKILLs every process of the memory group name, waits until it
// is empty and removes it. A group that does not exist is no error.
func (e *Executor) killGroup(name string) error {
	if e.cg.Mode() == cgroup.ModeProc {
		return nil // a proc-mode group is the process group, already killed
	}
	g, err := e.cg.Open(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	empty := func() bool {
		_ = g.Signal(syscall.SIGKILL)
		ok, err := g.Empty()
		return err == nil && ok
	}
	if !waitGone(empty, killWait) {
		return fmt.Errorf("group %s: processes survive SIGKILL", name)
	}
	return g.Remove()
}

// killPGroup SIGKILLs the live processes of process group pgid started at or
// after minStart and waits until they are gone; it returns how many there
// were.
func killPGroup(pgid int, minStart uint64) int {
	pids := pgroupMembers(pgid, minStart)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	waitGone(func() bool {
		left := pgroupMembers(pgid, minStart)
		for _, p := range left {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		return len(left) == 0
	}, killWait)
	return len(pids)
}
