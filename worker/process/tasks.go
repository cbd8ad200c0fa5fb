package process

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/BurntSushi/toml"

	"github.com/taskselector/taskselector/schemas"
)

// DefaultKillGrace is the time between SIGTERM and SIGKILL when a tasks file
// entry gives no kill_grace.
const DefaultKillGrace = 5 * time.Second

// MaxKillGrace is the longest kill_grace a tasks file may give.
const MaxKillGrace = 10 * time.Minute

// entryForm describes an accepted [[task]] entry; every tasks file error ends
// with it.
const entryForm = `want [[task]] entries with type = "name" (unique, 1-256 bytes), ` +
	`command = ["/abs/path/or/name-in-PATH", "arg", ...], and optionally dir = "/abs/dir", ` +
	`env = { NAME = "value" } (names not starting with TASK_) and kill_grace = "5s"`

// TaskType is one entry of the tasks file: how to run a task type.
type TaskType struct {
	// Type is the task type a launch names.
	Type string
	// Path is the resolved absolute path of the program (argv[0] looked up
	// in PATH at load time when it was a bare name).
	Path string
	// Argv is the command as written: Argv[0] is the program as given, the
	// rest its fixed arguments.
	Argv []string
	// Dir is the working directory, or "" for the agent's own.
	Dir string
	// Env holds the entry's extra environment variables.
	Env map[string]string
	// KillGrace is the time between SIGTERM and SIGKILL.
	KillGrace time.Duration
}

// tasksFile is the TOML document. Its toml tags are the accepted keys; the
// JSON Schema (tasks.schema.json) must list the same ones.
type tasksFile struct {
	Task []taskEntry `toml:"task"`
}

// taskEntry is one [[task]] table as written.
type taskEntry struct {
	Type      *string           `toml:"type" required:"true"`
	Command   []string          `toml:"command" required:"true"`
	Dir       *string           `toml:"dir"`
	Env       map[string]string `toml:"env"`
	KillGrace *string           `toml:"kill_grace"`
}

// LoadTasks reads and checks the tasks file at path. Every problem is an error
// naming the file, the entry and the accepted form: unknown keys, a missing or
// duplicate type, an empty command, a command that is not an absolute path or
// a name found in PATH, a program that does not exist or cannot be run, a
// relative or missing dir, a bad env name and a bad kill_grace.
func LoadTasks(path string) (map[string]*TaskType, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tasks file %s: %w", path, err)
	}
	return parseTasks(path, string(data))
}

// parseTasks is LoadTasks on the file's text; name is used in errors.
func parseTasks(name, text string) (map[string]*TaskType, error) {
	fail := func(format string, a ...any) error {
		return fmt.Errorf("tasks file %s: %s; %s", name, fmt.Sprintf(format, a...), entryForm)
	}
	var doc tasksFile
	md, err := toml.Decode(text, &doc)
	if err != nil {
		return nil, fail("%v", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		sort.Strings(keys)
		return nil, fail("unknown keys %s", strings.Join(keys, ", "))
	}
	if len(doc.Task) == 0 {
		return nil, fail("no [[task]] entry")
	}
	types := make(map[string]*TaskType, len(doc.Task))
	for i, e := range doc.Task {
		where := fmt.Sprintf("entry %d", i+1)
		if e.Type != nil {
			where = fmt.Sprintf("entry %d (type %q)", i+1, *e.Type)
		}
		t, err := e.check()
		if err != nil {
			return nil, fail("%s: %v", where, err)
		}
		if _, dup := types[t.Type]; dup {
			return nil, fail("%s: duplicate type %q", where, t.Type)
		}
		types[t.Type] = t
	}
	return types, nil
}

// check validates one entry and resolves its program.
func (e *taskEntry) check() (*TaskType, error) {
	t := &TaskType{KillGrace: DefaultKillGrace}
	switch {
	case e.Type == nil:
		return nil, errors.New("type: missing")
	case *e.Type == "" || len(*e.Type) > schemas.MaxNameBytes || !utf8.ValidString(*e.Type):
		return nil, fmt.Errorf("type: %q is not 1-%d bytes of UTF-8", *e.Type, schemas.MaxNameBytes)
	}
	t.Type = *e.Type
	if e.Command == nil {
		return nil, errors.New("command: missing")
	}
	if len(e.Command) == 0 || e.Command[0] == "" {
		return nil, errors.New("command: empty argv")
	}
	for i, a := range e.Command {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, fmt.Errorf("command[%d]: contains a NUL byte", i)
		}
	}
	t.Argv = append([]string(nil), e.Command...)
	prog := e.Command[0]
	switch {
	case filepath.IsAbs(prog):
		t.Path = filepath.Clean(prog)
	case strings.ContainsRune(prog, '/'):
		return nil, fmt.Errorf("command: %q is a relative path, not an absolute path or a bare name looked up in PATH", prog)
	default:
		p, err := exec.LookPath(prog)
		if err != nil {
			return nil, fmt.Errorf("command: %q not found in PATH: %w", prog, err)
		}
		if p, err = filepath.Abs(p); err != nil {
			return nil, fmt.Errorf("command: %q: %w", prog, err)
		}
		t.Path = p
	}
	fi, err := os.Stat(t.Path)
	switch {
	case err != nil:
		return nil, fmt.Errorf("command: %w", err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("command: %s is not a regular file", t.Path)
	case fi.Mode().Perm()&0o111 == 0:
		return nil, fmt.Errorf("command: %s is not executable", t.Path)
	}
	if e.Dir != nil {
		d := *e.Dir
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("dir: %q is not an absolute path", d)
		}
		fi, err := os.Stat(d)
		if err != nil {
			return nil, fmt.Errorf("dir: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("dir: %s is not a directory", d)
		}
		t.Dir = filepath.Clean(d)
	}
	if len(e.Env) > 0 {
		t.Env = make(map[string]string, len(e.Env))
		for k, v := range e.Env {
			if !validEnvName(k) {
				return nil, fmt.Errorf("env: %q is not a variable name (letters, digits and _, not starting with a digit)", k)
			}
			if strings.HasPrefix(k, "TASK_") {
				return nil, fmt.Errorf("env: %s: names starting with TASK_ are set by the agent", k)
			}
			if strings.IndexByte(v, 0) >= 0 {
				return nil, fmt.Errorf("env: %s: value contains a NUL byte", k)
			}
			t.Env[k] = v
		}
	}
	if e.KillGrace != nil {
		d, err := time.ParseDuration(*e.KillGrace)
		if err != nil || d <= 0 || d > MaxKillGrace {
			return nil, fmt.Errorf("kill_grace: %q is not a positive duration of at most %s such as \"5s\"", *e.KillGrace, MaxKillGrace)
		}
		t.KillGrace = d
	}
	return t, nil
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		ok := r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9'
		if !ok {
			return false
		}
	}
	return true
}
