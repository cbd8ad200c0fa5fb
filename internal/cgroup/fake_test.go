package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// A fake tree is a temporary directory laid out like a cgroup hierarchy. Its
// mkdir creates the interface files the kernel would, and its rmdir refuses,
// as the kernel does, a group with child groups or processes.

var v2Files = map[string]string{
	"cgroup.controllers":     "memory pids\n",
	"cgroup.subtree_control": "",
	"cgroup.procs":           "",
	"cgroup.events":          "populated 0\nfrozen 0\n",
	"cgroup.kill":            "",
	"memory.current":         "0\n",
	"memory.stat":            "anon 0\nfile 0\ninactive_anon 0\nactive_anon 0\ninactive_file 0\nactive_file 0\n",
	"memory.events":          "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
	"memory.max":             "max\n",
	"memory.swap.max":        "max\n",
	"memory.oom.group":       "0\n",
}

var v1Files = map[string]string{
	"cgroup.procs":                "",
	"tasks":                       "",
	"memory.usage_in_bytes":       "0\n",
	"memory.limit_in_bytes":       "9223372036854771712\n",
	"memory.memsw.limit_in_bytes": "9223372036854771712\n",
	"memory.failcnt":              "0\n",
	"memory.memsw.failcnt":        "0\n",
	"memory.stat":                 "cache 0\nrss 0\ninactive_anon 0\ninactive_file 0\ntotal_cache 0\ntotal_inactive_file 0\n",
	"memory.oom_control":          "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
}

