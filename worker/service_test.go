package worker

import (
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// fakeRequest is a micro.Request that records what the handler answered.
type fakeRequest struct {
	subject, reply string
	data           []byte
	headers        micro.Headers

	mu      sync.Mutex
	answers int
	body    []byte
	code    string // Nats-Service-Error-Code sent, "" for a plain reply
	desc    string // Nats-Service-Error sent
}

func (r *fakeRequest) Respond(b []byte, _ ...micro.RespondOpt) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers++
	r.body = b
	return nil
}

func (r *fakeRequest) RespondJSON(v any, opts ...micro.RespondOpt) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.Respond(b, opts...)
}

func (r *fakeRequest) Error(code, description string, data []byte, _ ...micro.RespondOpt) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers++
	r.code, r.desc, r.body = code, description, data
	return nil
}

func (r *fakeRequest) Data() []byte           { return r.data }
func (r *fakeRequest) Headers() micro.Headers { return r.headers }
func (r *fakeRequest) Subject() string        { return r.subject }
func (r *fakeRequest) Reply() string          { return r.reply }

func TestServiceErrorCode(t *testing.T) {
	for code, want := range map[string]string{
		schemas.CodeInvalid:         "400",
		schemas.CodeUnknownType:     "422",
		schemas.CodeFailed:          "500",
		schemas.CodeDraining:        "503",
		schemas.CodeInsufficientRAM: "507",
		"some_future_code":          "500",
		"":                          "500",
	} {
		if got := ServiceErrorCode(code); got != want {
			t.Errorf("ServiceErrorCode(%q) = %q, want %q", code, got, want)
		}
	}
}

func TestServiceErrorDescription(t *testing.T) {
	for _, c := range []struct {
		re   schemas.ReplyError
		want string
	}{
		{schemas.ReplyError{Code: "draining", Message: "host is draining"}, "draining: host is draining"},
		{schemas.ReplyError{Code: "invalid", Message: "line one\r\nline two\n"}, "invalid: line one  line two "},
		{schemas.ReplyError{Code: "failed"}, "failed"},
		{schemas.ReplyError{}, "error"},
		{schemas.ReplyError{Message: "\n"}, "error"},
	} {
		if got := serviceErrorDescription(&c.re); got != c.want {
			t.Errorf("description of %+v = %q, want %q", c.re, got, c.want)
		}
	}
}

// TestRespondMapsReplyErrors: a reply with an error goes out through micro's
// Error, with the mapped code, a one-line description and the same body; a
// reply without one through Respond; a request without a reply subject gets
// nothing.
func TestRespondMapsReplyErrors(t *testing.T) {
	a := &Agent{log: slog.New(slog.DiscardHandler)}

	re := replyError(schemas.CodeInsufficientRAM, "needs 100 MiB,\n10 MiB free")
	r := &fakeRequest{subject: "tasks.launch.h", reply: "_INBOX.1"}
	a.respond(r, schemas.LaunchReply{V: schemas.Version, TaskID: "t1", Error: re}, re, true)
	if r.answers != 1 || r.code != "507" || r.desc != "insufficient_ram: needs 100 MiB, 10 MiB free" {
		t.Fatalf("error reply: answers %d code %q desc %q", r.answers, r.code, r.desc)
	}
	rep, err := schemas.DecodeLaunchReply(r.body)
	if err != nil || rep.Error == nil || rep.Error.Code != schemas.CodeInsufficientRAM || rep.TaskID != "t1" {
		t.Fatalf("error reply body %s: %+v, %v", r.body, rep, err)
	}

	r = &fakeRequest{subject: "tasks.launch.h", reply: "_INBOX.2"}
	a.respond(r, schemas.LaunchReply{V: schemas.Version, TaskID: "t2", PID: 7}, nil, true)
	if r.answers != 1 || r.code != "" || r.desc != "" {
		t.Fatalf("plain reply: answers %d code %q desc %q", r.answers, r.code, r.desc)
	}
	if rep, err := schemas.DecodeLaunchReply(r.body); err != nil || rep.PID != 7 {
		t.Fatalf("plain reply body %s: %v", r.body, err)
	}

	r = &fakeRequest{subject: "tasks.launch.h"}
	a.respond(r, schemas.LaunchReply{V: schemas.Version, TaskID: "t3", Error: re}, re, true)
	if r.answers != 0 {
		t.Fatalf("a request without a reply subject was answered %d times", r.answers)
	}
}

