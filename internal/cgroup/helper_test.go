package cgroup

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// childEnv makes the test binary act as a task process instead of running
// tests: "hold" obeys commands on stdin, "sleep" just sleeps.
const childEnv = "CGROUP_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "sleep":
		time.Sleep(time.Hour)
		os.Exit(0)
	case "hold":
		holdMain()
		os.Exit(0)
	default:
		os.Exit(2)
	}
}

var held [][]byte

// holdMain answers one line per command read from stdin:
//
//	alloc N  allocate and touch N MiB, keep it, answer "ok"
//	spawn    start a "sleep" child in the same process group, answer "pid <pid>"
//
// It prints "ready" first and exits at end of input.
func holdMain() {
	out := bufio.NewWriter(os.Stdout)
	say := func(s string) { out.WriteString(s + "\n"); out.Flush() }
	say("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		switch {
		case len(f) == 2 && f[0] == "alloc":
			n, _ := strconv.Atoi(f[1])
			for i := 0; i < n; i++ {
				b := make([]byte, 1<<20)
				for j := 0; j < len(b); j += 4096 {
					b[j] = 1
				}
				held = append(held, b)
			}
			say("ok")
		case len(f) == 1 && f[0] == "spawn":
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"=sleep")
			if err := cmd.Start(); err != nil {
				say("error " + err.Error())
				continue
			}
			go cmd.Wait()
			say(fmt.Sprint("pid ", cmd.Process.Pid))
		default:
			say("error unknown command")
		}
	}
}

// child is a "hold" process started by a test.
type child struct {
	cmd   *exec.Cmd
	pid   int
	in    io.WriteCloser
	lines chan string
	done  chan struct{} // closed once the child is reaped
}

// startChild starts a "hold" child, in its own process group if setpgid, and
// waits for it to be ready. Cleanup kills it if it is still there.
func startChild(tb testing.TB, setpgid bool) *child {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=hold")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: setpgid}
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	c := &child{cmd: cmd, pid: cmd.Process.Pid, in: in, lines: make(chan string, 16), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		cmd.Wait()
		close(c.done)
	}()
	tb.Cleanup(func() {
		if setpgid {
			syscall.Kill(-c.pid, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
		}
	})
	if got := c.reply(tb); got != "ready" {
		tb.Fatalf("child said %q, want ready", got)
	}
	return c
}

func (c *child) reply(tb testing.TB) string {
	tb.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			tb.Fatal("child ended before answering")
		}
		return l
	case <-time.After(10 * time.Second):
		tb.Fatal("child did not answer within 10s")
	}
	return ""
}

func (c *child) send(tb testing.TB, cmd string) {
	tb.Helper()
	if _, err := io.WriteString(c.in, cmd+"\n"); err != nil {
		tb.Fatalf("write %q to child: %v", cmd, err)
	}
}

// do sends a command and returns the answer.
func (c *child) do(tb testing.TB, cmd string) string {
	tb.Helper()
	c.send(tb, cmd)
	return c.reply(tb)
}

// spawn makes the child start a sleeping grandchild and returns its pid.
func (c *child) spawn(tb testing.TB) int {
	tb.Helper()
	ans := c.do(tb, "spawn")
	pid, err := strconv.Atoi(strings.TrimPrefix(ans, "pid "))
	if err != nil {
		tb.Fatalf("spawn: child said %q", ans)
	}
	tb.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

// wait waits for the child to end and returns its wait status.
func (c *child) wait(tb testing.TB, d time.Duration) syscall.WaitStatus {
	tb.Helper()
	select {
	case <-c.done:
	case <-time.After(d):
		tb.Fatalf("child %d still running after %v", c.pid, d)
	}
	return c.cmd.ProcessState.Sys().(syscall.WaitStatus)
}

// eventually polls cond every 10ms until it holds or d passes.
func eventually(tb testing.TB, d time.Duration, what string, cond func() (bool, error)) {
	tb.Helper()
	end := time.Now().Add(d)
	for {
		ok, err := cond()
		if err != nil {
			tb.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(end) {
			tb.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// uniqueParent is a parent group name no other test run uses.
func uniqueParent() string {
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("taskselector-test-%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
}

// realManager detects the best mode on this host under a fresh parent and
// removes the parent at the end.
func realManager(tb testing.TB) *Manager {
	tb.Helper()
	m, err := Detect("", uniqueParent())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := m.Close(); err != nil {
			tb.Errorf("close manager: %v", err)
		}
		if m.Dir() != "" {
			if _, err := os.Stat(m.Dir()); err == nil {
				tb.Errorf("parent group %s left behind", m.Dir())
			}
		}
	})
	return m
}

// cleanGroup kills whatever is left in g and removes it at the end.
func cleanGroup(tb testing.TB, g *Group) {
	tb.Cleanup(func() {
		if g.m.mode != ModeProc || g.PGID() != 0 {
			g.Signal(syscall.SIGKILL)
		}
		end := time.Now().Add(5 * time.Second)
		for time.Now().Before(end) {
			if e, err := g.Empty(); err != nil || e {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := g.Remove(); err != nil {
			tb.Errorf("remove group: %v", err)
		}
	})
}

func contains(pids []int, pid int) bool { return slices.Contains(pids, pid) }

// gone reports whether pid has exited (a zombie not yet reaped by its new
// parent counts as gone).
func gone(pid int) (bool, error) {
	if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
		return true, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true, nil
	}
	st, _, _, ok := parseStat(b)
	return ok && (st == 'Z' || st == 'X'), nil
}

const mib = 1 << 20
