package netproxy_test

import (
	"sync"
	"testing"
	"time"

	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/internal/netproxy"
)

// TestProxyStallResumeAndTap: messages pass; while stalled nothing does
// and nothing is lost; the tap sees every message a client publishes.
func TestProxyStallResumeAndTap(t *testing.T) {
	srv := natstest.Server(t)
	var mu sync.Mutex
	var tapped []string
	p, err := netproxy.New(srv.Addr().String(), netproxy.Options{Tap: func(subject string, _ []byte) {
		mu.Lock()
		tapped = append(tapped, subject)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	through := natstest.Conn(t, p.URL())
	direct := natstest.Conn(t, srv.ClientURL())
	sub, err := direct.SubscribeSync("proxy.test")
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := through.Publish("proxy.test", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	p.Stall()
	_ = through.Publish("proxy.test", []byte("2")) // goes nowhere while stalled
	if m, err := sub.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("a stalled proxy forwarded %q", m.Data)
	}
	p.Resume()
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "2" {
		t.Fatalf("after resume: %v %v, want the held message", m, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(tapped) != 2 || tapped[0] != "proxy.test" {
		t.Errorf("tapped %q", tapped)
	}
}
