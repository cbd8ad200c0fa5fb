package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// LeaseBucket is the KV bucket that holds the leader lease, under LeaseKey.
// It has per-key TTLs and keeps a marker when a key expires, so that a
// standby watching the key learns of the expiry at once.
const (
	LeaseBucket = "selector_lease"
	LeaseKey    = "leader"
)

// ErrLeaseLost is returned by Lease.Renew when the lease is no longer ours:
// the key changed since our last renewal (it expired and another selector
// took it, or an operator deleted it).
var ErrLeaseLost = errors.New("bus: leader lease lost")

// LeaseConfig configures the leader lease. Zero durations take the defaults
// in brackets; an empty ID makes the lease unusable (NewLease fails).
type LeaseConfig struct {
	// ID names this selector in the lease and in status answers.
	ID string
	// TTL is how long the lease lives without a renewal [5s]. A holder
	// that has not renewed within TTL of a renewal's send time stops
	// acting; the server expires the key TTL after it stored it.
	TTL time.Duration
	// Renew is how often the holder renews, and how often a standby tries
	// to take the lease [1s]. It must be below TTL.
	Renew time.Duration
}

func (c LeaseConfig) withDefaults() LeaseConfig {
	if c.TTL <= 0 {
		c.TTL = 5 * time.Second
	}
	if c.Renew <= 0 {
		c.Renew = time.Second
	}
	return c
}

// Check reports a configuration that cannot work: an empty ID, a TTL under
// the server's 1 s minimum, or a renewal period not below the TTL.
func (c LeaseConfig) Check() error {
	c = c.withDefaults()
	switch {
	case c.ID == "":
		return errors.New("bus: lease: empty selector id")
	case c.TTL < time.Second:
		return fmt.Errorf("bus: lease: TTL %s below the 1s minimum of per-key TTLs", c.TTL)
	case c.Renew >= c.TTL:
		return fmt.Errorf("bus: lease: renewal period %s not below the TTL %s", c.Renew, c.TTL)
	}
	return nil
}

// leaseValue is the lease key's value.
type leaseValue struct {
	ID   string `json:"id"`
	Term uint64 `json:"term,omitempty"` // 0 in the Create, set by renewals
}

// parseLeaseValue decodes the lease key's value; a value that does not
// decode names no holder.
func parseLeaseValue(data []byte) leaseValue {
	var v leaseValue
	if json.Unmarshal(data, &v) != nil {
		return leaseValue{}
	}
	return v
}

// LeaseBucketConfig is the lease bucket's configuration.
func LeaseBucketConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      LeaseBucket,
		Description: "taskselector: the selectors' leader lease (key leader, per-key TTL)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		// Keep the marker of an expired key long enough for every
		// standby's watch to see it.
		LimitMarkerTTL: time.Minute,
	}
}

// Lease is one selector's handle on the leader lease. The holder takes it
// with Create (a per-key TTL), renews it with a publish that expects the
// key's last revision and carries a new TTL (KV Update would drop the TTL),
// and releases it with a revision-checked Delete. The term of a tenure is
// the key's revision when it was taken: revisions only grow, so a later
// leader always has a larger term.
//
// Validity is judged on this process's monotonic clock: the lease is ours
// until TTL after the send time of the last successful renewal (or of the
// Create). The server expires the key TTL after it stored that write, which
// is later, so a holder stops acting before any standby can take over.
//
// Its methods are safe for concurrent use.
type Lease struct {
	kv      jetstream.KeyValue
	js      jetstream.JetStream
	cfg     LeaseConfig
	log     *slog.Logger
	subject string

	mu             sync.Mutex
	rev            uint64    // our last revision of the key; 0 when not held
	term           uint64    // our term; 0 when not held
	validUntil     time.Time // monotonic; zero when not held
	lastValidUntil time.Time // validUntil of the lease last dropped
	seenID         string    // the holder last seen
	seenTerm       uint64
	seenRev        uint64    // the key's revision last seen by a standby
	seenAt         time.Time // when seenRev was first seen (monotonic)
	staleLogged    uint64    // the stale revision last logged
}

