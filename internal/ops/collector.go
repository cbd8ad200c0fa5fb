// Package ops serves the selector's operator endpoints over HTTP: Prometheus
// metrics on /metrics, liveness on /healthz and readiness on /readyz.
//
// Every metric comes from one SelectorStatus snapshot taken per scrape, so a
// scrape takes the engine's lock once, whatever the number of series.
package ops

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// Source is what the endpoints read: *bus.SelectorService implements it.
type Source interface {
	// Status returns the selector's status snapshot.
	Status() schemas.SelectorStatus
	// RestartToReady is the time the last start took to become ready; 0
	// before that.
	RestartToReady() time.Duration
}

var _ Source = (*bus.SelectorService)(nil)

// EdgeSource is a Source that also counts what its NATS edge did with
// requests and events; *bus.SelectorService implements it, and the
// collector exports these counters when its source does.
type EdgeSource interface {
	Source
	RequestsDropped() uint64 // requests dropped for room (surplus fence kills, and ps/kill fed back unanswered)
	RequestsMerged() uint64  // requests merged into an identical one already waiting
	ReplyErrors() uint64     // kill and ps replies that carried an error
	BacklogEvents() uint64   // task events read from the backlog at start
}

var _ EdgeSource = (*bus.SelectorService)(nil)

// LeaderSource is a Source that runs with a leader lease and counts its
// takeovers; the collector then exports taskselector_leader_takeovers_total.
type LeaderSource interface {
	Source
	Takeovers() uint64 // times this process took the leader lease
}

var _ LeaderSource = (*bus.SelectorService)(nil)

// Metric name prefix.
const namespace = "taskselector"

// Target and host states, in the order they are exported.
var (
	targetStates = []string{
		schemas.TargetPending, schemas.TargetLaunching, schemas.TargetActive,
		schemas.TargetSuspect, schemas.TargetBlocked, schemas.TargetComplete,
	}
	hostStates = []string{"live", "stale", "lost"}
)

// counterDef is one cumulative count of schemas.Counters.
type counterDef struct {
	desc *prometheus.Desc
	get  func(*schemas.Counters) uint64
}

func newDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(namespace+"_"+name, help, labels, nil)
}

// Collector exports a Source's status as Prometheus metrics. Build it with
// NewCollector.
type Collector struct {
	src  Source
	conn *natsconn.Stats

	ready, connected, degraded, recovering  *prometheus.Desc
	disruption                              *prometheus.Desc
	backoffLevel, pendingLaunches           *prometheus.Desc
	targets, hosts, hostRAM, restartToReady *prometheus.Desc
	failures, malformed                     *prometheus.Desc
	hostMismatches                          *prometheus.Desc
	counters                                []counterDef
	natsSlow, natsAsync, natsDisc, natsReco *prometheus.Desc
	edge                                    []edgeDef
	leader, term, takeovers                 *prometheus.Desc
}

// edgeDef is one counter of an EdgeSource.
type edgeDef struct {
	desc *prometheus.Desc
	get  func(EdgeSource) uint64
}

// disruptionModes are the values of SelectorStatus.Disruption.
var disruptionModes = []string{selector.DisruptionNormal, selector.DisruptionPartial, selector.DisruptionFull}

