package bus

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/taskselector/taskselector/client"
	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// allocRequest sends data on tasks.alloc and returns the decoded reply and
// its Nats-Service-Error-Code header.
func allocRequest(t *testing.T, nc *nats.Conn, data []byte, timeout time.Duration) (schemas.AllocReply, string) {
	t.Helper()
	msg, err := nc.Request(protocol.NewSubjects("").Alloc(), data, timeout)
	if err != nil {
		t.Fatalf("alloc request: %v", err)
	}
	rep, err := schemas.DecodeAllocReply(msg.Data)
	if err != nil {
		t.Fatalf("alloc reply %s: %v", msg.Data, err)
	}
	return rep, msg.Header.Get(micro.ErrorCodeHeader)
}

// TestServiceAllocMalformed: malformed alloc requests are answered with
// invalid (header 400), counted by source in status, and the service goes
// on answering.
func TestServiceAllocMalformed(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	c, err := client.New(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	startService(t, connect(t, s.ClientURL()), ServiceConfig{})
	bad := [][]byte{nil, []byte("{"), []byte(`{"v":2}`), []byte("\xff"),
		[]byte(`{"v":1,"task_id":"t-1","epoch":1,"target":"t","host":"h","mib":1,"min_mib":2}`), make([]byte, 70<<10)}
	for _, b := range bad {
		rep, code := allocRequest(t, nc, b, 5*time.Second)
		if rep.Error == nil || rep.Error.Code != schemas.CodeInvalid || code != "400" || len(rep.Grants) > 0 {
			t.Errorf("%.40q: reply %+v, header code %q", b, rep, code)
		}
	}
	rep, _ := allocRequest(t, nc, bad[4], 5*time.Second)
	if rep.TaskID != "t-1" {
		t.Errorf("the error reply names task %q, want t-1 (from the request)", rep.TaskID)
	}
	want := uint64(len(bad) + 1)
	waitFor(t, 5*time.Second, "malformed alloc requests counted", func() bool {
		return statusOf(t, c).Counters.MalformedMessages[SourceAllocRequest] == want
	})
}

// TestServiceAllocUnknownTask: a request about a task the selector does not
// know goes through the engine and is answered unknown_task (header 404),
// and nothing is left waiting.
func TestServiceAllocUnknownTask(t *testing.T) {
	s := natstest.Server(t)
	nc := connect(t, s.ClientURL())
	r := startService(t, connect(t, s.ClientURL()), ServiceConfig{})
	req := schemas.AllocRequest{TaskID: "ghost-1", Epoch: 1, Target: "ghost", Host: "h1", MiB: 100, MinMiB: 10}
	rep, code := allocRequest(t, nc, mustMarshal(t, &req), 5*time.Second)
	if rep.Error == nil || rep.Error.Code != schemas.CodeUnknownTask || code != "404" || len(rep.Grants) > 0 || rep.TaskID != "ghost-1" {
		t.Fatalf("reply %+v (error %+v), header code %q", rep, rep.Error, code)
	}
	if n := r.svc.AllocsWaiting(); n != 0 || r.svc.AllocsTimedOut() != 0 {
		t.Errorf("%d requests still waiting, %d timed out", n, r.svc.AllocsTimedOut())
	}
}

// fakeRequest is a micro.Request that records its answer.
type fakeRequest struct {
	mu   sync.Mutex
	data []byte
	code string
	n    int
}

func (f *fakeRequest) Respond(b []byte, _ ...micro.RespondOpt) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.data, f.n = b, f.n+1
	return nil
}
func (f *fakeRequest) RespondJSON(any, ...micro.RespondOpt) error { panic("not used") }
func (f *fakeRequest) Error(code, _ string, b []byte, _ ...micro.RespondOpt) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.data, f.code, f.n = b, code, f.n+1
	return nil
}
func (f *fakeRequest) Data() []byte           { return nil }
func (f *fakeRequest) Headers() micro.Headers { return nil }
func (f *fakeRequest) Subject() string        { return "tasks.alloc" }
func (f *fakeRequest) Reply() string          { return "_INBOX.x" }

// respond is the fake's responder, as the service's publisher would send.
func (f *fakeRequest) respond(data []byte, re *schemas.ReplyError) {
	if re != nil {
		_ = f.Error(AllocErrorCode(re.Code), errorDescription(re), data)
		return
	}
	_ = f.Respond(data)
}

func (f *fakeRequest) answer() (schemas.AllocReply, string, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		return schemas.AllocReply{}, "", 0
	}
	rep, err := schemas.DecodeAllocReply(f.data)
	if err != nil {
		panic(err)
	}
	return rep, f.code, f.n
}

