package natstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// GlobalAccount is the name of the account that clients use on a server with
// no accounts configured; pass it to the stream methods of Cluster.
const GlobalAccount = "$G"

// DefaultClusterReadyTimeout bounds the wait for a cluster to form unless
// ClusterReadyTimeout says otherwise. It is generous: a shared, slow machine
// running tests with -race may take seconds to elect a meta leader.
const DefaultClusterReadyTimeout = 30 * time.Second

// ClusterOption configures NewCluster.
type ClusterOption func(*clusterConfig)

type clusterConfig struct {
	name         string
	readyTimeout time.Duration
}

// ClusterName sets the cluster's name ["natstest"].
func ClusterName(name string) ClusterOption { return func(c *clusterConfig) { c.name = name } }

// ClusterReadyTimeout bounds each wait of NewCluster and Restart for nodes
// to accept clients and for the cluster to form [DefaultClusterReadyTimeout].
func ClusterReadyTimeout(d time.Duration) ClusterOption {
	return func(c *clusterConfig) { c.readyTimeout = d }
}

// Cluster is a JetStream cluster of N nats-server nodes running in the test's
// process, on 127.0.0.1. Each node has a unique server name, its own client
// and cluster (route) ports, picked at random when the cluster starts, and
// its own file store under tb.TempDir(); every node routes to every other.
//
// A node can be stopped (its clients and routes drop at once) and restarted
// on the same ports and store directory, so that clients holding the URL
// list of every node (URLs) fail over to a live node and come back, and the
// restarted node rejoins the cluster and catches up from its peers.
//
// A stop is a clean shutdown, not a crash: nats-server hands the leadership
// of every raft group the node leads to an up-to-date peer before it goes,
// so a new leader exists within tens of milliseconds. After a crash (or a
// partition) the followers would wait out an election timeout (4-9 s in
// nats-server 2.15) first.
//
// Nodes are numbered 0..Size()-1. Every node still running is shut down when
// tb's test ends. A Cluster is safe for concurrent use.
type Cluster struct {
	tb  testing.TB
	cfg clusterConfig

	mu    sync.Mutex
	nodes []*clusterNode
}

// clusterNode is one node's fixed identity and, while it runs, its server.
type clusterNode struct {
	name        string
	port        int
	clusterPort int
	storeDir    string
	srv         *server.Server // nil while stopped
	starting    bool           // start is under way
}

// NewCluster starts an n-node JetStream cluster and waits until every node
// accepts clients and a JetStream meta leader counts all n nodes as peers,
// so that streams and buckets with up to n replicas can be placed at once.
// It fails tb if the cluster does not form in time.
func NewCluster(tb testing.TB, n int, opts ...ClusterOption) *Cluster {
	tb.Helper()
	if n < 2 {
		// One node with a cluster block never elects a meta leader.
		tb.Fatalf("natstest: a cluster needs at least two nodes, not %d (use Server for one)", n)
	}
	cfg := clusterConfig{name: "natstest", readyTimeout: DefaultClusterReadyTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	ports := freePorts(tb, 2*n)
	c := &Cluster{tb: tb, cfg: cfg, nodes: make([]*clusterNode, n)}
	for i := range c.nodes {
		c.nodes[i] = &clusterNode{
			name:        fmt.Sprintf("%s-n%d", cfg.name, i),
			port:        ports[2*i],
			clusterPort: ports[2*i+1],
			storeDir:    tb.TempDir(),
		}
	}
	tb.Cleanup(c.shutdownAll)
	for i := range c.nodes {
		c.start(i)
	}
	c.WaitFormed(cfg.readyTimeout)
	return c
}

// freePorts returns n distinct TCP ports of the loopback that are free now.
// It holds every listener open until all n are chosen, so that no port is
// handed out twice.
func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("natstest: free port: %v", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// options builds node i's server options. A server keeps and alters the
// options it was given, so every start gets a fresh set.
func (c *Cluster) options(i int) *server.Options {
	routes := make([]string, 0, len(c.nodes))
	for _, nd := range c.nodes {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", nd.clusterPort))
	}
	nd := c.nodes[i]
	return &server.Options{
		ServerName: nd.name,
		Host:       "127.0.0.1",
		Port:       nd.port,
		JetStream:  true,
		StoreDir:   nd.storeDir,
		NoLog:      true,
		NoSigs:     true,
		Cluster: server.ClusterOpts{
			Name: c.cfg.name,
			Host: "127.0.0.1",
			Port: nd.clusterPort,
		},
		// A route to itself is recognised and dropped by the server.
		Routes: server.RoutesFromStr(strings.Join(routes, ",")),
	}
}

// start starts node i and waits until it accepts clients. The lock is not
// held during the wait, so that the cluster can be inspected meanwhile.
func (c *Cluster) start(i int) {
	c.tb.Helper()
	c.mu.Lock()
	nd := c.nodes[i]
	if nd.srv != nil || nd.starting {
		c.mu.Unlock()
		c.tb.Fatalf("natstest: node %d (%s) is already running", i, nd.name)
	}
	nd.starting = true
	opts := c.options(i)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		nd.starting = false
		c.mu.Unlock()
	}()

	s, err := server.NewServer(opts)
	if err != nil {
		c.tb.Fatalf("natstest: new NATS server %s: %v", nd.name, err)
	}
	s.Start()
	if !s.ReadyForConnections(c.cfg.readyTimeout) {
		Shutdown(s)
		c.tb.Fatalf("natstest: node %s not ready for connections within %v", nd.name, c.cfg.readyTimeout)
	}
	c.mu.Lock()
	nd.srv = s
	c.mu.Unlock()
}

func (c *Cluster) shutdownAll() {
	c.mu.Lock()
	servers := make([]*server.Server, 0, len(c.nodes))
	for _, nd := range c.nodes {
		servers = append(servers, nd.srv)
		nd.srv = nil
	}
	c.mu.Unlock()
	// Shut them all down before waiting for any: a node waiting for its
	// own shutdown must not hold up the others' (and their elections).
	for _, s := range servers {
		if s != nil {
			s.Shutdown()
		}
	}
	for _, s := range servers {
		if s != nil {
			s.WaitForShutdown()
		}
	}
}

// Size is the number of nodes, running or not.
func (c *Cluster) Size() int { return len(c.nodes) }

// Name is node i's server name (what nats.Conn.ConnectedServerName reports).
func (c *Cluster) Name(i int) string { return c.nodes[i].name }

// URL is node i's client URL, the same whether it runs or not.
func (c *Cluster) URL(i int) string { return fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[i].port) }

