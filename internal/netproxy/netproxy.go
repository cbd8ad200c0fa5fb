// Package netproxy is a TCP proxy that can partition the clients connecting
// through it from their server: the tests and the soak put a worker or a
// selector behind one to cut it off without touching anyone else's
// connection.
//
//   - Stall stops forwarding in both directions without closing anything:
//     the connections stay open but nothing flows, as in a network
//     partition the client has not noticed. Connections accepted while
//     stalled hang too.
//   - Resume lets everything flow again, starting with what was held back.
//   - Cut closes every connection open now; clients see the disconnect at
//     once, and their reconnects are forwarded (or hang, while stalled).
//
// With a tap, the proxy also reports every message its clients publish
// (see package wiretap).
package netproxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"

	"github.com/taskselector/taskselector/internal/wiretap"
)

// Options configure a Proxy.
type Options struct {
	// Log receives accept errors and a tap that lost track of the
	// protocol; nil discards them.
	Log *slog.Logger
	// Tap, if set, is called (from the connection's goroutine) with every
	// message a client publishes, before it is forwarded.
	Tap func(subject string, data []byte)
}

// Proxy forwards every connection made to its loopback port to one server.
// It is safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string
	o      Options

	// flow is held for reading by every write to a peer and for writing
	// while stalled, so that once Stall returns nothing more is forwarded.
	flow sync.RWMutex

	mu      sync.Mutex
	stalled bool
	closed  bool
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

// New starts a proxy on a free port of 127.0.0.1 to target, a server URL
// such as "nats://127.0.0.1:4222" or a bare host:port. Close stops it.
func New(target string, o Options) (*Proxy, error) {
	if u, err := url.Parse(target); err == nil && u.Host != "" {
		target = u.Host
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("netproxy: listen: %w", err)
	}
	p := &Proxy{ln: ln, target: target, o: o, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is the proxy's address as a NATS URL.
func (p *Proxy) URL() string { return "nats://" + p.Addr() }

// Stall stops forwarding in both directions, leaving every connection open.
// Once it returns, no byte reaches either side until Resume. It does nothing
// when the proxy is stalled already.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled || p.closed {
		return
	}
	p.stalled = true
	p.flow.Lock() // waits for the writes under way
}

// Resume lets the connections flow again. It does nothing unless stalled.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stalled {
		return
	}
	p.stalled = false
	p.flow.Unlock()
}

// Stalled reports whether the proxy is stalled.
func (p *Proxy) Stalled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stalled
}

// Cut closes every connection open now, on both sides. The proxy keeps
// accepting new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
}

// Conns is the number of client connections open through the proxy.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) / 2
}

// Close stops accepting, closes every connection and waits until the
// proxy's goroutines have ended. It is idempotent.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	_ = p.ln.Close()
	for c := range p.conns {
		_ = c.Close()
	}
	if p.stalled {
		p.stalled = false
		p.flow.Unlock() // held writes now fail on the closed connections
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.o.Log.Warn("netproxy: accept", "err", err)
			}
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			// The server is down (say, restarting): the client retries.
			p.o.Log.Debug("netproxy: dial", "target", p.target, "err", err)
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = client.Close()
			_ = server.Close()
			return
		}
		p.conns[client] = struct{}{}
		p.conns[server] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		var tap *wiretap.Parser
		if p.o.Tap != nil {
			tap = wiretap.NewParser(p.o.Tap)
		}
		go p.pipe(client, server, tap)
		go p.pipe(server, client, nil)
	}
}

// pipe copies src to dst until either fails, then closes both; tap, if
// set, reads what passes.
func (p *Proxy) pipe(src, dst net.Conn, tap *wiretap.Parser) {
	defer p.wg.Done()
	defer p.drop(src, dst)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if tap != nil {
				if terr := tap.Feed(buf[:n]); terr != nil {
					p.o.Log.Error("netproxy: tap lost track of the protocol; messages go unobserved", "err", terr)
					tap = nil
				}
			}
			p.flow.RLock()
			_, werr := dst.Write(buf[:n])
			p.flow.RUnlock()
			if werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF, a Cut, or a reset: the connection is over
		}
	}
}

// drop closes both ends of a proxied connection and forgets them.
func (p *Proxy) drop(a, b net.Conn) {
	_ = a.Close()
	_ = b.Close()
	p.mu.Lock()
	delete(p.conns, a)
	delete(p.conns, b)
	p.mu.Unlock()
}
