package taskapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Task is a running task's handle on its identity and on the agent's task
// API. Get one with FromEnv. Its methods may be called concurrently.
type Task struct {
	// ID is the task's id (TASK_ID).
	ID string
	// Target is the target the task works on (TASK_TARGET).
	Target string
	// Type is the task type (TASK_TYPE).
	Type string
	// Host is the worker host (TASK_HOST).
	Host string
	// Epoch is the task's epoch (TASK_EPOCH).
	Epoch uint64
	// BudgetMiB is the whole RAM budget, wrapper plus helpers
	// (TASK_BUDGET_MIB).
	BudgetMiB int64
	// HelpersMiB is the helper part of the budget (TASK_HELPERS_MIB).
	HelpersMiB int64
	// Args are the target spec's args (TASK_ARGS), never nil. Numbers are
	// float64, as encoding/json decodes them; see DecodeArgs for a struct.
	Args map[string]any
	// Socket is the path of the task API's Unix socket (TASK_API).
	Socket string

	argsJSON []byte
	token    string
	client   *http.Client

	sigOnce sync.Once
	ctx     context.Context
	stop    context.CancelFunc
}

// DefaultTimeout bounds every API call whose context has no deadline.
const DefaultTimeout = 30 * time.Second

// FromEnv reads the task's identity, budget, args, API socket and token from
// the environment the exec executor sets (see the Env* constants). Every
// variable but TASK_ARGS is required; an error names the variable that is
// missing or malformed.
func FromEnv() (*Task, error) { return FromLookup(os.LookupEnv) }

// FromLookup is FromEnv reading variables through lookup (such as
// os.LookupEnv, or a map in tests).
func FromLookup(lookup func(string) (string, bool)) (*Task, error) {
	t := &Task{}
	var errs []error
	str := func(name string, dst *string) {
		v, ok := lookup(name)
		if !ok || v == "" {
			errs = append(errs, fmt.Errorf("taskapi: environment variable %s is not set", name))
			return
		}
		*dst = v
	}
	str(EnvTaskID, &t.ID)
	str(EnvTaskTarget, &t.Target)
	str(EnvTaskType, &t.Type)
	str(EnvTaskHost, &t.Host)
	str(EnvTaskAPI, &t.Socket)
	str(EnvTaskToken, &t.token)
	var epoch, budget, helpers string
	str(EnvTaskEpoch, &epoch)
	str(EnvTaskBudgetMiB, &budget)
	str(EnvTaskHelpersMiB, &helpers)
	if epoch != "" {
		n, err := strconv.ParseUint(epoch, 10, 64)
		if err != nil || n == 0 {
			errs = append(errs, fmt.Errorf("taskapi: environment variable %s=%q is not a positive integer", EnvTaskEpoch, epoch))
		}
		t.Epoch = n
	}
	mib := func(name, v string, dst *int64) {
		if v == "" {
			return
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("taskapi: environment variable %s=%q is not a non-negative integer", name, v))
		}
		*dst = n
	}
	mib(EnvTaskBudgetMiB, budget, &t.BudgetMiB)
	mib(EnvTaskHelpersMiB, helpers, &t.HelpersMiB)
	t.Args = map[string]any{}
	if v, _ := lookup(EnvTaskArgs); v != "" {
		t.argsJSON = []byte(v)
		if err := json.Unmarshal(t.argsJSON, &t.Args); err != nil || t.Args == nil {
			errs = append(errs, fmt.Errorf("taskapi: environment variable %s is not a JSON object: %v", EnvTaskArgs, err))
			t.Args = map[string]any{}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	socket := t.Socket
	t.client = &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			MaxIdleConns:    2,
			IdleConnTimeout: 30 * time.Second,
		},
	}
	return t, nil
}

