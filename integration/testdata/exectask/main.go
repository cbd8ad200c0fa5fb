// Command exectask is the task program of the integration tests of the exec
// executor, built on the taskapi SDK. What it does comes from its tasks file
// entry's env (the selector's args are the target spec, the same for every
// test):
//
//   - EXECTASK_MODE: sleep (report progress, wait for SIGTERM), tree (start a
//     helper with EXECTASK_HELPER_MIB of helper RAM that allocates and
//     touches that much memory and starts a grandchild in its own session,
//     once the file <EXECTASK_DIR>/<target>.go exists), overbudget (ask for
//     more helper RAM than the budget and report helpers_unavailable), hog
//     (allocate and touch memory until stopped) or done (report done);
//   - EXECTASK_DIR: where every process of the tree writes
//     <task id>.<role> holding its pid (role wrapper, helper, grandchild),
//     and where the gate files are.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/taskapi"
)

func main() {
	role := "wrapper"
	if len(os.Args) > 1 {
		role = os.Args[1]
	}
	switch role {
	case "helper":
		os.Exit(helper())
	case "grandchild":
		os.Exit(grandchild())
	}
	os.Exit(wrapper())
}

func dir() string { return os.Getenv("EXECTASK_DIR") }

// note writes <dir>/<name> atomically.
func note(name, text string) {
	p := filepath.Join(dir(), name)
	if err := os.WriteFile(p+".tmp", []byte(text), 0o600); err == nil {
		_ = os.Rename(p+".tmp", p)
	}
}

func notePID(role string) { note(os.Getenv(taskapi.EnvTaskID)+"."+role, strconv.Itoa(os.Getpid())) }

// touch allocates mib MiB and writes every page.
func touch(mib int) [][]byte {
	var keep [][]byte
	for i := 0; i < mib; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		keep = append(keep, b)
	}
	return keep
}

// hold keeps the touched memory reachable for good.
var hold [][]byte

func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}

func wrapper() int {
	t, err := taskapi.FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 9
	}
	ctx := t.Context()
	notePID("wrapper")
	if err := t.Progress(ctx, 0.1, nil); err != nil {
		fmt.Fprintln(os.Stderr, "progress:", err)
	}
	switch mode := os.Getenv("EXECTASK_MODE"); mode {
	case "sleep":
		<-ctx.Done()
		return 143
	case "done":
		if err := t.Done(ctx, map[string]any{"items": 3}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 9
		}
		return 0
	case "tree":
		gate := filepath.Join(dir(), t.Target+".go")
		for {
			if _, err := os.Stat(gate); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return 143
			case <-time.After(20 * time.Millisecond):
			}
		}
		mib, _ := strconv.ParseInt(os.Getenv("EXECTASK_HELPER_MIB"), 10, 64)
		self, _ := os.Executable()
		h, err := t.StartHelper(ctx, mib, exec.Command(self, "helper"))
		var r *taskapi.Refusal
		if errors.As(err, &r) {
			_ = t.Fail(context.Background(), schemas.ReasonHelpersUnavailable)
			return 2
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 9
		}
		_ = t.Progress(ctx, 0.5, nil)
		<-ctx.Done()
		_ = h.Cmd.Process.Signal(syscall.SIGTERM)
		_ = h.Wait()
		return 143
	case "overbudget":
		_, err := t.RequestHelpers(ctx, t.HelpersMiB+1)
		var r *taskapi.Refusal
		if errors.As(err, &r) {
			note(t.ID+".refusal", r.Code+": "+r.Message)
			_ = t.Fail(ctx, schemas.ReasonHelpersUnavailable)
			return 2
		}
		fmt.Fprintln(os.Stderr, "helper RAM over the budget not refused:", err)
		return 3
	case "hog":
		for i := 0; i < 4096 && ctx.Err() == nil; i += 4 {
			hold = append(hold, touch(4)...)
		}
		fmt.Println("survived", len(hold), "MiB")
		<-ctx.Done()
		return 143
	default:
		fmt.Fprintf(os.Stderr, "unknown EXECTASK_MODE %q\n", mode)
		return 9
	}
}

func helper() int {
	mib, _ := strconv.Atoi(os.Getenv("EXECTASK_HELPER_MIB"))
	hold = touch(mib)
	self, _ := os.Executable()
	c := exec.Command(self, "grandchild")
	// Its own session: out of the task's process group, only its memory
	// group still holds it.
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 9
	}
	notePID("helper")
	sleepForever()
	return 0
}

func grandchild() int {
	signal.Ignore(syscall.SIGTERM)
	hold = touch(4)
	notePID("grandchild")
	sleepForever()
	return 0
}
