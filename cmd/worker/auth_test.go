package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/protocol"
)

// lockedBuffer is a bytes.Buffer for a logger and a reader at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRunWithCredentials: the agent connects with NATS_USER and
// NATS_PASSWORD to a server that requires them, serves, and logs neither
// the password nor the one in its URL.
func TestRunWithCredentials(t *testing.T) {
	const pw = "worker-secret-3"
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		Users: []*server.User{{Username: "worker-h1", Password: pw}, {Username: "spy", Password: "spy"}}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	spy, err := nats.Connect(srv.ClientURL(), nats.UserInfo("spy", "spy"))
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	for _, tc := range []struct {
		name, url, user, describe string
	}{
		{"NATS_USER and NATS_PASSWORD", srv.ClientURL(), "worker-h1", "user worker-h1 with a password"},
		{"credentials in NATS_URL", strings.Replace(srv.ClientURL(), "nats://", "nats://worker-h1:"+pw+"@", 1), "", "no credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"WORKER_HOST": "h1", "WORKER_RAM_MIB": "4096", "NATS_URL": tc.url,
				"WORKER_HEARTBEAT_INTERVAL": "20ms", "WORKER_LOG_LEVEL": "debug"}
			if tc.user != "" {
				env["NATS_USER"], env["NATS_PASSWORD"] = tc.user, pw
			}
			runWorkerUntilHostStatus(t, env, spy, tc.describe, pw)
		})
	}
}

// runWorkerUntilHostStatus runs the agent with env until spy sees a host
// status from it, stops it, and checks its logs: they describe the
// credentials as describe and never show secret.
func runWorkerUntilHostStatus(t *testing.T, env map[string]string, spy *nats.Conn, describe, secret string) {
	t.Helper()
	hosts, err := spy.SubscribeSync(protocol.NewSubjects("").Host("h1"))
	if err != nil {
		t.Fatal(err)
	}
	defer hosts.Unsubscribe()
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	setEnv(t, env)
	t.Setenv("NATS_USER", env["NATS_USER"])
	t.Setenv("NATS_PASSWORD", env["NATS_PASSWORD"])
	logs := &lockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, logs) }()
	if _, err := hosts.NextMsg(10 * time.Second); err != nil {
		t.Fatalf("no host status from the agent: %v; logs: %s", err, logs.String())
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop")
	}
	out := logs.String()
	if !strings.Contains(out, `auth="`+describe+`"`) {
		t.Fatalf("the logs do not describe the credentials as %q: %s", describe, out)
	}
	if strings.Contains(out, secret) {
		t.Fatalf("the password shows in the logs: %s", out)
	}
}
