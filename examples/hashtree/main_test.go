package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/taskapi"
	"github.com/taskselector/taskselector/taskapi/taskapitest"
)

// makeTree writes a small tree and returns its dir, file count, byte count
// and expected digest (computed independently of the program).
func makeTree(t *testing.T) (string, int, int64, string) {
	dir := t.TempDir()
	var lines []string
	var total int64
	n := 0
	for i := range 25 {
		rel := fmt.Sprintf("d%d/sub%d/f%02d.txt", i%3, i%2, i)
		data := bytes.Repeat([]byte(fmt.Sprintf("file %d\n", i)), i*97)
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		lines = append(lines, rel+"\x00"+hex.EncodeToString(sum[:])+"\n")
		total += int64(len(data))
		n++
	}
	// A symbolic link is not followed or hashed.
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	h := sha256.New()
	for _, l := range lines {
		h.Write([]byte(l))
	}
	return dir, n, total, hex.EncodeToString(h.Sum(nil))
}

// runTask runs the built program as task "t1" with a helper limit and args,
// and returns the fake backend and the exit code.
func runTask(t *testing.T, bin string, limit int64, args any) (*taskapitest.Fake, int) {
	t.Helper()
	f := taskapitest.NewFake()
	token := f.AddTask("t1", limit)
	srv := taskapitest.Serve(t, f, f.Auth)
	argsJSON, _ := json.Marshal(args)
	cmd := taskapitest.Command(t, bin, taskapitest.Identity{
		ID: "t1", Target: "tree", Type: "hashtree", Host: "h", Epoch: 1,
		BudgetMiB: limit + 32, HelpersMiB: limit, ArgsJSON: string(argsJSON),
	}, srv.Path(), token)
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		t.Fatal("task did not finish in 15 s")
	}
	return f, cmd.ProcessState.ExitCode()
}

func TestHashtree(t *testing.T) {
	bin := taskapitest.Build(t, ".")
	dir, files, total, digest := makeTree(t)

	t.Run("all helpers", func(t *testing.T) {
		f, code := runTask(t, bin, 48, map[string]any{"dir": dir, "helpers": 3, "helper_mib": 16})
		st, _ := f.State("t1")
		if code != 0 || st.Result == nil || !st.Result.Done {
			t.Fatalf("exit %d, result %+v", code, st.Result)
		}
		m := st.Result.Metrics
		if m["files"] != float64(files) || m["bytes"] != float64(total) || m["digest"] != digest || m["helpers"] != 3.0 || m["unreadable"] != 0.0 {
			t.Errorf("metrics %v; want files %d bytes %d digest %s helpers 3", m, files, total, digest)
		}
		if st.Requests != 3 || st.Refusals != 0 || st.PeakGrantedMiB != 48 || st.GrantedMiB != 0 {
			t.Errorf("helper RAM: %+v", st)
		}
		if len(st.Progress) == 0 {
			t.Error("no progress reported")
		}
	})
	t.Run("fewer helpers", func(t *testing.T) {
		f, code := runTask(t, bin, 20, map[string]any{"dir": dir, "helpers": 3, "helper_mib": 16})
		st, _ := f.State("t1")
		if code != 0 || st.Result == nil || !st.Result.Done {
			t.Fatalf("exit %d, result %+v", code, st.Result)
		}
		if m := st.Result.Metrics; m["digest"] != digest || m["helpers"] != 1.0 {
			t.Errorf("metrics %v; want helpers 1 and digest %s", m, digest)
		}
		if st.Refusals != 1 || st.GrantedMiB != 0 {
			t.Errorf("helper RAM: %+v", st)
		}
	})
	t.Run("no helpers", func(t *testing.T) {
		f, code := runTask(t, bin, 10, map[string]any{"dir": dir, "helpers": 2, "helper_mib": 16})
		st, _ := f.State("t1")
		if code != taskapi.ExitHelpersUnavailable || st.Result == nil || st.Result.Done || st.Result.Reason != schemas.ReasonHelpersUnavailable {
			t.Fatalf("exit %d, result %+v; want exit 2 and helpers_unavailable", code, st.Result)
		}
	})
	t.Run("bad args", func(t *testing.T) {
		for _, args := range []any{
			map[string]any{"dir": "relative"},
			map[string]any{"helpers": 2},
			map[string]any{"dir": dir, "helpers": 0},
			map[string]any{"dir": dir, "typo": 1},
			map[string]any{"dir": filepath.Join(dir, "missing")},
		} {
			f, code := runTask(t, bin, 48, args)
			st, _ := f.State("t1")
			if code != taskapi.ExitFailed || st.Result == nil || st.Result.Done || st.Result.Reason == "" {
				t.Errorf("args %v: exit %d, result %+v", args, code, st.Result)
			}
		}
	})
}

func TestHelperMode(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a"), []byte("abc"), 0o644)
	in, _ := json.Marshal(helperInput{Dir: dir, Files: []string{"a", "missing", "../etc/passwd"}})
	var out bytes.Buffer
	if err := runHelper(bytes.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("output %q", out.String())
	}
	var r fileResult
	json.Unmarshal([]byte(lines[0]), &r)
	if r.SHA256 != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" || r.Size != 3 {
		t.Errorf("a: %+v", r)
	}
	for _, l := range lines[1:] {
		json.Unmarshal([]byte(l), &r)
		if r.Error == "" {
			t.Errorf("no error for %s", l)
		}
	}
	if err := runHelper(strings.NewReader("{"), &out); err == nil {
		t.Error("bad input accepted")
	}
}

func TestNotUnderAgent(t *testing.T) {
	bin := taskapitest.Build(t, ".")
	cmd := exec.Command(bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != taskapi.ExitFailed || !strings.Contains(string(out), "TASK_ID") {
		t.Errorf("without the environment: %v, %s", err, out)
	}
}
