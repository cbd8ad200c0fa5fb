// Package cgroup gives every task its own memory group and reads what the
// group uses. Three modes exist, picked by [Detect]:
//
//   - [ModeV2]: a cgroup v2 hierarchy with the memory controller. Each task is
//     a child of the agent's parent group, with memory.max as its limit.
//   - [ModeV1]: the cgroup v1 memory controller (root/memory), with
//     memory.limit_in_bytes as the limit.
//   - [ModeProc]: no writable memory cgroup. A group is a process group: its
//     usage is the RSS summed over every process whose pgid is the group's,
//     found by walking /proc. No limit is enforced in this mode.
//
// The layout on disk is root/<parent>/<name> (v2) or root/memory/<parent>/<name>
// (v1). The package reads and writes plain files only (no statfs checks), so
// a directory laid out like a cgroup hierarchy works as well as the kernel's,
// which is how the v2 code is tested on hosts without a v2 memory controller.
//
// Reading usage is meant to be cheap enough to sample every live task every
// second: v1 and v2 pread two small files kept open by the group into a
// per-group buffer, with no allocation, and the proc mode shares one /proc walk between all groups of a
// [Manager] for a short while (see [Manager.SetProcMaxAge]).
package cgroup

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Mode is how a [Manager] groups, measures and limits tasks. Its values are
// the strings HostStatus.Memory carries.
type Mode string

// The modes, best first.
const (
	// ModeV2 is a cgroup v2 hierarchy with the memory controller.
	ModeV2 Mode = "cgroup2"
	// ModeV1 is the cgroup v1 memory controller.
	ModeV1 Mode = "cgroup1"
	// ModeProc is a /proc walk of a process group, with no limit enforced.
	ModeProc Mode = "proc"
)

// DefaultRoot is where cgroup hierarchies are mounted when Detect is given "".
const DefaultRoot = "/sys/fs/cgroup"

// DefaultProcMaxAge is how long, by default, one /proc walk serves the usage
// reads of every group of a proc-mode Manager.
const DefaultProcMaxAge = 500 * time.Millisecond

// ErrNotEmpty is returned (wrapped) by Group.Remove while processes remain in
// the group.
var ErrNotEmpty = errors.New("group still has processes")

// fsOps are the directory operations that differ between the kernel's
// cgroup file systems and a fake tree: on cgroupfs, mkdir creates the
// interface files and rmdir removes a directory that still lists them.
type fsOps struct {
	mkdir func(path string) error
	rmdir func(path string) error
}

func realFS() fsOps {
	return fsOps{
		mkdir: func(p string) error { return os.Mkdir(p, 0o755) },
		rmdir: func(p string) error { return syscall.Rmdir(p) },
	}
}

// Manager creates, opens and lists the groups of one agent, all under one
// parent group. It is safe for concurrent use.
type Manager struct {
	mode   Mode
	why    string
	root   string
	parent string
	dir    string // the parent group's directory; "" in proc mode
	fs     fsOps

	mu    sync.Mutex
	names map[string]*Group // proc mode: the groups this process knows

	procs      *procScanner
	procMaxAge atomic.Int64 // nanoseconds
}

// Detect picks the best writable mode under root ("" means [DefaultRoot]) and
// creates (or reuses) the parent group named parent for this agent, such as
// "taskselector-<host-encoded>" (see [ParentName]).
//
// It picks v2 when root/cgroup.controllers lists memory and memory can be
// enabled in the parent's cgroup.subtree_control; else v1 when root/memory is a
// memory hierarchy in which the parent can be created; else [ModeProc].
// [Manager.Why] says why, including why better modes were passed over. It fails
// only for a bad parent name: the proc mode always works.
func Detect(root, parent string) (*Manager, error) {
	return detect(root, parent, "", realFS())
}

// DetectMode is Detect restricted to one mode: want "" picks the best as Detect
// does, ModeProc always succeeds, and ModeV1 or ModeV2 fails with the reason
// when that mode is not available.
func DetectMode(root, parent string, want Mode) (*Manager, error) {
	return detect(root, parent, want, realFS())
}

