package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/taskselector/taskselector/internal/natsperm"
	"github.com/taskselector/taskselector/protocol"
)

// TestCommittedAccountsUpToDate: deploy/nats/accounts.conf is exactly what
// the command its header names writes, so the permissions tested through
// internal/natsperm are the committed ones.
func TestCommittedAccountsUpToDate(t *testing.T) {
	path := filepath.Join("..", "..", "deploy", "nats", "accounts.conf")
	committed, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run([]string{"-host", "home", "-host", "w16", "-host", "w32"}, &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), committed) {
		t.Fatalf("%s differs from the generator's output; run: go run ./cmd/natsusers -host home -host w16 -host w32 > deploy/nats/accounts.conf", path)
	}
}

// TestRunHostNamesAreData: any host name gets a user, permissions on its
// encoded token only, and a header that reproduces the command.
func TestRunHostNamesAreData(t *testing.T) {
	var out bytes.Buffer
	host := `it's a.b "host"`
	if err := run([]string{"-prefix", "p.q", "-host", host}, &out); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	tok := protocol.EncodeName(host)
	for _, want := range []string{
		`-prefix p.q -host 'it'\''s a.b "host"'`,
		`user: "worker-` + tok + `"`,
		`"p.q.launch.` + tok + `"`,
		"password: $" + natsperm.WorkerPasswordVar(host),
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %s:\n%s", want, s)
		}
	}
	if err := run([]string{"-host", "a-b", "-host", "a_b"}, &out); err == nil {
		t.Fatal("hosts sharing a password variable accepted")
	}
	if err := run([]string{"stray"}, &out); err == nil {
		t.Fatal("a stray argument accepted")
	}
}
