// Command hashtree is an example task for the exec executor: it hashes every
// regular file of a directory tree with SHA-256, across helper processes,
// and reports a digest of the whole tree.
//
// Its args (TASK_ARGS) are a JSON object:
//
//	{"dir": "/srv/data", "helpers": 3, "helper_mib": 16}
//
// The fields, with their defaults in brackets:
//
//   - dir (required): the tree to hash, an absolute path.
//   - helpers: how many helper processes to use, 1 to 64 [2].
//   - helper_mib: helper RAM requested for each helper [16].
//
// hashtree lists the tree, then starts its helpers one by one: each is this
// same binary re-invoked as "hashtree helper", started with
// taskapi.Task.StartHelper, which first requests helper_mib of helper RAM
// from the agent. When a grant is refused it goes on with the helpers it
// has; with none it reports failed with reason helpers_unavailable and
// exits with status 2. The files are dealt out to the helpers round robin
// (as a JSON object on each helper's stdin); every helper answers one JSON
// line per file on its stdout. hashtree reports progress (the share of files
// hashed) as results come in, and when all helpers have ended reports done
// with these metrics:
//
//   - files, bytes: files and bytes hashed;
//   - unreadable: files that could not be read (not in the digest);
//   - helpers: helpers used;
//   - digest: SHA-256, in hex, of the lines "<path>\x00<sha256 hex>\n" of
//     every file hashed, sorted by path (relative to dir, slash-separated).
//
// Exit status: 0 done; 1 failed (bad args, a listing error or a failed
// helper, reported with Fail when the API is reachable); 2
// helpers_unavailable; 143 stopped by SIGTERM or SIGINT (helpers, which
// share the task's process group, get the signal too; their RAM is
// released).
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/taskapi"
)

// helperArg is argv[1] of a helper.
const helperArg = "helper"

// progressEvery is how often at most progress is reported.
const progressEvery = 250 * time.Millisecond

// args are the task's args.
type args struct {
	Dir       string `json:"dir"`
	Helpers   int    `json:"helpers"`
	HelperMiB int64  `json:"helper_mib"`
}

// helperInput is what a helper reads on stdin.
type helperInput struct {
	Dir   string   `json:"dir"`
	Files []string `json:"files"`
}

// fileResult is one line a helper writes on stdout.
type fileResult struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
	Error  string `json:"error,omitempty"`
}

func main() {
	taskapi.Main(taskapi.Program{Name: "hashtree", HelperArg: helperArg, Helper: runHelper, Run: run})
}

// run is the task's body; it returns the exit status.
func run(t *taskapi.Task, log *slog.Logger, fail taskapi.FailFunc) int {
	ctx := t.Context()
	a := args{Helpers: 2, HelperMiB: 16}
	if err := t.DecodeArgs(&a); err != nil {
		return fail(taskapi.ExitFailed, "invalid_args", err)
	}
	if err := a.check(); err != nil {
		return fail(taskapi.ExitFailed, "invalid_args", err)
	}
	files, err := listFiles(ctx, a.Dir)
	if err != nil {
		if ctx.Err() != nil {
			return taskapi.ExitSignalled
		}
		return fail(taskapi.ExitFailed, "list_failed", err)
	}
	if err := t.Progress(ctx, 0, map[string]any{"files_total": len(files)}); err != nil {
		log.Warn("hashtree: progress", "err", err)
	}

	self, err := os.Executable()
	if err != nil {
		return fail(taskapi.ExitFailed, "helper_failed", fmt.Errorf("finding own binary: %w", err))
	}
	var helpers []*helper
	for i := range a.Helpers {
		h, err := startHelper(ctx, t, self, a.HelperMiB)
		var ref *taskapi.Refusal
		if errors.As(err, &ref) {
			log.Warn("hashtree: helper RAM refused; going on with fewer helpers", "helper", i, "have", len(helpers), "code", ref.Code, "message", ref.Message)
			break
		}
		if err != nil {
			stopHelpers(helpers)
			if ctx.Err() != nil {
				return taskapi.ExitSignalled
			}
			return fail(taskapi.ExitFailed, "helper_failed", err)
		}
		helpers = append(helpers, h)
	}
	if len(helpers) == 0 {
		return fail(taskapi.ExitHelpersUnavailable, schemas.ReasonHelpersUnavailable, errors.New("no helper RAM granted"))
	}
	log.Info("hashtree: hashing", "dir", a.Dir, "files", len(files), "helpers", len(helpers))

	// Deal the files out, collect the results.
	shares := make([][]string, len(helpers))
	for i, f := range files {
		shares[i%len(helpers)] = append(shares[i%len(helpers)], f)
	}
	results := make(chan fileResult, 64)
	helperErrs := make([]error, len(helpers))
	var wg sync.WaitGroup
	for i, h := range helpers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			err := json.NewEncoder(h.stdin).Encode(helperInput{Dir: a.Dir, Files: shares[i]})
			if cerr := h.stdin.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				log.Warn("hashtree: writing to helper", "helper", i, "err", err)
			}
		}()
		go func() {
			defer wg.Done()
			helperErrs[i] = h.collect(results)
		}()
	}
	go func() { wg.Wait(); close(results) }()

	var done []fileResult
	var bytes int64
	unreadable := 0
	last := time.Now()
	for r := range results {
		if r.Error != "" {
			unreadable++
			log.Warn("hashtree: unreadable file", "path", r.Path, "err", r.Error)
		} else {
			done = append(done, r)
			bytes += r.Size
		}
		if now := time.Now(); now.Sub(last) >= progressEvery && ctx.Err() == nil {
			last = now
			n := len(done) + unreadable
			if err := t.Progress(ctx, float64(n)/float64(len(files)), map[string]any{"files_done": n, "bytes_done": bytes}); err != nil {
				log.Warn("hashtree: progress", "err", err)
			}
		}
	}
	if ctx.Err() != nil {
		log.Info("hashtree: stopped by signal")
		return taskapi.ExitSignalled
	}
	if err := helperFailure(helperErrs); err != nil {
		if err == errHelperKilled {
			return taskapi.ExitFailed // the agent knows why (a kill, the OOM killer)
		}
		return fail(taskapi.ExitFailed, "helper_failed", err)
	}
	if len(done)+unreadable != len(files) {
		return fail(taskapi.ExitFailed, "helper_failed", fmt.Errorf("helpers answered for %d of %d files", len(done)+unreadable, len(files)))
	}
	metrics := map[string]any{
		"files":      len(done),
		"bytes":      bytes,
		"unreadable": unreadable,
		"helpers":    len(helpers),
		"digest":     treeDigest(done),
	}
	if err := t.Done(ctx, metrics); err != nil {
		log.Error("hashtree: reporting done", "err", err)
		return taskapi.ExitFailed
	}
	log.Info("hashtree: done", "files", len(done), "bytes", bytes, "digest", metrics["digest"])
	return taskapi.ExitDone
}