// NewCollector returns a collector of src's status. conn, when not nil (see
// natsconn.StatsOf), adds the NATS connection's counters.
func NewCollector(src Source, conn *natsconn.Stats) *Collector {
	c := &Collector{
		src:             src,
		conn:            conn,
		ready:           newDesc("ready", "1 when the selector is connected and past its recovery grace."),
		connected:       newDesc("connected", "1 when the selector is connected to NATS."),
		degraded:        newDesc("degraded", "1 while the disruption mode is not normal (see taskselector_disruption)."),
		disruption:      newDesc("disruption", "1 for the current disruption mode: normal, partial (silent hosts are declared lost at a limited rate) or full (nothing is declared lost or launched).", "mode"),
		recovering:      newDesc("recovering", "1 while the selector rebuilds its state after a start or reconnect."),
		backoffLevel:    newDesc("backoff_level", "Level of the global launch backoff (0: none)."),
		pendingLaunches: newDesc("pending_launches", "Launches awaiting their first heartbeat."),
		targets:         newDesc("targets", "Targets by state.", "state"),
		hosts:           newDesc("hosts", "Hosts by state: live, stale (no recent status) or lost.", "state"),
		hostRAM:         newDesc("host_ram_mib", "A host's RAM in MiB: total, used (reported), reserved (by the selector) and free (for new launches).", "host", "kind"),
		restartToReady:  newDesc("restart_to_ready_seconds", "Time the last start took to rebuild state and subscribe (0 before that)."),
		failures:        newDesc("failures_total", "Failed launches and tasks, by cause.", "cause"),
		malformed:       newDesc("malformed_messages_total", "Messages dropped as malformed, by source.", "source"),
		hostMismatches:  newDesc("host_mismatches_total", "Of the messages dropped as malformed, those whose body named another host than their subject, by source.", "source"),
		natsSlow:        newDesc("nats_slow_consumers_total", "Slow-consumer episodes on the NATS connection."),
		natsAsync:       newDesc("nats_async_errors_total", "Asynchronous errors on the NATS connection."),
		natsDisc:        newDesc("nats_disconnects_total", "NATS connection losses."),
		natsReco:        newDesc("nats_reconnects_total", "NATS connection recoveries."),
		leader:          newDesc("leader", "With a leader lease: 1 while this selector leads, 0 while it stands by (absent without a lease)."),
		term:            newDesc("leader_term", "With a leader lease: the term of the lease as this selector last saw it held (0: none)."),
		takeovers:       newDesc("leader_takeovers_total", "Times this process took the leader lease (a failover, or its first start)."),
	}
	for _, d := range []struct {
		name, help string
		get        func(*schemas.Counters) uint64
	}{
		{"launches_total", "Launch requests sent.", func(c *schemas.Counters) uint64 { return c.Launches }},
		{"confirmed_total", "Launches confirmed by a first heartbeat.", func(c *schemas.Counters) uint64 { return c.Confirmed }},
		{"timeouts_total", "Launches with no first heartbeat within the launch timeout.", func(c *schemas.Counters) uint64 { return c.Timeouts }},
		{"stale_total", "Active tasks gone stale (no heartbeat within the stale threshold).", func(c *schemas.Counters) uint64 { return c.Stale }},
		{"kills_total", "Kill requests sent.", func(c *schemas.Counters) uint64 { return c.Kills }},
		{"requeues_total", "Targets put back in the pending queue.", func(c *schemas.Counters) uint64 { return c.Requeues }},
		{"adoptions_total", "Unrecorded tasks with a newer epoch adopted.", func(c *schemas.Counters) uint64 { return c.Adoptions }},
		{"fenced_heartbeats_total", "Heartbeats from superseded or unknown tasks (which are killed).", func(c *schemas.Counters) uint64 { return c.FencedHeartbeats }},
		{"fences_total", "Kills sent to tasks that are not their target's, from any cause.", func(c *schemas.Counters) uint64 { return c.Fences }},
		{"input_gaps_total", "Times the selector learned that it dropped heartbeats or host statuses.", func(c *schemas.Counters) uint64 { return c.InputGaps }},
		{"heartbeats_total", "Heartbeats handled by the engine.", func(c *schemas.Counters) uint64 { return c.Heartbeats }},
		{"events_total", "Task events handled.", func(c *schemas.Counters) uint64 { return c.Events }},
		{"duplicate_events_total", "Task events seen before (redeliveries).", func(c *schemas.Counters) uint64 { return c.DuplicateEvents }},
		{"phases_completed_total", "Phases completed.", func(c *schemas.Counters) uint64 { return c.PhasesCompleted }},
		{"hosts_lost_total", "Hosts declared lost.", func(c *schemas.Counters) uint64 { return c.HostsLost }},
		{"slow_consumer_drops_total", "Messages dropped by the NATS client because the selector fell behind.", func(c *schemas.Counters) uint64 { return c.SlowConsumerDrops }},
		{"store_errors_total", "Failed writes to the tasks bucket.", func(c *schemas.Counters) uint64 { return c.StoreErrors }},
	} {
		c.counters = append(c.counters, counterDef{newDesc(d.name, d.help), d.get})
	}
	if _, ok := src.(EdgeSource); ok {
		for _, d := range []struct {
			name, help string
			get        func(EdgeSource) uint64
		}{
			{"requests_dropped_total", "Requests to workers dropped for room: surplus fence kills, and ps or kill requests fed back unanswered.", EdgeSource.RequestsDropped},
			{"requests_merged_total", "Requests to workers merged into an identical one already waiting.", EdgeSource.RequestsMerged},
			{"reply_errors_total", "Kill and ps replies that carried an error (the request is retried).", EdgeSource.ReplyErrors},
			{"backlog_events_total", "Task events read from the stream's backlog at start, before any host is probed.", EdgeSource.BacklogEvents},
		} {
			c.edge = append(c.edge, edgeDef{newDesc(d.name, d.help), d.get})
		}
	}
	return c
}

