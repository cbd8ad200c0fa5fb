package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Group is one task's memory group: a cgroup directory in v1 and v2, a
// process group in proc mode. It is safe for concurrent use.
type Group struct {
	m     *Manager
	name  string
	dir   string // "" in proc mode
	limit int64

	mu    sync.Mutex // guards the fields below
	buf   []byte     // read buffer for the usage files
	usage [2]usageFile
	pgid  int // proc mode: the process group, 0 until Add
}

// usageFile is a file UsageBytes reads, kept open between reads: reading a
// cgroup file at offset 0 makes the kernel generate it afresh, and one pread
// costs far less than open, read and close.
type usageFile struct {
	path string
	f    *os.File // nil until the first read, and after an error
	fd   int
}

// read returns the whole file, read with one pread into *buf (grown while
// the contents fill it).
func (u *usageFile) read(buf *[]byte) ([]byte, error) {
	if u.f == nil {
		f, err := os.Open(u.path)
		if err != nil {
			return nil, err
		}
		u.f, u.fd = f, int(f.Fd())
	}
	for {
		n, err := syscall.Pread(u.fd, *buf, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			u.close() // reopen next time, as after the group was recreated
			return nil, &os.PathError{Op: "pread", Path: u.path, Err: err}
		}
		if n < len(*buf) {
			return (*buf)[:n], nil
		}
		*buf = make([]byte, 2*len(*buf))
	}
}

func (u *usageFile) close() {
	if u.f != nil {
		u.f.Close()
		u.f = nil
	}
}

// Close releases the files the group keeps open for UsageBytes, without
// removing the group (Remove does this too). The group stays usable; the
// files are opened again when needed.
func (g *Group) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := range g.usage {
		g.usage[i].close()
	}
	return nil
}

// group builds the Group value for name; it touches nothing on disk.
func (m *Manager) group(name string) *Group {
	g := &Group{m: m, name: name}
	switch m.mode {
	case ModeV2:
		g.dir = filepath.Join(m.dir, name)
		g.usage[0].path = filepath.Join(g.dir, "memory.current")
		g.usage[1].path = filepath.Join(g.dir, "memory.stat")
		g.buf = make([]byte, 4096)
	case ModeV1:
		g.dir = filepath.Join(m.dir, name)
		g.usage[0].path = filepath.Join(g.dir, "memory.usage_in_bytes")
		g.usage[1].path = filepath.Join(g.dir, "memory.stat")
		g.buf = make([]byte, 4096)
	}
	return g
}

// Name is the group's name under the parent.
func (g *Group) Name() string { return g.name }

// Dir is the group's cgroup directory, "" in proc mode.
func (g *Group) Dir() string { return g.dir }

// Limit is the limit in bytes the group was created with (read back from the
// kernel for an opened v1 or v2 group); 0 means none.
func (g *Group) Limit() int64 { return g.limit }

// PGID is the process group a proc-mode group follows, 0 before Add and in
// other modes.
func (g *Group) PGID() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pgid
}

// Add moves the process pid into the group; its children born afterwards
// follow it. Memory pid used before the move stays charged where it was, so
// call Add right after starting the process (or, in v2, start it inside the
// group with [Group.CgroupFD]).
//
// In proc mode Add remembers pid as the group's process group id: pid must be
// a process-group leader (started with Setpgid) and not in the agent's own
// process group. Later calls must name a member of that same process group.
func (g *Group) Add(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("cgroup: add pid %d to %q: not a process id", pid, g.name)
	}
	if g.m.mode != ModeProc {
		if err := writeFile(filepath.Join(g.dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("cgroup: add pid %d to %q: %w", pid, g.name, err)
		}
		return nil
	}
	pg, err := syscall.Getpgid(pid)
	if err != nil {
		return fmt.Errorf("cgroup: add pid %d to %q: process group: %w", pid, g.name, err)
	}
	if pg == syscall.Getpgrp() {
		return fmt.Errorf("cgroup: add pid %d to %q: it is in the agent's own process group %d (start it with Setpgid)", pid, g.name, pg)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.pgid == 0 && pg != pid:
		return fmt.Errorf("cgroup: add pid %d to %q: not a process-group leader (its group is %d; start it with Setpgid)", pid, g.name, pg)
	case g.pgid == 0:
		g.pgid = pid
	case pg != g.pgid:
		return fmt.Errorf("cgroup: add pid %d to %q: in process group %d, not the group's %d", pid, g.name, pg, g.pgid)
	}
	g.m.procs.invalidate()
	return nil
}

