package taskapi_test

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
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/taskapi"
	"github.com/taskselector/taskselector/taskapi/taskapitest"
)

// setup runs a Server with a Fake backend and returns a Task for task "t1"
// with a helper limit of limit MiB.
func setup(t *testing.T, limit int64) (*taskapitest.Fake, *taskapi.Server, *taskapi.Task) {
	t.Helper()
	f := taskapitest.NewFake()
	token := f.AddTask("t1", limit)
	srv := taskapitest.Serve(t, f, f.Auth)
	task := newTask(t, srv.Path(), "t1", token)
	return f, srv, task
}

func newTask(t *testing.T, socket, id, token string) *taskapi.Task {
	t.Helper()
	env := taskapitest.Env(taskapitest.Identity{
		ID: id, Target: "tgt", Type: "hash", Host: "h1", Epoch: 3,
		BudgetMiB: 200, HelpersMiB: 100, ArgsJSON: `{"dir":"/x","helpers":2}`,
	}, socket, token)
	task, err := taskapi.FromLookup(taskapitest.Lookup(env))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(task.Close)
	return task
}

func TestRoundTrip(t *testing.T) {
	f, srv, task := setup(t, 100)
	ctx := context.Background()

	if task.ID != "t1" || task.Target != "tgt" || task.Type != "hash" || task.Host != "h1" ||
		task.Epoch != 3 || task.BudgetMiB != 200 || task.HelpersMiB != 100 || task.Args["dir"] != "/x" {
		t.Fatalf("identity: %+v", task)
	}
	var args struct {
		Dir     string `json:"dir"`
		Helpers int    `json:"helpers"`
	}
	if err := task.DecodeArgs(&args); err != nil || args.Dir != "/x" || args.Helpers != 2 {
		t.Fatalf("DecodeArgs: %+v, %v", args, err)
	}
	var wrong struct{ Dir string }
	if err := task.DecodeArgs(&wrong); err == nil {
		t.Fatal("DecodeArgs into a struct without helpers: no error")
	}

	if err := task.Progress(ctx, 0.25, map[string]any{"files": 3, "nested": map[string]any{"x": 1.5}}); err != nil {
		t.Fatal(err)
	}
	if err := task.Progress(ctx, 1.5, nil); err == nil {
		t.Fatal("progress 1.5 accepted")
	}
	if err := task.Progress(ctx, 0.5, map[string]any{"neg": -1}); err == nil {
		t.Fatal("negative metric accepted")
	}
	g, err := task.RequestHelpers(ctx, 60)
	if err != nil || g != 60 {
		t.Fatalf("RequestHelpers(60) = %d, %v", g, err)
	}
	g, err = task.RequestHelpers(ctx, 50)
	var ref *taskapi.Refusal
	if !errors.As(err, &ref) || ref.Code != taskapi.CodeOverBudget || ref.Message == "" {
		t.Fatalf("RequestHelpers(50) over the limit = %d, %v; want an over_budget refusal", g, err)
	}
	if g, err = task.RequestHelpers(ctx, 40); err != nil || g != 100 {
		t.Fatalf("RequestHelpers(40) = %d, %v", g, err)
	}
	if err := task.ReleaseHelpers(ctx, 100); err != nil {
		t.Fatal(err)
	}
	if err := task.ReleaseHelpers(ctx, 1); !errors.As(err, &ref) || ref.Code != taskapi.CodeNotGranted {
		t.Fatalf("release of ungranted RAM: %v", err)
	}
	if _, err := task.RequestHelpers(ctx, 0); err == nil {
		t.Fatal("RequestHelpers(0) accepted")
	}
	if err := task.Done(ctx, map[string]any{"files": 7, "digest": "abc"}); err != nil {
		t.Fatal(err)
	}
	if err := task.Done(ctx, nil); !errors.As(err, &ref) || ref.Code != taskapi.CodeFinished {
		t.Fatalf("second Done: %v", err)
	}

	st, _ := f.State("t1")
	if len(st.Progress) != 1 || st.Progress[0] != 0.25 || st.LastMetrics["files"] != 3.0 {
		t.Errorf("progress: %v %v", st.Progress, st.LastMetrics)
	}
	if st.Requests != 3 || st.Refusals != 1 || st.GrantedMiB != 0 || st.PeakGrantedMiB != 100 {
		t.Errorf("helpers: %+v", st)
	}
	if st.Result == nil || !st.Result.Done || st.Result.Metrics["digest"] != "abc" || st.Result.Reason != "" {
		t.Errorf("result: %+v", st.Result)
	}
	if s := srv.Stats(); s.Malformed != 0 || s.AuthFailures != 0 || s.Refused != 3 || s.Requests != 8 {
		t.Errorf("stats: %+v", s)
	}
}

