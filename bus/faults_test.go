package bus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// Edge faults of issue 7, at the level of the bus package.

// TestDecodeReplyKeepsPsPIDsAndTakesErrorsAsUnanswered (defect 1): a ps reply
// carries the PIDs its request named, and a ps or kill reply with its error
// set becomes unanswered without counting as malformed.
func TestDecodeReplyKeepsPsPIDsAndTakesErrorsAsUnanswered(t *testing.T) {
	svc := NewSelectorService(&nats.Conn{}, ServiceConfig{}, testLog())
	ps := outCmd{kind: selector.CmdPs, host: "h1", pids: []int64{7, 9}}
	ev := svc.decodeReply(&ps, mustMarshal(t, &schemas.PsReply{V: schemas.Version, Host: "h1", Tasks: []schemas.PsTask{}}))
	if r, ok := ev.(*selector.PsReplied); !ok || !slices.Equal(r.PIDs, []int64{7, 9}) {
		t.Fatalf("ps reply event %#v, want PsReplied with PIDs [7 9]", ev)
	}
	all := outCmd{kind: selector.CmdPs, host: "h1"}
	ev = svc.decodeReply(&all, mustMarshal(t, &schemas.PsReply{V: schemas.Version, Host: "h1", Tasks: []schemas.PsTask{}}))
	if r, ok := ev.(*selector.PsReplied); !ok || r.PIDs != nil {
		t.Fatalf("ps-all reply event %#v, want PsReplied with nil PIDs", ev)
	}
	refusal := &schemas.ReplyError{Code: schemas.CodeInvalid, Message: "no"}
	ev = svc.decodeReply(&ps, mustMarshal(t, &schemas.PsReply{V: schemas.Version, Host: "h1", Tasks: []schemas.PsTask{}, Error: refusal}))
	if r, ok := ev.(*selector.PsUnanswered); !ok || r.Host != "h1" || r.NoResponders {
		t.Fatalf("ps error reply event %#v, want PsUnanswered", ev)
	}
	kill := outCmd{kind: selector.CmdKill, host: "h1", taskID: "t#1", pid: 7}
	ev = svc.decodeReply(&kill, mustMarshal(t, &schemas.KillReply{V: schemas.Version, TaskID: "t#1", PID: 7, Error: refusal}))
	if r, ok := ev.(*selector.KillUnanswered); !ok || r.TaskID != "t#1" || r.Host != "h1" {
		t.Fatalf("kill error reply event %#v, want KillUnanswered", ev)
	}
	if svc.ReplyErrors() != 2 || svc.malformed[SourcePsReply].n.Load() != 0 || svc.malformed[SourceKillReply].n.Load() != 0 {
		t.Fatalf("reply errors %d, malformed ps %d kill %d; want 2, 0, 0", svc.ReplyErrors(),
			svc.malformed[SourcePsReply].n.Load(), svc.malformed[SourceKillReply].n.Load())
	}
}

