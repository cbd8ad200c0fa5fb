package ops

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/taskselector/taskselector/internal/natsconn"
	"github.com/taskselector/taskselector/schemas"
)

// fakeSource is a Source whose status the test sets; it counts Status calls.
type fakeSource struct {
	mu      sync.Mutex
	st      schemas.SelectorStatus
	restart time.Duration
	calls   int
}

func (f *fakeSource) Status() schemas.SelectorStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return f.st
}

func (f *fakeSource) RestartToReady() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.restart
}

func (f *fakeSource) set(st schemas.SelectorStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = st
}

func (f *fakeSource) statusCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func sampleStatus() schemas.SelectorStatus {
	return schemas.SelectorStatus{
		V: schemas.Version, Ready: true, Connected: true, Degraded: true, DegradedReason: "most hosts stale", Disruption: "partial",
		Backoff:         schemas.Backoff{Level: 3},
		PendingLaunches: 1,
		Targets: []schemas.TargetStatus{
			{Target: "a", State: schemas.TargetActive},
			{Target: "b", State: schemas.TargetActive},
			{Target: "c", State: schemas.TargetPending},
			{Target: "d", State: schemas.TargetBlocked},
			{Target: "e", State: schemas.TargetSuspect},
		},
		Hosts: []schemas.HostStatusLine{
			{Host: "w1", TotalMiB: 8192, UsedMiB: 1000, ReservedMiB: 2048, FreeMiB: 5144},
			{Host: "I.I.I.I \"q\"", TotalMiB: 100, Stale: true},
			{Host: "ホスト", TotalMiB: 50, Stale: true, Lost: true},
		},
		Counters: schemas.Counters{
			Launches: 10, Confirmed: 8, Timeouts: 2, Stale: 1, Kills: 3, Requeues: 4, Adoptions: 5,
			FencedHeartbeats: 6, Heartbeats: 700, Events: 9, DuplicateEvents: 1, PhasesCompleted: 7,
			HostsLost: 1, SlowConsumerDrops: 11, StoreErrors: 12, Fences: 14, InputGaps: 15,
			Failures:          map[string]uint64{"insufficient_ram": 2, "helpers_unavailable": 1},
			MalformedMessages: map[string]uint64{"heartbeat": 13},
			HostMismatches:    map[string]uint64{"heartbeat": 4},
		},
	}
}

