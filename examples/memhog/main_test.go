package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/taskapi"
	"github.com/taskselector/taskselector/taskapi/taskapitest"
)

// startTask starts the built program as task "t1" with a helper limit and
// args, in its own process group as the agent would, and returns the fake
// backend, the command and a channel that gets its Wait error.
func startTask(t *testing.T, bin string, limit int64, args any) (*taskapitest.Fake, *exec.Cmd, <-chan error) {
	t.Helper()
	f := taskapitest.NewFake()
	token := f.AddTask("t1", limit)
	srv := taskapitest.Serve(t, f, f.Auth)
	argsJSON, _ := json.Marshal(args)
	cmd := taskapitest.Command(t, bin, taskapitest.Identity{
		ID: "t1", Target: "mem", Type: "memhog", Host: "h", Epoch: 1,
		BudgetMiB: limit + 32, HelpersMiB: limit, ArgsJSON: string(argsJSON),
	}, srv.Path(), token)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return f, cmd, done
}

// exitCode waits for the task and returns its exit code.
func exitCode(t *testing.T, cmd *exec.Cmd, done <-chan error) int {
	t.Helper()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("task did not finish in 15 s")
	}
	return cmd.ProcessState.ExitCode()
}

// groupGone waits until no process of the group pgid is left.
func groupGone(t *testing.T, pgid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("process group %d still has processes", pgid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMemhog(t *testing.T) {
	bin := taskapitest.Build(t, ".")

	t.Run("done", func(t *testing.T) {
		f, cmd, done := startTask(t, bin, 64, map[string]any{"mib": 48, "step_mib": 16, "helpers": 2, "step_ms": 10, "hold_ms": 100})
		code := exitCode(t, cmd, done)
		st, _ := f.State("t1")
		if code != 0 || st.Result == nil || !st.Result.Done {
			t.Fatalf("exit %d, result %+v", code, st.Result)
		}
		if m := st.Result.Metrics; m["allocated_mib"] != 48.0 || m["helpers"] != 2.0 || m["mib"] != 48.0 {
			t.Errorf("metrics %v", m)
		}
		if st.Requests != 2 || st.PeakGrantedMiB != 48 || st.GrantedMiB != 0 {
			t.Errorf("helper RAM: %+v", st)
		}
		if n := len(st.Progress); n < 2 || st.Progress[n-1] != 1 {
			t.Errorf("progress %v", st.Progress)
		}
		groupGone(t, cmd.Process.Pid)
	})
	t.Run("refused", func(t *testing.T) {
		f, cmd, done := startTask(t, bin, 30, map[string]any{"mib": 48, "helpers": 2, "hold_ms": 5000})
		code := exitCode(t, cmd, done)
		st, _ := f.State("t1")
		if code != taskapi.ExitHelpersUnavailable || st.Result == nil || st.Result.Done || st.Result.Reason != schemas.ReasonHelpersUnavailable {
			t.Fatalf("exit %d, result %+v; want exit 2 and helpers_unavailable", code, st.Result)
		}
		if st.Requests != 2 || st.Refusals != 1 || st.GrantedMiB != 0 {
			t.Errorf("helper RAM: %+v", st)
		}
		groupGone(t, cmd.Process.Pid)
	})
	t.Run("SIGTERM", func(t *testing.T) {
		f, cmd, done := startTask(t, bin, 32, map[string]any{"mib": 32, "helpers": 2, "hold_ms": 60000})
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, _ := f.State("t1")
			if len(st.Progress) > 0 && st.Progress[len(st.Progress)-1] == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("memory never all allocated: %+v", st)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The agent's kill: SIGTERM to the whole group.
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		code := exitCode(t, cmd, done)
		st, _ := f.State("t1")
		if code != taskapi.ExitSignalled || st.Result != nil || st.GrantedMiB != 0 {
			t.Errorf("exit %d, result %+v, granted %d; want 143, no result, all released", code, st.Result, st.GrantedMiB)
		}
		groupGone(t, cmd.Process.Pid)
	})
	t.Run("bad args", func(t *testing.T) {
		for _, args := range []any{
			map[string]any{},
			map[string]any{"mib": 4, "helpers": 5},
			map[string]any{"mib": 4, "step_mib": 0},
			map[string]any{"mib": "4"},
		} {
			f, cmd, done := startTask(t, bin, 30, args)
			code := exitCode(t, cmd, done)
			st, _ := f.State("t1")
			if code != taskapi.ExitFailed || st.Result == nil || st.Result.Reason != "invalid_args" {
				t.Errorf("args %v: exit %d, result %+v", args, code, st.Result)
			}
		}
	})
}

func TestHelperMode(t *testing.T) {
	in, _ := json.Marshal(helperInput{MiB: 5, StepMiB: 2})
	var out bytes.Buffer
	if err := runHelper(bytes.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(out.String()); strings.Join(got, " ") != "2 4 5" {
		t.Errorf("steps %q; want 2 4 5", got)
	}
	if err := runHelper(strings.NewReader(`{"mib":1,"step_mib":0}`), &out); err == nil {
		t.Error("step 0 accepted")
	}
}
