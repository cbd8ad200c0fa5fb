package cgroup

import (
	"errors"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestRealCgroupLifecycle runs a real task process in a real memory cgroup
// (v1 on the development machines, v2 where the host has it): usage grows
// with allocation, children are listed, the limit OOM-kills, Signal empties
// the group and Remove deletes it.
func TestRealCgroupLifecycle(t *testing.T) {
	m := realManager(t)
	if m.Mode() == ModeProc {
		t.Skipf("no writable memory cgroup on this host (needs root and a writable v1 or v2 memory hierarchy): %s", m.Why())
	}
	t.Logf("mode %s: %s", m.Mode(), m.Why())

	const limit = 64 * mib
	g, err := m.New("oom", limit)
	if err != nil {
		t.Fatal(err)
	}
	cleanGroup(t, g)
	if got, err := g.readLimit(); err != nil || got != limit {
		t.Fatalf("limit read back = %d, %v; want %d", got, err, limit)
	}
	if names, err := m.List(); err != nil || !slices.Equal(names, []string{"oom"}) {
		t.Fatalf("List = %v, %v", names, err)
	}

	c := startChild(t, true)
	if err := g.Add(c.pid); err != nil {
		t.Fatal(err)
	}
	if pids, err := g.PIDs(); err != nil || !slices.Equal(pids, []int{c.pid}) {
		t.Fatalf("PIDs = %v, %v; want [%d]", pids, err, c.pid)
	}
	u0, err := g.UsageBytes()
	if err != nil {
		t.Fatal(err)
	}
	if ans := c.do(t, "alloc 24"); ans != "ok" {
		t.Fatalf("alloc: %q", ans)
	}
	u1, err := g.UsageBytes()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("usage %d MiB -> %d MiB after touching 24 MiB", u0/mib, u1/mib)
	if u1-u0 < 20*mib {
		t.Fatalf("usage grew by %d bytes, want at least 20 MiB", u1-u0)
	}

	gc := c.spawn(t)
	eventually(t, 2*time.Second, "grandchild listed", func() (bool, error) {
		pids, err := g.PIDs()
		return contains(pids, c.pid) && contains(pids, gc), err
	})
	if n, err := g.OOMKills(); err != nil || n != 0 {
		t.Fatalf("OOMKills before = %d, %v", n, err)
	}

	// Past the limit: the kernel must kill the child with SIGKILL.
	c.send(t, "alloc 100")
	ws := c.wait(t, 15*time.Second)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want killed by SIGKILL", ws)
	}
	n, err := g.OOMKills()
	if err != nil {
		t.Fatal(err)
	}
	likely, err := g.OOMLikely(true)
	if err != nil {
		t.Fatal(err)
	}
	hits, herr := g.LimitHits()
	if herr != nil {
		t.Fatal(herr)
	}
	t.Logf("OOM: oom_kill=%d, limit hits=%d, OOMLikely=%v", n, hits, likely)
	if !likely {
		t.Fatal("OOMLikely = false after an OOM kill")
	}
	if n == 0 {
		// Only kernels before 4.13 lack the counter; OOMLikely then relies on
		// failcnt and the SIGKILL.
		t.Logf("kernel has no oom_kill counter; fallback used")
	}

	// In v1 the grandchild usually survives the OOM kill of its parent (v2
	// kills the whole group: memory.oom.group), though the OOM killer may
	// take it too while the child is still dying.
	if dead, _ := gone(gc); !dead {
		if err := g.Remove(); !errors.Is(err, ErrNotEmpty) {
			t.Fatalf("Remove with a live grandchild = %v, want ErrNotEmpty", err)
		}
	}
	if err := g.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "group empty after SIGKILL", g.Empty)
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("group directory still there: %v", err)
	}
	eventually(t, 2*time.Second, "grandchild gone", func() (bool, error) { return gone(gc) })
}

// TestRealCgroupOpenAndSignalTerm re-opens a group as a restarted agent would
// and stops it with SIGTERM.
func TestRealCgroupOpenAndSignalTerm(t *testing.T) {
	m := realManager(t)
	if m.Mode() == ModeProc {
		t.Skipf("no writable memory cgroup on this host: %s", m.Why())
	}
	g, err := m.New("term", 0)
	if err != nil {
		t.Fatal(err)
	}
	cleanGroup(t, g)
	c := startChild(t, true)
	if err := g.Add(c.pid); err != nil {
		t.Fatal(err)
	}
	gc := c.spawn(t)

	// A restarted agent: a second manager on the same parent finds the group.
	m2, err := Detect("", m.Parent())
	if err != nil || m2.Mode() != m.Mode() {
		t.Fatalf("second Detect: %v, %v", m2, err)
	}
	if names, err := m2.List(); err != nil || !slices.Equal(names, []string{"term"}) {
		t.Fatalf("List after restart = %v, %v", names, err)
	}
	g2, err := m2.Open("term")
	if err != nil {
		t.Fatal(err)
	}
	if g2.Limit() != 0 {
		t.Fatalf("opened group limit = %d, want 0 (none)", g2.Limit())
	}
	pids, err := g2.PIDs()
	if err != nil || !contains(pids, c.pid) || !contains(pids, gc) {
		t.Fatalf("opened group PIDs = %v, %v; want %d and %d", pids, err, c.pid, gc)
	}
	if err := m2.Close(); err != nil { // keeps the parent: a group is left
		t.Fatal(err)
	}
	if _, err := os.Stat(m.Dir()); err != nil {
		t.Fatalf("Close removed a parent that still had groups: %v", err)
	}
	if _, err := m2.Open("missing"); err == nil {
		t.Fatal("Open of a missing group succeeded")
	}

	if err := g2.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ws := c.wait(t, 5*time.Second)
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("child ended with %v, want SIGTERM", ws)
	}
	eventually(t, 5*time.Second, "group empty after SIGTERM", g2.Empty)
	if n, err := g2.OOMKills(); err != nil || n != 0 {
		t.Fatalf("OOMKills = %d, %v; want 0", n, err)
	}
	if likely, err := g2.OOMLikely(false); err != nil || likely {
		t.Fatalf("OOMLikely = %v, %v; want false", likely, err)
	}
}