// UsageBytes is the memory the group uses now, in bytes, not counting page
// cache the kernel can drop at once:
//   - v2: memory.current minus inactive_file from memory.stat;
//   - v1: memory.usage_in_bytes minus total_inactive_file from memory.stat
//     (usage_in_bytes is the kernel's batched, slightly fuzzy counter);
//   - proc: the RSS summed over the processes of the process group (shared
//     pages counted once per process), from a /proc walk at most
//     [Manager.SetProcMaxAge] old; 0 before Add.
//
// In v1 and v2 it reads two small files, kept open after the first call (see
// [Group.Close]), with one pread each into a buffer kept in the group, without
// allocating.
func (g *Group) UsageBytes() (int64, error) {
	if g.m.mode == ModeProc {
		pg := g.PGID()
		if pg == 0 {
			return 0, nil
		}
		u, err := g.m.procs.usage(pg, time.Duration(g.m.procMaxAge.Load()))
		if err != nil {
			return 0, fmt.Errorf("cgroup: usage of %q: %w", g.name, err)
		}
		return u, nil
	}
	key := "inactive_file"
	if g.m.mode == ModeV1 {
		key = "total_inactive_file"
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	b, err := g.usage[0].read(&g.buf)
	if err != nil {
		return 0, fmt.Errorf("cgroup: usage of %q: %w", g.name, err)
	}
	cur, err := parseInt(b)
	if err != nil {
		return 0, fmt.Errorf("cgroup: usage of %q: %s: %w", g.name, g.usage[0].path, err)
	}
	b, err = g.usage[1].read(&g.buf)
	if err != nil {
		return 0, fmt.Errorf("cgroup: usage of %q: %w", g.name, err)
	}
	inactive, _ := keyValue(b, key)
	if inactive > cur {
		return 0, nil
	}
	return cur - inactive, nil
}

// PIDs lists the processes in the group: cgroup.procs in v1 and v2, the live
// (not zombie) members of the process group in proc mode.
func (g *Group) PIDs() ([]int, error) {
	if g.m.mode == ModeProc {
		pg := g.PGID()
		if pg == 0 {
			return nil, nil
		}
		pids, err := g.m.procs.members(pg)
		if err != nil {
			return nil, fmt.Errorf("cgroup: processes of %q: %w", g.name, err)
		}
		return pids, nil
	}
	p := filepath.Join(g.dir, "cgroup.procs")
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("cgroup: processes of %q: %w", g.name, err)
	}
	var pids []int
	for len(b) > 0 {
		var line []byte
		line, b = cutLine(b)
		if len(trimSpace(line)) == 0 {
			continue
		}
		v, err := parseInt(line)
		if err != nil {
			return nil, fmt.Errorf("cgroup: processes of %q: %s: %w", g.name, p, err)
		}
		pids = append(pids, int(v))
	}
	return pids, nil
}

// OOMKills is how many processes of the group the kernel's OOM killer killed
// because of the group's limit: oom_kill in memory.events (v2) or in
// memory.oom_control (v1, kernel 4.13+; 0 on older kernels, see
// [Group.OOMLikely]). Always 0 in proc mode, where no limit is enforced.
func (g *Group) OOMKills() (int64, error) {
	var file string
	switch g.m.mode {
	case ModeV2:
		file = "memory.events"
	case ModeV1:
		file = "memory.oom_control"
	default:
		return 0, nil
	}
	n, _, err := g.readKey(file, "oom_kill")
	return n, err
}

// LimitHits is how many times the group's usage hit its limit: "max" in
// memory.events (v2), or memory.failcnt plus memory.memsw.failcnt (v1). Hits
// are not kills: the kernel usually reclaims and goes on. Always 0 in proc
// mode. (Seen on a 6.18 kernel: with the memory+swap limit set, both v1
// counters stay 0 even across an OOM kill; such kernels have oom_kill.)
func (g *Group) LimitHits() (int64, error) {
	switch g.m.mode {
	case ModeV2:
		n, _, err := g.readKey("memory.events", "max")
		return n, err
	case ModeV1:
		// With swap accounting the memory+swap counter, set to the same
		// limit, is charged first and fails first, so count both.
		var sum int64
		for _, f := range []string{"memory.failcnt", "memory.memsw.failcnt"} {
			p := filepath.Join(g.dir, f)
			b, err := os.ReadFile(p)
			if errors.Is(err, fs.ErrNotExist) && f != "memory.failcnt" {
				continue
			}
			if err != nil {
				return 0, fmt.Errorf("cgroup: limit hits of %q: %w", g.name, err)
			}
			n, err := parseInt(b)
			if err != nil {
				return 0, fmt.Errorf("cgroup: limit hits of %q: %s: %w", g.name, p, err)
			}
			sum += n
		}
		return sum, nil
	}
	return 0, nil
}

// OOMLikely says whether a task of this group that just died was stopped by
// the group's memory limit. diedBySIGKILL is whether its process ended by
// SIGKILL (which the agent did not send itself).
//
// With an oom_kill counter (v2, and v1 on kernel 4.13+) it is OOMKills() > 0.
// On v1 kernels without the counter it falls back to LimitHits() > 0 and
// diedBySIGKILL: the limit was hit and the task died the way the OOM killer
// kills (a guess: a SIGKILL from elsewhere after a limit hit looks the same).
// Proc mode enforces no limit and says false.
func (g *Group) OOMLikely(diedBySIGKILL bool) (bool, error) {
	switch g.m.mode {
	case ModeV2:
		n, err := g.OOMKills()
		return n > 0, err
	case ModeV1:
		n, found, err := g.readKey("memory.oom_control", "oom_kill")
		if err != nil || found {
			return n > 0, err
		}
		if !diedBySIGKILL {
			return false, nil
		}
		hits, err := g.LimitHits()
		return hits > 0, err
	}
	return false, nil
}

