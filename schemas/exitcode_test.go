package schemas

import (
	"strings"
	"testing"
)

// TestTaskEventExitCodeAndHostMemory: the fields of real processes decode,
// round-trip, and are checked against their schema bounds.
func TestTaskEventExitCodeAndHostMemory(t *testing.T) {
	const ev = `{"v":1,"task_id":"t#1.a","epoch":1,"pid":42,"host":"h","target":"t","type":"build","kind":"failed","reason":"exited","exit_code":%s,"at":"2026-01-01T00:00:00Z"}`
	got, err := DecodeTaskEvent([]byte(strings.Replace(ev, "%s", "3", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if got.ExitCode == nil || *got.ExitCode != 3 {
		t.Fatalf("exit code %v, want 3", got.ExitCode)
	}
	data, err := Marshal(&got)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"exit_code":3`) {
		t.Errorf("encoded %s", data)
	}
	for _, bad := range []string{"-1", "256", "1.5", `"3"`} {
		if _, err := DecodeTaskEvent([]byte(strings.Replace(ev, "%s", bad, 1))); err == nil {
			t.Errorf("exit_code %s accepted", bad)
		}
	}
	hs, err := DecodeHostStatus([]byte(`{"v":1,"host":"h","ram":{"total_mib":1024,"used_mib":0,"free_mib":1024},"tasks":[],"draining":false,"memory":"cgroup1","sent_at":"2026-01-01T00:00:00Z"}`))
	if err != nil {
		t.Fatal(err)
	}
	if hs.Memory != "cgroup1" {
		t.Errorf("memory %q", hs.Memory)
	}
}
