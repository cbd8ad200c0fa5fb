package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/taskselector/taskselector/internal/natstest"
)

func testConfig(t *testing.T, natsURL string) config {
	t.Helper()
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	c.NATSURL = natsURL
	c.RecoveryGrace = 100 * time.Millisecond
	c.Tick = 10 * time.Millisecond
	return c
}

// TestRunServesOperatorEndpoints runs the selector against an embedded NATS
// server with SELECTOR_HTTP_LISTEN set and reads its endpoints.
func TestRunServesOperatorEndpoints(t *testing.T) {
	s := natstest.Server(t)
	cfg := testConfig(t, s.ClientURL())
	cfg.HTTPListen = fmt.Sprintf("127.0.0.1:%d", natstest.FreePort(t))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, natstest.Log("SELECTOR_TEST_LOG")) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("run did not return after cancel")
		}
	})

	base := "http://" + cfg.HTTPListen
	client := &http.Client{Timeout: 2 * time.Second}
	fetch := func(path string) (int, string, error) {
		resp, err := client.Get(base + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	// /readyz turns 200 once the service is up and past its grace.
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body, err := fetch("/readyz")
		if err == nil && code == http.StatusOK {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not 200 after 15s: %d %q %v", code, body, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, body, err := fetch("/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("/healthz = %d %q %v", code, body, err)
	}
	code, body, err := fetch("/metrics")
	if err != nil || code != http.StatusOK || !strings.Contains(body, "\ntaskselector_ready 1\n") ||
		!strings.Contains(body, "\ntaskselector_nats_reconnects_total 0\n") {
		t.Fatalf("/metrics = %d %v:\n%s", code, err, body)
	}

	// Cancelling ctx stops run and closes the endpoints.
	cancel()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("run: %v", err)
		}
		done <- nil // for the cleanup
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if c, err := net.DialTimeout("tcp", cfg.HTTPListen, time.Second); err == nil {
		c.Close()
		t.Fatal("operator endpoints still accept connections after run returned")
	}
}

// TestRunHTTPListenInUse: a port that cannot be bound stops startup with an
// error that names the variable, before NATS is touched.
func TestRunHTTPListenInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := testConfig(t, "nats://127.0.0.1:1") // never reached
	cfg.HTTPListen = ln.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = run(ctx, cfg, natstest.Log("SELECTOR_TEST_LOG"))
	if err == nil || !strings.Contains(err.Error(), "SELECTOR_HTTP_LISTEN") {
		t.Fatalf("run with the port in use = %v, want an error naming SELECTOR_HTTP_LISTEN", err)
	}
	if ctx.Err() != nil {
		t.Fatal("run waited for NATS before failing")
	}
}
