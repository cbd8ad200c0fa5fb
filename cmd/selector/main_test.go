package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
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

// TestRunTwoSelectors: two selectors on one NATS server, as run starts them:
// the first leads (/readyz 200), the second stands by (/readyz 503,
// /readyz?role=any 200, taskselector_leader 0). A graceful stop of the
// leader releases the lease and the standby leads at once.
func TestRunTwoSelectors(t *testing.T) {
	s := natstest.Server(t)
	type proc struct {
		base   string
		cancel context.CancelFunc
		done   chan error
	}
	client := &http.Client{Timeout: 2 * time.Second}
	fetch := func(url string) (int, string) {
		resp, err := client.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitCode := func(url string, want int) string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			code, body := fetch(url)
			if code == want {
				return body
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s = %d %q, want %d", url, code, body, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	start := func(id string) *proc {
		cfg := testConfig(t, s.ClientURL())
		cfg.HTTPListen = fmt.Sprintf("127.0.0.1:%d", natstest.FreePort(t))
		cfg.ID = id
		cfg.LeaseTTL, cfg.LeaseRenew = 2*time.Second, 200*time.Millisecond
		ctx, cancel := context.WithCancel(context.Background())
		p := &proc{base: "http://" + cfg.HTTPListen, cancel: cancel, done: make(chan error, 1)}
		go func() { p.done <- run(ctx, cfg, natstest.Log("SELECTOR_TEST_LOG")) }()
		t.Cleanup(func() {
			cancel()
			select {
			case <-p.done:
			case <-time.After(20 * time.Second):
				t.Errorf("%s: run did not return after cancel", id)
			}
		})
		return p
	}
	a := start("sel-a")
	waitCode(a.base+"/readyz", http.StatusOK)
	b := start("sel-b")
	waitCode(b.base+"/readyz?role=any", http.StatusOK)
	if code, body := fetch(b.base + "/readyz"); code != http.StatusServiceUnavailable || body != "not ready: standby\n" {
		t.Fatalf("standby /readyz = %d %q", code, body)
	}
	if _, body := fetch(b.base + "/metrics"); !strings.Contains(body, "\ntaskselector_leader 0\n") {
		t.Fatalf("standby metrics lack taskselector_leader 0:\n%s", body)
	}
	if _, body := fetch(a.base + "/metrics"); !strings.Contains(body, "\ntaskselector_leader 1\n") ||
		!strings.Contains(body, "\ntaskselector_leader_takeovers_total 1\n") {
		t.Fatalf("leader metrics lack taskselector_leader 1 and one takeover")
	}

	// Only the leader serves tasks.alloc (a queue group): a standby in it
	// would take its share of the requests only to refuse them.
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	waitAllocServers(t, nc, 2, 1)

	stopped := time.Now()
	a.cancel()
	if err := <-a.done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("sel-a run: %v", err)
	}
	a.done <- nil
	waitCode(b.base+"/readyz", http.StatusOK)
	t.Logf("standby ready %v after the leader's graceful stop", time.Since(stopped).Round(time.Millisecond))
	waitAllocServers(t, nc, 1, 1)
}

// waitAllocServers waits until $SRV.INFO finds instances instances of the
// selector's micro service, withAlloc of them listing the alloc endpoint.
func waitAllocServers(t *testing.T, nc *nats.Conn, instances, withAlloc int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, alloc := allocServers(t, nc)
		if n == instances && alloc == withAlloc {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d selector instances, %d serving alloc; want %d and %d", n, alloc, instances, withAlloc)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// allocServers asks every instance of the selector's micro service for its
// info, and counts the instances and those serving the alloc endpoint.
func allocServers(t *testing.T, nc *nats.Conn) (instances, withAlloc int) {
	t.Helper()
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest("$SRV.INFO."+protocol.SelectorService, inbox, nil); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := sub.NextMsg(300 * time.Millisecond)
		if err != nil {
			return instances, withAlloc
		}
		var info micro.Info
		if err := json.Unmarshal(msg.Data, &info); err != nil {
			t.Fatalf("decode $SRV.INFO reply: %v", err)
		}
		instances++
		for _, ep := range info.Endpoints {
			if ep.Name == protocol.EndpointAlloc {
				withAlloc++
			}
		}
	}
}
