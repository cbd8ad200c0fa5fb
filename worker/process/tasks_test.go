package process

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func TestParseTasks(t *testing.T) {
	dir := t.TempDir()
	good := fmt.Sprintf(`
[[task]]
type = "a"
command = ["sh", "-c", "true"]
dir = %q
env = { FOO = "bar" }
kill_grace = "2s"

[[task]]
type = "b"
command = ["/bin/sh"]
`, dir)
	types, err := parseTasks("good.toml", good)
	if err != nil {
		t.Fatal(err)
	}
	a := types["a"]
	if a == nil || !filepath.IsAbs(a.Path) || a.Dir != dir || a.Env["FOO"] != "bar" || a.KillGrace != 2*time.Second {
		t.Fatalf("a: %+v", a)
	}
	if b := types["b"]; b == nil || b.KillGrace != DefaultKillGrace || b.Path != "/bin/sh" {
		t.Fatalf("b: %+v", b)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := map[string]string{
		"unknown key":      "[[task]]\ntype = \"a\"\ncommand = [\"sh\"]\nuser = \"root\"\n",
		"unknown table":    "[[task]]\ntype = \"a\"\ncommand = [\"sh\"]\n[other]\nx = 1\n",
		"duplicate type":   "[[task]]\ntype = \"a\"\ncommand = [\"sh\"]\n[[task]]\ntype = \"a\"\ncommand = [\"sh\"]\n",
		"empty argv":       "[[task]]\ntype = \"a\"\ncommand = []\n",
		"missing command":  "[[task]]\ntype = \"a\"\n",
		"missing type":     "[[task]]\ncommand = [\"sh\"]\n",
		"no such command":  "[[task]]\ntype = \"a\"\ncommand = [\"/nonexistent/prog\"]\n",
		"not in PATH":      "[[task]]\ntype = \"a\"\ncommand = [\"no-such-prog-xyz\"]\n",
		"relative path":    "[[task]]\ntype = \"a\"\ncommand = [\"./prog\"]\n",
		"not executable":   "[[task]]\ntype = \"a\"\ncommand = [\"" + plain + "\"]\n",
		"relative dir":     "[[task]]\ntype = \"a\"\ncommand = [\"sh\"]\ndir = \"tmp\"\n",
		"reserved env":     "[[task]]\ntype = \"a\"\ncommand = [\"sh\"]\nenv = { TASK_ID = \"x\" }\n",
		"bad kill_grace":   "[[task]]\ntype = \"a\"\ncommand = [\"sh\"]\nkill_grace = \"-1s\"\n",
		"grace not string": "[[task]]\ntype = \"a\"\ncommand = [\"sh\"]\nkill_grace = 5\n",
		"no entries":       "",
		"syntax":           "[[task]\n",
	}
	for name, text := range bad {
		_, err := parseTasks("bad.toml", text)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "bad.toml") || !strings.Contains(msg, "want [[task]] entries") {
			t.Errorf("%s: error %q does not name the file and the accepted form", name, msg)
		}
	}
	if _, err := LoadTasks(filepath.Join(dir, "missing.toml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// schemaNode is the part of JSON Schema tasks.schema.json uses.
type schemaNode struct {
	Type                 string                 `json:"type"`
	Required             []string               `json:"required"`
	Properties           map[string]*schemaNode `json:"properties"`
	AdditionalProperties json.RawMessage        `json:"additionalProperties"`
	Items                *schemaNode            `json:"items"`
	MinItems             int                    `json:"minItems"`
	MinLength            int                    `json:"minLength"`
	Pattern              string                 `json:"pattern"`
}

func loadSchema(t *testing.T) *schemaNode {
	t.Helper()
	b, err := os.ReadFile("tasks.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var s schemaNode
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

// tomlKeys lists the toml keys of struct type typ and those tagged required.
func tomlKeys(typ reflect.Type) (keys, required []string) {
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		k := f.Tag.Get("toml")
		keys = append(keys, k)
		if f.Tag.Get("required") == "true" {
			required = append(required, k)
		}
	}
	sort.Strings(keys)
	sort.Strings(required)
	return keys, required
}

func sortedKeys(m map[string]*schemaNode) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestSchemaMatchesParser fails when the JSON Schema and the Go parser
// disagree on the keys of the file or of an entry, or on which are required,
// or when one of them accepts unknown keys.
func TestSchemaMatchesParser(t *testing.T) {
	s := loadSchema(t)
	fileKeys, _ := tomlKeys(reflect.TypeOf(tasksFile{}))
	if got := sortedKeys(s.Properties); !reflect.DeepEqual(got, fileKeys) {
		t.Errorf("schema top-level keys %v, parser %v", got, fileKeys)
	}
	if string(s.AdditionalProperties) != "false" || !reflect.DeepEqual(s.Required, []string{"task"}) {
		t.Errorf("schema top level must be closed and require task")
	}
	entry := s.Properties["task"].Items
	keys, required := tomlKeys(reflect.TypeOf(taskEntry{}))
	if got := sortedKeys(entry.Properties); !reflect.DeepEqual(got, keys) {
		t.Errorf("schema entry keys %v, parser %v", got, keys)
	}
	req := append([]string(nil), entry.Required...)
	sort.Strings(req)
	if !reflect.DeepEqual(req, required) {
		t.Errorf("schema required %v, parser required %v", req, required)
	}
	if string(entry.AdditionalProperties) != "false" {
		t.Errorf("schema entries must refuse unknown keys, as the parser does")
	}
	// The parser really requires what it says it requires.
	for _, k := range required {
		doc := map[string]any{"type": "x", "command": []string{"/bin/sh"}}
		delete(doc, k)
		if _, err := parseTasks("t.toml", tomlEntry(t, doc)); err == nil || !strings.Contains(err.Error(), k+": missing") {
			t.Errorf("parser accepts an entry without %s: %v", k, err)
		}
	}
}

func tomlEntry(t *testing.T, entry map[string]any) string {
	t.Helper()
	var b strings.Builder
	if err := toml.NewEncoder(&b).Encode(map[string]any{"task": []map[string]any{entry}}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// validate checks v (decoded TOML) against the schema subset in use.
func validate(s *schemaNode, v any, path string) []string {
	var errs []string
	switch s.Type {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return []string{path + ": not an object"}
		}
		for _, r := range s.Required {
			if _, ok := m[r]; !ok {
				errs = append(errs, path+"."+r+": missing")
			}
		}
		for k, e := range m {
			if p, ok := s.Properties[k]; ok {
				errs = append(errs, validate(p, e, path+"."+k)...)
			} else if string(s.AdditionalProperties) == "false" {
				errs = append(errs, path+"."+k+": unknown key")
			}
		}
	case "array":
		var items []any
		switch a := v.(type) {
		case []any:
			items = a
		case []map[string]any:
			for _, e := range a {
				items = append(items, e)
			}
		default:
			return []string{path + ": not an array"}
		}
		if len(items) < s.MinItems {
			errs = append(errs, path+": too few items")
		}
		for i, e := range items {
			errs = append(errs, validate(s.Items, e, fmt.Sprintf("%s[%d]", path, i))...)
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return []string{path + ": not a string"}
		}
		if len(str) < s.MinLength {
			errs = append(errs, path+": too short")
		}
		if s.Pattern != "" && !regexp.MustCompile(s.Pattern).MatchString(str) {
			errs = append(errs, path+": does not match "+s.Pattern)
		}
	}
	return errs
}

// TestExampleTasksFileMatchesSchema validates the shipped example tasks file
// (and a sample entry using every key) against the schema, and checks that
// the parser reads the same structure.
func TestExampleTasksFileMatchesSchema(t *testing.T) {
	s := loadSchema(t)
	docs := map[string]string{"every key": tomlEntry(t, map[string]any{
		"type": "x", "command": []string{"/bin/sh", "-c", "true"}, "dir": "/", "env": map[string]string{"A": "b"}, "kill_grace": "1m30s",
	})}
	if b, err := os.ReadFile("../../examples/tasks.toml"); err == nil {
		docs["examples/tasks.toml"] = string(b)
	} else {
		t.Logf("examples/tasks.toml not found (%v); checking the sample entry only", err)
	}
	for name, text := range docs {
		var doc map[string]any
		if _, err := toml.Decode(text, &doc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if errs := validate(s, doc, "$"); len(errs) > 0 {
			t.Errorf("%s does not match the schema: %v", name, errs)
		}
		// Structure only: the example's programs need not be built here.
		var f tasksFile
		md, err := toml.Decode(text, &f)
		if err != nil || len(md.Undecoded()) > 0 {
			t.Errorf("%s: parser structure: %v, unknown keys %v", name, err, md.Undecoded())
		}
		for i, e := range f.Task {
			if e.Type == nil || len(e.Command) == 0 {
				t.Errorf("%s: entry %d lacks type or command", name, i+1)
			}
		}
	}
}