// check checks the args and fills in defaults.
func (a *args) check() error {
	switch {
	case a.Dir == "":
		return errors.New("dir: missing")
	case !filepath.IsAbs(a.Dir):
		return fmt.Errorf("dir: %q is not an absolute path", a.Dir)
	case a.Helpers < 1 || a.Helpers > 64:
		return fmt.Errorf("helpers: %d not in [1, 64]", a.Helpers)
	case a.HelperMiB < 1 || a.HelperMiB > schemas.MaxMiB:
		return fmt.Errorf("helper_mib: %d not positive", a.HelperMiB)
	}
	a.Dir = filepath.Clean(a.Dir)
	return nil
}

// listFiles returns the regular files under dir, relative to it with
// slashes, sorted. Symbolic links are not followed.
func listFiles(ctx context.Context, dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	sort.Strings(files)
	return files, nil
}

// treeDigest is the SHA-256 of "<path>\x00<sha256>\n" for every file,
// sorted by path.
func treeDigest(files []fileResult) string {
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%s\n", f.Path, f.SHA256)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// helper is a running helper process.
type helper struct {
	h      *taskapi.Helper
	stdin  io.WriteCloser
	stdout io.ReadCloser
}

// startHelper requests mib of helper RAM and starts "self helper".
func startHelper(ctx context.Context, t *taskapi.Task, self string, mib int64) (*helper, error) {
	cmd := exec.CommandContext(ctx, self, helperArg)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("helper stdin: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("helper stdout: %w", err)
	}
	h, err := t.StartHelper(ctx, mib, cmd)
	if err != nil {
		stdin.Close()
		stdout.Close()
		return nil, err
	}
	return &helper{h: h, stdin: stdin, stdout: stdout}, nil
}

// collect sends the helper's results to out until its stdout ends, then
// waits for it (releasing its RAM).
func (h *helper) collect(out chan<- fileResult) error {
	sc := bufio.NewScanner(h.stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var err error
	for sc.Scan() {
		var r fileResult
		if derr := json.Unmarshal(sc.Bytes(), &r); derr != nil {
			err = fmt.Errorf("bad line from helper: %w", derr)
			break
		}
		out <- r
	}
	if err == nil {
		err = sc.Err()
	}
	if err != nil {
		io.Copy(io.Discard, h.stdout) // let the helper finish writing
	}
	return errors.Join(err, h.h.Wait())
}

// stopHelpers kills started helpers and waits for them (releasing their
// RAM).
func stopHelpers(hs []*helper) {
	for _, h := range hs {
		h.stdin.Close()
		h.h.Cmd.Process.Kill()
		h.h.Wait()
	}
}

// errHelperKilled says that a helper was killed by a signal.
var errHelperKilled = errors.New("helper killed by a signal")

// helperFailure sums up the helpers' errors: nil when all succeeded,
// errHelperKilled when one was killed by a signal.
func helperFailure(errs []error) error {
	for _, err := range errs {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == -1 {
			return errHelperKilled
		}
	}
	return errors.Join(errs...)
}

// runHelper is the helper mode: it reads a helperInput from in and writes
// one fileResult line per file to out.
func runHelper(in io.Reader, out io.Writer) error {
	var input helperInput
	dec := json.NewDecoder(in)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&input); err != nil {
		return fmt.Errorf("reading input: %w", err)
	}
	w := bufio.NewWriter(out)
	enc := json.NewEncoder(w)
	buf := make([]byte, 256<<10)
	for _, rel := range input.Files {
		r := fileResult{Path: rel}
		if strings.Contains("/"+rel+"/", "/../") {
			r.Error = "path leaves the tree"
		} else if sum, n, err := hashFile(filepath.Join(input.Dir, filepath.FromSlash(rel)), buf); err != nil {
			r.Error = err.Error()
		} else {
			r.SHA256, r.Size = sum, n
		}
		if err := enc.Encode(r); err != nil {
			return fmt.Errorf("writing result: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("writing results: %w", err)
	}
	return nil
}

// hashFile returns the SHA-256 of the file at path and its size.
func hashFile(path string, buf []byte) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, buf)
	if err != nil {
		return "", 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
