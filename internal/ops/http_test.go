package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// get fetches url and returns the status code and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

func TestHandlerEndpoints(t *testing.T) {
	src := &fakeSource{st: schemas.SelectorStatus{V: schemas.Version, Connected: true, Recovering: true, LaunchesStopped: "recovery grace"}}
	srv := httptest.NewServer(Handler(src, NewRegistry(src, nil)))
	t.Cleanup(srv.Close)

	if code, body := get(t, srv.URL+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || body != "not ready: recovery grace\n" {
		t.Fatalf("/readyz while recovering = %d %q", code, body)
	}
	src.set(schemas.SelectorStatus{V: schemas.Version, Degraded: true, DegradedReason: "most hosts stale"})
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "most hosts stale") {
		t.Fatalf("/readyz with only a degraded reason = %d %q", code, body)
	}
	src.set(schemas.SelectorStatus{V: schemas.Version})
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || body != "not ready: starting\n" {
		t.Fatalf("/readyz with no reason = %d %q", code, body)
	}

	src.set(sampleStatus())
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusOK || body != "ready\n" {
		t.Fatalf("/readyz when ready = %d %q", code, body)
	}
	code, body := get(t, srv.URL+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d %q", code, body)
	}
	for _, want := range []string{"\ntaskselector_ready 1\n", `taskselector_targets{state="active"} 2`, "\ngo_goroutines ", "\nprocess_cpu_seconds_total "} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	const want = `
# HELP taskselector_hosts Hosts by state: live, stale (no recent status) or lost.
# TYPE taskselector_hosts gauge
taskselector_hosts{state="live"} 1
taskselector_hosts{state="lost"} 1
taskselector_hosts{state="stale"} 1
`
	if err := testutil.ScrapeAndCompare(srv.URL+"/metrics", strings.NewReader(want), "taskselector_hosts"); err != nil {
		t.Fatal(err)
	}

	resp, err := http.Post(srv.URL+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /healthz = %d, want 405", resp.StatusCode)
	}
	if code, _ := get(t, srv.URL+"/nothing"); code != http.StatusNotFound {
		t.Fatalf("/nothing = %d, want 404", code)
	}
}

func TestServeShutsDownWithContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{st: sampleStatus()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, Handler(src, NewRegistry(src, nil)), natstest.Log("OPS_TEST_LOG")) }()

	url := "http://" + ln.Addr().String()
	if code, _ := get(t, url+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d", code)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel: %v", err)
		}
	case <-time.After(ShutdownTimeout + 5*time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Fatal("listener still accepts after shutdown")
	}
}

func TestServeReportsAListenerFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // Serve's Accept fails at once
	src := &fakeSource{}
	err = Serve(context.Background(), ln, Handler(src, NewRegistry(src, nil)), natstest.Log("OPS_TEST_LOG"))
	if err == nil || errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve on a closed listener = %v, want an error", err)
	}
}