// DecodeArgs decodes the task's args (TASK_ARGS) into v, such as a pointer
// to a struct, strictly: an arg v has no field for is an error. No args
// leave v as it is.
func (t *Task) DecodeArgs(v any) error {
	if len(t.argsJSON) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(t.argsJSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("taskapi: decoding %s: %w", EnvTaskArgs, err)
	}
	return nil
}

// Context returns a context that is cancelled when the task gets SIGTERM or
// SIGINT (the agent's kill sends SIGTERM to the task's process group, then
// SIGKILL after the grace). The first call installs the signal handler, so
// call it early; from then on the task must watch the context and stop
// cleanly (release helper RAM, exit) when it ends.
func (t *Task) Context() context.Context {
	t.sigOnce.Do(func() {
		t.ctx, t.stop = signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	})
	return t.ctx
}

// Close stops the signal handling Context installed, cancels the Context
// and closes idle connections to the API. The Task must not be used
// afterwards.
func (t *Task) Close() {
	t.sigOnce.Do(func() { // no handler installed from now on
		t.ctx, t.stop = context.WithCancel(context.Background())
	})
	t.stop()
	t.client.CloseIdleConnections()
}

// Progress reports the share p of the work done, in [0, 1], with optional
// metrics (every number finite and not negative).
func (t *Task) Progress(ctx context.Context, p float64, metrics map[string]any) error {
	if err := checkProgress(p); err != nil {
		return fmt.Errorf("taskapi: Progress: %w", err)
	}
	if err := CheckMetrics(metrics); err != nil {
		return fmt.Errorf("taskapi: Progress: %w", err)
	}
	return t.call(ctx, PathProgress, ProgressRequest{Progress: p, Metrics: metrics}, &OKReply{})
}

// RequestHelpers asks for mib more helper RAM and returns the task's helper
// RAM granted in total after the grant. When the agent refuses (over the
// task's budget, not enough free RAM on the host) the error is a *Refusal:
// test it with errors.As. A task that gives up then should call Fail with
// schemas.ReasonHelpersUnavailable and exit.
func (t *Task) RequestHelpers(ctx context.Context, mib int64) (granted int64, err error) {
	if err := checkMiB(mib); err != nil {
		return 0, fmt.Errorf("taskapi: RequestHelpers: %w", err)
	}
	var rep HelpersReply
	if err := t.call(ctx, PathHelpersRequest, HelpersRequest{MiB: mib}, &rep); err != nil {
		return 0, err
	}
	return rep.GrantedMiB, nil
}

// ReleaseHelpers gives mib of granted helper RAM back.
func (t *Task) ReleaseHelpers(ctx context.Context, mib int64) error {
	if err := checkMiB(mib); err != nil {
		return fmt.Errorf("taskapi: ReleaseHelpers: %w", err)
	}
	return t.call(ctx, PathHelpersRelease, HelpersRequest{MiB: mib}, &HelpersReply{})
}

// Done reports that the task did its work, with optional metrics. The task
// should exit (with status 0) right after.
func (t *Task) Done(ctx context.Context, metrics map[string]any) error {
	if err := CheckMetrics(metrics); err != nil {
		return fmt.Errorf("taskapi: Done: %w", err)
	}
	return t.call(ctx, PathFinish, FinishRequest{Done: true, Metrics: metrics}, &OKReply{})
}

// Fail reports that the task failed, with a reason such as
// schemas.ReasonHelpersUnavailable. The task should exit (non-zero) right
// after.
func (t *Task) Fail(ctx context.Context, reason string) error {
	if err := checkFinish(false, reason); err != nil {
		return fmt.Errorf("taskapi: Fail: %w", err)
	}
	return t.call(ctx, PathFinish, FinishRequest{Done: false, Reason: reason}, &OKReply{})
}

