package wiretap

import (
	"net"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

var _ nats.CustomDialer = (*Dialer)(nil)

// Dialer is a nats.CustomDialer (pass it with nats.SetCustomDialer) whose
// connections report what the client publishes on them. Every connection
// the client makes, reconnections included, to whichever server of its pool,
// gets its own Parser, so the tap follows the client wherever it connects.
type Dialer struct {
	// OnPublish is called with the subject and payload of every message the
	// client writes to a connection, in order, after the write and before
	// the next one. It must not block for long: the client waits for it.
	OnPublish func(subject string, data []byte)
	// OnError, if set, is told once per connection that the tap lost track
	// of the protocol: what that connection publishes afterwards goes
	// unreported. The connection itself is not affected.
	OnError func(err error)
	// Timeout bounds each dial; 0 means 2 seconds, as nats.Timeout's
	// default. (With a custom dialer the client does not apply its own.)
	Timeout time.Duration
}

// Dial connects to address and wraps the connection in the tap. It
// implements nats.CustomDialer.
func (d *Dialer) Dial(network, address string) (net.Conn, error) {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	c, err := net.DialTimeout(network, address, timeout)
	if err != nil {
		return nil, err
	}
	return &tappedConn{Conn: c, parser: NewParser(d.OnPublish), onError: d.OnError}, nil
}

// tappedConn feeds what is written to it, once written, to its parser.
type tappedConn struct {
	net.Conn
	onError func(err error)

	mu     sync.Mutex // keeps writes and their parsing in the same order
	parser *Parser
}

// Write implements net.Conn. Only the bytes that went out are parsed.
func (c *tappedConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.Conn.Write(b)
	if n > 0 {
		if perr := c.parser.Feed(b[:n]); perr != nil && c.onError != nil {
			c.onError(perr)
		}
	}
	return n, err
}