func TestFail(t *testing.T) {
	f, _, task := setup(t, 10)
	if err := task.Fail(context.Background(), ""); err == nil {
		t.Fatal("Fail with no reason accepted")
	}
	if err := task.Fail(context.Background(), schemas.ReasonHelpersUnavailable); err != nil {
		t.Fatal(err)
	}
	r, err := f.WaitFinished("t1", time.Second)
	if err != nil || r.Done || r.Reason != schemas.ReasonHelpersUnavailable {
		t.Fatalf("result %+v, %v", r, err)
	}
}

// rawClient returns an HTTP client that talks to the socket.
func rawClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}, Timeout: 5 * time.Second}
}

type rawReq struct {
	method, path, body string
	header             map[string]string
}

func do(t *testing.T, c *http.Client, r rawReq) (int, taskapi.ErrorReply, string) {
	t.Helper()
	req, err := http.NewRequest(r.method, "http://x"+r.path, strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	var e taskapi.ErrorReply
	_ = json.Unmarshal(data, &e)
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: content type %q", r.method, r.path, ct)
	}
	return res.StatusCode, e, string(data)
}

func TestAuthFailures(t *testing.T) {
	f, srv, task := setup(t, 10)
	other := f.AddTask("t2", 10)
	ctx := context.Background()

	// The SDK with a wrong token, or another task's token.
	for _, tok := range []string{"wrong", other} {
		bad := newTask(t, srv.Path(), "t1", tok)
		err := bad.Progress(ctx, 0.1, nil)
		var ae *taskapi.APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || ae.Code != taskapi.CodeForbidden {
			t.Errorf("token %q: %v; want 403 forbidden", tok, err)
		}
	}
	unknown := newTask(t, srv.Path(), "nope", other)
	if _, err := unknown.RequestHelpers(ctx, 1); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("unknown task: %v", err)
	}

	c := rawClient(srv.Path())
	body := `{"progress":0.5}`
	for name, h := range map[string]map[string]string{
		"no headers":    {},
		"no token":      {"Task-Id": "t1"},
		"no task id":    {"Authorization": "Bearer x"},
		"basic auth":    {"Task-Id": "t1", "Authorization": "Basic eDp5"},
		"empty bearer":  {"Task-Id": "t1", "Authorization": "Bearer "},
		"huge token":    {"Task-Id": "t1", "Authorization": "Bearer " + strings.Repeat("a", 2000)},
		"huge task id":  {"Task-Id": strings.Repeat("a", 300), "Authorization": "Bearer x"},
		"bearer only":   {"Task-Id": "t1", "Authorization": "Bearer"},
		"invalid utf-8": {"Task-Id": "t\xff", "Authorization": "Bearer x"},
	} {
		status, e, _ := do(t, c, rawReq{"POST", taskapi.PathProgress, body, h})
		if status != http.StatusUnauthorized || e.Code != taskapi.CodeUnauthorized {
			t.Errorf("%s: status %d code %q; want 401 unauthorized", name, status, e.Code)
		}
	}
	if s := srv.Stats(); s.AuthFailures != 12 || s.Malformed != 0 {
		t.Errorf("stats %+v", s)
	}
	if st, _ := f.State("t1"); len(st.Progress) != 0 {
		t.Errorf("unauthorized progress recorded: %v", st.Progress)
	}
	// The right token still works.
	if err := task.Progress(ctx, 0.1, nil); err != nil {
		t.Fatal(err)
	}
}

