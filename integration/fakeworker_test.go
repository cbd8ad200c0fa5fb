package integration

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// fakeWorker is a plain NATS responder standing in for a worker agent where
// a test needs exact control: it publishes its HostStatus every 50 ms (with
// no tasks listed) and answers launch, ps and kill for its host, but never
// heartbeats.
type fakeWorker struct {
	t    testing.TB
	nc   *nats.Conn
	subj protocol.Subjects
	host string
	ram  int64
	// refuse answers every launch with insufficient_ram.
	refuse bool
	// listRunning makes ps list every launched task until it is killed;
	// without it ps reports every task gone.
	listRunning bool
	// garbleLaunch and garbleKill answer launch and kill requests with a
	// reply that does not decode (after acting on them as usual).
	garbleLaunch, garbleKill bool
	// garblePs is how many of the next ps requests get such a reply.
	garblePs int

	mu       sync.Mutex
	nextPID  int64
	launches []fakeLaunch
	ps       []fakePs
	kills    []fakeKill
	running  map[string]schemas.PsTask // by task_id
	bad      []string
}

type fakeLaunch struct {
	at  time.Time
	req schemas.LaunchRequest
	pid int64
}

type fakePs struct {
	at  time.Time
	req schemas.PsRequest
}

type fakeKill struct {
	at  time.Time
	req schemas.KillRequest
}

// startFakeWorker subscribes the fake worker on nc (which should be its own
// connection) and starts its HostStatus loop; both end with the test.
func startFakeWorker(t testing.TB, nc *nats.Conn, host string, ramMiB int64, refuse, listRunning bool) *fakeWorker {
	t.Helper()
	w := &fakeWorker{t: t, nc: nc, subj: protocol.NewSubjects(""), host: host, ram: ramMiB,
		refuse: refuse, listRunning: listRunning, nextPID: 500, running: map[string]schemas.PsTask{}}
	for subject, h := range map[string]nats.MsgHandler{
		w.subj.Launch(host): w.onLaunch,
		w.subj.Ps(host):     w.onPs,
		w.subj.Kill(host):   w.onKill,
	} {
		sub, err := nc.Subscribe(subject, h)
		if err != nil {
			t.Fatalf("fake worker subscribe %s: %v", subject, err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("fake worker flush: %v", err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go w.statusLoop(stop, done)
	t.Cleanup(func() {
		close(stop)
		<-done
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, b := range w.bad {
			t.Errorf("fake worker %s: %s", host, b)
		}
	})
	return w
}

func (w *fakeWorker) statusLoop(stop, done chan struct{}) {
	defer close(done)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		st := schemas.HostStatus{V: schemas.Version, Host: w.host, RAM: schemas.HostRAM{TotalMiB: w.ram}, Tasks: []string{}, SentAt: time.Now().UTC()}
		if data, err := schemas.Marshal(&st); err == nil {
			_ = w.nc.Publish(w.subj.Host(w.host), data)
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

func (w *fakeWorker) respond(m *nats.Msg, msg schemas.Message) {
	data, err := schemas.Marshal(msg)
	if err != nil {
		w.fail("cannot encode reply: " + err.Error())
		return
	}
	_ = m.Respond(data)
}

func (w *fakeWorker) fail(s string) {
	w.mu.Lock()
	w.bad = append(w.bad, s)
	w.mu.Unlock()
}

func (w *fakeWorker) onLaunch(m *nats.Msg) {
	at := time.Now()
	req, err := schemas.DecodeLaunchRequest(m.Data)
	if err != nil {
		w.fail("launch request does not decode: " + err.Error())
		return
	}
	w.mu.Lock()
	rec := fakeLaunch{at: at, req: req}
	var reply schemas.LaunchReply
	if w.refuse {
		reply = schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID,
			Error: &schemas.ReplyError{Code: schemas.CodeInsufficientRAM, Message: "fake worker never has room"}}
	} else {
		w.nextPID++
		rec.pid = w.nextPID
		w.running[req.TaskID] = schemas.PsTask{TaskID: req.TaskID, Epoch: req.Epoch, PID: rec.pid, Target: req.Target,
			Type: req.Type, RAM: req.RAM, StartedAt: at.UTC()}
		reply = schemas.LaunchReply{V: schemas.Version, TaskID: req.TaskID, PID: rec.pid}
	}
	w.launches = append(w.launches, rec)
	garble := w.garbleLaunch
	w.mu.Unlock()
	if garble {
		_ = m.Respond(garbledReply)
		return
	}
	w.respond(m, &reply)
}

func (w *fakeWorker) onPs(m *nats.Msg) {
	at := time.Now()
	req, err := schemas.DecodePsRequest(m.Data)
	if err != nil {
		w.fail("ps request does not decode: " + err.Error())
		return
	}
	w.mu.Lock()
	w.ps = append(w.ps, fakePs{at: at, req: req})
	reply := schemas.PsReply{V: schemas.Version, Host: w.host, Tasks: []schemas.PsTask{}}
	if w.listRunning {
		for _, p := range w.running {
			if len(req.PIDs) == 0 || containsPID(req.PIDs, p.PID) {
				reply.Tasks = append(reply.Tasks, p)
			}
		}
	}
	garble := w.garblePs > 0
	if garble {
		w.garblePs--
	}
	w.mu.Unlock()
	if garble {
		_ = m.Respond(garbledReply)
		return
	}
	w.respond(m, &reply)
}

func (w *fakeWorker) onKill(m *nats.Msg) {
	at := time.Now()
	req, err := schemas.DecodeKillRequest(m.Data)
	if err != nil {
		w.fail("kill request does not decode: " + err.Error())
		return
	}
	w.mu.Lock()
	w.kills = append(w.kills, fakeKill{at: at, req: req})
	delete(w.running, req.TaskID)
	garble := w.garbleKill
	w.mu.Unlock()
	if garble {
		_ = m.Respond(garbledReply)
		return
	}
	w.respond(m, &schemas.KillReply{V: schemas.Version, TaskID: req.TaskID, PID: req.PID, Running: false})
}

// garbledReply is a reply that no decoder accepts.
var garbledReply = []byte(`{"v":1,"task_id":`)

func containsPID(pids []int64, pid int64) bool {
	for _, p := range pids {
		if p == pid {
			return true
		}
	}
	return false
}

func (w *fakeWorker) launchList() []fakeLaunch {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]fakeLaunch(nil), w.launches...)
}

func (w *fakeWorker) psList() []fakePs {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]fakePs(nil), w.ps...)
}

func (w *fakeWorker) killList() []fakeKill {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]fakeKill(nil), w.kills...)
}
