// Package natsembed runs a NATS server with JetStream inside this process:
// the selector's default deployment, the demo, the soak and the benchmarks
// start one instead of connecting to a server of their own.
//
// It links nats-server; programs that only connect to a server (the worker,
// the client) must not import it.
package natsembed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configure an in-process NATS server with JetStream.
type Options struct {
	// StoreDir is where JetStream keeps its file store. Required.
	//
	// Nothing locks a store directory: two servers started on the same
	// StoreDir both come up and then corrupt each other's data. Give every
	// server its own directory (in tests, one t.TempDir() per server).
	StoreDir string
	// Host is the address clients connect to [127.0.0.1].
	Host string
	// Port is the client port; -1 picks a free random port, 0 means the
	// NATS default 4222. Restart a server on the same fixed port for its
	// clients to reconnect to it.
	Port int
	// ServerName names the server; empty lets NATS generate one.
	ServerName string
	// MaxPayload caps a message in bytes; 0 keeps the NATS default (1 MiB).
	MaxPayload int32
	// ReadyTimeout bounds the wait for the server to accept clients [10s].
	ReadyTimeout time.Duration
	// Debug turns the server's own logging on (to stderr), with debug lines.
	// Without it the server logs nothing.
	Debug bool
}

// Start starts a NATS server with JetStream in this process and waits until
// it accepts client connections. The server does not install signal
// handlers; stop it with Shutdown. Its client URL is s.ClientURL().
func Start(ctx context.Context, o Options) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("natsembed: embedded server: StoreDir is required")
	}
	if err := os.MkdirAll(o.StoreDir, 0o750); err != nil {
		return nil, fmt.Errorf("natsembed: embedded server: create store dir: %w", err)
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	opts := &server.Options{
		ServerName: o.ServerName,
		Host:       o.Host,
		Port:       o.Port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		MaxPayload: o.MaxPayload,
		NoSigs:     true,
		NoLog:      !o.Debug,
		Debug:      o.Debug,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsembed: embedded server: %w", err)
	}
	if o.Debug {
		s.ConfigureLogger()
	}
	s.Start()

	ready := make(chan bool, 1)
	go func() { ready <- s.ReadyForConnections(o.ReadyTimeout) }()
	select {
	case ok := <-ready:
		if !ok {
			Shutdown(s)
			return nil, fmt.Errorf("natsembed: embedded server not ready for connections within %v", o.ReadyTimeout)
		}
	case <-ctx.Done():
		Shutdown(s)
		return nil, fmt.Errorf("natsembed: embedded server start: %w", ctx.Err())
	}
	if !s.JetStreamEnabled() {
		Shutdown(s)
		return nil, errors.New("natsembed: embedded server started without JetStream")
	}
	return s, nil
}

// Shutdown stops s and waits until it has released its port and its
// store directory, so that a new server may reuse both. It is safe on nil.
func Shutdown(s *server.Server) {
	if s == nil {
		return
	}
	s.Shutdown()
	s.WaitForShutdown()
}
