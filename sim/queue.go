package sim

import (
	"github.com/taskselector/taskselector/selector"
)

// evKind is what a queued item does when its time comes.
type evKind uint8

const (
	kTick    evKind = iota + 1 // the policy gets a Tick
	kStatus                    // a host publishes its HostStatus
	kHelpers                   // a task's wrapper starts its helpers
	kBeat                      // a task advances and heartbeats
	kCrash                     // a task crashes
	kWorker                    // a request reaches its host's worker
	kPolicy                    // an event reaches the policy
	kTimeout                   // a request's reply deadline
	kMeasure                   // stranded check and timeline sample
	kAlloc                     // the policy's answer to a helper RAM request reaches its task
)

// item is one entry of the event queue.
type item struct {
	at   int64 // virtual ns since Epoch
	seq  uint64
	kind evKind
	host *hostState
	proc *proc
	req  *request
	ev   selector.Event
	idx  int

	alloc *selector.Command // kAlloc: the CmdAllocReply
}

// queue is a min-heap of items by (at, seq).
type queue []*item

func (q queue) Len() int { return len(q) }

func (q queue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}

func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i]; q[i].idx = i; q[j].idx = j }

// Push implements heap.Interface.
func (q *queue) Push(x any) { it := x.(*item); it.idx = len(*q); *q = append(*q, it) }

// Pop implements heap.Interface.
func (q *queue) Pop() any {
	old := *q
	n := len(old) - 1
	it := old[n]
	old[n] = nil
	*q = old[:n]
	return it
}
