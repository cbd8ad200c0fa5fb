package cgroup

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkUsage is the cost of one UsageBytes read of one group holding a
// live process, in every mode this host offers:
//
//   - cgroup1 / cgroup2: the real kernel files (where writable here);
//   - cgroup2-faketree: v2 parsing on a fake tree (files on disk, not the
//     kernel's), to show the package's own cost where v2 is not available;
//   - proc: the steady state in proc mode, where one /proc walk serves every
//     group for DefaultProcMaxAge;
//   - proc-walk: a fresh /proc walk on every read (the worst case, paid once
//     per max age per agent, not per group).
//
// The agent's CPU per live task sampled once a second is ns/op * 1e-9 of a
// core (proc: the walk is shared, see the figures in the report).
func BenchmarkUsage(b *testing.B) {
	run := func(b *testing.B, g *Group) {
		b.Helper()
		if _, err := g.UsageBytes(); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if _, err := g.UsageBytes(); err != nil {
				b.Fatal(err)
			}
		}
	}

	b.Run("real", func(b *testing.B) {
		m, err := Detect("", uniqueParent())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { m.Close() })
		if m.Mode() == ModeProc {
			b.Skipf("no writable memory cgroup: %s", m.Why())
		}
		b.Run(string(m.Mode()), func(b *testing.B) {
			g, err := m.New("bench", 64*mib)
			if err != nil {
				b.Fatal(err)
			}
			cleanGroup(b, g)
			c := startChild(b, true)
			if err := g.Add(c.pid); err != nil {
				b.Fatal(err)
			}
			c.do(b, "alloc 8")
			run(b, g)
		})
	})

	b.Run("cgroup2-faketree", func(b *testing.B) {
		root := b.TempDir()
		for f, body := range map[string]string{"cgroup.controllers": "memory\n", "cgroup.subtree_control": ""} {
			writeTB(b, filepath.Join(root, f), body)
		}
		m, err := detect(root, "p", ModeV2, fakeFS(b, v2Files))
		if err != nil {
			b.Fatal(err)
		}
		g, err := m.New("bench", 64*mib)
		if err != nil {
			b.Fatal(err)
		}
		// A memory.stat as long as a 6.x kernel's.
		stat := ""
		for _, k := range []string{"anon", "file", "kernel", "kernel_stack", "pagetables", "sec_pagetables",
			"percpu", "sock", "vmalloc", "shmem", "zswap", "zswapped", "file_mapped", "file_dirty",
			"file_writeback", "swapcached", "anon_thp", "file_thp", "shmem_thp", "inactive_anon",
			"active_anon", "inactive_file", "active_file", "unevictable", "slab_reclaimable",
			"slab_unreclaimable", "slab", "workingset_refault_anon", "workingset_refault_file",
			"workingset_activate_anon", "workingset_activate_file", "workingset_restore_anon",
			"workingset_restore_file", "workingset_nodereclaim", "pgscan", "pgsteal", "pgscan_kswapd",
			"pgscan_direct", "pgsteal_kswapd", "pgsteal_direct", "pgfault", "pgmajfault", "pgrefill",
			"pgactivate", "pgdeactivate", "pglazyfree", "pglazyfreed", "thp_fault_alloc",
			"thp_collapse_alloc"} {
			stat += k + " 123456789\n"
		}
		writeTB(b, filepath.Join(g.Dir(), "memory.current"), "987654321\n")
		writeTB(b, filepath.Join(g.Dir(), "memory.stat"), stat)
		run(b, g)
	})

	for _, tc := range []struct {
		name string
		age  time.Duration
	}{{"proc", DefaultProcMaxAge}, {"proc-walk", 0}} {
		b.Run(tc.name, func(b *testing.B) {
			m, err := DetectMode("", "unused", ModeProc)
			if err != nil {
				b.Fatal(err)
			}
			m.SetProcMaxAge(tc.age)
			g, err := m.New("bench", 0)
			if err != nil {
				b.Fatal(err)
			}
			cleanGroup(b, g)
			c := startChild(b, true)
			if err := g.Add(c.pid); err != nil {
				b.Fatal(err)
			}
			run(b, g)
		})
	}
}

func writeTB(tb testing.TB, path, body string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		tb.Fatal(err)
	}
}
