package main

import (
	"sync/atomic"
	"time"

	"github.com/taskselector/taskselector/bus"
	"github.com/taskselector/taskselector/internal/ops"
	"github.com/taskselector/taskselector/schemas"
)

// current is the operator endpoints' view of the selector: the service
// that runs now. A deposed service is replaced by a new one (see run), and
// the endpoints follow; the counters of the services before it are kept.
type current struct {
	svc       atomic.Pointer[bus.SelectorService]
	takeovers atomic.Uint64 // of the services replaced
}

var _ ops.LeaderSource = (*current)(nil)
var _ ops.EdgeSource = (*current)(nil)

// set makes svc the current service.
func (c *current) set(svc *bus.SelectorService) {
	if old := c.svc.Swap(svc); old != nil {
		c.takeovers.Add(old.Takeovers())
	}
}

// Status implements ops.Source.
func (c *current) Status() schemas.SelectorStatus { return c.svc.Load().Status() }

// RestartToReady implements ops.Source.
func (c *current) RestartToReady() time.Duration { return c.svc.Load().RestartToReady() }

// Takeovers implements ops.LeaderSource.
func (c *current) Takeovers() uint64 { return c.takeovers.Load() + c.svc.Load().Takeovers() }

// RequestsDropped implements ops.EdgeSource.
func (c *current) RequestsDropped() uint64 { return c.svc.Load().RequestsDropped() }

// RequestsMerged implements ops.EdgeSource.
func (c *current) RequestsMerged() uint64 { return c.svc.Load().RequestsMerged() }

// ReplyErrors implements ops.EdgeSource.
func (c *current) ReplyErrors() uint64 { return c.svc.Load().ReplyErrors() }

// BacklogEvents implements ops.EdgeSource.
func (c *current) BacklogEvents() uint64 { return c.svc.Load().BacklogEvents() }
