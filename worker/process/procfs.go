package process

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// --- /proc/meminfo ---

type meminfo struct {
	totalMiB, availMiB int64
}

func (m meminfo) usedMiB() int64 { return max(m.totalMiB-m.availMiB, 0) }

func (e *Executor) meminfo() (meminfo, error) {
	e.memMu.Lock()
	defer e.memMu.Unlock()
	return e.meminfoLocked()
}

func (e *Executor) meminfoLocked() (meminfo, error) {
	if time.Since(e.memAt) < memMaxAge {
		return e.memInfo, nil
	}
	mi, err := readMeminfo("/proc/meminfo")
	if err != nil {
		return meminfo{}, err
	}
	e.memInfo, e.memAt = mi, time.Now()
	return mi, nil
}

func readMeminfo(path string) (meminfo, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return meminfo{}, err
	}
	var mi meminfo
	var haveT, haveA bool
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			mi.totalMiB, haveT = n>>10, true
		case "MemAvailable:":
			mi.availMiB, haveA = n>>10, true
		}
	}
	if !haveT || !haveA {
		return meminfo{}, fmt.Errorf("%s: no MemTotal or MemAvailable", path)
	}
	return mi, nil
}

// --- /proc helpers ---

// procStat is what the executor reads of /proc/<pid>/stat.
type procStat struct {
	state      byte
	pgid       int
	startTicks uint64
}

func readProcStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+2:]))
	// f[0] state, f[2] pgrp, f[19] starttime.
	if len(f) < 20 {
		return procStat{}, false
	}
	pg, err1 := strconv.Atoi(f[2])
	st, err2 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil || len(f[0]) == 0 {
		return procStat{}, false
	}
	return procStat{state: f[0][0], pgid: pg, startTicks: st}, true
}

func procStartTicks(pid int) uint64 {
	st, _ := readProcStat(pid)
	return st.startTicks
}

// pgroupMembers lists the live (not zombie) processes of process group pgid
// started at or after minStart (clock ticks since boot).
func pgroupMembers(pgid int, minStart uint64) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		st, ok := readProcStat(pid)
		if !ok || st.pgid != pgid || st.state == 'Z' || st.state == 'X' || st.startTicks < minStart {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// pgroupEmpty reports whether process group pgid has no live process.
func pgroupEmpty(pgid int) bool {
	// kill(-pgid, 0) is cheap and says ESRCH when not even a zombie is left.
	if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	return len(pgroupMembers(pgid, 0)) == 0
}

func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