// TestServiceErrorRepliesAreUnanswered (defect 1): a worker that answers ps
// and kill with an error says nothing about its tasks. A stale task whose
// ps is refused is not taken for gone, and one whose kill is refused is not
// taken for stopped: the selector asks again and launches nothing new until
// a kill succeeds.
func TestServiceErrorRepliesAreUnanswered(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	r := startService(t, connect(t, s.ClientURL()), ServiceConfig{})
	w := startFakeWorker(t, connect(t, s.ClientURL()), "", "h1", 4096)
	ctx := testCtx(t, 60*time.Second)
	if err := c.PutTarget(ctx, "a", declaredSpec()); err != nil {
		t.Fatal(err)
	}
	line := waitTargetState(t, c, "a", selector.StateActive)

	// The task goes silent but runs; every ps is refused.
	w.set(func(w *fakeWorker) { w.psError, w.silent[line.TaskID] = true, true })
	waitFor(t, 20*time.Second, "three refused ps, or a relaunch", func() bool {
		return w.psRequests() >= 3 || w.launchCount() > 1
	})
	if n := w.launchCount(); n != 1 {
		t.Fatalf("target relaunched (%d launches) after a refused ps: the refusal was taken for \"gone\"", n)
	}
	if ts, _ := targetLine(statusOf(t, c), "a"); ts.TaskID != line.TaskID {
		t.Fatalf("target a now %+v, want its task %s kept", ts, line.TaskID)
	}

	// Ps works again and finds the task running; every kill is refused.
	w.set(func(w *fakeWorker) { w.psError, w.killError = false, true })
	waitFor(t, 20*time.Second, "three refused kills, or a relaunch", func() bool {
		return w.killCount() >= 3 || w.launchCount() > 1
	})
	if n := w.launchCount(); n != 1 {
		t.Fatalf("target relaunched (%d launches) after a refused kill: the refusal was taken for \"stopped\"", n)
	}

	// Kills work again: the task is stopped, then replaced.
	w.set(func(w *fakeWorker) { w.killError = false })
	waitFor(t, 20*time.Second, "relaunch after the kill", func() bool { return w.launchCount() == 2 })
	st := statusOf(t, c)
	if m := st.Counters.MalformedMessages; m[SourcePsReply] != 0 || m[SourceKillReply] != 0 {
		t.Fatalf("error replies counted as malformed: %v", m)
	}
	if r.svc.ReplyErrors() < 6 {
		t.Fatalf("%d error replies seen, want at least 6", r.svc.ReplyErrors())
	}
}

// flakyKV wraps the tasks bucket: writes can land and then report a lost
// reply, and reads can fail.
type flakyKV struct {
	jetstream.KeyValue

	mu               sync.Mutex
	loseWriteReplies int // the next writes land, but fail as if their reply was lost
	failReads        int // the next reads fail
	failedReads      int
	// stallWrites: the next writes do not land (yet) and fail as if timed
	// out; the write after each is refused as a clustered stream refuses a
	// compare-and-swap while an earlier proposal of the key is pending.
	stallWrites int
	pending     bool
}

// beforeWrite injects the faults that strike before a write reaches the
// bucket; done reports whether it answered for the write.
func (f *flakyKV) beforeWrite(casErr error) (done bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.pending:
		f.pending = false
		return true, fmt.Errorf("injected: earlier proposal pending: %w", casErr)
	case f.stallWrites > 0:
		f.stallWrites--
		f.pending = true
		return true, fmt.Errorf("injected: write stalled: %w", nats.ErrTimeout)
	}
	return false, nil
}

func (f *flakyKV) afterWrite(rev uint64, err error) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && f.loseWriteReplies > 0 {
		f.loseWriteReplies--
		return 0, fmt.Errorf("injected: write landed, reply lost: %w", nats.ErrTimeout)
	}
	return rev, err
}

func (f *flakyKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	if done, err := f.beforeWrite(jetstream.ErrKeyExists); done {
		return 0, err
	}
	return f.afterWrite(f.KeyValue.Create(ctx, key, value, opts...))
}

func (f *flakyKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	if done, err := f.beforeWrite(jetstream.ErrKeyRevisionMismatch); done {
		return 0, err
	}
	return f.afterWrite(f.KeyValue.Update(ctx, key, value, rev))
}

func (f *flakyKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	f.mu.Lock()
	if f.failReads > 0 {
		f.failReads--
		f.failedReads++
		f.mu.Unlock()
		return nil, errors.New("injected: read failed")
	}
	f.mu.Unlock()
	return f.KeyValue.Get(ctx, key)
}

