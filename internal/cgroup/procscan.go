package cgroup

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// procScanner walks /proc for the proc mode. One walk reads the directory
// once and each process's stat file once (pgrp and rss are both there, so
// statm is not needed), through buffers it keeps, and sums RSS per process
// group for every group at once; the sums serve all groups for a short while.
type procScanner struct {
	root     cpath
	pageSize int64

	mu     sync.Mutex
	dirent []byte
	line   []byte
	path   []byte
	at     time.Time     // when rss was filled; zero means stale
	rss    map[int]int64 // pgid -> resident pages of its live processes
}

func newProcScanner(root string) *procScanner {
	return &procScanner{
		root:     newCpath(root),
		pageSize: int64(os.Getpagesize()),
		dirent:   make([]byte, 32<<10),
		line:     make([]byte, 2048),
		path:     make([]byte, 0, 40),
		rss:      map[int]int64{},
	}
}

// invalidate makes the next usage read walk /proc again.
func (s *procScanner) invalidate() {
	s.mu.Lock()
	s.at = time.Time{}
	s.mu.Unlock()
}

// usage is the resident bytes of the live processes in process group pgid,
// from a walk at most maxAge old.
func (s *procScanner) usage(pgid int, maxAge time.Duration) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.at.IsZero() || time.Since(s.at) >= maxAge {
		clear(s.rss)
		if err := s.walk(0, nil); err != nil {
			s.at = time.Time{}
			return 0, err
		}
		s.at = time.Now()
	}
	return s.rss[pgid] * s.pageSize, nil
}

// members walks /proc now and lists the live processes of process group pgid.
func (s *procScanner) members(pgid int) ([]int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pids []int
	if err := s.walk(pgid, &pids); err != nil {
		return nil, err
	}
	return pids, nil
}

// walk visits every process under /proc. With want 0 it adds the RSS of every
// live process to s.rss under its process group; otherwise it appends the
// live processes of process group want to *pids. Zombies count in neither.
// Processes that vanish during the walk are skipped.
func (s *procScanner) walk(want int, pids *[]int) error {
	dfd, err := openat(atFDCWD, s.root.p)
	if err != nil {
		return fmt.Errorf("open %s: %w", s.root.s, err)
	}
	defer syscall.Close(dfd)
	for {
		n, err := syscall.ReadDirent(dfd, s.dirent)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", s.root.s, err)
		}
		if n <= 0 {
			return nil
		}
		// linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
		for off := 0; off+19 < n; {
			reclen := int(binary.NativeEndian.Uint16(s.dirent[off+16:]))
			if reclen == 0 {
				break
			}
			name := s.dirent[off+19 : off+reclen]
			off += reclen
			pid, ok := direntPID(name)
			if !ok {
				continue
			}
			state, pg, rss, ok := s.readStat(dfd, pid)
			if !ok || pg == 0 || state == 'Z' || state == 'X' {
				continue
			}
			if want == 0 {
				s.rss[pg] += rss
			} else if pg == want {
				*pids = append(*pids, pid)
			}
		}
	}
}

// direntPID parses a NUL-terminated /proc entry name that is a process id.
func direntPID(name []byte) (int, bool) {
	pid, i := 0, 0
	for ; i < len(name) && name[i] >= '0' && name[i] <= '9'; i++ {
		pid = pid*10 + int(name[i]-'0')
	}
	if i == 0 || (i < len(name) && name[i] != 0) {
		return 0, false
	}
	return pid, true
}

// readStat reads /proc/<pid>/stat in one read and returns the state, the
// process group (field 5) and the resident pages (field 24).
func (s *procScanner) readStat(dfd, pid int) (state byte, pgrp int, rss int64, ok bool) {
	s.path = strconv.AppendInt(s.path[:0], int64(pid), 10)
	s.path = append(s.path, "/stat\x00"...)
	fd, err := openat(dfd, &s.path[0])
	if err != nil {
		return 0, 0, 0, false
	}
	k, err := syscall.Read(fd, s.line)
	syscall.Close(fd)
	if err != nil || k <= 0 {
		return 0, 0, 0, false
	}
	return parseStat(s.line[:k])
}

// parseStat picks state, pgrp and rss out of a /proc/<pid>/stat line. The
// command name, in parentheses, may hold spaces and parentheses, so fields
// are counted from the last ')'.
func parseStat(b []byte) (state byte, pgrp int, rss int64, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, 0, false
	}
	rest := b[i+2:]
	var got int
	for field := 0; field <= 21 && len(rest) > 0; field++ {
		j := bytes.IndexByte(rest, ' ')
		if j < 0 {
			j = len(rest)
		}
		f := rest[:j]
		switch field {
		case 0:
			if len(f) > 0 {
				state = f[0]
				got++
			}
		case 2:
			v, err := parseInt(f)
			if err != nil {
				return 0, 0, 0, false
			}
			pgrp = int(v)
			got++
		case 21:
			v, err := parseInt(f)
			if err != nil {
				return 0, 0, 0, false
			}
			rss = v
			got++
		}
		if j == len(rest) {
			rest = nil
		} else {
			rest = rest[j+1:]
		}
	}
	return state, pgrp, rss, got == 3
}