// URLs is the client URL of every node, comma-separated, for nats.Connect:
// a client given it fails over to any node that runs.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.nodes))
	for i := range c.nodes {
		urls[i] = c.URL(i)
	}
	return strings.Join(urls, ",")
}

// Index returns the number of the node whose server name or client URL
// (host:port, with or without the nats:// scheme) is nameOrURL, or -1.
func (c *Cluster) Index(nameOrURL string) int {
	hostPort := strings.TrimPrefix(nameOrURL, "nats://")
	for i, nd := range c.nodes {
		if nd.name == nameOrURL || hostPort == fmt.Sprintf("127.0.0.1:%d", nd.port) {
			return i
		}
	}
	return -1
}

// Server returns node i's server, or nil while it is stopped.
func (c *Cluster) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].srv
}

// Running reports whether node i runs.
func (c *Cluster) Running(i int) bool { return c.Server(i) != nil }

// running returns the servers of the nodes that run, by node number (nil
// for a stopped node).
func (c *Cluster) running() []*server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*server.Server, len(c.nodes))
	for i, nd := range c.nodes {
		out[i] = nd.srv
	}
	return out
}

// Stop shuts node i down: its client and route connections drop at once,
// after it has handed over the leadership of its raft groups (see Cluster).
// It returns once the node has released its ports and store directory.
// Stopping a stopped node does nothing.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	s := c.nodes[i].srv
	c.nodes[i].srv = nil
	c.mu.Unlock()
	Shutdown(s)
}

// Restart starts stopped node i again, with the same name, ports and store
// directory, and waits until it accepts clients. It does not wait for the
// node to rejoin the cluster or catch up: see WaitCurrent and StreamState.
func (c *Cluster) Restart(i int) {
	c.tb.Helper()
	c.start(i)
}

