package cgroup

import (
	"errors"
	"syscall"
	"unsafe"
)

// cpath is a path kept NUL-terminated, so that opening it needs no
// allocation (syscall.Open copies the path on every call). The /proc walk
// opens one file per process with it.
type cpath struct {
	s string
	p *byte // nil if s holds a NUL byte
}

func newCpath(s string) cpath {
	p, err := syscall.BytePtrFromString(s)
	if err != nil {
		return cpath{s: s}
	}
	return cpath{s: s, p: p}
}

// openat opens the NUL-terminated path p relative to dirfd, read-only.
func openat(dirfd int, p *byte) (int, error) {
	for {
		fd, _, e := syscall.Syscall6(syscall.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)),
			uintptr(syscall.O_RDONLY|syscall.O_CLOEXEC), 0, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return -1, e
		}
		return int(fd), nil
	}
}

// atFDCWD is AT_FDCWD (-100), spelt out here rather than relying on every
// architecture's syscall constants.
const atFDCWD = -0x64

var errNotNumber = errors.New("not a decimal number")

// parseInt parses a non-negative decimal number with optional surrounding
// white space, without allocating.
func parseInt(b []byte) (int64, error) {
	b = trimSpace(b)
	if len(b) == 0 || len(b) > 19 {
		return 0, errNotNumber
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, errNotNumber
		}
		n = n*10 + int64(c-'0')
	}
	if n < 0 {
		return 0, errNotNumber
	}
	return n, nil
}

// keyValue finds the line "key value" in a flat-keyed file such as
// memory.stat or memory.events and returns the value.
func keyValue(b []byte, key string) (int64, bool) {
	for len(b) > 0 {
		var line []byte
		line, b = cutLine(b)
		if len(line) > len(key) && line[len(key)] == ' ' && string(line[:len(key)]) == key {
			v, err := parseInt(line[len(key)+1:])
			return v, err == nil
		}
	}
	return 0, false
}

// cutLine splits b after its first line; the line is returned without '\n'.
func cutLine(b []byte) (line, rest []byte) {
	for i, c := range b {
		if c == '\n' {
			return b[:i], b[i+1:]
		}
	}
	return b, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\t' || b[0] == '\r') {
		b = b[1:]
	}
	for len(b) > 0 {
		c := b[len(b)-1]
		if c != ' ' && c != '\n' && c != '\t' && c != '\r' {
			break
		}
		b = b[:len(b)-1]
	}
	return b
}