// TestServiceAmbiguousWriteReadErrorIsRetried (defect 10): a write lands but
// its reply is lost; the retry then loses its compare-and-swap (against the
// write itself), and the read that would settle this fails once. That read
// error is transient: the selector retries, finds its own write, and goes on
// launching instead of reporting a store conflict.
func TestServiceAmbiguousWriteReadErrorIsRetried(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyKV{}
	r := startService(t, connect(t, s.ClientURL()), ServiceConfig{}, func(svc *SelectorService) {
		svc.wrapTasksKV = func(kv jetstream.KeyValue) jetstream.KeyValue {
			f.KeyValue = kv
			return f
		}
	})
	startFakeWorker(t, connect(t, s.ClientURL()), "", "h1", 4096)
	ctx := testCtx(t, 30*time.Second)
	f.mu.Lock()
	f.loseWriteReplies, f.failReads = 1, 1
	f.mu.Unlock()
	if err := c.PutTarget(ctx, "r1", declaredSpec()); err != nil {
		t.Fatal(err)
	}
	conflict := func(st schemas.SelectorStatus) bool { return strings.Contains(st.LaunchesStopped, "compare-and-swap") }
	waitFor(t, 10*time.Second, "r1 active, or a store conflict", func() bool {
		st := statusOf(t, c)
		ts, _ := targetLine(st, "r1")
		return ts.State == selector.StateActive || conflict(st)
	})
	if st := statusOf(t, c); conflict(st) {
		t.Fatalf("launches stopped: %s", st.LaunchesStopped)
	}
	f.mu.Lock()
	lost, failed := f.loseWriteReplies, f.failedReads
	f.mu.Unlock()
	if lost != 0 || failed != 1 {
		t.Fatalf("faults not exercised: %d lost replies left, %d failed reads", lost, failed)
	}
	// Still launching, and the revision it holds is the bucket's.
	if err := c.PutTarget(ctx, "r2", declaredSpec()); err != nil {
		t.Fatal(err)
	}
	waitTargetState(t, c, "r2", selector.StateActive)
	e, err := f.KeyValue.Get(ctx, protocol.EncodeName("r1"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "r1's revision adopted", func() bool {
		rev, ok := r.svc.tasks.Revision("r1")
		e, err = f.KeyValue.Get(ctx, protocol.EncodeName("r1"))
		return err == nil && ok && rev == e.Revision()
	})
}

// TestWriterRetriesWhileEarlierAttemptPending (defect 10, as on a clustered
// stream without quorum): a write times out without landing, and its retry
// loses its compare-and-swap because the first proposal is still pending.
// The key still holds the revision the writer saw, so no other writer
// exists: the writer retries until the write lands instead of reporting a
// conflict.
func TestWriterRetriesWhileEarlierAttemptPending(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	kv := kvOf(t, nc, protocol.TasksBucket)
	ctx := testCtx(t, 20*time.Second)
	f := &flakyKV{KeyValue: kv}
	svc := NewSelectorService(nc, ServiceConfig{WriteTimeout: 2 * time.Second}, testLog())
	svc.tasks = NewTaskStore(f, testLog())
	v1 := mustMarshal(t, ptr(taskState("x", "t1", 1)))
	v2 := mustMarshal(t, ptr(taskState("x", "t2", 2)))
	for _, c := range []struct {
		name string
		data []byte
	}{{"create", v1}, {"update", v2}} {
		f.mu.Lock()
		f.stallWrites = 1
		f.mu.Unlock()
		if err := svc.writer.write(ctx, outCmd{kind: selector.CmdPersist, target: "x", data: c.data}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		e, err := kv.Get(ctx, protocol.EncodeName("x"))
		if err != nil || !bytes.Equal(e.Value(), c.data) {
			t.Fatalf("%s: stored %q (%v), want %q", c.name, e.Value(), err, c.data)
		}
		if rev, _ := svc.tasks.Revision("x"); rev != e.Revision() {
			t.Fatalf("%s: writer holds revision %d, bucket %d", c.name, rev, e.Revision())
		}
	}
}

// TestServiceInputDropsReported (defect 7, both sources): when the heartbeat
// or host status subscription drops messages (its pending limit is reached
// while the service is slow), the engine is told.
func TestServiceInputDropsReported(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	stalled := map[string]chan struct{}{}
	stall := func(source string) func() {
		ch := make(chan struct{})
		mu.Lock()
		stalled[source] = ch
		mu.Unlock()
		return func() {
			mu.Lock()
			delete(stalled, source)
			mu.Unlock()
			close(ch)
		}
	}
	cfg := ServiceConfig{
		Tick:              10 * time.Millisecond,
		HeartbeatPending:  PendingLimits{Msgs: 2},
		HostStatusPending: PendingLimits{Msgs: 2},
		Faults: &ServiceFaults{BeforeInput: func(source string) {
			mu.Lock()
			ch := stalled[source]
			mu.Unlock()
			if ch != nil {
				<-ch
			}
		}},
	}
	r := startService(t, connect(t, s.ClientURL()), cfg)
	subj := protocol.NewSubjects("")
	hb := &schemas.Heartbeat{V: 1, TaskID: "t", Epoch: 1, PID: 1, Host: "h1", Target: "x", Type: "work", Seq: 1, SentAt: time.Now().UTC()}
	hs := &schemas.HostStatus{V: 1, Host: "h1", RAM: schemas.HostRAM{TotalMiB: 1024}, Tasks: []string{}, SentAt: time.Now().UTC()}
	for _, src := range []struct {
		source, subject string
		data            []byte
	}{
		{selector.InputHostStatuses, subj.Host("h1"), mustMarshal(t, hs)},
		{selector.InputHeartbeats, subj.Heartbeat("h1", "x"), schemas.AppendHeartbeat(nil, hb)},
	} {
		gaps := statusOf(t, c).Counters.InputGaps
		release := stall(src.source)
		for range 50 {
			if err := nc.Publish(src.subject, src.data); err != nil {
				t.Fatal(err)
			}
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, src.source+" drops reported to the engine", func() bool {
			return statusOf(t, c).Counters.InputGaps > gaps
		})
		release()
	}
	if st := r.svc.Status(); st.Counters.SlowConsumerDrops == 0 {
		t.Fatalf("no slow-consumer drops counted")
	}
}

// TestRequestQueueBounds (defect 9): requests wait per host before any
// goroutine takes them; repeats merge; fence kills beyond their per-host
// bound and requests beyond the global bound are dropped (launches never);
// engine requests go before fences; at most MaxInFlightPerHost of one host
// are in flight; and a host's state is gone once it is idle.
func TestRequestQueueBounds(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	listener := connect(t, s.ClientURL())
	subj := protocol.NewSubjects("")
	var mu sync.Mutex
	var seen []string // kinds in arrival order: "fence", "kill", "ps", "launch"
	var at []time.Time
	const timeout = 300 * time.Millisecond
	for _, kind := range []string{"kill", "ps", "launch"} {
		subject := map[string]string{"kill": subj.Kill("silent"), "ps": subj.Ps("silent"), "launch": subj.Launch("silent")}[kind]
		sub, err := listener.Subscribe(subject, func(m *nats.Msg) {
			k := kind
			if kind == "kill" {
				req, err := schemas.DecodeKillRequest(m.Data)
				if err == nil && strings.HasPrefix(req.Reason, "fenced") {
					k = "fence"
				}
			}
			mu.Lock()
			seen = append(seen, k)
			at = append(at, time.Now())
			mu.Unlock()
			// Never answered: each request holds its slot until it
			// times out.
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := listener.Flush(); err != nil {
		t.Fatal(err)
	}

	svc := NewSelectorService(nc, ServiceConfig{
		RequestTimeout: timeout, MaxInFlightPerHost: 2, MaxQueuedFencesPerHost: 3, MaxQueuedRequests: 10,
	}, testLog())
	q := svc.reqs
	kill := func(id string, fence bool) outCmd {
		reason := "heartbeat stale"
		if fence {
			reason = "fenced: stale epoch"
		}
		return outCmd{kind: selector.CmdKill, host: "silent", taskID: id, pid: 5, fence: fence,
			data: mustMarshal(t, &schemas.KillRequest{V: 1, TaskID: id, PID: 5, Reason: reason})}
	}
	ps := func(pid int64) outCmd {
		return outCmd{kind: selector.CmdPs, host: "silent", pids: []int64{pid},
			data: mustMarshal(t, &schemas.PsRequest{V: 1, PIDs: []int64{pid}})}
	}
	launch := outCmd{kind: selector.CmdLaunch, host: "silent", target: "x", taskID: "x#1",
		data: mustMarshal(t, &schemas.LaunchRequest{V: 1, TaskID: "x#1", Epoch: 1, Target: "x", Type: "work",
			RAM: schemas.TaskRAM{WrapperMiB: 1, HelpersMiB: 1}})}

	// No sender runs yet: everything waits.
	for i := range 10 {
		q.enqueue(kill(fmt.Sprintf("ghost-%d", i), true)) // 3 queue, 7 dropped
	}
	q.enqueue(kill("ghost-0", true)) // merged with the queued one
	q.enqueue(kill("task-1", false))
	q.enqueue(kill("task-1", false)) // merged
	q.enqueue(ps(1))
	q.enqueue(ps(1)) // merged
	for pid := int64(2); pid <= 7; pid++ {
		q.enqueue(ps(pid)) // 5 fit the global bound of 10; one is dropped
	}
	q.enqueue(launch) // never dropped
	queued, hosts := q.stats()
	if queued != 11 || hosts != 1 || svc.RequestsDropped() != 8 || svc.RequestsMerged() != 3 {
		t.Fatalf("queued %d on %d hosts, dropped %d, merged %d; want 11, 1, 8, 3",
			queued, hosts, svc.RequestsDropped(), svc.RequestsMerged())
	}
	q.mu.Lock()
	feedback := q.feedback.len()
	q.mu.Unlock()
	if feedback != 1 {
		t.Fatalf("%d events to feed back, want 1 (the dropped ps)", feedback)
	}

	q.start(8)
	defer func() {
		q.close()
		svc.reqCancel()
		q.wait()
	}()
	waitFor(t, 10*time.Second, "every queued request sent", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == 11
	})
	waitFor(t, 10*time.Second, "queue idle and host state gone", func() bool {
		queued, hosts := q.stats()
		return queued == 0 && hosts == 0 && q.busy.count() == 0
	})
	mu.Lock()
	defer mu.Unlock()
	// With two slots, a third request goes out only once the first has
	// timed out: no three arrivals within (well under) the timeout.
	for i := 0; i+2 < len(at); i++ {
		if d := at[i+2].Sub(at[i]); d < timeout/2 {
			t.Errorf("requests %d to %d arrived within %v: more than 2 in flight to one host", i, i+2, d)
		}
	}
	for i, k := range seen[:7] {
		if k == "fence" {
			t.Errorf("a fence kill went out at position %d, before the engine's requests: %v", i, seen)
			break
		}
	}
	if n := len(slices.DeleteFunc(slices.Clone(seen), func(k string) bool { return k != "fence" })); n != 3 {
		t.Errorf("%d fence kills sent, want 3: %v", n, seen)
	}
}

// TestRequestQueueShutdownFeedsBackLaunches: a launch that is not sent
// because the service stops is fed back as not sent.
func TestRequestQueueShutdownFeedsBackLaunches(t *testing.T) {
	svc := NewSelectorService(&nats.Conn{}, ServiceConfig{}, testLog())
	q := svc.reqs
	l := outCmd{kind: selector.CmdLaunch, host: "h", target: "x", taskID: "x#1"}
	q.enqueue(l)
	q.enqueue(outCmd{kind: selector.CmdPs, host: "h"})
	q.stopLaunches()
	q.enqueue(outCmd{kind: selector.CmdLaunch, host: "h", target: "y", taskID: "y#1"})
	q.mu.Lock()
	var got []string
	for q.feedback.len() > 0 {
		ev, ok := q.feedback.pop().(*selector.LaunchUnanswered)
		if !ok || !ev.NotSent {
			t.Fatalf("feedback %#v, want LaunchUnanswered{NotSent}", ev)
		}
		got = append(got, ev.TaskID)
	}
	queued := q.queued
	q.mu.Unlock()
	if !slices.Equal(got, []string{"x#1", "y#1"}) || queued != 1 {
		t.Fatalf("fed back %v with %d queued; want [x#1 y#1] and the ps queued", got, queued)
	}
}
