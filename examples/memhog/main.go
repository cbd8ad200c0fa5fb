// Command memhog is an example task for the exec executor that shows RAM
// limits and helper refusals: its helpers allocate and touch real memory,
// step by step, so that the agent measures it in the task's cgroup.
//
// Its args (TASK_ARGS) are a JSON object:
//
//	{"mib": 256, "step_mib": 32, "helpers": 2, "step_ms": 50, "hold_ms": 1000}
//
// The fields, with their defaults in brackets:
//
//   - mib (required): memory to allocate in all, split evenly across the
//     helpers (the first ones take the remainder).
//   - step_mib: how much a helper allocates at a time [16].
//   - helpers: how many helper processes, 1 to 64 and at most mib [1].
//   - step_ms: pause between steps, in milliseconds [50].
//   - hold_ms: how long each helper holds its memory once all of it is
//     allocated, in milliseconds [500].
//
// For each helper memhog first requests the helper's share as helper RAM
// (taskapi.Task.StartHelper), then starts it: this same binary re-invoked as
// "memhog helper", which reads its share on stdin. If a grant is refused
// memhog stops the helpers it started, reports failed with reason
// helpers_unavailable and exits with status 2. Each helper allocates its
// share step_mib at a time, writing to every page so that the memory is
// really used, and prints the MiB it holds after each step; memhog reports
// the sum as progress (allocated_mib). When every helper has held its share
// and exited, memhog reports done with metrics mib, helpers and
// allocated_mib.
//
// A helper's RAM is its share plus its Go runtime (a few MiB), so a budget
// sized exactly to mib leaves little slack: that is how to see the cgroup
// limit stop a task (the agent reports it as oom). memhog itself does not
// report a failure when a helper is killed by a signal, so that the agent's
// own reason (oom, killed) stands.
//
// Exit status: 0 done; 1 failed (bad args, a failed helper); 2
// helpers_unavailable; 143 stopped by SIGTERM or SIGINT.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/taskapi"
)

// helperArg is argv[1] of a helper.
const helperArg = "helper"

// args are the task's args.
type args struct {
	MiB     int64 `json:"mib"`
	StepMiB int64 `json:"step_mib"`
	Helpers int64 `json:"helpers"`
	StepMS  int64 `json:"step_ms"`
	HoldMS  int64 `json:"hold_ms"`
}

// helperInput is what a helper reads on stdin.
type helperInput struct {
	MiB     int64 `json:"mib"`
	StepMiB int64 `json:"step_mib"`
	StepMS  int64 `json:"step_ms"`
	HoldMS  int64 `json:"hold_ms"`
}

// maxMiB bounds mib (1 TiB): a guard against typos, not a limit the agent
// would grant.
const maxMiB = 1 << 20

func main() {
	taskapi.Main(taskapi.Program{Name: "memhog", HelperArg: helperArg, Helper: runHelper, Run: run})
}

// run is the task's body; it returns the exit status.
func run(t *taskapi.Task, log *slog.Logger, fail taskapi.FailFunc) int {
	ctx := t.Context()
	a := args{StepMiB: 16, Helpers: 1, StepMS: 50, HoldMS: 500}
	if err := t.DecodeArgs(&a); err != nil {
		return fail(taskapi.ExitFailed, "invalid_args", err)
	}
	if err := a.check(); err != nil {
		return fail(taskapi.ExitFailed, "invalid_args", err)
	}
	self, err := os.Executable()
	if err != nil {
		return fail(taskapi.ExitFailed, "helper_failed", fmt.Errorf("finding own binary: %w", err))
	}

	// Start the helpers, each after its grant.
	var helpers []*helper
	stopAll := func() {
		for _, h := range helpers {
			h.h.Cmd.Process.Kill()
			io.Copy(io.Discard, h.stdout)
			h.h.Wait()
		}
	}
	for i := range a.Helpers {
		share := a.MiB / a.Helpers
		if i < a.MiB%a.Helpers {
			share++
		}
		h, err := startHelper(ctx, t, self, helperInput{MiB: share, StepMiB: a.StepMiB, StepMS: a.StepMS, HoldMS: a.HoldMS})
		var ref *taskapi.Refusal
		switch {
		case errors.As(err, &ref):
			stopAll()
			return fail(taskapi.ExitHelpersUnavailable, schemas.ReasonHelpersUnavailable,
				fmt.Errorf("helper %d of %d (%d MiB) refused: %w", i+1, a.Helpers, share, err))
		case err != nil:
			stopAll()
			if ctx.Err() != nil {
				return taskapi.ExitSignalled
			}
			return fail(taskapi.ExitFailed, "helper_failed", err)
		}
		log.Info("memhog: helper started", "helper", i, "mib", share, "pid", h.h.Cmd.Process.Pid)
		helpers = append(helpers, h)
	}

	// Follow the helpers' allocations.
	type step struct{ helper, mib int64 }
	steps := make(chan step, 16)
	errs := make([]error, len(helpers))
	var wg sync.WaitGroup
	for i, h := range helpers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.follow(func(mib int64) { steps <- step{int64(i), mib} })
		}()
	}
	go func() { wg.Wait(); close(steps) }()
	held := make([]int64, len(helpers))
	var peak int64
	for s := range steps {
		held[s.helper] = s.mib
		var total int64
		for _, m := range held {
			total += m
		}
		peak = max(peak, total)
		if ctx.Err() == nil {
			if err := t.Progress(ctx, min(1, float64(total)/float64(a.MiB)), map[string]any{"allocated_mib": total}); err != nil {
				log.Warn("memhog: progress", "err", err)
			}
		}
	}
	if ctx.Err() != nil {
		log.Info("memhog: stopped by signal")
		return taskapi.ExitSignalled
	}
	for i, err := range errs {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == -1 {
			log.Error("memhog: helper killed by a signal", "helper", i, "err", err)
			return taskapi.ExitFailed // the agent knows why (the OOM killer, a kill)
		}
		if err != nil {
			return fail(taskapi.ExitFailed, "helper_failed", fmt.Errorf("helper %d: %w", i, err))
		}
	}
	if err := t.Done(ctx, map[string]any{"mib": a.MiB, "helpers": len(helpers), "allocated_mib": peak}); err != nil {
		log.Error("memhog: reporting done", "err", err)
		return taskapi.ExitFailed
	}
	log.Info("memhog: done", "allocated_mib", peak)
	return taskapi.ExitDone
}