// TestProcMode measures a real process group through /proc.
func TestProcMode(t *testing.T) {
	m, err := DetectMode("", "unused", ModeProc)
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeProc || m.Dir() != "" {
		t.Fatalf("mode %s dir %q", m.Mode(), m.Dir())
	}
	m.SetProcMaxAge(0)
	g, err := m.New("p", 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	cleanGroup(t, g)
	if g.Limit() != 64*mib {
		t.Fatalf("limit %d", g.Limit())
	}
	if u, err := g.UsageBytes(); err != nil || u != 0 {
		t.Fatalf("usage before Add = %d, %v", u, err)
	}
	if err := g.Signal(syscall.SIGTERM); err == nil {
		t.Fatal("Signal before Add succeeded (it must never signal pgid 0)")
	}
	if err := g.Add(os.Getpid()); err == nil {
		t.Fatal("Add of the test process (agent's own process group) succeeded")
	}

	c := startChild(t, true)
	if err := g.Add(c.pid); err != nil {
		t.Fatal(err)
	}
	if g.PGID() != c.pid {
		t.Fatalf("pgid %d, want %d", g.PGID(), c.pid)
	}
	u0, err := g.UsageBytes()
	if err != nil {
		t.Fatal(err)
	}
	if u0 <= 0 {
		t.Fatalf("usage of a live process = %d", u0)
	}
	c.do(t, "alloc 32")
	u1, err := g.UsageBytes()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("proc usage %d MiB -> %d MiB after touching 32 MiB", u0/mib, u1/mib)
	if u1-u0 < 30*mib {
		t.Fatalf("usage grew by %d bytes, want at least 30 MiB", u1-u0)
	}

	gc := c.spawn(t)
	pids, err := g.PIDs()
	if err != nil {
		t.Fatal(err)
	}
	want := []int{c.pid, gc}
	slices.Sort(want)
	slices.Sort(pids)
	if !slices.Equal(pids, want) {
		t.Fatalf("PIDs = %v, want %v", pids, want)
	}
	if err := g.Add(gc); err != nil {
		t.Fatalf("Add of a member of the same process group: %v", err)
	}
	u2, _ := g.UsageBytes()
	if u2 <= u1 {
		t.Fatalf("usage %d did not count the grandchild (was %d)", u2, u1)
	}
	if n, _ := g.OOMKills(); n != 0 {
		t.Fatalf("OOMKills in proc mode = %d", n)
	}

	// The shared walk serves reads for max age.
	m.SetProcMaxAge(time.Hour)
	a, _ := g.UsageBytes()
	c.do(t, "alloc 8")
	b, _ := g.UsageBytes()
	if a != b {
		t.Fatalf("cached usage changed %d -> %d", a, b)
	}
	m.SetProcMaxAge(0)

	if names, _ := m.List(); !slices.Equal(names, []string{"p"}) {
		t.Fatalf("List = %v", names)
	}
	if err := g.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ws := c.wait(t, 5*time.Second)
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("child ended with %v, want SIGTERM", ws)
	}
	eventually(t, 5*time.Second, "process group empty", g.Empty)
	if err := g.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("Signal of an empty process group: %v", err)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if names, _ := m.List(); len(names) != 0 {
		t.Fatalf("List after Remove = %v", names)
	}
}

// TestProcModeRefusesNonLeader: a process that is not its group's leader
// cannot define a proc-mode group.
func TestProcModeRefusesNonLeader(t *testing.T) {
	m, _ := DetectMode("", "unused", ModeProc)
	g, _ := m.New("x", 0)
	cleanGroup(t, g)
	c := startChild(t, true)
	gc := c.spawn(t) // in c's process group, not a leader
	if err := g.Add(gc); err == nil {
		t.Fatal("Add of a non-leader succeeded")
	}
	if err := g.Add(-1); err == nil {
		t.Fatal("Add(-1) succeeded")
	}
}