func detect(root, parent string, want Mode, ops fsOps) (*Manager, error) {
	if err := ValidName(parent); err != nil {
		return nil, fmt.Errorf("cgroup: parent: %w", err)
	}
	switch want {
	case "", ModeV2, ModeV1, ModeProc:
	default:
		return nil, fmt.Errorf("cgroup: unknown mode %q (want %s, %s or %s)", want, ModeV2, ModeV1, ModeProc)
	}
	if root == "" {
		root = DefaultRoot
	}
	m := &Manager{root: root, parent: parent, fs: ops, names: map[string]*Group{}}
	m.procMaxAge.Store(int64(DefaultProcMaxAge))

	var passed []string
	if want == "" || want == ModeV2 {
		dir, err := m.setupV2()
		if err == nil {
			m.mode, m.dir = ModeV2, dir
			m.why = fmt.Sprintf("cgroup v2 at %s with the memory controller; groups under %s", root, dir)
			return m, nil
		}
		if want == ModeV2 {
			return nil, fmt.Errorf("cgroup: v2 not available: %w", err)
		}
		passed = append(passed, "no cgroup v2: "+err.Error())
	}
	if want == "" || want == ModeV1 {
		dir, err := m.setupV1()
		if err == nil {
			m.mode, m.dir = ModeV1, dir
			m.why = fmt.Sprintf("cgroup v1 memory controller at %s; groups under %s", filepath.Join(root, "memory"), dir)
			if len(passed) > 0 {
				m.why += " (" + strings.Join(passed, "; ") + ")"
			}
			return m, nil
		}
		if want == ModeV1 {
			return nil, fmt.Errorf("cgroup: v1 memory controller not available: %w", err)
		}
		passed = append(passed, "no cgroup v1 memory: "+err.Error())
	}
	m.mode = ModeProc
	m.procs = newProcScanner("/proc")
	if want == ModeProc {
		m.why = "proc mode requested: usage is the RSS of each task's process group, no limit enforced"
	} else {
		m.why = "no writable memory cgroup, falling back to a /proc walk of each task's process group (usage is summed RSS, no limit enforced): " +
			strings.Join(passed, "; ")
	}
	return m, nil
}

// setupV2 checks root for a v2 hierarchy with memory, enables memory for the
// root's children, creates the parent and enables memory for its children.
func (m *Manager) setupV2() (string, error) {
	ctrl, err := os.ReadFile(filepath.Join(m.root, "cgroup.controllers"))
	if err != nil {
		return "", fmt.Errorf("not a cgroup v2 mount: %w", err)
	}
	if !hasWord(ctrl, "memory") {
		return "", fmt.Errorf("%s has no memory controller (controllers: %q)", m.root, strings.TrimSpace(string(ctrl)))
	}
	if err := enableMemory(m.root); err != nil {
		return "", err
	}
	dir := filepath.Join(m.root, m.parent)
	created, err := m.mkdirParent(dir)
	if err != nil {
		return "", err
	}
	if err := enableMemory(dir); err != nil {
		if created {
			_ = m.fs.rmdir(dir)
		}
		return "", err
	}
	return dir, nil
}

// enableMemory makes sure the children of dir get the memory controller.
func enableMemory(dir string) error {
	p := filepath.Join(dir, "cgroup.subtree_control")
	cur, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if hasWord(cur, "memory") {
		return nil
	}
	if err := writeFile(p, "+memory"); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("enable memory in %s: %w (the group holds processes itself; run the agent in a child group)", p, err)
		}
		return fmt.Errorf("enable memory in %s: %w", p, err)
	}
	return nil
}

// setupV1 checks root/memory for a v1 memory hierarchy and creates the parent.
func (m *Manager) setupV1() (string, error) {
	base := filepath.Join(m.root, "memory")
	for _, f := range []string{"memory.usage_in_bytes", "cgroup.procs"} {
		if _, err := os.Stat(filepath.Join(base, f)); err != nil {
			return "", fmt.Errorf("%s is not a memory hierarchy: %w", base, err)
		}
	}
	dir := filepath.Join(base, m.parent)
	created, err := m.mkdirParent(dir)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, "memory.limit_in_bytes")); err != nil {
		if created {
			_ = m.fs.rmdir(dir)
		}
		return "", fmt.Errorf("parent group %s has no memory.limit_in_bytes: %w", dir, err)
	}
	return dir, nil
}