// TestKillAfterTheGateClosed: once shutdown has stopped taking requests, a
// kill delivered late leaves the task alone and says it still runs, with
// error failed (code 500).
func TestKillAfterTheGateClosed(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	pid := h.mustLaunch(declared("a", "work", 10, 10, 1e6))
	taskID := h.agent.entries()[0].spec.TaskID
	<-h.agent.handlers.close()

	b, err := schemas.Marshal(&schemas.KillRequest{TaskID: taskID, PID: pid, Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	r := &fakeRequest{subject: h.subj.Kill(h.cfg.Host), reply: "_INBOX.k", data: b}
	h.agent.handleKill(r)
	rep, err := schemas.DecodeKillReply(r.body)
	if err != nil {
		t.Fatalf("kill reply %s: %v", r.body, err)
	}
	if !rep.Running || rep.Error == nil || rep.Error.Code != schemas.CodeFailed || r.code != "500" {
		t.Fatalf("late kill: reply %+v (error %+v), header code %q", rep, rep.Error, r.code)
	}
	if st := h.agent.Stats(); st.Running != 1 || st.Kills != 0 {
		t.Fatalf("late kill touched the task: %+v", st)
	}
}

func TestHandlerGate(t *testing.T) {
	var g handlerGate
	if !g.enter() {
		t.Fatal("open gate refused a handler")
	}
	idle := g.close()
	select {
	case <-idle:
		t.Fatal("idle while a handler is in")
	default:
	}
	if g.enter() {
		t.Fatal("closed gate let a handler in")
	}
	g.leave()
	select {
	case <-idle:
	case <-time.After(waitFor):
		t.Fatal("not idle after the last handler left")
	}
	select {
	case <-g.close():
	default:
		t.Fatal("closing an idle gate again does not report idle")
	}
}

// requestMsg sends data to subject and returns the whole reply message.
func (h *harness) requestMsg(subject string, data []byte) *nats.Msg {
	h.t.Helper()
	msg, err := h.cli.Request(subject, data, waitFor)
	if err != nil {
		h.t.Fatalf("request %s: %v", subject, err)
	}
	return msg
}

// workerStats asks the agent's micro service for its stats, by endpoint.
func (h *harness) workerStats() (micro.Stats, map[string]*micro.EndpointStats) {
	h.t.Helper()
	msg := h.requestMsg("$SRV.STATS."+protocol.WorkerService, nil)
	var st micro.Stats
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		h.t.Fatalf("stats %s: %v", msg.Data, err)
	}
	eps := map[string]*micro.EndpointStats{}
	for _, ep := range st.Endpoints {
		eps[ep.Name] = ep
	}
	return st, eps
}

// TestErrorRepliesCarryServiceHeaders: through a real server, every reply
// that carries an error also carries micro's error headers with the mapped
// code, keeps its body, and counts in its endpoint's num_errors; replies
// without an error carry no such header; a fence barrier (no reply subject)
// is a request, never an error.
func TestErrorRepliesCarryServiceHeaders(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{RAMMiB: 100}})
	launchSubj := h.subj.Launch(h.cfg.Host)
	check := func(what string, msg *nats.Msg, wantHTTP, wantCode string) {
		t.Helper()
		var body struct {
			Error *schemas.ReplyError `json:"error"`
		}
		if err := json.Unmarshal(msg.Data, &body); err != nil {
			t.Fatalf("%s: body %s: %v", what, msg.Data, err)
		}
		gotHTTP, desc := msg.Header.Get(micro.ErrorCodeHeader), msg.Header.Get(micro.ErrorHeader)
		switch {
		case wantCode == "" && (body.Error != nil || gotHTTP != "" || desc != ""):
			t.Errorf("%s: want no error, got body error %+v, headers %q %q", what, body.Error, gotHTTP, desc)
		case wantCode != "" && (body.Error == nil || body.Error.Code != wantCode):
			t.Errorf("%s: body error %+v, want code %s", what, body.Error, wantCode)
		case wantCode != "" && (gotHTTP != wantHTTP || !strings.HasPrefix(desc, wantCode+": ")):
			t.Errorf("%s: headers code %q description %q, want %s and %q...", what, gotHTTP, desc, wantHTTP, wantCode+": ")
		}
	}
	marshal := func(m schemas.Message) []byte {
		t.Helper()
		b, err := schemas.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	ok := declared("a", "work", 10, 10, 1e6)
	okMsg := h.requestMsg(launchSubj, marshal(&ok))
	check("launch", okMsg, "", "")
	rep, err := schemas.DecodeLaunchReply(okMsg.Data)
	if err != nil || rep.PID == 0 {
		t.Fatalf("launch reply %s: %v", okMsg.Data, err)
	}
	check("malformed launch", h.requestMsg(launchSubj, []byte(`{"task_id":"x"}`)), "400", schemas.CodeInvalid)
	check("launch naming a command", h.requestMsg(launchSubj, []byte(
		`{"v":1,"task_id":"c","epoch":1,"target":"c","type":"work","ram":{"wrapper_mib":1,"helpers_mib":1},"args":{"work_s":1},"command":"rm"}`)),
		"400", schemas.CodeInvalid)
	big := declared("b", "work", 10, 1000, 1e6)
	check("launch too big", h.requestMsg(launchSubj, marshal(&big)), "507", schemas.CodeInsufficientRAM)
	odd := hacking(t, "n00dles", "bogus", earlyGame(t, "n00dles"), 10)
	check("launch of an unknown type", h.requestMsg(launchSubj, marshal(&odd)), "422", schemas.CodeUnknownType)
	check("kill with another pid", h.requestMsg(h.subj.Kill(h.cfg.Host),
		marshal(&schemas.KillRequest{TaskID: ok.TaskID, PID: rep.PID + 1, Reason: "test"})), "400", schemas.CodeInvalid)
	check("malformed kill", h.requestMsg(h.subj.Kill(h.cfg.Host), []byte(`[]`)), "400", schemas.CodeInvalid)
	check("ps", h.requestMsg(h.subj.Ps(h.cfg.Host), marshal(&schemas.PsRequest{})), "", "")
	check("malformed ps", h.requestMsg(h.subj.Ps(h.cfg.Host), []byte(`{"v":2}`)), "400", schemas.CodeInvalid)
	h.agent.Drain()
	late := declared("d", "work", 10, 10, 1e6)
	check("launch while draining", h.requestMsg(launchSubj, marshal(&late)), "503", schemas.CodeDraining)

	// A barrier that is not awaited, without a reply subject.
	m := nats.NewMsg(launchSubj)
	m.Header.Set(barrierHeader, "12345")
	if err := h.cli.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	want := map[string][2]int{ // requests, errors
		protocol.EndpointLaunch: {7, 5},
		protocol.EndpointKill:   {2, 2},
		protocol.EndpointPs:     {2, 1},
	}
	var eps map[string]*micro.EndpointStats
	eventually(t, "endpoint stats", func() bool {
		_, eps = h.workerStats()
		for name, w := range want {
			if ep := eps[name]; ep == nil || ep.NumRequests != w[0] || ep.NumErrors != w[1] {
				return false
			}
		}
		return true
	})
	if le := eps[protocol.EndpointLaunch].LastError; !strings.HasPrefix(le, "503:draining: ") {
		t.Errorf("launch last_error %q, want the draining refusal", le)
	}
	if st := h.agent.Stats(); st.Malformed["launch"] != 1 || st.Malformed["kill"] != 1 || st.Malformed["ps"] != 1 {
		t.Errorf("malformed counts %v", st.Malformed)
	}
}