// MetaLeader returns the number of the running node that is the JetStream
// meta leader, or -1 when there is none (no quorum, or an election is on).
func (c *Cluster) MetaLeader() int {
	for i, s := range c.running() {
		if s != nil && s.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// StreamLeader returns the number of the running node that leads stream of
// account (GlobalAccount for clients without accounts), or -1. The stream of
// a KV bucket B is named "KV_B".
func (c *Cluster) StreamLeader(account, stream string) int {
	for i, s := range c.running() {
		if s != nil && s.JetStreamIsStreamLeader(account, stream) {
			return i
		}
	}
	return -1
}

// LeadStream makes running node i the leader of stream of account: while
// another node leads it, that leader is asked to step down (it hands over to
// a peer that is up to date, which may take a few rounds to land on i). It
// fails the test if i does not lead within timeout.
func (c *Cluster) LeadStream(i int, account, stream string, timeout time.Duration) {
	c.tb.Helper()
	var why string
	if !c.poll(timeout, func() bool {
		leader := c.StreamLeader(account, stream)
		switch {
		case leader == i:
			return true
		case leader < 0:
			why = "no leader"
			return false
		}
		s := c.Server(leader)
		if s == nil {
			return false
		}
		if err := s.JetStreamStepdownStream(account, stream); err != nil {
			why = fmt.Sprintf("step down on %s: %v", s.Name(), err)
			return false
		}
		why = fmt.Sprintf("%s stepped down", s.Name())
		// Let the election settle before asking again.
		c.poll(2*time.Second, func() bool {
			l := c.StreamLeader(account, stream)
			return l >= 0 && l != leader
		})
		return c.StreamLeader(account, stream) == i
	}) {
		c.tb.Fatalf("natstest: node %s does not lead %s within %v (%s)", c.Name(i), stream, timeout, why)
	}
}

// StreamState returns node i's own copy of the state of stream of account:
// its message count and first and last sequence as stored on that node,
// whether or not it leads the stream. ok is false while node i is stopped
// or holds no copy of the stream.
func (c *Cluster) StreamState(i int, account, stream string) (st server.StreamState, ok bool) {
	s := c.Server(i)
	if s == nil {
		return st, false
	}
	acc, err := s.JszAccount(&server.JSzOptions{Account: account, Streams: true})
	if err != nil || acc == nil {
		return st, false
	}
	for _, sd := range acc.Streams {
		if sd.Name == stream {
			return sd.State, true
		}
	}
	return st, false
}

// ConsumerLeaders maps the name of every consumer of stream of account to
// the number of the running node that leads it (for a consumer with one
// replica, the node that holds it). A KV watcher is such a consumer, with a
// generated name, on the bucket's stream.
func (c *Cluster) ConsumerLeaders(account, stream string) map[string]int {
	out := map[string]int{}
	for i, s := range c.running() {
		if s == nil {
			continue
		}
		acc, err := s.JszAccount(&server.JSzOptions{Account: account, Streams: true, Consumer: true})
		if err != nil || acc == nil {
			continue
		}
		for _, sd := range acc.Streams {
			if sd.Name != stream {
				continue
			}
			for _, ci := range sd.Consumer {
				if ci != nil && ci.Cluster != nil && ci.Cluster.Leader == s.Name() {
					out[ci.Name] = i
				}
			}
		}
	}
	return out
}

// WaitFormed waits until a meta leader exists among the running nodes and
// counts every running node as a current JetStream peer, and every running
// node follows the meta group (is current). It fails the test on timeout.
func (c *Cluster) WaitFormed(timeout time.Duration) {
	c.tb.Helper()
	var why string
	if !c.poll(timeout, func() bool {
		ok, desc := c.formed()
		why = desc
		return ok
	}) {
		c.tb.Fatalf("natstest: cluster not formed within %v: %s", timeout, why)
	}
}

func (c *Cluster) formed() (bool, string) {
	servers := c.running()
	live := 0
	for _, s := range servers {
		if s != nil {
			live++
		}
	}
	leader := c.MetaLeader()
	if leader < 0 {
		return false, "no JetStream meta leader"
	}
	s := servers[leader]
	if s == nil {
		return false, "meta leader stopped"
	}
	if peers := s.JetStreamClusterPeers(); len(peers) < live {
		return false, fmt.Sprintf("meta leader %s sees %d current peers %v, want %d", s.Name(), len(peers), peers, live)
	}
	for _, s := range servers {
		if s != nil && !s.JetStreamIsCurrent() {
			return false, fmt.Sprintf("node %s does not follow the meta group yet", s.Name())
		}
	}
	return true, ""
}

// WaitMetaLeader waits until some running node is the meta leader and
// returns its number; it fails the test on timeout.
func (c *Cluster) WaitMetaLeader(timeout time.Duration) int {
	c.tb.Helper()
	leader := -1
	if !c.poll(timeout, func() bool { leader = c.MetaLeader(); return leader >= 0 }) {
		c.tb.Fatalf("natstest: no JetStream meta leader within %v", timeout)
	}
	return leader
}

// WaitCurrent waits until running node i follows the meta group again (after
// Restart, say); it fails the test on timeout.
func (c *Cluster) WaitCurrent(i int, timeout time.Duration) {
	c.tb.Helper()
	if !c.poll(timeout, func() bool {
		s := c.Server(i)
		return s != nil && s.JetStreamIsCurrent()
	}) {
		c.tb.Fatalf("natstest: node %s not current within %v", c.Name(i), timeout)
	}
}

// poll checks cond every 20 ms until it holds (true) or timeout passes
// (false).
func (c *Cluster) poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