func fakeFS(t testing.TB, files map[string]string) fsOps {
	return fsOps{
		mkdir: func(p string) error {
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			for name, body := range files {
				if err := os.WriteFile(filepath.Join(p, name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			return nil
		},
		rmdir: func(p string) error {
			ents, err := os.ReadDir(p)
			if err != nil {
				return err
			}
			for _, e := range ents {
				if e.IsDir() && !strings.HasPrefix(e.Name(), "cgroup.") {
					return &os.PathError{Op: "rmdir", Path: p, Err: syscall.EBUSY}
				}
			}
			if b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs")); len(strings.TrimSpace(string(b))) > 0 {
				return &os.PathError{Op: "rmdir", Path: p, Err: syscall.EBUSY}
			}
			return os.RemoveAll(p)
		},
	}
}

func put(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fakeV2Root lays out a v2 root whose controllers are ctrl.
func fakeV2Root(t *testing.T, ctrl string) string {
	root := t.TempDir()
	put(t, filepath.Join(root, "cgroup.controllers"), ctrl)
	put(t, filepath.Join(root, "cgroup.subtree_control"), "")
	put(t, filepath.Join(root, "cgroup.procs"), "1\n")
	return root
}

// fakeV1Memory lays out root/memory as a v1 memory hierarchy.
func fakeV1Memory(t *testing.T, root string) {
	dir := filepath.Join(root, "memory")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range v1Files {
		put(t, filepath.Join(dir, name), body)
	}
}

func TestFakeV2(t *testing.T) {
	root := fakeV2Root(t, "cpuset cpu io memory hugetlb pids rdma misc\n")
	m, err := detect(root, "taskselector-h1", "", fakeFS(t, v2Files))
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeV2 {
		t.Fatalf("mode %s (%s), want cgroup2", m.Mode(), m.Why())
	}
	parent := filepath.Join(root, "taskselector-h1")
	if m.Dir() != parent {
		t.Fatalf("dir %s", m.Dir())
	}
	if got := get(t, filepath.Join(root, "cgroup.subtree_control")); got != "+memory" {
		t.Fatalf("root subtree_control = %q, want +memory", got)
	}
	if got := get(t, filepath.Join(parent, "cgroup.subtree_control")); got != "+memory" {
		t.Fatalf("parent subtree_control = %q, want +memory", got)
	}

	g, err := m.New("task-1", 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "task-1")
	for file, want := range map[string]string{"memory.max": "67108864", "memory.swap.max": "0", "memory.oom.group": "1"} {
		if got := get(t, filepath.Join(dir, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if g.Dir() != dir || g.Name() != "task-1" || g.Limit() != 64*mib {
		t.Fatalf("group %s %s %d", g.Dir(), g.Name(), g.Limit())
	}

	// Usage: memory.current minus inactive_file, matched as a whole key.
	put(t, filepath.Join(dir, "memory.current"), "100000000\n")
	put(t, filepath.Join(dir, "memory.stat"), "anon 60000000\nfile 40000000\ninactive_anon 5\nactive_anon 6\ninactive_file 30000000\nactive_file 10000000\n")
	if u, err := g.UsageBytes(); err != nil || u != 70000000 {
		t.Fatalf("usage = %d, %v; want 70000000", u, err)
	}
	put(t, filepath.Join(dir, "memory.stat"), "inactive_file 200000000\n")
	if u, err := g.UsageBytes(); err != nil || u != 0 {
		t.Fatalf("usage with more cache than current = %d, %v; want 0", u, err)
	}
	put(t, filepath.Join(dir, "memory.current"), "garbage\n")
	if _, err := g.UsageBytes(); err == nil || !strings.Contains(err.Error(), "task-1") {
		t.Fatalf("usage of a garbled file: %v", err)
	}
	// A memory.stat larger than the group's buffer is read whole.
	big := strings.Repeat("padding_key 1\n", 600) + "inactive_file 1000\n"
	put(t, filepath.Join(dir, "memory.current"), "5000\n")
	put(t, filepath.Join(dir, "memory.stat"), big)
	if u, err := g.UsageBytes(); err != nil || u != 4000 {
		t.Fatalf("usage with a large memory.stat = %d, %v; want 4000", u, err)
	}
	// Files kept open between reads see each rewrite, and Close only
	// releases them.
	put(t, filepath.Join(dir, "memory.current"), "6000\n")
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if u, err := g.UsageBytes(); err != nil || u != 5000 {
		t.Fatalf("usage after Close = %d, %v; want 5000", u, err)
	}

	// Processes.
	if err := g.Add(4242); err != nil {
		t.Fatal(err)
	}
	if got := get(t, filepath.Join(dir, "cgroup.procs")); got != "4242" {
		t.Fatalf("cgroup.procs = %q after Add", got)
	}
	put(t, filepath.Join(dir, "cgroup.procs"), "11\n12\n")
	if pids, err := g.PIDs(); err != nil || !slices.Equal(pids, []int{11, 12}) {
		t.Fatalf("PIDs = %v, %v", pids, err)
	}
	if e, err := g.Empty(); err != nil || e {
		t.Fatalf("Empty = %v, %v", e, err)
	}
	if err := g.Remove(); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("Remove of a busy group = %v, want ErrNotEmpty", err)
	}
	if err := g.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if got := get(t, filepath.Join(dir, "cgroup.kill")); got != "1" {
		t.Fatalf("cgroup.kill = %q after SIGKILL, want 1", got)
	}

	// OOM.
	put(t, filepath.Join(dir, "memory.events"), "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 1\n")
	if n, err := g.OOMKills(); err != nil || n != 2 {
		t.Fatalf("OOMKills = %d, %v", n, err)
	}
	if n, err := g.LimitHits(); err != nil || n != 7 {
		t.Fatalf("LimitHits = %d, %v", n, err)
	}
	if ok, err := g.OOMLikely(false); err != nil || !ok {
		t.Fatalf("OOMLikely = %v, %v", ok, err)
	}

	// CgroupFD opens the directory for CLONE_INTO_CGROUP.
	f, err := g.CgroupFD()
	if err != nil {
		t.Fatal(err)
	}
	f.Close()

	// Restart: a second manager opens the group and reads its limit back.
	m2, err := detect(root, "taskselector-h1", "", fakeFS(t, v2Files))
	if err != nil || m2.Mode() != ModeV2 {
		t.Fatalf("second detect: %v %v", m2, err)
	}
	if names, err := m2.List(); err != nil || !slices.Equal(names, []string{"task-1"}) {
		t.Fatalf("List = %v, %v", names, err)
	}
	g2, err := m2.Open("task-1")
	if err != nil || g2.Limit() != 64*mib {
		t.Fatalf("Open: %v, limit %d", err, g2.Limit())
	}
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(parent); err != nil {
		t.Fatal("Close removed a parent with a group in it")
	}

	// A leftover empty group of the same name is replaced: counters restart.
	put(t, filepath.Join(dir, "cgroup.procs"), "")
	g3, err := m.New("task-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := g3.OOMKills(); n != 0 {
		t.Fatalf("replaced group kept oom_kill %d", n)
	}
	if got := get(t, filepath.Join(dir, "memory.max")); got != "max" {
		t.Fatalf("memory.max without limit = %q, want max", got)
	}
	put(t, filepath.Join(dir, "cgroup.procs"), "99\n")
	if _, err := m.New("task-1", 0); err == nil {
		t.Fatal("New over a group with processes succeeded")
	}
	put(t, filepath.Join(dir, "cgroup.procs"), "")

	if err := g3.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := g3.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if _, err := m.Open("task-1"); err == nil {
		t.Fatal("Open of a removed group succeeded")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(parent); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("parent still there after Close: %v", err)
	}
}

func TestFakeV2SignalWithoutCgroupKill(t *testing.T) {
	files := map[string]string{}
	for k, v := range v2Files {
		if k != "cgroup.kill" { // kernels before 5.14
			files[k] = v
		}
	}
	root := fakeV2Root(t, "memory\n")
	m, err := detect(root, "p", "", fakeFS(t, files))
	if err != nil || m.Mode() != ModeV2 {
		t.Fatalf("%v %v", m, err)
	}
	signalReachesChild(t, m, syscall.SIGKILL)
}

func TestFakeV2WithoutMemoryFallsBackToV1(t *testing.T) {
	root := fakeV2Root(t, "cpu io pids\n")
	fakeV1Memory(t, root)
	m, err := detect(root, "p", "", fakeFS(t, v1Files))
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeV1 || !strings.Contains(m.Why(), "no memory controller") {
		t.Fatalf("mode %s, why %q", m.Mode(), m.Why())
	}
	if _, err := detect(root, "p", ModeV2, fakeFS(t, v1Files)); err == nil {
		t.Fatal("DetectMode v2 succeeded without a v2 memory controller")
	}
}

func TestFakeV2SubtreeRefusedFallsBack(t *testing.T) {
	root := fakeV2Root(t, "memory\n")
	// The parent's subtree_control cannot be used (a directory here; on a
	// real host, for example EBUSY with processes in the parent).
	files := map[string]string{}
	for k, v := range v2Files {
		if k != "cgroup.subtree_control" {
			files[k] = v
		}
	}
	ops := fakeFS(t, files)
	mk := ops.mkdir
	ops.mkdir = func(p string) error {
		if err := mk(p); err != nil {
			return err
		}
		return os.Mkdir(filepath.Join(p, "cgroup.subtree_control"), 0o755)
	}
	m, err := detect(root, "p", "", ops)
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeProc || !strings.Contains(m.Why(), "subtree_control") {
		t.Fatalf("mode %s, why %q", m.Mode(), m.Why())
	}
	if _, err := os.Stat(filepath.Join(root, "p")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the parent Detect created was not removed: %v", err)
	}
	if _, err := detect(root, "p", ModeV2, ops); err == nil {
		t.Fatal("DetectMode v2 succeeded")
	}
}

func TestFakeV1(t *testing.T) {
	root := t.TempDir()
	fakeV1Memory(t, root)
	m, err := detect(root, "taskselector-h1", "", fakeFS(t, v1Files))
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeV1 || !strings.Contains(m.Why(), "not a cgroup v2 mount") {
		t.Fatalf("mode %s, why %q", m.Mode(), m.Why())
	}
	g, err := m.New("t", 32*mib)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "memory", "taskselector-h1", "t")
	for _, f := range []string{"memory.limit_in_bytes", "memory.memsw.limit_in_bytes"} {
		if got := get(t, filepath.Join(dir, f)); got != "33554432" {
			t.Errorf("%s = %q", f, got)
		}
	}
	// total_inactive_file, not inactive_file, is subtracted.
	put(t, filepath.Join(dir, "memory.usage_in_bytes"), "50000000\n")
	put(t, filepath.Join(dir, "memory.stat"), "cache 1\ninactive_file 1\ntotal_inactive_file 20000000\n")
	if u, err := g.UsageBytes(); err != nil || u != 30000000 {
		t.Fatalf("usage = %d, %v; want 30000000", u, err)
	}
	put(t, filepath.Join(dir, "memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
	if n, err := g.OOMKills(); err != nil || n != 3 {
		t.Fatalf("OOMKills = %d, %v", n, err)
	}
	put(t, filepath.Join(dir, "memory.failcnt"), "4\n")
	put(t, filepath.Join(dir, "memory.memsw.failcnt"), "5\n")
	if n, err := g.LimitHits(); err != nil || n != 9 {
		t.Fatalf("LimitHits = %d, %v; want 9", n, err)
	}

	// Kernels before 4.13 have no oom_kill line: fall back to failcnt and
	// the way the task died.
	put(t, filepath.Join(dir, "memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\n")
	if n, err := g.OOMKills(); err != nil || n != 0 {
		t.Fatalf("OOMKills without the counter = %d, %v", n, err)
	}
	for _, tc := range []struct {
		failcnt string
		sigkill bool
		want    bool
	}{{"4\n", true, true}, {"4\n", false, false}, {"0\n", true, false}} {
		put(t, filepath.Join(dir, "memory.failcnt"), tc.failcnt)
		put(t, filepath.Join(dir, "memory.memsw.failcnt"), "0\n")
		if got, err := g.OOMLikely(tc.sigkill); err != nil || got != tc.want {
			t.Errorf("OOMLikely(%v) with failcnt %q = %v, %v", tc.sigkill, tc.failcnt, got, err)
		}
	}

	if _, err := g.CgroupFD(); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("CgroupFD in v1 = %v", err)
	}
	g2, err := m.Open("t")
	if err != nil || g2.Limit() != 32*mib {
		t.Fatalf("Open: %v, limit %d", err, g2.Limit())
	}
	g0, err := m.New("nolimit", 0)
	if err != nil {
		t.Fatal(err)
	}
	if g0o, _ := m.Open("nolimit"); g0o.Limit() != 0 {
		t.Fatalf("unlimited v1 group reads back limit %d", g0o.Limit())
	}
	if names, _ := m.List(); !slices.Equal(names, []string{"nolimit", "t"}) {
		t.Fatalf("List = %v", names)
	}
	for _, x := range []*Group{g, g0} {
		if err := x.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "memory", "taskselector-h1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("parent left after Close")
	}
}

func TestFakeV1SignalTerm(t *testing.T) {
	root := t.TempDir()
	fakeV1Memory(t, root)
	m, err := detect(root, "p", "", fakeFS(t, v1Files))
	if err != nil || m.Mode() != ModeV1 {
		t.Fatalf("%v %v", m, err)
	}
	signalReachesChild(t, m, syscall.SIGTERM)
}

// signalReachesChild makes a group on m, adds a child process to it, sends
// the group sig and checks that the child ends by it.
func signalReachesChild(t *testing.T, m *Manager, sig syscall.Signal) {
	t.Helper()
	g, err := m.New("t", 0)
	if err != nil {
		t.Fatal(err)
	}
	c := startChild(t, true)
	put(t, filepath.Join(g.Dir(), "cgroup.procs"), "")
	if err := g.Add(c.pid); err != nil {
		t.Fatal(err)
	}
	if err := g.Signal(sig); err != nil {
		t.Fatal(err)
	}
	if ws := c.wait(t, 5e9); !ws.Signaled() || ws.Signal() != sig {
		t.Fatalf("child ended with %v, want %v", ws, sig)
	}
}

func TestFakeNothingFallsBackToProc(t *testing.T) {
	root := t.TempDir()
	m, err := detect(root, "p", "", fakeFS(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeProc {
		t.Fatalf("mode %s", m.Mode())
	}
	for _, want := range []string{"no cgroup v2", "no cgroup v1 memory", "/proc walk"} {
		if !strings.Contains(m.Why(), want) {
			t.Errorf("why %q lacks %q", m.Why(), want)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := detect(root, "p", ModeV1, fakeFS(t, nil)); err == nil {
		t.Fatal("DetectMode v1 succeeded without a hierarchy")
	}
}

func TestDetectRejectsBadNames(t *testing.T) {
	for _, p := range []string{"", ".", "..", "a/b", ".hidden", "a\x00b", strings.Repeat("x", 256)} {
		if _, err := Detect(t.TempDir(), p); err == nil {
			t.Errorf("Detect accepted parent %q", p)
		}
	}
	if _, err := DetectMode(t.TempDir(), "p", "cgroup3"); err == nil {
		t.Error("DetectMode accepted an unknown mode")
	}
	m, err := DetectMode("", "p", ModeProc)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"", "../x", "a/b"} {
		if _, err := m.New(n, 0); err == nil {
			t.Errorf("New accepted %q", n)
		}
		if _, err := m.Open(n); err == nil {
			t.Errorf("Open accepted %q", n)
		}
	}
}