// TestServiceInfoAndStop: the agent's service names its host, serves its
// four subjects (the sim executor runs fleet helpers) without a queue group,
// and is gone once Run returns.
func TestServiceInfoAndStop(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: Config{Host: "odd host.1"}})
	msg := h.requestMsg("$SRV.INFO."+protocol.WorkerService, nil)
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatalf("info %s: %v", msg.Data, err)
	}
	if info.Name != protocol.WorkerService || info.Version != protocol.ServiceVersion ||
		info.Metadata[protocol.ServiceMetaHost] != "odd host.1" || info.Metadata[protocol.ServiceMetaExecutor] != SimExecutor {
		t.Fatalf("info %+v", info)
	}
	want := map[string]string{
		protocol.EndpointLaunch: h.subj.Launch(h.cfg.Host),
		protocol.EndpointKill:   h.subj.Kill(h.cfg.Host),
		protocol.EndpointPs:     h.subj.Ps(h.cfg.Host),
		protocol.EndpointHelper: h.subj.Helper(h.cfg.Host),
	}
	if len(info.Endpoints) != len(want) {
		t.Fatalf("endpoints %+v", info.Endpoints)
	}
	for _, ep := range info.Endpoints {
		if want[ep.Name] != ep.Subject || ep.QueueGroup != "" {
			t.Errorf("endpoint %+v, want subject %q and no queue group", ep, want[ep.Name])
		}
	}

	h.stop()
	if _, err := h.cli.Request("$SRV.PING."+protocol.WorkerService, nil, time.Second); err == nil {
		t.Fatal("the service still answers PING after Run returned")
	}
	if _, err := h.cli.Request(h.subj.Ps(h.cfg.Host), []byte(`{"v":1}`), time.Second); err == nil {
		t.Fatal("ps still answered after Run returned")
	}
}
