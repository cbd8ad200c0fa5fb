package natsperm

import (
	"slices"
	"strings"
	"testing"

	"github.com/taskselector/taskselector/protocol"
)

// TestWorkerOnlyItsHost: every subject a worker may use names its own host
// (or is the shared alloc request subject, or service discovery), and none
// is a wildcard over hosts.
func TestWorkerOnlyItsHost(t *testing.T) {
	for _, host := range []string{"w1", "a.b", "*", ">", "ホスト"} {
		p := Worker("tasks", host)
		tok := protocol.EncodeName(host)
		for _, s := range slices.Concat(p.Publish, p.Subscribe) {
			switch {
			case s == "tasks.alloc", s == "$SRV.>":
			case strings.Contains(s, "."+tok+".") || strings.HasSuffix(s, "."+tok):
			default:
				t.Errorf("worker %q may use %q, which is not its own host's", host, s)
			}
			if strings.HasPrefix(s, "tasks.") && strings.Count(s, "*") > 0 {
				t.Errorf("worker %q: wildcard subject %q", host, s)
			}
		}
		for _, s := range p.Publish {
			if strings.HasPrefix(s, "$JS.") || strings.HasPrefix(s, "$KV.") {
				t.Errorf("worker %q may publish to %q", host, s)
			}
		}
	}
}

func TestUsers(t *testing.T) {
	users, err := Users("", []string{"w-1", "x=y"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range users {
		names = append(names, u.Name+"/"+u.PasswordVar)
	}
	want := []string{"selector/TS_SELECTOR_PASSWORD", "operator/TS_OPERATOR_PASSWORD",
		"worker-w-1/TS_WORKER_PASSWORD_w_1", "worker-=eD15/TS_WORKER_PASSWORD__eD15"}
	if !slices.Equal(names, want) {
		t.Fatalf("users %v, want %v", names, want)
	}
	for _, bad := range [][]string{{"a-b", "a_b"}, {""}, {"h", "h"}} {
		if _, err := Users("tasks", bad); err == nil {
			t.Errorf("Users(%q) accepted", bad)
		}
	}
}

// TestOperatorCannotCommand: an operator cannot send commands to workers,
// write the tasks bucket or delete JetStream state.
func TestOperatorCannotCommand(t *testing.T) {
	for _, s := range Operator("tasks").Publish {
		for _, bad := range []string{"tasks.launch", "tasks.kill", "tasks.ps", "tasks.helper", "$KV.tasks", "DELETE", "PURGE", "$JS.API.>"} {
			if strings.Contains(s, bad) {
				t.Errorf("operator may publish to %q", s)
			}
		}
	}
}
