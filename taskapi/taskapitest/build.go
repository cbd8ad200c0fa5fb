package taskapitest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Build compiles the main package in pkgDir (such as "." for the package
// under test) into t.TempDir() with "go build" and returns the binary's
// path. It skips the test when no go command is found.
func Build(t testing.TB, pkgDir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("taskapitest: no go command to build %s: %v", pkgDir, err)
	}
	abs, err := filepath.Abs(pkgDir)
	if err != nil {
		t.Fatalf("taskapitest: %v", err)
	}
	bin := filepath.Join(t.TempDir(), filepath.Base(abs))
	cmd := exec.Command(goBin, "build", "-o", bin, ".")
	cmd.Dir = abs
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("taskapitest: go build %s: %v\n%s", pkgDir, err, out)
	}
	return bin
}

// Command returns a command that runs the task program bin as the exec
// executor would: with the task's environment (Env) plus PATH and HOME,
// its stdout and stderr going to the test's log.
func Command(t testing.TB, bin string, id Identity, socket, token string) *exec.Cmd {
	cmd := exec.Command(bin)
	cmd.Env = append(Env(id, socket, token), "PATH="+os.Getenv("PATH"), "HOME="+os.Getenv("HOME"))
	w := logWriter{t}
	cmd.Stdout, cmd.Stderr = w, w
	return cmd
}

// logWriter writes to a test's log.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Logf("%s", p)
	return len(p), nil
}
