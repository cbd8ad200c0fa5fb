// Package natstest starts embedded NATS servers and client connections for
// tests: a server with JetStream on the loopback, by default on a random port
// with its own store directory, and shut down when the test ends.
//
// A single server is started by internal/natsembed, as the selector starts
// its own; the cluster is configured on nats-server directly.
package natstest

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/internal/natsembed"
)

// DefaultReadyTimeout bounds the wait for a server to accept clients unless
// ReadyTimeout says otherwise.
const DefaultReadyTimeout = 10 * time.Second

// Option configures Server.
type Option func(*config)

type config struct {
	storeDir     string
	port         int
	readyTimeout time.Duration
	noCleanup    bool
}

// StoreDir puts the server's JetStream file store in dir instead of a fresh
// tb.TempDir(). A server restarted on the same StoreDir (after the first has
// shut down) finds the streams and buckets the first one left.
func StoreDir(dir string) Option { return func(c *config) { c.storeDir = dir } }

// Port sets the client port; the default, -1, picks a free random port. A
// server restarted on the same fixed port (see FreePort) lets clients that
// reconnect find it again.
func Port(port int) Option { return func(c *config) { c.port = port } }

// ReadyTimeout bounds the wait for the server to accept clients
// [DefaultReadyTimeout].
func ReadyTimeout(d time.Duration) Option { return func(c *config) { c.readyTimeout = d } }

// NoCleanup leaves shutting the server down to the caller (with Shutdown),
// for a test that restarts its server and keeps a single cleanup for
// whichever server is current.
func NoCleanup() Option { return func(c *config) { c.noCleanup = true } }

// Server starts an embedded NATS server with JetStream on 127.0.0.1, without
// logs or signal handlers, and waits until it accepts clients; it fails tb
// if the server does not come up. Unless NoCleanup is given, the server is
// shut down (and waited for) when tb's test ends. Its URL is s.ClientURL().
func Server(tb testing.TB, opts ...Option) *server.Server {
	tb.Helper()
	c := config{port: -1, readyTimeout: DefaultReadyTimeout}
	for _, o := range opts {
		o(&c)
	}
	if c.storeDir == "" {
		c.storeDir = tb.TempDir()
	}
	s, err := natsembed.Start(context.Background(), natsembed.Options{StoreDir: c.storeDir, Port: c.port, ReadyTimeout: c.readyTimeout})
	if err != nil {
		tb.Fatalf("natstest: %v", err)
	}
	if !c.noCleanup {
		tb.Cleanup(func() { Shutdown(s) })
	}
	return s
}

// Shutdown stops s and waits until it has released its port and store
// directory, so that a new server may reuse both. It is safe on nil and on a
// server already shut down.
func Shutdown(s *server.Server) { natsembed.Shutdown(s) }

// Conn connects to the server at url with nats.MaxReconnects(-1) (reconnect
// for good) followed by opts, and closes the connection when tb's test ends.
// It fails tb if the connection cannot be made.
func Conn(tb testing.TB, url string, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.MaxReconnects(-1)}, opts...)...)
	if err != nil {
		tb.Fatalf("natstest: connect %s: %v", url, err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// FreePort returns a TCP port on the loopback that is free now, for a server
// that is to be restarted on the same port.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("natstest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Log returns a logger that discards everything, or, when the environment
// variable envVar is set (to anything but ""), one that writes debug and
// above to stderr.
func Log(envVar string) *slog.Logger {
	if os.Getenv(envVar) != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