// call posts req to path and decodes a 200 reply into rep. A 409 reply
// becomes a *Refusal, any other error reply an *APIError.
func (t *Task) call(ctx context.Context, path string, req, rep any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("taskapi: %s: encoding request: %w", path, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://taskapi"+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("taskapi: %s: %w", path, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set(HeaderTaskID, t.ID)
	hreq.Header.Set(HeaderAuthorization, "Bearer "+t.token)
	res, err := t.client.Do(hreq)
	if err != nil {
		return fmt.Errorf("taskapi: %s: %w", path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, MaxBodyBytes))
	if err != nil {
		return fmt.Errorf("taskapi: %s: reading reply: %w", path, err)
	}
	if res.StatusCode == http.StatusOK {
		if err := json.Unmarshal(data, rep); err != nil {
			return fmt.Errorf("taskapi: %s: decoding reply: %w", path, err)
		}
		return nil
	}
	var e ErrorReply
	if err := json.Unmarshal(data, &e); err != nil || e.Code == "" {
		e = ErrorReply{Code: "unknown", Message: truncate(string(data), maxErrorMessage)}
	}
	if res.StatusCode == http.StatusConflict {
		return &Refusal{Code: e.Code, Message: e.Message}
	}
	return &APIError{Status: res.StatusCode, Code: e.Code, Message: e.Message}
}

// Helper is a helper process started by StartHelper with granted RAM.
type Helper struct {
	// Cmd is the helper's command, started.
	Cmd *exec.Cmd
	// MiB is the helper RAM granted for it, released by Wait.
	MiB int64

	t        *Task
	waitOnce sync.Once
	waitErr  error
}

// releaseTimeout bounds the release of a helper's RAM after it ends.
const releaseTimeout = 10 * time.Second

// StartHelper requests mib of helper RAM, then starts cmd as a helper. The
// helper stays in the task's process group (the agent kills the whole group,
// so no helper outlives its task): a cmd whose SysProcAttr asks for its own
// group or session is refused. When cmd has no SysProcAttr the helper also
// gets SIGKILL if the task dies (Pdeathsig; Linux sends it when the OS
// thread that started the helper ends, which Go does only for a goroutine
// that exits while locked with runtime.LockOSThread, so do not call
// StartHelper from one). A refused grant returns the
// *Refusal (errors.As); when cmd fails to start the RAM is released again.
// Call Wait on the Helper to wait for it and release its RAM.
func (t *Task) StartHelper(ctx context.Context, mib int64, cmd *exec.Cmd) (*Helper, error) {
	if cmd == nil {
		return nil, errors.New("taskapi: StartHelper: nil command")
	}
	if cmd.Process != nil {
		return nil, errors.New("taskapi: StartHelper: command already started")
	}
	if a := cmd.SysProcAttr; a != nil && (a.Setpgid || a.Setsid || a.Foreground) {
		return nil, errors.New("taskapi: StartHelper: helpers must stay in the task's process group (no Setpgid, Setsid or Foreground)")
	}
	if _, err := t.RequestHelpers(ctx, mib); err != nil {
		return nil, fmt.Errorf("taskapi: StartHelper: %w", err)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		rctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
		defer cancel()
		rerr := t.ReleaseHelpers(rctx, mib)
		return nil, errors.Join(fmt.Errorf("taskapi: StartHelper: starting %s: %w", cmd.Path, err), rerr)
	}
	return &Helper{Cmd: cmd, MiB: mib, t: t}, nil
}

// Wait waits for the helper to exit, then releases its RAM. It returns the
// helper's exit error (an *exec.ExitError for a non-zero exit, test it with
// errors.As), joined with any error of the release. Calls after the first
// return the same result.
func (h *Helper) Wait() error {
	h.waitOnce.Do(func() {
		var werr error
		if err := h.Cmd.Wait(); err != nil {
			werr = fmt.Errorf("taskapi: helper %s: %w", h.Cmd.Path, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
		defer cancel()
		h.waitErr = errors.Join(werr, h.t.ReleaseHelpers(ctx, h.MiB))
	})
	return h.waitErr
}
