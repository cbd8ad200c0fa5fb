// Package wiretap reads the messages a NATS client publishes off the bytes
// of its connection, to observe a client without a subscription.
//
// Why not subscribe: a core NATS subscription on a request subject is
// interest in it, so the server no longer answers a request nobody serves
// with "no responders", and the requester waits for its timeout instead. An
// observer that subscribed to the selector's launch and kill requests would
// change how the selector handles a dead host. A tap changes nothing: the
// bytes pass as they are.
//
// A Parser follows the client-to-server half of one connection; a Dialer is
// a nats.CustomDialer whose connections feed a Parser each, and a proxy can
// feed one with what it forwards.
package wiretap

import (
	"bytes"
	"errors"
	"strconv"
)

// MaxControlLine bounds a protocol control line; a longer one (a CONNECT
// with a huge JWT, say) is taken for a stream the Parser cannot follow.
const MaxControlLine = 64 << 10

// ErrProtocol is what a Parser returns once it cannot follow the stream.
var ErrProtocol = errors.New("wiretap: cannot parse the client protocol")

// Parser follows the client-to-server half of a NATS connection, from its
// first byte, and reports every message published on it (PUB and HPUB; the
// headers of an HPUB are dropped). It only reads what it is fed: the caller
// forwards the bytes unchanged. A Parser is not safe for concurrent use.
type Parser struct {
	onPub  func(subject string, data []byte)
	buf    []byte // the start of an operation not complete yet
	broken bool
}

// NewParser returns a parser that calls onPub with the subject and payload
// of every message published, in stream order. The payload is onPub's own.
func NewParser(onPub func(subject string, data []byte)) *Parser {
	return &Parser{onPub: onPub}
}

// Feed parses b, which continues what was fed before. Once the stream makes
// no sense it returns ErrProtocol, and ignores the rest of the connection.
func (p *Parser) Feed(b []byte) error {
	if p.broken {
		return nil
	}
	p.buf = append(p.buf, b...)
	for {
		n, err := p.next()
		if err != nil {
			p.broken, p.buf = true, nil
			return err
		}
		if n == 0 {
			break
		}
		p.buf = p.buf[n:]
	}
	if len(p.buf) == 0 {
		p.buf = nil // let a large buffer go
	}
	return nil
}

// next parses the operation at the start of p.buf and returns its length,
// or 0 while it is incomplete.
func (p *Parser) next() (int, error) {
	eol := bytes.Index(p.buf, []byte("\r\n"))
	if eol < 0 {
		if len(p.buf) > MaxControlLine {
			return 0, ErrProtocol
		}
		return 0, nil
	}
	op, args, _ := bytes.Cut(p.buf[:eol], []byte(" "))
	var subject string
	var hdr, total int
	switch {
	case bytes.EqualFold(op, []byte("PUB")): // PUB <subject> [reply] <size>
		f := bytes.Fields(args)
		if len(f) != 2 && len(f) != 3 {
			return 0, ErrProtocol
		}
		n, ok := size(f[len(f)-1])
		if !ok {
			return 0, ErrProtocol
		}
		subject, total = string(f[0]), n
	case bytes.EqualFold(op, []byte("HPUB")): // HPUB <subject> [reply] <header size> <total size>
		f := bytes.Fields(args)
		if len(f) != 3 && len(f) != 4 {
			return 0, ErrProtocol
		}
		h, okH := size(f[len(f)-2])
		n, okN := size(f[len(f)-1])
		if !okH || !okN || h > n {
			return 0, ErrProtocol
		}
		subject, hdr, total = string(f[0]), h, n
	default:
		return eol + 2, nil // CONNECT, PING, PONG, SUB, UNSUB: no payload
	}
	end := eol + 2 + total + 2 // the payload ends with CRLF too
	if len(p.buf) < end {
		return 0, nil
	}
	if p.onPub != nil {
		p.onPub(subject, bytes.Clone(p.buf[eol+2+hdr:eol+2+total]))
	}
	return end, nil
}

// size parses a payload size.
func size(b []byte) (int, bool) {
	n, err := strconv.Atoi(string(b))
	return n, err == nil && n >= 0
}