func (m *Manager) mkdirParent(dir string) (created bool, err error) {
	err = m.fs.mkdir(dir)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrExist):
		st, serr := os.Stat(dir)
		if serr != nil || !st.IsDir() {
			return false, fmt.Errorf("parent group %s exists but is not a directory", dir)
		}
		return false, nil
	default:
		return false, fmt.Errorf("create parent group %s: %w", dir, err)
	}
}

// Mode is the mode Detect picked.
func (m *Manager) Mode() Mode { return m.mode }

// Why says in words why this mode was picked, including why better ones were
// not (for the startup log and HostStatus).
func (m *Manager) Why() string { return m.why }

// Dir is the parent group's directory, "" in proc mode.
func (m *Manager) Dir() string { return m.dir }

// Parent is the parent group's name.
func (m *Manager) Parent() string { return m.parent }

// SetProcMaxAge sets how long one /proc walk serves the usage reads of every
// group in proc mode ([DefaultProcMaxAge] by default; 0 walks /proc on every
// read). Adding a process always forces a fresh walk. It does nothing in
// other modes.
func (m *Manager) SetProcMaxAge(d time.Duration) {
	if d < 0 {
		d = 0
	}
	m.procMaxAge.Store(int64(d))
}

// New creates the group name with a memory limit of limitBytes (no limit when
// limitBytes <= 0). A leftover group of that name with no process in it is
// replaced, so its counters start afresh; one with processes is an error.
//
// In v2 the limit is memory.max, swap is held to 0 (memory.swap.max) and
// memory.oom.group is set, so an OOM kill takes the whole group. In v1 the
// limit is memory.limit_in_bytes, with memory.memsw.limit_in_bytes set to the
// same where swap accounting exists. In proc mode the limit is only
// remembered ([Group.Limit]).
func (m *Manager) New(name string, limitBytes int64) (*Group, error) {
	if err := ValidName(name); err != nil {
		return nil, fmt.Errorf("cgroup: new group: %w", err)
	}
	if limitBytes < 0 {
		limitBytes = 0
	}
	if m.mode == ModeProc {
		m.mu.Lock()
		defer m.mu.Unlock()
		if old := m.names[name]; old != nil {
			if empty, err := old.Empty(); err == nil && !empty {
				return nil, fmt.Errorf("cgroup: new group %q: exists and %w", name, ErrNotEmpty)
			}
		}
		g := m.group(name)
		g.limit = limitBytes
		m.names[name] = g
		return g, nil
	}

	dir := filepath.Join(m.dir, name)
	err := m.fs.mkdir(dir)
	if errors.Is(err, fs.ErrExist) {
		old, oerr := m.Open(name)
		if oerr != nil {
			return nil, fmt.Errorf("cgroup: new group %q: %w", name, err)
		}
		if rerr := old.Remove(); rerr != nil {
			return nil, fmt.Errorf("cgroup: new group %q: replace leftover: %w", name, rerr)
		}
		err = m.fs.mkdir(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("cgroup: new group %q: %w", name, err)
	}
	g := m.group(name)
	g.limit = limitBytes
	if err := g.applyLimit(); err != nil {
		_ = m.fs.rmdir(dir)
		return nil, fmt.Errorf("cgroup: new group %q: %w", name, err)
	}
	return g, nil
}

func (g *Group) applyLimit() error {
	switch g.m.mode {
	case ModeV2:
		v := "max"
		if g.limit > 0 {
			v = fmt.Sprint(g.limit)
		}
		if err := writeFile(filepath.Join(g.dir, "memory.max"), v); err != nil {
			return fmt.Errorf("set limit: %w", err)
		}
		if g.limit > 0 {
			// Without swap held to 0 a task could page out past its budget
			// instead of being stopped. Absent without swap accounting.
			if err := writeFile(filepath.Join(g.dir, "memory.swap.max"), "0"); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("set swap limit: %w", err)
			}
		}
		// One task is one unit: the OOM killer takes all of it (kernel 4.19+).
		if err := writeFile(filepath.Join(g.dir, "memory.oom.group"), "1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("set oom.group: %w", err)
		}
	case ModeV1:
		if g.limit <= 0 {
			return nil
		}
		v := fmt.Sprint(g.limit)
		if err := writeFile(filepath.Join(g.dir, "memory.limit_in_bytes"), v); err != nil {
			return fmt.Errorf("set limit: %w", err)
		}
		// memsw (memory+swap) must be at least the memory limit, so it is set
		// after it. Absent without swap accounting; the kernel refuses it on
		// some hosts, in which case the plain limit stands.
		_ = writeFile(filepath.Join(g.dir, "memory.memsw.limit_in_bytes"), v)
	}
	return nil
}