func TestCollectorExportsStatus(t *testing.T) {
	src := &fakeSource{st: sampleStatus(), restart: 1500 * time.Millisecond}
	c := NewCollector(src, nil)

	const want = `
# HELP taskselector_ready 1 when the selector is connected and past its recovery grace.
# TYPE taskselector_ready gauge
taskselector_ready 1
# HELP taskselector_degraded 1 while the disruption mode is not normal (see taskselector_disruption).
# TYPE taskselector_degraded gauge
taskselector_degraded 1
# HELP taskselector_disruption 1 for the current disruption mode: normal, partial (silent hosts are declared lost at a limited rate) or full (nothing is declared lost or launched).
# TYPE taskselector_disruption gauge
taskselector_disruption{mode="full"} 0
taskselector_disruption{mode="normal"} 0
taskselector_disruption{mode="partial"} 1
# HELP taskselector_recovering 1 while the selector rebuilds its state after a start or reconnect.
# TYPE taskselector_recovering gauge
taskselector_recovering 0
# HELP taskselector_backoff_level Level of the global launch backoff (0: none).
# TYPE taskselector_backoff_level gauge
taskselector_backoff_level 3
# HELP taskselector_pending_launches Launches awaiting their first heartbeat.
# TYPE taskselector_pending_launches gauge
taskselector_pending_launches 1
# HELP taskselector_restart_to_ready_seconds Time the last start took to rebuild state and subscribe (0 before that).
# TYPE taskselector_restart_to_ready_seconds gauge
taskselector_restart_to_ready_seconds 1.5
# HELP taskselector_targets Targets by state.
# TYPE taskselector_targets gauge
taskselector_targets{state="active"} 2
taskselector_targets{state="blocked"} 1
taskselector_targets{state="complete"} 0
taskselector_targets{state="launching"} 0
taskselector_targets{state="pending"} 1
taskselector_targets{state="suspect"} 1
# HELP taskselector_hosts Hosts by state: live, stale (no recent status) or lost.
# TYPE taskselector_hosts gauge
taskselector_hosts{state="live"} 1
taskselector_hosts{state="lost"} 1
taskselector_hosts{state="stale"} 1
# HELP taskselector_host_ram_mib A host's RAM in MiB: total, used (reported), reserved (by the selector) and free (for new launches).
# TYPE taskselector_host_ram_mib gauge
taskselector_host_ram_mib{host="I.I.I.I \"q\"",kind="free"} 0
taskselector_host_ram_mib{host="I.I.I.I \"q\"",kind="reserved"} 0
taskselector_host_ram_mib{host="I.I.I.I \"q\"",kind="total"} 100
taskselector_host_ram_mib{host="I.I.I.I \"q\"",kind="used"} 0
taskselector_host_ram_mib{host="w1",kind="free"} 5144
taskselector_host_ram_mib{host="w1",kind="reserved"} 2048
taskselector_host_ram_mib{host="w1",kind="total"} 8192
taskselector_host_ram_mib{host="w1",kind="used"} 1000
taskselector_host_ram_mib{host="ホスト",kind="free"} 0
taskselector_host_ram_mib{host="ホスト",kind="reserved"} 0
taskselector_host_ram_mib{host="ホスト",kind="total"} 50
taskselector_host_ram_mib{host="ホスト",kind="used"} 0
# HELP taskselector_launches_total Launch requests sent.
# TYPE taskselector_launches_total counter
taskselector_launches_total 10
# HELP taskselector_heartbeats_total Heartbeats handled by the engine.
# TYPE taskselector_heartbeats_total counter
taskselector_heartbeats_total 700
# HELP taskselector_store_errors_total Failed writes to the tasks bucket.
# TYPE taskselector_store_errors_total counter
taskselector_store_errors_total 12
# HELP taskselector_failures_total Failed launches and tasks, by cause.
# TYPE taskselector_failures_total counter
taskselector_failures_total{cause="helpers_unavailable"} 1
taskselector_failures_total{cause="insufficient_ram"} 2
# HELP taskselector_host_mismatches_total Of the messages dropped as malformed, those whose body named another host than their subject, by source.
# TYPE taskselector_host_mismatches_total counter
taskselector_host_mismatches_total{source="heartbeat"} 4
# HELP taskselector_malformed_messages_total Messages dropped as malformed, by source.
# TYPE taskselector_malformed_messages_total counter
taskselector_malformed_messages_total{source="heartbeat"} 13
`
	names := []string{
		"taskselector_ready", "taskselector_degraded", "taskselector_disruption", "taskselector_recovering", "taskselector_backoff_level",
		"taskselector_pending_launches", "taskselector_restart_to_ready_seconds", "taskselector_targets",
		"taskselector_hosts", "taskselector_host_ram_mib", "taskselector_launches_total",
		"taskselector_heartbeats_total", "taskselector_store_errors_total", "taskselector_failures_total",
		"taskselector_malformed_messages_total", "taskselector_host_mismatches_total",
	}
	before := src.statusCalls()
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	if n := src.statusCalls() - before; n != 1 {
		t.Fatalf("one scrape called Status %d times, want 1", n)
	}

	// Every Counters field is exported, each from its own field.
	k := sampleStatus().Counters
	for name, v := range map[string]uint64{
		"launches_total": k.Launches, "confirmed_total": k.Confirmed, "timeouts_total": k.Timeouts,
		"stale_total": k.Stale, "kills_total": k.Kills, "requeues_total": k.Requeues,
		"adoptions_total": k.Adoptions, "fenced_heartbeats_total": k.FencedHeartbeats,
		"heartbeats_total": k.Heartbeats, "events_total": k.Events, "duplicate_events_total": k.DuplicateEvents,
		"phases_completed_total": k.PhasesCompleted, "hosts_lost_total": k.HostsLost,
		"slow_consumer_drops_total": k.SlowConsumerDrops, "store_errors_total": k.StoreErrors,
		"fences_total": k.Fences, "input_gaps_total": k.InputGaps,
	} {
		if got := collectedValue(t, c, "taskselector_"+name); got != float64(v) {
			t.Errorf("taskselector_%s = %v, want %d", name, got, v)
		}
	}
}

// collectedValue is the value of the single series named name.
func collectedValue(t *testing.T, c prometheus.Collector, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		if len(mf.Metric) != 1 {
			t.Fatalf("%s has %d series, want 1", name, len(mf.Metric))
		}
		m := mf.Metric[0]
		if m.Counter != nil {
			return m.Counter.GetValue()
		}
		return m.Gauge.GetValue()
	}
	t.Fatalf("%s not collected", name)
	return 0
}

