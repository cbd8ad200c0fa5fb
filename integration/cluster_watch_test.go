package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/taskselector/taskselector/internal/natstest"
	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/worker"
)

// watcherFollowBound is how soon after a node stops the selector must act on
// a change to the targets bucket. A quorum remains, so the change is stored
// at once; a watcher that notices the loss of its consumer only by missed
// idle heartbeats (nats.go's ordered consumer: 2 × 5 s) takes far longer.
const watcherFollowBound = 6 * time.Second

// TestClusterTargetsWatcherSurvivesLossOfItsConsumerNode: the selector's
// watch of the targets bucket is a consumer held by one node. When that node
// stops while the selector's own connection (to another node) stays up, a
// quorum remains and the bucket is writable within milliseconds; a target
// deleted then must get its task killed, and a target declared then must be
// launched, within watcherFollowBound, not only once the watcher has timed
// out on missed heartbeats.
func TestClusterTargetsWatcherSurvivesLossOfItsConsumerNode(t *testing.T) {
	ce := newClusterEnv(t)
	cfg := serviceConfig(engineConfig())
	cfg.Store.Replicas = 3
	const stream = "KV_" + protocol.TargetsBucket

	// Start selectors until one's targets watcher lives on another node
	// than its connection: that node is the one to stop.
	var (
		sel      *selectorProc
		selNode  int
		consNode = -1
	)
	for attempt := 1; consNode < 0; attempt++ {
		if attempt > 8 {
			t.Fatal("the targets watcher was placed on the selector's own node 8 times in a row")
		}
		before := ce.c.ConsumerLeaders(natstest.GlobalAccount, stream)
		sel = ce.startSelector(cfg)
		selNode = ce.node(sel.nc)
		var newOn []int
		waitFor(t, 10*time.Second, func() (bool, string) {
			newOn = newOn[:0]
			for name, n := range ce.c.ConsumerLeaders(natstest.GlobalAccount, stream) {
				if _, old := before[name]; !old {
					newOn = append(newOn, n)
				}
			}
			return len(newOn) == 1, fmt.Sprintf("new consumers of %s on nodes %v, want 1", stream, newOn)
		})
		if newOn[0] != selNode {
			consNode = newOn[0]
			break
		}
		t.Logf("attempt %d: watcher on the selector's own node %s; starting another selector", attempt, ce.c.Name(selNode))
		sel.stop(t)
	}
	ce.pin(selNode)
	sp := ce.startSpy()
	ce.startWorker("h1", 1024, 0, worker.Faults{})
	ce.startWorker("h2", 1024, 0, worker.Faults{})
	for _, name := range []string{"w1", "w2"} {
		ce.putTarget(name, longSpec())
	}
	w1 := ce.waitActive(20*time.Second, "w1")
	ce.waitActive(20*time.Second, "w2")
	ce.waitStoredTask(10*time.Second, "w1", w1.TaskID, schemas.TaskActive)
	t.Logf("selector on %s, its targets watcher on %s", ce.c.Name(selNode), ce.c.Name(consNode))

	stopped := ce.stop(consNode)
	// The bucket is writable again within milliseconds (a new stream leader
	// if the stopped node led it).
	waitFor(t, 20*time.Second, func() (bool, string) {
		err := ce.client.DeleteTarget(ce.ctx(time.Second), "w1")
		return err == nil, fmt.Sprintf("delete w1: %v", err)
	})
	deleted := time.Now()
	putOK := ce.putTargetUntil(20*time.Second, "w3")
	t.Logf("node stopped: w1 deleted after %v, w3 declared after %v",
		deleted.Sub(stopped).Round(time.Millisecond), putOK.Sub(stopped).Round(time.Millisecond))

	var killed time.Time
	waitFor(t, 40*time.Second, func() (bool, string) {
		ks := sp.kills(w1.TaskID)
		if len(ks) == 0 {
			return false, "no kill of w1's task seen"
		}
		killed = ks[0].at
		return true, ""
	})
	launched := ce.waitLaunch(sp, 40*time.Second, "w3", 1)
	t.Logf("after the node stop: w1's task killed after %v, w3 launched after %v",
		killed.Sub(stopped).Round(time.Millisecond), launched.Sub(stopped).Round(time.Millisecond))
	if d := killed.Sub(deleted); d > watcherFollowBound {
		t.Errorf("w1's task was killed %v after its target was deleted, want within %v: the targets watcher did not notice that its consumer's node stopped",
			d.Round(time.Millisecond), watcherFollowBound)
	}
	if d := launched.Sub(putOK); d > watcherFollowBound {
		t.Errorf("w3 was launched %v after it was declared, want within %v", d.Round(time.Millisecond), watcherFollowBound)
	}
	if !sel.running() {
		t.Error("selector Run returned")
	}
}
