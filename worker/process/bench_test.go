package process

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/internal/cgroup"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
)

// cpuWindow is how long BenchmarkSamplingCPUPerTask measures the agent's CPU
// per iteration (and once with no task, for the baseline).
var cpuWindow = flag.Duration("process.cpuwindow", 5*time.Second,
	"BenchmarkSamplingCPUPerTask: length of each CPU measurement window")

// benchTasks is the tasks file of the benchmarks: a tiny real program that
// sleeps with a few hundred KiB resident and dies on SIGTERM.
const benchTasks = `
[[task]]
type = "sleep"
command = [%q, "3600"]
kill_grace = "10s"
`

// benchAgent is a real worker agent (worker.New with the exec executor) on an
// embedded NATS server, and the selector's side of the connection.
type benchAgent struct {
	cli   *nats.Conn
	subj  protocol.Subjects
	host  string
	agent *worker.Agent
	ex    *Executor
	seq   int
}

// startBenchAgent starts an agent whose executor uses memory mode mode ("" for
// the best available) and heartbeats every hb. The agent kills its tasks and
// stops when tb ends. A mode this host cannot offer skips tb.
func startBenchAgent(tb testing.TB, mode cgroup.Mode, hb time.Duration) *benchAgent {
	tb.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		tb.Skipf("no sleep program: %v", err)
	}
	dir := tb.TempDir()
	tasks := filepath.Join(dir, "tasks.toml")
	if err := os.WriteFile(tasks, []byte(fmt.Sprintf(benchTasks, sleep)), 0o600); err != nil {
		tb.Fatal(err)
	}
	const host, ramMiB = "bench", 1 << 20
	ex, err := New(Config{
		Host: host, RAMMiB: ramMiB, TasksFile: tasks, StateDir: filepath.Join(dir, "state"),
		LogMaxBytes: 64 << 10, SlackMiB: 16, MemoryMode: mode,
		CgroupParent: fmt.Sprintf("taskselector-bench-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9),
	})
	if err != nil {
		if mode != "" && mode != cgroup.ModeProc {
			tb.Skipf("memory mode %s not available here: %v", mode, err)
		}
		tb.Fatal(err)
	}

	srv := natstest.Server(tb)
	cli := natstest.Conn(tb, srv.ClientURL())
	js, err := jetstream.New(cli)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	subj := protocol.NewSubjects("")
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: protocol.EventStream, Subjects: []string{subj.Events()}, Storage: jetstream.FileStorage,
	}); err != nil {
		tb.Fatal(err)
	}
	a, err := worker.New(natstest.Conn(tb, srv.ClientURL()), worker.Config{
		Host: host, RAMMiB: ramMiB, HeartbeatInterval: hb, Executor: Name, KillOnShutdown: true,
	}, ex, nil)
	if err != nil {
		_ = ex.Close()
		tb.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	tb.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			tb.Errorf("agent: %v", err)
		}
	})
	select {
	case <-a.Ready():
	case err := <-done:
		tb.Fatalf("agent stopped before it was ready: %v", err)
	}
	return &benchAgent{cli: cli, subj: subj, host: host, agent: a, ex: ex}
}

// launch asks the agent to start a sleep task and returns its id and PID.
func (ba *benchAgent) launch(tb testing.TB) (string, int64) {
	tb.Helper()
	ba.seq++
	req := schemas.LaunchRequest{
		V: schemas.Version, TaskID: "bench-" + strconv.Itoa(ba.seq), Epoch: 1,
		Target: "target-" + strconv.Itoa(ba.seq), Type: "sleep",
		RAM: schemas.TaskRAM{WrapperMiB: 16}, Args: map[string]any{},
	}
	data, err := schemas.Marshal(&req)
	if err != nil {
		tb.Fatal(err)
	}
	msg, err := ba.cli.Request(ba.subj.Launch(ba.host), data, 10*time.Second)
	if err != nil {
		tb.Fatalf("launch %s: %v", req.TaskID, err)
	}
	rep, err := schemas.DecodeLaunchReply(msg.Data)
	if err != nil || rep.Error != nil || rep.PID <= 0 {
		tb.Fatalf("launch %s: reply %s (%v)", req.TaskID, msg.Data, err)
	}
	return req.TaskID, rep.PID
}

// kill asks the agent to stop a task and checks that it is gone.
func (ba *benchAgent) kill(tb testing.TB, taskID string, pid int64) {
	tb.Helper()
	data, err := schemas.Marshal(&schemas.KillRequest{V: schemas.Version, TaskID: taskID, PID: pid, Reason: "bench"})
	if err != nil {
		tb.Fatal(err)
	}
	msg, err := ba.cli.Request(ba.subj.Kill(ba.host), data, 15*time.Second)
	if err != nil {
		tb.Fatalf("kill %s: %v", taskID, err)
	}
	rep, err := schemas.DecodeKillReply(msg.Data)
	if err != nil || rep.Error != nil || rep.Running {
		tb.Fatalf("kill %s: reply %s (%v)", taskID, msg.Data, err)
	}
}