func TestCollectorEmptyAndConnStats(t *testing.T) {
	// Before the service has an engine, Status is mostly empty.
	src := &fakeSource{st: schemas.SelectorStatus{V: schemas.Version, Recovering: true}}
	var conn natsconn.Stats
	conn.SlowConsumers.Add(2)
	conn.AsyncErrors.Add(3)
	conn.Disconnects.Add(4)
	conn.Reconnects.Add(1)
	c := NewCollector(src, &conn)

	const want = `
# HELP taskselector_ready 1 when the selector is connected and past its recovery grace.
# TYPE taskselector_ready gauge
taskselector_ready 0
# HELP taskselector_recovering 1 while the selector rebuilds its state after a start or reconnect.
# TYPE taskselector_recovering gauge
taskselector_recovering 1
# HELP taskselector_hosts Hosts by state: live, stale (no recent status) or lost.
# TYPE taskselector_hosts gauge
taskselector_hosts{state="live"} 0
taskselector_hosts{state="lost"} 0
taskselector_hosts{state="stale"} 0
# HELP taskselector_nats_slow_consumers_total Slow-consumer episodes on the NATS connection.
# TYPE taskselector_nats_slow_consumers_total counter
taskselector_nats_slow_consumers_total 2
# HELP taskselector_nats_async_errors_total Asynchronous errors on the NATS connection.
# TYPE taskselector_nats_async_errors_total counter
taskselector_nats_async_errors_total 3
# HELP taskselector_nats_disconnects_total NATS connection losses.
# TYPE taskselector_nats_disconnects_total counter
taskselector_nats_disconnects_total 4
# HELP taskselector_nats_reconnects_total NATS connection recoveries.
# TYPE taskselector_nats_reconnects_total counter
taskselector_nats_reconnects_total 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"taskselector_ready", "taskselector_recovering", "taskselector_hosts",
		"taskselector_nats_slow_consumers_total", "taskselector_nats_async_errors_total",
		"taskselector_nats_disconnects_total", "taskselector_nats_reconnects_total"); err != nil {
		t.Fatal(err)
	}
	// No host, no RAM series; no failure or malformed cause, no series.
	for _, name := range []string{"taskselector_host_ram_mib", "taskselector_failures_total", "taskselector_malformed_messages_total"} {
		if n := testutil.CollectAndCount(c, name); n != 0 {
			t.Errorf("%s: %d series, want 0", name, n)
		}
	}
	// Without connection stats, no NATS series.
	if n := testutil.CollectAndCount(NewCollector(src, nil), "taskselector_nats_reconnects_total"); n != 0 {
		t.Errorf("nats series without connection stats: %d", n)
	}
}

func TestCollectorConsistentAndLintClean(t *testing.T) {
	src := &fakeSource{st: sampleStatus()}
	// A pedantic registry fails Gather if a metric was not described, or
	// if two series collide.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(src, &natsconn.Stats{}))
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestCollectorBadUTF8HostNamesDoNotFailTheScrape(t *testing.T) {
	st := sampleStatus()
	st.Hosts = append(st.Hosts,
		schemas.HostStatusLine{Host: "bad\xff", TotalMiB: 1},
		schemas.HostStatusLine{Host: "bad\xfe", TotalMiB: 2})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(&fakeSource{st: st}, nil))
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("gather: %v", err)
	}
	if n, err := testutil.GatherAndCount(reg, "taskselector_host_ram_mib"); err != nil || n != 4*4 {
		t.Fatalf("host_ram_mib series = %d, %v; want 16 (w1, two others and one bad name)", n, err)
	}
	const hosts = `
# HELP taskselector_hosts Hosts by state: live, stale (no recent status) or lost.
# TYPE taskselector_hosts gauge
taskselector_hosts{state="live"} 3
taskselector_hosts{state="lost"} 1
taskselector_hosts{state="stale"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(hosts), "taskselector_hosts"); err != nil {
		t.Fatal(err)
	}
}

func TestRegistryHasGoAndProcessMetrics(t *testing.T) {
	reg := NewRegistry(&fakeSource{st: sampleStatus()}, nil)
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "taskselector_ready"} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n != 1 {
			t.Errorf("%s: %d series, %v; want 1", name, n, err)
		}
	}
}

// edgeSource is a fakeSource that also counts what its edge did.
type edgeSource struct{ fakeSource }

func (*edgeSource) RequestsDropped() uint64 { return 21 }
func (*edgeSource) RequestsMerged() uint64  { return 22 }
func (*edgeSource) ReplyErrors() uint64     { return 23 }
func (*edgeSource) BacklogEvents() uint64   { return 24 }

func TestCollectorExportsEdgeCountersWhenTheSourceHasThem(t *testing.T) {
	src := &edgeSource{fakeSource{st: sampleStatus()}}
	c := NewCollector(src, nil)
	for name, want := range map[string]float64{
		"requests_dropped_total": 21, "requests_merged_total": 22, "reply_errors_total": 23, "backlog_events_total": 24,
	} {
		if got := collectedValue(t, c, "taskselector_"+name); got != want {
			t.Errorf("taskselector_%s = %v, want %v", name, got, want)
		}
	}
	// A plain Source exports none of them.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(&fakeSource{st: sampleStatus()}, nil))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "taskselector_requests_") {
			t.Errorf("plain source exports %s", mf.GetName())
		}
	}
}
