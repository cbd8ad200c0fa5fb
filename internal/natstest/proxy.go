package natstest

import (
	"testing"

	"github.com/taskselector/taskselector/internal/netproxy"
)

// Proxy is a partitioning TCP proxy for tests (see package netproxy): Stall,
// Resume and Cut the clients that connect through it while others keep
// their direct connections.
type Proxy = netproxy.Proxy

// NewProxy starts a proxy to target, a server URL such as s.ClientURL()
// ("nats://127.0.0.1:4222") or a bare host:port, logging to the test's
// log when NATSTEST_LOG is set. It is closed when tb's test ends. Clients
// connect to its URL.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	p, err := netproxy.New(target, netproxy.Options{Log: Log("NATSTEST_LOG")})
	if err != nil {
		tb.Fatalf("natstest: %v", err)
	}
	tb.Cleanup(p.Close)
	return p
}