// heartbeatArrival is a heartbeat's task id and when it was received.
type heartbeatArrival struct {
	taskID string
	at     time.Time
}

// watchHeartbeats delivers every heartbeat's task id and arrival time.
func (ba *benchAgent) watchHeartbeats(tb testing.TB) <-chan heartbeatArrival {
	tb.Helper()
	ch := make(chan heartbeatArrival, 1024)
	var h schemas.Heartbeat
	sub, err := ba.cli.Subscribe(ba.subj.Heartbeats(), func(m *nats.Msg) {
		at := time.Now()
		if err := schemas.DecodeHeartbeatInto(m.Data, &h); err != nil {
			tb.Errorf("heartbeat %s: %v", m.Data, err)
			return
		}
		select {
		case ch <- heartbeatArrival{h.TaskID, at}:
		default: // only the first heartbeat of a launch matters
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := ba.cli.Flush(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = sub.Unsubscribe() })
	return ch
}

// launchToHeartbeat launches one task and returns the time from sending the
// request to its launch reply and to its first heartbeat, with its id and PID.
func (ba *benchAgent) launchToHeartbeat(tb testing.TB, hbs <-chan heartbeatArrival) (reply, first time.Duration, taskID string, pid int64) {
	tb.Helper()
	// Heartbeats of earlier tasks may still be queued.
	for len(hbs) > 0 {
		<-hbs
	}
	start := time.Now()
	taskID, pid = ba.launch(tb)
	reply = time.Since(start)
	timeout := time.After(10 * time.Second)
	for {
		select {
		case hb := <-hbs:
			if hb.taskID == taskID {
				return reply, hb.at.Sub(start), taskID, pid
			}
		case <-timeout:
			tb.Fatalf("no heartbeat of %s within 10s", taskID)
		}
	}
}

// percentile is the nearest-rank p-th percentile (0 < p <= 100) of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cpuTime is the user plus system CPU time of this process so far (all its
// threads; its children, the tasks, do not count).
func cpuTime(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuOver is the CPU time this process uses over d, and the wall time.
func cpuOver(tb testing.TB, d time.Duration) (cpu, wall time.Duration) {
	tb.Helper()
	c0, t0 := cpuTime(tb), time.Now()
	time.Sleep(d)
	return cpuTime(tb) - c0, time.Since(t0)
}

// BenchmarkLaunchToFirstHeartbeat measures, through a real NATS server and a
// real worker agent with the exec executor, the time from sending a launch
// request on tasks.launch.<host> to receiving the task's first heartbeat on
// tasks.heartbeat.> (and to the launch reply): the executor's fork and exec
// of a real program, its memory group and first usage reading included. It
// reports p50 and p99 of both; ns/op is the mean to the first heartbeat. The
// task is killed after each measurement, outside the timer. Use
// -benchtime=200x or more for a meaningful p99.
func BenchmarkLaunchToFirstHeartbeat(b *testing.B) {
	for _, mode := range []cgroup.Mode{cgroup.ModeV1, cgroup.ModeProc} {
		b.Run("mode="+string(mode), func(b *testing.B) {
			ba := startBenchAgent(b, mode, 0)
			hbs := ba.watchHeartbeats(b)
			// One warm-up launch: first connections, first group.
			_, _, id, pid := ba.launchToHeartbeat(b, hbs)
			ba.kill(b, id, pid)

			firsts := make([]time.Duration, 0, b.N)
			replies := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				reply, first, id, pid := ba.launchToHeartbeat(b, hbs)
				b.StopTimer()
				firsts, replies = append(firsts, first), append(replies, reply)
				ba.kill(b, id, pid)
				b.StartTimer()
			}
			b.StopTimer()
			slices.Sort(firsts)
			slices.Sort(replies)
			b.ReportMetric(ms(percentile(firsts, 50)), "p50-ms")
			b.ReportMetric(ms(percentile(firsts, 99)), "p99-ms")
			b.ReportMetric(ms(percentile(replies, 50)), "reply-p50-ms")
			b.ReportMetric(ms(percentile(replies, 99)), "reply-p99-ms")
		})
	}
}

// BenchmarkSamplingCPUPerTask measures the CPU the agent spends on live tasks
// (RSS sampling for the heartbeats and HostStatus, the proc mode's limit
// monitor, and encoding and publishing the heartbeats) with 100 live real
// tasks and the default heartbeat interval (1 s). The benchmark process is
// the agent: its CPU time (getrusage RUSAGE_SELF: every thread, not the
// tasks, which are child processes) over a window of -process.cpuwindow
// [5s] with 100 tasks, minus the same window with none (the agent's own
// HostStatus ticks, the NATS server in this process, the Go runtime), is
// the cost of the tasks. The embedded NATS server has no subscriber for the
// heartbeats, so their delivery costs nothing beyond the publish; the
// figure is an upper bound of the sampling alone. Each iteration is one
// window; run it with -benchtime=1x (or 3x). It reports cpu-%-per-task
// (percent of one core per live task) and cpu-%-total-100-tasks; the goal is
// a total under 2 %.
func BenchmarkSamplingCPUPerTask(b *testing.B) {
	const n = 100
	for _, mode := range []cgroup.Mode{cgroup.ModeV1, cgroup.ModeProc} {
		b.Run("mode="+string(mode), func(b *testing.B) {
			ba := startBenchAgent(b, mode, worker.DefaultHeartbeatInterval)
			settle := 2 * worker.DefaultHeartbeatInterval
			time.Sleep(settle)
			baseCPU, baseWall := cpuOver(b, *cpuWindow)

			for range n {
				ba.launch(b)
			}
			if got := ba.agent.Stats().Running; got != n {
				b.Fatalf("%d tasks running, want %d", got, n)
			}
			time.Sleep(settle) // past the launches' own cost and their first ticks

			var loadCPU, loadWall time.Duration
			hb1 := ba.agent.Stats().HeartbeatsSent
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c, w := cpuOver(b, *cpuWindow)
				loadCPU += c
				loadWall += w
			}
			b.StopTimer()
			hbs := ba.agent.Stats().HeartbeatsSent - hb1
			if got := ba.agent.Stats().Running; got != n {
				b.Fatalf("%d tasks running after the window, want %d", got, n)
			}
			if want := uint64(float64(n) * loadWall.Seconds() / worker.DefaultHeartbeatInterval.Seconds()); hbs < want*9/10 {
				b.Fatalf("%d heartbeats sent in %v with %d tasks, want about %d", hbs, loadWall, n, want)
			}

			base := baseCPU.Seconds() / baseWall.Seconds()
			load := loadCPU.Seconds() / loadWall.Seconds()
			total := 100 * (load - base) // percent of one core for n tasks
			b.ReportMetric(total/n, "cpu-%-per-task")
			b.ReportMetric(total, "cpu-%-total-100-tasks")
			b.ReportMetric(100*base, "cpu-%-baseline")
			b.ReportMetric(float64(hbs)/loadWall.Seconds(), "heartbeats/s")
			b.Logf("mode %s: baseline %.3f%% of a core, with %d tasks %.3f%%; %d heartbeats in %v",
				ba.ex.MemoryAccounting(), 100*base, n, 100*load, hbs, loadWall.Round(time.Millisecond))
		})
	}
}

// TestBenchHelpers runs the benchmarks' helpers once, so that they stay
// correct where only tests run: one launch to first heartbeat, its kill, and
// a short CPU window with the task live.
func TestBenchHelpers(t *testing.T) {
	ba := startBenchAgent(t, cgroup.ModeProc, 0)
	hbs := ba.watchHeartbeats(t)
	reply, first, id, pid := ba.launchToHeartbeat(t, hbs)
	if reply <= 0 || first <= 0 || !procAlive(int(pid)) {
		t.Fatalf("launch %s: reply after %v, first heartbeat after %v, pid %d alive %v", id, reply, first, pid, procAlive(int(pid)))
	}
	if cpu, wall := cpuOver(t, 20*time.Millisecond); cpu < 0 || wall < 20*time.Millisecond {
		t.Errorf("cpu %v over %v", cpu, wall)
	}
	ba.kill(t, id, pid)
	if procAlive(int(pid)) {
		t.Errorf("pid %d survives its kill", pid)
	}
	d := []time.Duration{4, 1, 3, 2}
	slices.Sort(d)
	if p50, p99 := percentile(d, 50), percentile(d, 99); p50 != 2 || p99 != 4 {
		t.Errorf("percentiles of 1..4: p50 %v, p99 %v", p50, p99)
	}
}

// TestKillDoesNotWaitOutTheGrace: a task that dies on SIGTERM is gone, and
// Kill returns, long before its kill grace (10 s here), in every mode. Kill
// once polled a memory group that the exit cleanup had already removed, and
// so always waited the whole grace.
func TestKillDoesNotWaitOutTheGrace(t *testing.T) {
	for _, mode := range []cgroup.Mode{"", cgroup.ModeProc} {
		t.Run("mode="+string(mode), func(t *testing.T) {
			ba := startBenchAgent(t, mode, 0)
			tk, err := ba.ex.Start(&worker.LaunchSpec{TaskID: "k1", Epoch: 1, Target: "t", Type: "sleep",
				RAM: schemas.TaskRAM{WrapperMiB: 16}}, worker.Hooks{})
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			if err := tk.Kill(); err != nil {
				t.Fatal(err)
			}
			if d, grace := time.Since(t0), ba.ex.types["sleep"].KillGrace; d >= grace/2 {
				t.Errorf("Kill of a task that dies on SIGTERM took %v (kill grace %v)", d, grace)
			}
		})
	}
}