// check checks the args.
func (a *args) check() error {
	switch {
	case a.MiB < 1 || a.MiB > maxMiB:
		return fmt.Errorf("mib: %d not in [1, %d]", a.MiB, maxMiB)
	case a.StepMiB < 1 || a.StepMiB > maxMiB:
		return fmt.Errorf("step_mib: %d not in [1, %d]", a.StepMiB, maxMiB)
	case a.Helpers < 1 || a.Helpers > 64 || a.Helpers > a.MiB:
		return fmt.Errorf("helpers: %d not in [1, min(64, mib)]", a.Helpers)
	case a.StepMS < 0 || a.StepMS > 60_000:
		return fmt.Errorf("step_ms: %d not in [0, 60000]", a.StepMS)
	case a.HoldMS < 0 || a.HoldMS > 3_600_000:
		return fmt.Errorf("hold_ms: %d not in [0, 3600000]", a.HoldMS)
	}
	return nil
}

// helper is a running helper process.
type helper struct {
	h      *taskapi.Helper
	stdout io.ReadCloser
}

// startHelper requests in.MiB of helper RAM, starts "self helper" and
// sends it in.
func startHelper(ctx context.Context, t *taskapi.Task, self string, in helperInput) (*helper, error) {
	cmd := exec.CommandContext(ctx, self, helperArg)
	cmd.Stderr = os.Stderr
	input, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("helper input: %w", err)
	}
	cmd.Stdin = bytes.NewReader(input)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("helper stdout: %w", err)
	}
	h, err := t.StartHelper(ctx, in.MiB, cmd)
	if err != nil {
		stdout.Close()
		return nil, err
	}
	return &helper{h: h, stdout: stdout}, nil
}

// follow calls step with the MiB the helper holds after each of its steps,
// until it exits; then it waits for it (releasing its RAM).
func (h *helper) follow(step func(mib int64)) error {
	sc := bufio.NewScanner(h.stdout)
	var err error
	for sc.Scan() {
		n, perr := strconv.ParseInt(sc.Text(), 10, 64)
		if perr != nil {
			err = fmt.Errorf("bad line from helper: %w", perr)
			break
		}
		step(n)
	}
	if err == nil {
		err = sc.Err()
	}
	io.Copy(io.Discard, h.stdout)
	return errors.Join(err, h.h.Wait())
}

// pageSize is the step at which helpers touch memory.
var pageSize = os.Getpagesize()

// runHelper is the helper mode: it reads a helperInput from in, allocates
// and touches its memory step by step, printing the MiB held after each
// step to out, then holds it for HoldMS.
func runHelper(in io.Reader, out io.Writer) error {
	var input helperInput
	dec := json.NewDecoder(in)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&input); err != nil {
		return fmt.Errorf("reading input: %w", err)
	}
	if input.MiB < 0 || input.StepMiB < 1 {
		return fmt.Errorf("bad input %+v", input)
	}
	var held [][]byte
	var total int64
	for total < input.MiB {
		n := min(input.StepMiB, input.MiB-total)
		b := make([]byte, n<<20)
		for i := 0; i < len(b); i += pageSize {
			b[i] = 1
		}
		held = append(held, b)
		total += n
		if _, err := fmt.Fprintln(out, total); err != nil {
			return fmt.Errorf("writing progress: %w", err)
		}
		if total < input.MiB {
			time.Sleep(time.Duration(input.StepMS) * time.Millisecond)
		}
	}
	time.Sleep(time.Duration(input.HoldMS) * time.Millisecond)
	if len(held) > 0 && held[0][0] != 1 { // keep held alive until here
		return errors.New("memory lost")
	}
	return nil
}