// NewLease returns a Lease on kv (the lease bucket) for the selector cfg.ID.
func NewLease(js jetstream.JetStream, kv jetstream.KeyValue, cfg LeaseConfig, log *slog.Logger) (*Lease, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	return &Lease{kv: kv, js: js, cfg: cfg.withDefaults(), log: log, subject: "$KV." + LeaseBucket + "." + LeaseKey}, nil
}

// Config returns the lease's configuration with its defaults.
func (l *Lease) Config() LeaseConfig { return l.cfg }

// Valid reports whether the lease is ours at now (a monotonic time).
func (l *Lease) Valid(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term != 0 && now.Before(l.validUntil)
}

// ValidUntil is when the lease stops being ours without a renewal; zero
// when not held.
func (l *Lease) ValidUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.validUntil
}

// Term is our term while we hold the lease, and 0 otherwise.
func (l *Lease) Term() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term
}

// Holder returns the holder and term last seen: ours while we hold it.
func (l *Lease) Holder() (id string, term uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term != 0 {
		return l.cfg.ID, l.term
	}
	return l.seenID, l.seenTerm
}

// TryAcquire tries once to take the lease with Create. It reports whether
// it did; a lease held by another selector is no error (it reports false
// and records the holder). A lease whose revision has not changed for
// TTL + Renew on our clock was not renewed and did not expire (the server's
// TTL is not trusted alone): it is deleted at that revision and taken.
func (l *Lease) TryAcquire(ctx context.Context) (bool, error) {
	val, _ := json.Marshal(leaseValue{ID: l.cfg.ID})
	sent := time.Now()
	rev, err := l.kv.Create(ctx, LeaseKey, val, jetstream.KeyTTL(l.cfg.TTL))
	if err == nil {
		l.mu.Lock()
		l.rev, l.term, l.validUntil = rev, rev, sent.Add(l.cfg.TTL)
		l.seenID, l.seenTerm = l.cfg.ID, rev
		l.mu.Unlock()
		l.log.Info("leader lease taken", "id", l.cfg.ID, "term", rev)
		return true, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return false, fmt.Errorf("bus: take lease: %w", err)
	}
	e, err := l.kv.Get(ctx, LeaseKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil // gone meanwhile: the next attempt takes it
	}
	if err != nil {
		return false, fmt.Errorf("bus: read lease: %w", err)
	}
	v := parseLeaseValue(e.Value())
	now := time.Now()
	l.mu.Lock()
	l.seenID = v.ID
	if v.Term != 0 {
		l.seenTerm = v.Term
	}
	if e.Revision() != l.seenRev {
		l.seenRev, l.seenAt = e.Revision(), now
	}
	stale := now.Sub(l.seenAt) > l.cfg.TTL+l.cfg.Renew
	first := stale && l.staleLogged != e.Revision()
	if first {
		l.staleLogged = e.Revision()
	}
	l.mu.Unlock()
	if !stale {
		return false, nil
	}
	// The holder has not renewed for longer than the TTL: it has stopped
	// acting on its own clock. A revision-checked delete cannot remove a
	// lease renewed meanwhile.
	if first {
		l.log.Warn("leader lease not renewed and not expired; deleting it", "holder", v.ID, "revision", e.Revision())
	}
	if err := l.kv.Delete(ctx, LeaseKey, jetstream.LastRevision(e.Revision())); err != nil && !isCASError(err) {
		return false, fmt.Errorf("bus: delete stale lease: %w", err)
	}
	return false, nil
}

// Renew renews the lease once. It fails with an error wrapping ErrLeaseLost
// when the key is no longer at our revision; other failures (a timeout, no
// quorum) leave the lease ours until ValidUntil.
func (l *Lease) Renew(ctx context.Context) error {
	l.mu.Lock()
	rev, term := l.rev, l.term
	l.mu.Unlock()
	if term == 0 {
		return ErrLeaseLost
	}
	val, _ := json.Marshal(leaseValue{ID: l.cfg.ID, Term: term})
	msg := nats.NewMsg(l.subject)
	msg.Data = val
	sent := time.Now()
	ack, err := l.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(l.cfg.TTL))
	if err != nil {
		if isWrongLastSeq(err) {
			l.drop()
			return fmt.Errorf("%w: %w", ErrLeaseLost, err)
		}
		return fmt.Errorf("bus: renew lease: %w", err)
	}
	l.mu.Lock()
	if l.term == term {
		l.rev = ack.Sequence
		l.validUntil = sent.Add(l.cfg.TTL)
	}
	l.mu.Unlock()
	return nil
}

