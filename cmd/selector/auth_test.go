package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

// TestConfigCredentials: the selector refuses bad credential settings at
// startup, naming the variable, without echoing the password.
func TestConfigCredentials(t *testing.T) {
	t.Setenv("NATS_URL", "nats://127.0.0.1:4222")
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"NATS_USER": "selector"}, "NATS_PASSWORD: want a password"},
		{map[string]string{"NATS_PASSWORD": "hunter2-secret"}, "NATS_USER: want a user name"},
		{map[string]string{"NATS_CREDS": "/nonexistent/selector.creds"}, `NATS_CREDS: want the path of a readable NATS creds file (a user JWT and its nkey seed), but "/nonexistent/selector.creds" does not exist`},
		{map[string]string{"NATS_TLS_CERT": "/nonexistent/c.pem"}, "NATS_TLS_KEY: want"},
		{map[string]string{"NATS_URL": "nats://selector:hunter2-secret@nats-1:4222", "NATS_USER": "selector", "NATS_PASSWORD": "other"},
			`NATS_URL: want a NATS URL without user information when NATS_CREDS, NATS_USER or NATS_NKEY_SEED is set, but "nats://nats-1:4222" carries some`},
	} {
		t.Run(tc.want, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := loadConfig()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("loadConfig() = %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2-secret") {
				t.Fatalf("the error shows the password: %v", err)
			}
		})
	}
	t.Setenv("NATS_URL", "")
	t.Setenv("NATS_USER", "selector")
	t.Setenv("NATS_PASSWORD", "hunter2-secret")
	if _, err := loadConfig(); err == nil || !strings.Contains(err.Error(), "NATS_URL: want a NATS URL when NATS credentials are set") {
		t.Fatalf("credentials without NATS_URL: loadConfig() = %v", err)
	}
	t.Setenv("NATS_URL", "nats://nats-1:4222")
	c, err := loadConfig()
	if err != nil || c.User != "selector" || c.Password != "hunter2-secret" {
		t.Fatalf("loadConfig() = %+v, %v", c.Auth, err)
	}
}

// TestRunDoesNotLogSecrets: a selector that cannot reach its server logs
// and returns errors that name the URL without the password in it.
func TestRunDoesNotLogSecrets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	t.Setenv("NATS_URL", "nats://selector:url-secret-1@"+addr)
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	err = run(ctx, cfg, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err == nil {
		t.Fatal("run connected to nothing")
	}
	out := logs.String() + err.Error()
	if !strings.Contains(out, addr) || !strings.Contains(out, "nats connect failed") {
		t.Fatalf("the logs and error do not show the failing address %s: %s", addr, out)
	}
	if strings.Contains(out, "url-secret-1") {
		t.Fatalf("the password shows in the logs or error: %s", out)
	}
}
