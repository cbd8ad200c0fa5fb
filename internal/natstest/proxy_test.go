package natstest

import (
	"bytes"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// echoServer accepts connections on the loopback and echoes what they send.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// readWithin reads exactly len(want) bytes from c within d.
func readWithin(c net.Conn, n int, d time.Duration) ([]byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, n)
	_, err := io.ReadFull(c, buf)
	return buf, err
}

func TestProxyStallResumeCut(t *testing.T) {
	p := NewProxy(t, echoServer(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if got, err := readWithin(c, 4, 5*time.Second); err != nil || string(got) != "ping" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}

	// Stalled: the connection stays open, but nothing comes back.
	p.Stall()
	p.Stall() // idempotent
	if !p.Stalled() {
		t.Fatal("Stalled() false after Stall")
	}
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatalf("write while stalled: %v", err)
	}
	if got, err := readWithin(c, 4, 300*time.Millisecond); err == nil {
		t.Fatalf("read %q while stalled", got)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("read while stalled: %v, want a timeout (the connection must stay open)", err)
	}

	// A connection made while stalled hangs as well.
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	if _, err := readWithin(c2, 4, 200*time.Millisecond); err == nil {
		t.Fatal("new connection flowed while stalled")
	}

	// Resumed: what was held arrives, in order.
	p.Resume()
	p.Resume() // idempotent
	if got, err := readWithin(c, 4, 5*time.Second); err != nil || string(got) != "held" {
		t.Fatalf("after resume: %q, %v", got, err)
	}
	if got, err := readWithin(c2, 4, 5*time.Second); err != nil || string(got) != "late" {
		t.Fatalf("new connection after resume: %q, %v", got, err)
	}
	if n := p.Conns(); n != 2 {
		t.Fatalf("Conns() = %d, want 2", n)
	}

	// Cut: both connections end.
	p.Cut()
	for i, conn := range []net.Conn{c, c2} {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := conn.Read(make([]byte, 1)); err == nil {
			t.Fatalf("connection %d read %d bytes after Cut", i, n)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("connection %d still open after Cut", i)
		}
	}
	// New connections still go through.
	c3, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	_, _ = c3.Write([]byte("again"))
	if got, err := readWithin(c3, 5, 5*time.Second); err != nil || !bytes.Equal(got, []byte("again")) {
		t.Fatalf("after Cut: %q, %v", got, err)
	}
}

// TestProxyPartitionsANATSClient: a client connected through the proxy
// cannot complete a round trip while the proxy is stalled, does once it is
// resumed, and reconnects after a Cut.
func TestProxyPartitionsANATSClient(t *testing.T) {
	s := Server(t)
	p := NewProxy(t, s.ClientURL())
	var reconnects atomic.Int32
	nc := Conn(t, p.URL(), nats.ReconnectWait(20*time.Millisecond),
		nats.ReconnectHandler(func(*nats.Conn) { reconnects.Add(1) }))
	direct := Conn(t, s.ClientURL())
	sub, err := direct.SubscribeSync("x")
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.Flush(); err != nil {
		t.Fatal(err)
	}

	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("flush through the proxy: %v", err)
	}
	p.Stall()
	if err := nc.Publish("x", []byte("during")); err != nil {
		t.Fatal(err)
	}
	if err := nc.FlushTimeout(300 * time.Millisecond); err == nil {
		t.Fatal("round trip succeeded through a stalled proxy")
	}
	if !nc.IsConnected() {
		t.Fatal("the client noticed the stall; it must not")
	}
	if m, err := sub.NextMsg(100 * time.Millisecond); err == nil {
		t.Fatalf("message %q crossed a stalled proxy", m.Data)
	}
	p.Resume()
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("flush after resume: %v", err)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "during" {
		t.Fatalf("held message after resume: %v", err)
	}

	p.Cut()
	deadline := time.Now().Add(10 * time.Second)
	for reconnects.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no reconnect after Cut")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("flush after reconnecting: %v", err)
	}
}