// Release gives the lease up at once with a revision-checked delete, so
// that a standby takes over without waiting for the TTL. It is a no-op
// when the lease is not ours.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	rev, term := l.rev, l.term
	l.mu.Unlock()
	if term == 0 {
		return nil
	}
	l.drop()
	if err := l.kv.Delete(ctx, LeaseKey, jetstream.LastRevision(rev)); err != nil {
		if isCASError(err) {
			return nil // not ours any more: nothing to release
		}
		return fmt.Errorf("bus: release lease: %w", err)
	}
	l.log.Info("leader lease released", "id", l.cfg.ID, "term", term)
	return nil
}

// drop forgets that we hold the lease.
func (l *Lease) drop() {
	l.mu.Lock()
	if l.term != 0 {
		l.lastValidUntil = l.validUntil
	}
	l.rev, l.term, l.validUntil = 0, 0, time.Time{}
	l.mu.Unlock()
}

// LastValidUntil is when the lease we last held stopped being ours (its
// ValidUntil when it was dropped); zero if we never held one.
func (l *Lease) LastValidUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastValidUntil
}

// Campaign blocks until the lease is ours or ctx ends. It tries to take it
// every Renew, and at once when a watch of the key shows it deleted or
// expired.
func (l *Lease) Campaign(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if w, err := l.kv.Watch(wctx, LeaseKey, jetstream.UpdatesOnly()); err == nil {
		go func() {
			for e := range w.Updates() {
				if e != nil && e.Operation() != jetstream.KeyValuePut {
					select {
					case wake <- struct{}{}:
					default:
					}
				}
			}
		}()
	} else {
		l.log.Warn("cannot watch the leader lease; polling only", "err", err)
	}
	tick := time.NewTicker(l.cfg.Renew)
	defer tick.Stop()
	for {
		opCtx, cancel := context.WithTimeout(ctx, l.cfg.Renew)
		ok, err := l.TryAcquire(opCtx)
		cancel()
		if ok {
			return nil
		}
		if err != nil && ctx.Err() == nil {
			l.log.Debug("leader lease: attempt failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		case <-tick.C:
		}
	}
}

// Hold renews the lease every Renew until ctx ends (it returns nil) or the
// lease is lost (it returns an error wrapping ErrLeaseLost): rejected by the
// server, or not renewed successfully before ValidUntil. onLost, if set, is
// called as soon as the loss is known, before Hold returns.
func (l *Lease) Hold(ctx context.Context, onLost func(error)) error {
	tick := time.NewTicker(l.cfg.Renew)
	defer tick.Stop()
	expiry := time.NewTimer(time.Until(l.ValidUntil()))
	defer expiry.Stop()
	lost := func(err error) error {
		l.drop()
		if onLost != nil {
			onLost(err)
		}
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-expiry.C:
			if !l.Valid(time.Now()) {
				return lost(fmt.Errorf("%w: not renewed within the TTL", ErrLeaseLost))
			}
		case <-tick.C:
			// Bound the attempt by what is left of the lease.
			opCtx, cancel := context.WithDeadline(ctx, l.ValidUntil())
			err := l.Renew(opCtx)
			cancel()
			switch {
			case errors.Is(err, ErrLeaseLost):
				return lost(err)
			case err != nil && ctx.Err() == nil:
				l.log.Warn("leader lease: renewal failed", "err", err, "valid_for", time.Until(l.ValidUntil()))
			}
		}
		expiry.Reset(max(time.Until(l.ValidUntil()), 0))
	}
}

// isWrongLastSeq reports whether err is the server's "wrong last sequence"
// answer to an expected-sequence publish (its code differs on replicated
// streams).
func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}