func TestMalformed(t *testing.T) {
	f, srv, task := setup(t, 10)
	tok, _ := f.State("t1")
	c := rawClient(srv.Path())
	auth := map[string]string{"Task-Id": "t1", "Authorization": "Bearer " + tok.Token}
	withCT := func(ct string) map[string]string {
		h := map[string]string{"Content-Type": ct}
		for k, v := range auth {
			h[k] = v
		}
		return h
	}
	cases := []struct {
		name   string
		req    rawReq
		status int
		code   string
	}{
		{"empty body", rawReq{"POST", taskapi.PathProgress, "", auth}, 400, taskapi.CodeBadRequest},
		{"not json", rawReq{"POST", taskapi.PathProgress, "hello", auth}, 400, taskapi.CodeBadRequest},
		{"array", rawReq{"POST", taskapi.PathProgress, "[0.5]", auth}, 400, taskapi.CodeBadRequest},
		{"null", rawReq{"POST", taskapi.PathProgress, "null", auth}, 400, taskapi.CodeBadRequest},
		{"missing progress", rawReq{"POST", taskapi.PathProgress, `{}`, auth}, 400, taskapi.CodeBadRequest},
		{"progress > 1", rawReq{"POST", taskapi.PathProgress, `{"progress":1.01}`, auth}, 400, taskapi.CodeBadRequest},
		{"progress < 0", rawReq{"POST", taskapi.PathProgress, `{"progress":-0.1}`, auth}, 400, taskapi.CodeBadRequest},
		{"progress string", rawReq{"POST", taskapi.PathProgress, `{"progress":"0.5"}`, auth}, 400, taskapi.CodeBadRequest},
		{"progress huge", rawReq{"POST", taskapi.PathProgress, `{"progress":1e400}`, auth}, 400, taskapi.CodeBadRequest},
		{"unknown field", rawReq{"POST", taskapi.PathProgress, `{"progress":0.5,"x":1}`, auth}, 400, taskapi.CodeBadRequest},
		{"trailing data", rawReq{"POST", taskapi.PathProgress, `{"progress":0.5} {}`, auth}, 400, taskapi.CodeBadRequest},
		{"negative metric", rawReq{"POST", taskapi.PathProgress, `{"progress":0.5,"metrics":{"a":{"b":[-1]}}}`, auth}, 400, taskapi.CodeBadRequest},
		{"deep metrics", rawReq{"POST", taskapi.PathProgress, `{"progress":0.5,"metrics":` + strings.Repeat(`{"a":`, 20) + "1" + strings.Repeat("}", 20) + "}", auth}, 400, taskapi.CodeBadRequest},
		{"metrics not object", rawReq{"POST", taskapi.PathProgress, `{"progress":0.5,"metrics":[1]}`, auth}, 400, taskapi.CodeBadRequest},
		{"finish no done", rawReq{"POST", taskapi.PathFinish, `{"reason":"x"}`, auth}, 400, taskapi.CodeBadRequest},
		{"failed no reason", rawReq{"POST", taskapi.PathFinish, `{"done":false}`, auth}, 400, taskapi.CodeBadRequest},
		{"done with reason", rawReq{"POST", taskapi.PathFinish, `{"done":true,"reason":"x"}`, auth}, 400, taskapi.CodeBadRequest},
		{"reason control char", rawReq{"POST", taskapi.PathFinish, `{"done":false,"reason":"a\nb"}`, auth}, 400, taskapi.CodeBadRequest},
		{"long reason", rawReq{"POST", taskapi.PathFinish, `{"done":false,"reason":"` + strings.Repeat("r", 300) + `"}`, auth}, 400, taskapi.CodeBadRequest},
		{"mib missing", rawReq{"POST", taskapi.PathHelpersRequest, `{}`, auth}, 400, taskapi.CodeBadRequest},
		{"mib zero", rawReq{"POST", taskapi.PathHelpersRequest, `{"mib":0}`, auth}, 400, taskapi.CodeBadRequest},
		{"mib negative", rawReq{"POST", taskapi.PathHelpersRelease, `{"mib":-5}`, auth}, 400, taskapi.CodeBadRequest},
		{"mib fraction", rawReq{"POST", taskapi.PathHelpersRequest, `{"mib":1.5}`, auth}, 400, taskapi.CodeBadRequest},
		{"mib string", rawReq{"POST", taskapi.PathHelpersRequest, `{"mib":"5"}`, auth}, 400, taskapi.CodeBadRequest},
		{"mib huge", rawReq{"POST", taskapi.PathHelpersRequest, `{"mib":` + strconv.FormatInt(schemas.MaxMiB+1, 10) + `}`, auth}, 400, taskapi.CodeBadRequest},
		{"mib overflow", rawReq{"POST", taskapi.PathHelpersRequest, `{"mib":99999999999999999999}`, auth}, 400, taskapi.CodeBadRequest},
		{"too large", rawReq{"POST", taskapi.PathProgress, `{"progress":0.5,"metrics":{"s":"` + strings.Repeat("x", taskapi.MaxBodyBytes) + `"}}`, auth}, 413, taskapi.CodeTooLarge},
		{"text/plain", rawReq{"POST", taskapi.PathProgress, `{"progress":0.5}`, withCT("text/plain")}, 415, taskapi.CodeUnsupportedMediaType},
		{"GET", rawReq{"GET", taskapi.PathProgress, "", auth}, 405, taskapi.CodeMethodNotAllowed},
		{"unknown path", rawReq{"POST", "/v1/launch", `{}`, auth}, 404, taskapi.CodeNotFound},
		{"root", rawReq{"GET", "/", "", nil}, 404, taskapi.CodeNotFound},
	}
	for _, tc := range cases {
		status, e, raw := do(t, c, tc.req)
		if status != tc.status || e.Code != tc.code || e.Message == "" {
			t.Errorf("%s: %d %s; want %d %s", tc.name, status, raw, tc.status, tc.code)
		}
	}
	// Good requests with a charset parameter still pass.
	if status, _, raw := do(t, c, rawReq{"POST", taskapi.PathProgress, `{"progress":0.5}`, withCT("application/json; charset=utf-8")}); status != 200 || !strings.Contains(raw, `"ok":true`) {
		t.Errorf("good request: %d %s", status, raw)
	}
	if s := srv.Stats(); s.Malformed != uint64(len(cases)) || s.AuthFailures != 0 {
		t.Errorf("stats %+v; want %d malformed", s, len(cases))
	}
	if st, _ := f.State("t1"); st.GrantedMiB != 0 || st.Result != nil || len(st.Progress) != 1 {
		t.Errorf("malformed requests changed state: %+v", st)
	}

	// Garbage on a raw connection, and a connection that sends nothing,
	// block nobody.
	idle, err := net.Dial("unix", srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	half, err := net.Dial("unix", srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	fmt.Fprintf(half, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", taskapi.PathProgress)
	garbage, err := net.Dial("unix", srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	garbage.Write([]byte("\x00\x01\x02 not http at all\r\n\r\n"))
	garbage.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, _ := io.ReadAll(garbage)
	garbage.Close()
	if !bytes.HasPrefix(reply, []byte("HTTP/1.1 400")) {
		t.Errorf("garbage got %q", reply)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := task.Progress(context.Background(), float64(i)/8, map[string]any{"i": i}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
}

// errBackend fails, refuses through a wrapped error, or panics.
type errBackend struct{ taskapitest.Fake }

func (b *errBackend) Progress(string, float64, map[string]any) error {
	return errors.New("disk on fire")
}

func (b *errBackend) Finish(string, taskapi.Result) error { panic("boom") }

func (b *errBackend) RequestHelpers(string, int64) (int64, error) {
	return 0, fmt.Errorf("grant: %w", &taskapi.Refusal{Code: taskapi.CodeNoHostRAM, Message: "host has 12 MiB free"})
}

func (b *errBackend) ReleaseHelpers(string, int64) (int64, error) {
	return 0, &taskapi.Refusal{}
}

func TestBackendErrors(t *testing.T) {
	b := &errBackend{}
	srv := taskapitest.Serve(t, b, func(id, tok string) bool { return id == "t1" && tok == "s" })
	task := newTask(t, srv.Path(), "t1", "s")
	ctx := context.Background()
	var ae *taskapi.APIError
	if err := task.Progress(ctx, 0.5, nil); !errors.As(err, &ae) || ae.Status != 500 || ae.Code != taskapi.CodeInternal || !strings.Contains(ae.Message, "disk on fire") {
		t.Errorf("backend error: %v", err)
	}
	if err := task.Done(ctx, nil); !errors.As(err, &ae) || ae.Status != 500 {
		t.Errorf("backend panic: %v", err)
	}
	var ref *taskapi.Refusal
	if _, err := task.RequestHelpers(ctx, 5); !errors.As(err, &ref) || ref.Code != taskapi.CodeNoHostRAM || ref.Message != "host has 12 MiB free" {
		t.Errorf("wrapped refusal: %v", err)
	}
	if err := task.ReleaseHelpers(ctx, 5); !errors.As(err, &ref) || ref.Code != taskapi.CodeRefused {
		t.Errorf("empty refusal: %v", err)
	}
	if s := srv.Stats(); s.BackendErrors != 2 || s.Refused != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestSocketLifecycle(t *testing.T) {
	f := taskapitest.NewFake()
	path := taskapitest.SocketPath(t)

	// A stale socket (nobody listening) is replaced.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	srv, err := taskapi.NewServer(path, f, f.Auth, nil)
	if err != nil {
		t.Fatalf("NewServer over a stale socket: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v, %v", fi, err)
	}
	if err := srv.Chmod(0o660); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o660 {
		t.Errorf("mode after Chmod: %v", fi.Mode())
	}

	// A live one is not.
	if _, err := taskapi.NewServer(path, f, f.Auth, nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second server on a live socket: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	if status, _, _ := do(t, rawClient(path), rawReq{"GET", "/", "", nil}); status != http.StatusNotFound {
		t.Fatalf("GET / = %d", status)
	}
	if err := srv.Serve(ctx); err == nil {
		t.Error("second Serve: no error")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket not removed after Serve: %v", err)
	}

	// A regular file is never removed.
	file := filepath.Join(filepath.Dir(path), "file")
	os.WriteFile(file, []byte("x"), 0o600)
	if _, err := taskapi.NewServer(file, f, f.Auth, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("NewServer over a regular file: %v", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("regular file removed: %v", err)
	}
	for _, bad := range []func() (*taskapi.Server, error){
		func() (*taskapi.Server, error) { return taskapi.NewServer(path, nil, f.Auth, nil) },
		func() (*taskapi.Server, error) { return taskapi.NewServer(path, f, nil, nil) },
		func() (*taskapi.Server, error) { return taskapi.NewServer("", f, f.Auth, nil) },
	} {
		if _, err := bad(); err == nil {
			t.Error("NewServer with a missing argument: no error")
		}
	}

	// Close without Serve removes the socket too.
	srv2, err := taskapi.NewServer(path, f, f.Auth, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket not removed after Close: %v", err)
	}
	if err := srv2.Serve(context.Background()); err != nil {
		t.Errorf("Serve after Close: %v", err)
	}
}

func TestFromEnvErrors(t *testing.T) {
	good := taskapitest.Env(taskapitest.Identity{ID: "t", Target: "g", Type: "y", Host: "h", Epoch: 1, BudgetMiB: 1, HelpersMiB: 0}, "/s", "k")
	with := func(name, value string) []string {
		env := []string{}
		for _, kv := range good {
			if !strings.HasPrefix(kv, name+"=") {
				env = append(env, kv)
			}
		}
		if value != "<unset>" {
			env = append(env, name+"="+value)
		}
		return env
	}
	if _, err := taskapi.FromLookup(taskapitest.Lookup(good)); err != nil {
		t.Fatalf("good env: %v", err)
	}
	if task, err := taskapi.FromLookup(taskapitest.Lookup(with(taskapi.EnvTaskArgs, "<unset>"))); err != nil || task.Args == nil || len(task.Args) != 0 {
		t.Fatalf("no args: %v, %v", task, err)
	}
	for _, tc := range []struct{ name, value string }{
		{taskapi.EnvTaskID, "<unset>"},
		{taskapi.EnvTaskAPI, ""},
		{taskapi.EnvTaskToken, "<unset>"},
		{taskapi.EnvTaskHost, "<unset>"},
		{taskapi.EnvTaskEpoch, "0"},
		{taskapi.EnvTaskEpoch, "x"},
		{taskapi.EnvTaskBudgetMiB, "-1"},
		{taskapi.EnvTaskHelpersMiB, "1.5"},
		{taskapi.EnvTaskArgs, "[1]"},
		{taskapi.EnvTaskArgs, "null"},
		{taskapi.EnvTaskArgs, "{"},
	} {
		_, err := taskapi.FromLookup(taskapitest.Lookup(with(tc.name, tc.value)))
		if err == nil || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s=%q: error %v does not name the variable", tc.name, tc.value, err)
		}
	}
}

func TestStartHelper(t *testing.T) {
	f, _, task := setup(t, 50)
	ctx := context.Background()

	// The helper runs in the task's process group, and Wait releases its RAM.
	cmd := exec.Command("/bin/sh", "-c", `cut -d" " -f5 /proc/$$/stat`)
	var out bytes.Buffer
	cmd.Stdout = &out
	h, err := task.StartHelper(ctx, 30, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := f.State("t1"); st.GrantedMiB != 30 {
		t.Errorf("granted while running: %d", st.GrantedMiB)
	}
	if err := h.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := h.Wait(); err != nil {
		t.Fatalf("second Wait: %v", err)
	}
	if got, want := strings.TrimSpace(out.String()), strconv.Itoa(syscall.Getpgrp()); got != want {
		t.Errorf("helper process group %s; want the task's %s", got, want)
	}
	if st, _ := f.State("t1"); st.GrantedMiB != 0 || st.Releases != 1 {
		t.Errorf("after Wait: %+v", st)
	}

	// A refusal starts nothing.
	cmd = exec.Command("/bin/true")
	_, err = task.StartHelper(ctx, 51, cmd)
	var ref *taskapi.Refusal
	if !errors.As(err, &ref) || ref.Code != taskapi.CodeOverBudget || cmd.Process != nil {
		t.Errorf("over budget: %v, started %v", err, cmd.Process != nil)
	}

	// Helpers may not leave the group.
	cmd = exec.Command("/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if _, err := task.StartHelper(ctx, 1, cmd); err == nil {
		t.Error("Setpgid helper accepted")
	}

	// A command that cannot start gives its RAM back.
	if _, err := task.StartHelper(ctx, 10, exec.Command("/nonexistent/helper")); err == nil {
		t.Error("nonexistent helper started")
	}
	// A failing helper's exit error comes back, RAM released.
	h, err = task.StartHelper(ctx, 10, exec.Command("/bin/sh", "-c", "exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	var ee *exec.ExitError
	if err := h.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("failing helper: %v", err)
	}
	if st, _ := f.State("t1"); st.GrantedMiB != 0 {
		t.Errorf("RAM left granted: %+v", st)
	}
}

func TestContextSIGTERM(t *testing.T) {
	_, _, task := setup(t, 1)
	ctx := task.Context()
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("context not cancelled by SIGTERM")
	}
	task.Close()
}