// Describe sends the descriptors of every metric the collector exports.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.ready, c.connected, c.degraded, c.disruption, c.recovering, c.backoffLevel, c.pendingLaunches,
		c.targets, c.hosts, c.hostRAM, c.restartToReady, c.failures, c.malformed, c.hostMismatches,
	} {
		ch <- d
	}
	for _, d := range c.counters {
		ch <- d.desc
	}
	for _, d := range c.edge {
		ch <- d.desc
	}
	ch <- c.leader
	ch <- c.term
	if _, ok := c.src.(LeaderSource); ok {
		ch <- c.takeovers
	}
	if c.conn != nil {
		ch <- c.natsSlow
		ch <- c.natsAsync
		ch <- c.natsDisc
		ch <- c.natsReco
	}
}

// Collect takes one status snapshot and sends every metric from it.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}

	gauge(c.ready, boolValue(st.Ready))
	gauge(c.connected, boolValue(st.Connected))
	gauge(c.degraded, boolValue(st.Degraded))
	for _, m := range disruptionModes {
		gauge(c.disruption, boolValue(st.Disruption == m), m)
	}
	gauge(c.recovering, boolValue(st.Recovering))
	gauge(c.backoffLevel, float64(st.Backoff.Level))
	gauge(c.pendingLaunches, float64(st.PendingLaunches))
	gauge(c.restartToReady, c.src.RestartToReady().Seconds())

	byState := make(map[string]int, len(targetStates))
	for _, t := range st.Targets {
		byState[t.State]++
	}
	for _, s := range targetStates {
		gauge(c.targets, float64(byState[s]), s)
		delete(byState, s)
	}
	for s, n := range byState { // a state this build does not know: still counted
		gauge(c.targets, float64(n), labelValue(s))
	}

	var hosts [3]int
	seen := make(map[string]bool, len(st.Hosts))
	for _, h := range st.Hosts {
		switch {
		case h.Lost:
			hosts[2]++
		case h.Stale:
			hosts[1]++
		default:
			hosts[0]++
		}
		name := labelValue(h.Host)
		if seen[name] {
			continue // two names that differ only in invalid UTF-8
		}
		seen[name] = true
		gauge(c.hostRAM, float64(h.TotalMiB), name, "total")
		gauge(c.hostRAM, float64(h.UsedMiB), name, "used")
		gauge(c.hostRAM, float64(h.ReservedMiB), name, "reserved")
		gauge(c.hostRAM, float64(h.FreeMiB), name, "free")
	}
	for i, s := range hostStates {
		gauge(c.hosts, float64(hosts[i]), s)
	}

	k := &st.Counters
	for _, d := range c.counters {
		counter(d.desc, d.get(k))
	}
	for cause, n := range k.Failures {
		counter(c.failures, n, labelValue(cause))
	}
	for src, n := range k.HostMismatches {
		counter(c.hostMismatches, n, labelValue(src))
	}
	for src, n := range k.MalformedMessages {
		counter(c.malformed, n, labelValue(src))
	}

	if es, ok := c.src.(EdgeSource); ok {
		for _, d := range c.edge {
			counter(d.desc, d.get(es))
		}
	}
	if st.Role != "" {
		gauge(c.leader, boolValue(st.Role == schemas.RoleLeader))
		gauge(c.term, float64(st.Term))
	}
	if ls, ok := c.src.(LeaderSource); ok && st.Role != "" {
		counter(c.takeovers, ls.Takeovers())
	}
	if c.conn != nil {
		counter(c.natsSlow, c.conn.SlowConsumers.Load())
		counter(c.natsAsync, c.conn.AsyncErrors.Load())
		counter(c.natsDisc, c.conn.Disconnects.Load())
		counter(c.natsReco, c.conn.Reconnects.Load())
	}
}

// NewRegistry returns a registry holding a Collector of src (with conn's
// counters when conn is not nil) and the standard Go runtime and process
// collectors.
func NewRegistry(src Source, conn *natsconn.Stats) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		NewCollector(src, conn),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// labelValue makes s a valid label value. Names are checked to be UTF-8 when
// decoded, so this changes nothing in practice; it keeps a bad name from
// failing a whole scrape.
func labelValue(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
