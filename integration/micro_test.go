package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
)

// collectReplies sends a request to subject with nats' plain publish and
// gathers replies until want have come, failing the test if they do not
// within 10 s. Replies beyond want that are in by a round trip to the
// server fail it too.
func (e *env) collectReplies(subject string, want int) []*nats.Msg {
	e.t.Helper()
	inbox := e.nc.NewRespInbox()
	sub, err := e.nc.SubscribeSync(inbox)
	if err != nil {
		e.t.Fatalf("subscribe %s: %v", inbox, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := e.nc.PublishRequest(subject, inbox, nil); err != nil {
		e.t.Fatalf("request %s: %v", subject, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var out []*nats.Msg
	for len(out) < want {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			e.t.Fatalf("%s: %d of %d replies: %v", subject, len(out), want, err)
		}
		out = append(out, m)
	}
	if err := e.nc.Flush(); err != nil {
		e.t.Fatalf("flush: %v", err)
	}
	if n, _, _ := sub.Pending(); n > 0 {
		e.t.Fatalf("%s: %d replies beyond the %d expected", subject, n, want)
	}
	return out
}

// decodeAll decodes every reply into a T.
func decodeAll[T any](t *testing.T, msgs []*nats.Msg) []T {
	t.Helper()
	out := make([]T, len(msgs))
	for i, m := range msgs {
		if err := json.Unmarshal(m.Data, &out[i]); err != nil {
			t.Fatalf("reply on %s: %s: %v", m.Subject, m.Data, err)
		}
	}
	return out
}

// workerStats reads one worker instance's stats, by endpoint name.
func (e *env) workerStats(id string) map[string]*micro.EndpointStats {
	e.t.Helper()
	st := decodeAll[micro.Stats](e.t, e.collectReplies("$SRV.STATS."+protocol.WorkerService+"."+id, 1))[0]
	if st.Type != micro.StatsResponseType || st.Name != protocol.WorkerService || st.ID != id {
		e.t.Fatalf("stats of %s: %+v", id, st.ServiceIdentity)
	}
	eps := map[string]*micro.EndpointStats{}
	for _, ep := range st.Endpoints {
		eps[ep.Name] = ep
	}
	return eps
}

// TestMicroServiceDiscovery: the selector and two workers show up through
// the NATS micro protocol ($SRV.PING, $SRV.INFO, $SRV.STATS): one selector
// instance of service taskselector with the status and alloc endpoints, and one
// instance of taskselector-worker per host with its host in the metadata
// and its launch, kill, ps and helper endpoints on the protocol's subjects. A
// malformed launch is answered with the error headers, and counted in that
// worker's launch endpoint's num_errors alone. A worker that stops leaves
// the service.
func TestMicroServiceDiscovery(t *testing.T) {
	e := newEnv(t, false)
	sel := e.startSelector(serviceConfig(engineConfig()))
	hosts := []string{"w1", "host two"} // the second one's subjects are encoded
	workers := map[string]*workerProc{}
	for _, h := range hosts {
		workers[h] = e.startWorker(h, 4096, 0, worker.Faults{})
	}

	// PING: every instance of every service, then each service's.
	pings := decodeAll[micro.Ping](t, e.collectReplies("$SRV.PING", 3))
	var names []string
	for _, p := range pings {
		if p.Type != micro.PingResponseType || p.Version != protocol.ServiceVersion || p.ID == "" {
			t.Errorf("ping reply %+v", p)
		}
		names = append(names, p.Name)
	}
	sort.Strings(names)
	if want := []string{protocol.SelectorService, protocol.WorkerService, protocol.WorkerService}; !slices.Equal(names, want) {
		t.Fatalf("services %v, want %v", names, want)
	}
	selPing := decodeAll[micro.Ping](t, e.collectReplies("$SRV.PING."+protocol.SelectorService, 1))[0]
	if selPing.Name != protocol.SelectorService {
		t.Fatalf("selector ping %+v", selPing)
	}
	workerIDs := map[string]string{} // host -> instance id
	for _, p := range decodeAll[micro.Ping](t, e.collectReplies("$SRV.PING."+protocol.WorkerService, 2)) {
		host := p.Metadata[protocol.ServiceMetaHost]
		if _, dup := workerIDs[host]; dup || workers[host] == nil {
			t.Fatalf("worker instance %+v: host %q unknown or listed twice", p.ServiceIdentity, host)
		}
		workerIDs[host] = p.ID
	}

	// INFO: the endpoints and their subjects, without a queue group.
	selInfo := decodeAll[micro.Info](t, e.collectReplies("$SRV.INFO."+protocol.SelectorService, 1))[0]
	// The alloc endpoint alone is in a queue group: with a hot standby, one
	// selector books each helper RAM request.
	if selInfo.Type != micro.InfoResponseType || selInfo.ID != selPing.ID || selInfo.Metadata[protocol.ServiceMetaPrefix] != e.subj.Prefix ||
		len(selInfo.Endpoints) != 2 || selInfo.Endpoints[0].Name != protocol.EndpointStatus ||
		selInfo.Endpoints[0].Subject != e.subj.Status() || selInfo.Endpoints[0].QueueGroup != "" ||
		selInfo.Endpoints[1].Name != protocol.EndpointAlloc || selInfo.Endpoints[1].Subject != e.subj.Alloc() ||
		selInfo.Endpoints[1].QueueGroup != protocol.SelectorService {
		t.Fatalf("selector info %+v", selInfo)
	}
	infos := decodeAll[micro.Info](t, e.collectReplies("$SRV.INFO."+protocol.WorkerService, 2))
	for _, info := range infos {
		host := info.Metadata[protocol.ServiceMetaHost]
		if workerIDs[host] != info.ID || info.Version != protocol.ServiceVersion {
			t.Fatalf("worker info %+v, instances %v", info.ServiceIdentity, workerIDs)
		}
		want := map[string]string{
			protocol.EndpointLaunch: e.subj.Launch(host),
			protocol.EndpointKill:   e.subj.Kill(host),
			protocol.EndpointPs:     e.subj.Ps(host),
			protocol.EndpointHelper: e.subj.Helper(host),
		}
		got := map[string]string{}
		for _, ep := range info.Endpoints {
			if ep.QueueGroup != "" {
				t.Errorf("%s endpoint %s in queue group %q", host, ep.Name, ep.QueueGroup)
			}
			got[ep.Name] = ep.Subject
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s endpoints %v, want %v", host, got, want)
		}
	}
	one := decodeAll[micro.Info](t, e.collectReplies("$SRV.INFO."+protocol.WorkerService+"."+workerIDs["host two"], 1))[0]
	if one.Metadata[protocol.ServiceMetaHost] != "host two" {
		t.Fatalf("instance %s is %+v", workerIDs["host two"], one.ServiceIdentity)
	}

	// A status request counts on the selector's status endpoint.
	e.mustStatus()
	waitFor(t, 10*time.Second, func() (bool, string) {
		st := decodeAll[micro.Stats](t, e.collectReplies("$SRV.STATS."+protocol.SelectorService, 1))[0]
		if len(st.Endpoints) != 2 {
			return false, fmt.Sprintf("selector stats %+v", st)
		}
		ep := st.Endpoints[0]
		return ep.Name == protocol.EndpointStatus && ep.NumRequests >= 1 && ep.NumErrors == 0,
			fmt.Sprintf("status endpoint %+v", *ep)
	})

	// A malformed launch: error headers, the same body, one more error on
	// that worker's launch endpoint and nowhere else.
	before := map[string]map[string]*micro.EndpointStats{}
	for h, id := range workerIDs {
		before[h] = e.workerStats(id)
		if ep := before[h][protocol.EndpointLaunch]; ep == nil || ep.NumErrors != 0 {
			t.Fatalf("%s launch endpoint before: %+v", h, ep)
		}
	}
	msg, err := e.nc.Request(e.subj.Launch("host two"), []byte(`{"v":1,"task_id":"m1","epoch":0}`), 5*time.Second)
	if err != nil {
		t.Fatalf("malformed launch: %v", err)
	}
	if code, desc := msg.Header.Get(micro.ErrorCodeHeader), msg.Header.Get(micro.ErrorHeader); code != "400" ||
		!strings.HasPrefix(desc, schemas.CodeInvalid+": ") {
		t.Fatalf("malformed launch: headers %s=%q %s=%q", micro.ErrorCodeHeader, code, micro.ErrorHeader, desc)
	}
	var body schemas.LaunchReply
	if err := json.Unmarshal(msg.Data, &body); err != nil || body.Error == nil || body.Error.Code != schemas.CodeInvalid ||
		body.TaskID != "m1" {
		t.Fatalf("malformed launch: body %s (%v)", msg.Data, err)
	}
	waitFor(t, 10*time.Second, func() (bool, string) {
		ep := e.workerStats(workerIDs["host two"])[protocol.EndpointLaunch]
		b := before["host two"][protocol.EndpointLaunch]
		return ep.NumErrors == b.NumErrors+1 && ep.NumRequests == b.NumRequests+1 && strings.HasPrefix(ep.LastError, "400:invalid: "),
			fmt.Sprintf("host two launch endpoint %+v", *ep)
	})
	for name, ep := range e.workerStats(workerIDs["w1"]) {
		if ep.NumErrors != 0 {
			t.Errorf("w1 %s endpoint counts errors: %+v", name, *ep)
		}
	}
	if n := workers["host two"].agent.Stats().Malformed["launch"]; n != 1 {
		t.Errorf("host two counted %d malformed launches, want 1", n)
	}

	// A worker that stops leaves the service; the other one stays.
	workers["w1"].stop(t)
	if _, err := e.nc.Request("$SRV.PING."+protocol.WorkerService+"."+workerIDs["w1"], nil, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("ping of the stopped worker: %v, want no responders", err)
	}
	if p := decodeAll[micro.Ping](t, e.collectReplies("$SRV.PING."+protocol.WorkerService, 1))[0]; p.ID != workerIDs["host two"] {
		t.Fatalf("remaining worker %+v", p.ServiceIdentity)
	}
	sel.stop(t)
	if _, err := e.nc.Request("$SRV.PING."+protocol.SelectorService, nil, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("ping of the stopped selector: %v, want no responders", err)
	}
}