// TestAllocTableDeadline: a request the engine does not answer is answered
// unavailable at its deadline, exactly once; the engine's late answer is
// dropped; shutdown answers what still waits.
func TestAllocTableDeadline(t *testing.T) {
	s := NewSelectorService(nil, ServiceConfig{AllocTimeout: 20 * time.Millisecond}, testLog())
	late := &fakeRequest{}
	id, ok := s.allocs.add(late.respond, "t-1", s.cfg.AllocTimeout, s.expireAlloc)
	if !ok {
		t.Fatal("add refused")
	}
	waitFor(t, 5*time.Second, "the deadline's answer", func() bool { _, _, n := late.answer(); return n > 0 })
	s.answerAlloc(outCmd{allocID: id, data: mustMarshal(t, &schemas.AllocReply{TaskID: "t-1"})})
	rep, code, n := late.answer()
	if n != 1 || code != "503" || rep.Error == nil || rep.Error.Code != schemas.CodeUnavailable || !strings.Contains(rep.Error.Message, "20ms") {
		t.Errorf("answers %d, code %q, reply %+v", n, code, rep)
	}
	if s.AllocsTimedOut() != 1 {
		t.Errorf("timeouts %d", s.AllocsTimedOut())
	}

	// An answer in time is sent as the engine wrote it, once.
	onTime := &fakeRequest{}
	id, _ = s.allocs.add(onTime.respond, "t-2", time.Hour, s.expireAlloc)
	g := []schemas.HelperGrant{{HelperID: "t-2.h1", Host: "h", MiB: 5}}
	s.answerAlloc(outCmd{allocID: id, data: mustMarshal(t, &schemas.AllocReply{TaskID: "t-2", Grants: g, Held: g})})
	if rep, code, n := onTime.answer(); n != 1 || code != "" || len(rep.Grants) != 1 || rep.Grants[0] != g[0] {
		t.Errorf("answers %d, code %q, reply %+v", n, code, rep)
	}

	// Shutdown answers what waits, and refuses what comes.
	waiting := &fakeRequest{}
	s.allocs.add(waiting.respond, "t-3", time.Hour, s.expireAlloc)
	s.closeAllocs()
	if rep, code, n := waiting.answer(); n != 1 || code != "503" || rep.Error.Code != schemas.CodeUnavailable {
		t.Errorf("at shutdown: answers %d, code %q, reply %+v", n, code, rep)
	}
	if _, ok := s.allocs.add((&fakeRequest{}).respond, "t-4", time.Hour, s.expireAlloc); ok {
		t.Error("add accepted after close")
	}
	if s.AllocsWaiting() != 0 {
		t.Errorf("%d waiting", s.AllocsWaiting())
	}
}

// BenchmarkAllocRead measures the alloc endpoint's round trip through a
// real NATS server and the engine, for a running task that reads what it
// holds (mib 0): strict decoding, one engine step and the reply.
func BenchmarkAllocRead(b *testing.B) {
	s := natstest.Server(b)
	nc := connect(b, s.ClientURL())
	c, err := client.New(nc, "")
	if err != nil {
		b.Fatal(err)
	}
	startService(b, connect(b, s.ClientURL()), ServiceConfig{})
	startFakeWorker(b, connect(b, s.ClientURL()), "", "h1", 4096)
	if err := c.PutTarget(testCtx(b, 10*time.Second), "t", declaredSpec()); err != nil {
		b.Fatal(err)
	}
	line := waitTargetState(b, c, "t", "active")
	req := mustMarshal(b, &schemas.AllocRequest{TaskID: line.TaskID, Epoch: line.Epoch, Target: "t", Host: line.Host})
	b.ResetTimer()
	for range b.N {
		msg, err := nc.Request(protocol.NewSubjects("").Alloc(), req, 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if rep, err := schemas.DecodeAllocReply(msg.Data); err != nil || rep.Error != nil {
			b.Fatalf("reply %s: %v", msg.Data, err)
		}
	}
}

// TestDecodeHelperReply: a helper reply becomes HelperReplied (an error
// reply included: the engine refunds a refused start); a malformed one, or
// one naming another helper, is counted and taken as no reply.
func TestDecodeHelperReply(t *testing.T) {
	s := NewSelectorService(nil, ServiceConfig{}, testLog())
	req := &schemas.HelperRequest{V: 1, Op: schemas.HelperStart, HelperID: "t#1/h1", TaskID: "t#1", Epoch: 1, Target: "t",
		Type: "w", TaskHost: "home", MiB: 10}
	c := outCmd{kind: selector.CmdHelper, host: "big", helper: req}
	ok := mustMarshal(t, &schemas.HelperReply{HelperID: "t#1/h1", Running: true})
	if ev, isReply := s.decodeHelperReply(&c, ok).(*selector.HelperReplied); !isReply || ev.Host != "big" || ev.Req != req || !ev.Reply.Running {
		t.Fatalf("good reply: %#v", ev)
	}
	refused := mustMarshal(t, &schemas.HelperReply{HelperID: "t#1/h1", Error: &schemas.ReplyError{Code: schemas.CodeInsufficientRAM}})
	if ev, isReply := s.decodeHelperReply(&c, refused).(*selector.HelperReplied); !isReply || ev.Reply.Error == nil {
		t.Fatalf("refusal: %#v", ev)
	}
	other := mustMarshal(t, &schemas.HelperReply{HelperID: "t#1/h2", Running: true})
	for _, b := range [][]byte{[]byte("{"), other} {
		ev, isNone := s.decodeHelperReply(&c, b).(*selector.HelperUnanswered)
		if !isNone || ev.NoResponders || ev.Req != req || ev.Host != "big" {
			t.Fatalf("%s: %#v", b, ev)
		}
	}
	if n := s.malformed[SourceHelperReply].n.Load(); n != 2 {
		t.Fatalf("%d malformed helper replies counted, want 2", n)
	}
}
