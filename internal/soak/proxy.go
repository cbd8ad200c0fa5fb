package soak

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"

	"github.com/taskselector/taskselector/internal/wiretap"
)

// proxy forwards TCP connections from a loopback port to the NATS server, so
// that the soak can partition the one worker that connects through it.
// While stalled, nothing is forwarded in either direction and nothing is
// closed: the worker's connection hangs as in a partition it has not
// noticed. Connections accepted while stalled hang too. A dial that fails
// (the server is restarting) closes the client's connection, so that the
// client retries. With a tap, it also reports every message its clients
// publish (see package wiretap for why the soak reads the selector's
// requests off the wire instead of subscribing to them).
type proxy struct {
	ln     net.Listener
	target string
	log    *slog.Logger
	tap    func(subject string, data []byte) // nil: none

	mu      sync.Mutex
	cond    *sync.Cond // signals changes of stalled, closed and writing
	stalled bool
	closed  bool
	writing int // forwards under way
	conns   map[net.Conn]struct{}

	wg sync.WaitGroup
}

// newProxy listens on a free port of 127.0.0.1 and forwards to target
// (host:port). tap, if set, is called (from the connection's goroutine) with
// every message a client publishes, before it is forwarded.
func newProxy(target string, log *slog.Logger, tap func(subject string, data []byte)) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, target: target, log: log, tap: tap, conns: make(map[net.Conn]struct{})}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// URL is the NATS URL clients connect to.
func (p *proxy) URL() string { return "nats://" + p.ln.Addr().String() }

// Stall stops all forwarding. Once it returns, no further byte passes until
// Resume.
func (p *proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
	for p.writing > 0 && !p.closed {
		p.cond.Wait()
	}
}

// Resume lets every connection flow again, beginning with what was held.
func (p *proxy) Resume() {
	p.mu.Lock()
	p.stalled = false
	p.mu.Unlock()
	p.cond.Broadcast()
}

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines. It is idempotent.
func (p *proxy) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		_ = p.ln.Close()
		for c := range p.conns {
			_ = c.Close()
		}
	}
	p.mu.Unlock()
	p.cond.Broadcast()
	p.wg.Wait()
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.log.Warn("soak proxy: accept", "err", err)
			}
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close() // the server is down: the client retries
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
		var parser *wiretap.Parser
		if p.tap != nil {
			parser = wiretap.NewParser(p.tap)
		}
		go p.forward(client, server, parser)
		go p.forward(server, client, nil)
	}
}

// enter waits until forwarding is allowed and counts a forward under way;
// false once the proxy is closed.
func (p *proxy) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.stalled && !p.closed {
		p.cond.Wait()
	}
	if p.closed {
		return false
	}
	p.writing++
	return true
}

func (p *proxy) leave() {
	p.mu.Lock()
	p.writing--
	p.mu.Unlock()
	p.cond.Broadcast()
}

// forward copies from src to dst until either side fails, then closes both.
// parser, if set, reads what passes.
func (p *proxy) forward(src, dst net.Conn, parser *wiretap.Parser) {
	defer p.wg.Done()
	defer func() {
		_ = src.Close()
		_ = dst.Close()
		p.mu.Lock()
		delete(p.conns, src)
		delete(p.conns, dst)
		p.mu.Unlock()
	}()
	buf := make([]byte, 16<<10)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if parser != nil {
				if err := parser.Feed(buf[:n]); err != nil {
					p.log.Error("soak proxy: tap lost track of the protocol; requests go unobserved", "err", err)
				}
			}
			if !p.enter() {
				return
			}
			_, werr := dst.Write(buf[:n])
			p.leave()
			if werr != nil {
				return
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) && !errors.Is(rerr, net.ErrClosed) {
				p.log.Debug("soak proxy: read", "err", rerr)
			}
			return
		}
	}
}
