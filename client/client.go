// Package client is the Go client for declaring targets and reading the
// selector's status: it puts and deletes target specs in the targets KV
// bucket and asks the selector for its status snapshot.
//
// It speaks the protocol alone (package protocol, the wire types of package
// schemas, nats.go and jetstream), so a program that uses it links neither
// the selector nor the NATS server.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/protocol"
	"github.com/taskselector/taskselector/schemas"
)

// Client is the operator's handle on a running selector: it declares and
// removes targets in the targets bucket and reads the selector's status.
type Client struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	subj protocol.Subjects
}

// New returns a Client on nc for the selector under prefix (empty means
// protocol.DefaultPrefix).
func New(nc *nats.Conn, prefix string) (*Client, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("client: jetstream: %w", err)
	}
	return &Client{nc: nc, js: js, subj: protocol.NewSubjects(prefix)}, nil
}

func (c *Client) targets(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := c.js.KeyValue(ctx, protocol.TargetsBucket)
	if err != nil {
		return nil, fmt.Errorf("client: open bucket %s (is a selector running?): %w", protocol.TargetsBucket, err)
	}
	return kv, nil
}

// PutTarget declares target with spec, or replaces its spec. The spec is
// validated first (a zero version is set to the current one).
func (c *Client) PutTarget(ctx context.Context, name string, spec schemas.TargetSpec) error {
	if name == "" {
		return errors.New("client: empty target name")
	}
	data, err := schemas.Marshal(&spec)
	if err != nil {
		return fmt.Errorf("client: spec of %q: %w", name, err)
	}
	return c.PutTargetRaw(ctx, name, data)
}

// PutTargetRaw stores data as target's spec as is, valid or not (for tests
// and tools that bring their own encoding).
func (c *Client) PutTargetRaw(ctx context.Context, name string, data []byte) error {
	if name == "" {
		return errors.New("client: empty target name")
	}
	kv, err := c.targets(ctx)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, protocol.EncodeName(name), data); err != nil {
		return fmt.Errorf("client: put target %q: %w", name, err)
	}
	return nil
}

// DeleteTarget removes target: the selector kills its task and forgets it.
func (c *Client) DeleteTarget(ctx context.Context, name string) error {
	kv, err := c.targets(ctx)
	if err != nil {
		return err
	}
	if err := kv.Delete(ctx, protocol.EncodeName(name)); err != nil {
		return fmt.Errorf("client: delete target %q: %w", name, err)
	}
	return nil
}

// LeaderWait is how long Status waits for the leader's answer once a
// standby has answered first.
const LeaderWait = 250 * time.Millisecond

// Status asks the selectors for their status snapshot and returns the
// leader's. Every selector answers (a leader and its standbys); a selector
// without a lease (no role) counts as a leader. When only standbys answer
// within LeaderWait of the first answer (a failover is under way), it
// returns a standby's answer, whose Role says so and whose Leader names the
// holder it last saw. It fails with an error wrapping nats.ErrNoResponders
// while no selector is listening.
func (c *Client) Status(ctx context.Context) (schemas.SelectorStatus, error) {
	var st schemas.SelectorStatus
	inbox := c.nc.NewRespInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return st, fmt.Errorf("client: status request: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.nc.PublishRequest(c.subj.Status(), inbox, nil); err != nil {
		return st, fmt.Errorf("client: status request: %w", err)
	}
	var standby *schemas.SelectorStatus
	waitCtx := ctx
	for {
		msg, err := sub.NextMsgWithContext(waitCtx)
		if err != nil {
			if standby != nil && ctx.Err() == nil {
				return *standby, nil // the wait for a leader is over
			}
			if errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("%w: %w", nats.ErrTimeout, err)
			}
			return st, fmt.Errorf("client: status request: %w", err)
		}
		if len(msg.Data) == 0 && msg.Header.Get("Status") == "503" {
			if standby != nil {
				continue
			}
			return st, fmt.Errorf("client: status request: %w", nats.ErrNoResponders)
		}
		var got schemas.SelectorStatus
		if err := json.Unmarshal(msg.Data, &got); err != nil {
			return st, fmt.Errorf("client: decode status: %w", err)
		}
		if got.Role != schemas.RoleStandby {
			return got, nil
		}
		if standby == nil {
			standby = &got
			var cancel context.CancelFunc
			waitCtx, cancel = context.WithTimeout(ctx, LeaderWait)
			defer cancel()
		}
	}
}