// readKey reads the "key value" line of a flat-keyed file of the group.
func (g *Group) readKey(file, key string) (int64, bool, error) {
	p := filepath.Join(g.dir, file)
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, false, fmt.Errorf("cgroup: %q: %w", g.name, err)
	}
	n, ok := keyValue(b, key)
	return n, ok, nil
}

// Signal sends sig to every process in the group. In proc mode it is
// kill(-pgid); in v2, SIGKILL goes through cgroup.kill where the kernel has
// it (5.14+), which also catches processes forked meanwhile. Otherwise each
// listed process is signalled once, re-reading the list until no new process
// shows up. Processes that are already gone are no error.
func (g *Group) Signal(sig syscall.Signal) error {
	if g.m.mode == ModeProc {
		pg := g.PGID()
		if pg <= 0 {
			return fmt.Errorf("cgroup: signal %q: no process group yet (Add the task's pid first)", g.name)
		}
		if err := syscall.Kill(-pg, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("cgroup: signal %q: kill(-%d, %v): %w", g.name, pg, sig, err)
		}
		return nil
	}
	if sig == syscall.SIGKILL && g.m.mode == ModeV2 {
		err := writeFile(filepath.Join(g.dir, "cgroup.kill"), "1")
		if err == nil {
			return nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cgroup: signal %q: cgroup.kill: %w", g.name, err)
		}
	}
	sent := map[int]bool{}
	for round := 0; round < 10; round++ {
		pids, err := g.PIDs()
		if err != nil {
			return fmt.Errorf("cgroup: signal %q: %w", g.name, err)
		}
		fresh := 0
		for _, pid := range pids {
			if sent[pid] {
				continue
			}
			sent[pid] = true
			fresh++
			if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("cgroup: signal %q: kill(%d, %v): %w", g.name, pid, sig, err)
			}
		}
		if fresh == 0 {
			return nil
		}
	}
	return nil
}

// Empty reports whether no process is left in the group (in proc mode: no
// live process in the process group; zombies do not count).
func (g *Group) Empty() (bool, error) {
	pids, err := g.PIDs()
	if err != nil {
		return false, err
	}
	return len(pids) == 0, nil
}

// Remove deletes the group once it is empty: rmdir in v1 and v2 (nil if it is
// already gone; an error wrapping [ErrNotEmpty] while processes remain),
// after closing the files the group kept open; in proc mode it only forgets
// the group.
func (g *Group) Remove() error {
	if g.m.mode == ModeProc {
		g.m.mu.Lock()
		if g.m.names[g.name] == g {
			delete(g.m.names, g.name)
		}
		g.m.mu.Unlock()
		return nil
	}
	g.Close()
	var err error
	for try := 0; try < 40; try++ {
		err = g.m.fs.rmdir(g.dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		pids, perr := g.PIDs()
		if perr == nil && len(pids) > 0 {
			return fmt.Errorf("cgroup: remove %q: %w (%d left)", g.name, ErrNotEmpty, len(pids))
		}
		// The last processes have left the list but the kernel has not yet
		// let go of the group: dying tasks are still being torn down.
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("cgroup: remove %q: %w", g.name, err)
}

// readLimit reads the group's limit back from the kernel; 0 means none.
func (g *Group) readLimit() (int64, error) {
	file := "memory.max"
	if g.m.mode == ModeV1 {
		file = "memory.limit_in_bytes"
	}
	b, err := os.ReadFile(filepath.Join(g.dir, file))
	if err != nil {
		return 0, err
	}
	if string(trimSpace(b)) == "max" {
		return 0, nil
	}
	n, err := parseInt(b)
	if err != nil {
		return 0, err
	}
	if n >= 1<<62 { // v1 "unlimited" is the page-rounded maximum
		return 0, nil
	}
	return n, nil
}

// CgroupFD opens the v2 group's directory for starting a process inside it
// from the start: set SysProcAttr.UseCgroupFD and CgroupFD to its Fd(), and
// close it after Start. Then no memory is charged outside the group, not even
// during exec. It fails in v1 and proc mode (use Add).
func (g *Group) CgroupFD() (*os.File, error) {
	if g.m.mode != ModeV2 {
		return nil, fmt.Errorf("cgroup: %q: starting inside a group needs cgroup v2, not %s: %w", g.name, g.m.mode, errors.ErrUnsupported)
	}
	f, err := os.OpenFile(g.dir, os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %q: %w", g.name, err)
	}
	return f, nil
}
