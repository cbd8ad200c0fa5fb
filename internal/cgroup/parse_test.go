package cgroup

import (
	"strings"
	"testing"
)

func TestParseStat(t *testing.T) {
	// Field 5 is pgrp, field 24 is rss; the name may hold spaces and ')'.
	line := "4242 (evil) name) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 555 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	st, pg, rss, ok := parseStat([]byte(line))
	if !ok || st != 'S' || pg != 4240 || rss != 2048 {
		t.Fatalf("parseStat = %c %d %d %v", st, pg, rss, ok)
	}
	for _, bad := range []string{"", "1 (x)", "1 (x) S 1", "1 (x) S 1 abc 0"} {
		if _, _, _, ok := parseStat([]byte(bad)); ok {
			t.Errorf("parseStat(%q) ok", bad)
		}
	}
}

func TestKeyValue(t *testing.T) {
	b := []byte("inactive_file_x 9\ntotal_inactive_file 7\ninactive_file 5\nlast 3")
	for key, want := range map[string]int64{"inactive_file": 5, "total_inactive_file": 7, "last": 3} {
		if v, ok := keyValue(b, key); !ok || v != want {
			t.Errorf("%s = %d, %v; want %d", key, v, ok, want)
		}
	}
	if _, ok := keyValue(b, "missing"); ok {
		t.Error("missing key found")
	}
	if _, ok := keyValue(b, "inactive"); ok {
		t.Error("prefix of a key matched")
	}
}

func TestParseInt(t *testing.T) {
	for in, want := range map[string]int64{"0\n": 0, " 42 \n": 42, "9223372036854771712\n": 9223372036854771712} {
		if v, err := parseInt([]byte(in)); err != nil || v != want {
			t.Errorf("parseInt(%q) = %d, %v", in, v, err)
		}
	}
	for _, in := range []string{"", "max", "-1", "1 2", "99999999999999999999"} {
		if _, err := parseInt([]byte(in)); err == nil {
			t.Errorf("parseInt(%q) succeeded", in)
		}
	}
}

func TestParentName(t *testing.T) {
	for host, want := range map[string]string{
		"worker-1.lab":  "taskselector-worker-1.lab",
		"a/b c":         "taskselector-a_2fb_20c",
		"under_score":   "taskselector-under_5fscore",
		"":              "taskselector-",
		"ÿ":             "taskselector-_c3_bf",
		"..":            "taskselector-..",
		"with\nnewline": "taskselector-with_0anewline",
	} {
		got := ParentName(host)
		if got != want {
			t.Errorf("ParentName(%q) = %q, want %q", host, got, want)
		}
		if err := ValidName(got); err != nil {
			t.Errorf("ParentName(%q) = %q is not valid: %v", host, got, err)
		}
	}
	long1, long2 := ParentName(strings.Repeat("h", 300)+"1"), ParentName(strings.Repeat("h", 300)+"2")
	if len(long1) > 255 || long1 == long2 || ValidName(long1) != nil {
		t.Errorf("long names: %q %q", long1, long2)
	}
}