// TestEndpointsOnARealService runs a SelectorService on an embedded NATS
// server and reads it through the endpoints.
func TestEndpointsOnARealService(t *testing.T) {
	s := natstest.Server(t)
	log := natstest.Log("OPS_TEST_LOG")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := natsconn.Connect(ctx, s.ClientURL(), t.Name(), log, nil, nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	svc := bus.NewSelectorService(nc, bus.ServiceConfig{
		Engine: selector.Config{RecoveryGrace: 100 * time.Millisecond},
		Tick:   10 * time.Millisecond,
	}, log)
	reg := NewRegistry(svc, natsconn.StatsOf(nc))
	srv := httptest.NewServer(Handler(svc, reg))
	t.Cleanup(srv.Close)

	// Before Run, the service is not ready and says why.
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: ") {
		t.Fatalf("/readyz before Run = %d %q", code, body)
	}

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("service did not stop in time")
		}
	})
	select {
	case <-svc.Ready():
	case err := <-done:
		t.Fatalf("service stopped before ready: %v", err)
	case <-ctx.Done():
		t.Fatal("service not ready in time")
	}

	// Ready once the recovery grace has passed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get(t, srv.URL+"/readyz")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still %d %q after 10s", code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}

	want := fmt.Sprintf(`
# HELP taskselector_ready 1 when the selector is connected and past its recovery grace.
# TYPE taskselector_ready gauge
taskselector_ready 1
# HELP taskselector_connected 1 when the selector is connected to NATS.
# TYPE taskselector_connected gauge
taskselector_connected 1
# HELP taskselector_nats_disconnects_total NATS connection losses.
# TYPE taskselector_nats_disconnects_total counter
taskselector_nats_disconnects_total 0
# HELP taskselector_restart_to_ready_seconds Time the last start took to rebuild state and subscribe (0 before that).
# TYPE taskselector_restart_to_ready_seconds gauge
taskselector_restart_to_ready_seconds %g
`, svc.RestartToReady().Seconds())
	if svc.RestartToReady() <= 0 {
		t.Fatalf("RestartToReady = %v after ready", svc.RestartToReady())
	}
	if err := testutil.ScrapeAndCompare(srv.URL+"/metrics", strings.NewReader(want),
		"taskselector_ready", "taskselector_connected", "taskselector_nats_disconnects_total",
		"taskselector_restart_to_ready_seconds"); err != nil {
		t.Fatal(err)
	}
}

// TestReadyzRoles: only the leader is ready on /readyz; a warm standby is
// ready on /readyz?role=any, a standby still loading is not, and the leader
// and role gauges follow the status.
func TestReadyzRoles(t *testing.T) {
	src := &fakeSource{st: schemas.SelectorStatus{V: schemas.Version, Connected: true, Role: schemas.RoleStandby, Recovering: true, LaunchesStopped: "standby", Leader: "sel-a", Term: 7}}
	srv := httptest.NewServer(Handler(src, NewRegistry(src, nil)))
	t.Cleanup(srv.Close)

	if code, _ := get(t, srv.URL+"/readyz?role=any"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz?role=any of a loading standby = %d, want 503", code)
	}
	st := src.Status()
	st.Recovering = false
	src.set(st)
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || body != "not ready: standby\n" {
		t.Fatalf("/readyz of a standby = %d %q", code, body)
	}
	if code, body := get(t, srv.URL+"/readyz?role=any"); code != http.StatusOK || body != "standby\n" {
		t.Fatalf("/readyz?role=any of a warm standby = %d %q", code, body)
	}
	const standby = `
# HELP taskselector_leader With a leader lease: 1 while this selector leads, 0 while it stands by (absent without a lease).
# TYPE taskselector_leader gauge
taskselector_leader 0
# HELP taskselector_leader_term With a leader lease: the term of the lease as this selector last saw it held (0: none).
# TYPE taskselector_leader_term gauge
taskselector_leader_term 7
`
	if err := testutil.ScrapeAndCompare(srv.URL+"/metrics", strings.NewReader(standby), "taskselector_leader", "taskselector_leader_term"); err != nil {
		t.Fatal(err)
	}

	lead := sampleStatus()
	lead.Role, lead.Leader, lead.Term = schemas.RoleLeader, "sel-b", 9
	src.set(lead)
	for _, u := range []string{"/readyz", "/readyz?role=any"} {
		if code, body := get(t, srv.URL+u); code != http.StatusOK || body != "ready\n" {
			t.Fatalf("%s of the leader = %d %q", u, code, body)
		}
	}
	if err := testutil.ScrapeAndCompare(srv.URL+"/metrics", strings.NewReader(`
# HELP taskselector_leader With a leader lease: 1 while this selector leads, 0 while it stands by (absent without a lease).
# TYPE taskselector_leader gauge
taskselector_leader 1
`), "taskselector_leader"); err != nil {
		t.Fatal(err)
	}
}