// Open returns the existing group name, as after an agent restart. In proc
// mode the process group is not known until [Group.Add] is called with the
// task's pid (the group leader) kept by the caller.
func (m *Manager) Open(name string) (*Group, error) {
	if err := ValidName(name); err != nil {
		return nil, fmt.Errorf("cgroup: open group: %w", err)
	}
	if m.mode == ModeProc {
		m.mu.Lock()
		defer m.mu.Unlock()
		if g := m.names[name]; g != nil {
			return g, nil
		}
		g := m.group(name)
		m.names[name] = g
		return g, nil
	}
	g := m.group(name)
	st, err := os.Stat(g.dir)
	if err != nil {
		return nil, fmt.Errorf("cgroup: open group %q: %w", name, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("cgroup: open group %q: %s is not a directory", name, g.dir)
	}
	g.limit, _ = g.readLimit()
	return g, nil
}

// List returns the names of the groups under the parent, sorted. In proc mode
// these are the groups this Manager created or opened and did not remove.
func (m *Manager) List() ([]string, error) {
	if m.mode == ModeProc {
		m.mu.Lock()
		defer m.mu.Unlock()
		out := make([]string, 0, len(m.names))
		for n := range m.names {
			out = append(out, n)
		}
		sort.Strings(out)
		return out, nil
	}
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		return nil, fmt.Errorf("cgroup: list %s: %w", m.dir, err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Close removes the parent group if no group is left under it; with groups
// left (tasks to re-adopt after a restart) it keeps it and returns nil.
func (m *Manager) Close() error {
	if m.mode == ModeProc {
		return nil
	}
	names, err := m.List()
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	if len(names) > 0 {
		return nil
	}
	if err := m.fs.rmdir(m.dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		if errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.ENOTEMPTY) {
			return nil // a group appeared meanwhile, or processes sit in the parent
		}
		return fmt.Errorf("cgroup: remove parent %s: %w", m.dir, err)
	}
	return nil
}

// ValidName reports whether name can be a parent or group name: one path
// element of 1 to 255 bytes, not starting with a dot, with no slash, NUL or
// newline.
func ValidName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) > 255:
		return fmt.Errorf("name %.20q... is longer than 255 bytes", name)
	case name[0] == '.':
		return fmt.Errorf("name %q starts with a dot", name)
	case strings.ContainsAny(name, "/\x00\n"):
		return fmt.Errorf("name %q holds a slash, NUL or newline", name)
	}
	return nil
}

// ParentName is the parent group name for an agent on host:
// "taskselector-" and the host name with every byte outside [A-Za-z0-9.-]
// written as _xx (hex), shortened with a hash when too long. Distinct hosts
// get distinct names.
func ParentName(host string) string {
	var b strings.Builder
	b.WriteString("taskselector-")
	const hexd = "0123456789abcdef"
	for i := 0; i < len(host); i++ {
		c := host[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '-':
			b.WriteByte(c)
		default:
			b.WriteByte('_')
			b.WriteByte(hexd[c>>4])
			b.WriteByte(hexd[c&15])
		}
	}
	s := b.String()
	if len(s) > 200 {
		h := fnv.New64a()
		h.Write([]byte(host))
		s = fmt.Sprintf("%s-%016x", s[:183], h.Sum64())
	}
	return s
}

// writeFile writes s to an existing file, as cgroup interface files want: one
// write, no creation (a missing file is an error, not a new file).
func writeFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(s)
	cerr := f.Close()
	if werr != nil {
		return werr
	}
	return cerr
}

// hasWord reports whether the space-separated list b holds w (a leading '+'
// on a word is ignored).
func hasWord(b []byte, w string) bool {
	for _, f := range strings.Fields(string(b)) {
		if strings.TrimPrefix(f, "+") == w {
			return true
		}
	}
	return false
}
