package bus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/taskselector/taskselector/schemas"
	"github.com/taskselector/taskselector/selector"
)

// ErrDeposed is returned by Run when the service lost the leader lease while
// it led: it stopped acting at once and shut down without writing more. Run
// a new service on the same connection to stand by again.
var ErrDeposed = errors.New("bus: deposed: the leader lease was lost")

// errStandbyStopped ends startLeader when Run's context ends before the
// lease was taken.
var errStandbyStopped = errors.New("bus: standby stopped")

// leadership is the state of a service run with a lease (ServiceConfig.Lease).
//
// Until it holds the lease the service stands by: it watches the targets
// bucket (keeping the specs in warmSpecs) and the tasks bucket (warmTasks),
// answers status requests as a standby, and sends nothing. Once it takes
// the lease it writes its term marker, waits for its tasks watch to deliver
// it, fences its TaskStore at that point, builds the engine from the warm
// copy (no replay) and starts like a restarted selector: backlog, then
// subscriptions and the durable consumer, with the engine's recovery grace.
//
// While it leads, a goroutine renews the lease (Lease.Hold). Launches, kills
// and store writes are sent only while the lease is valid on this process's
// clock (mayAct); a renewal rejected by the server, or none successful
// before the lease's end, deposes the service: it stops acting at once and
// Run returns ErrDeposed.
type leadership struct {
	lease     *Lease
	warm      *warmTasks
	warmSpecs map[string]schemas.TargetSpec // guarded by SelectorService.mu
	building  bool                          // the engine is being built: hold target changes (mu)
	held      []selector.Event              // target changes held while building (mu)

	stopTargets context.CancelFunc // the targets loop, started by a standby
	targetsDone chan struct{}

	cancelRun  context.CancelFunc // ends Run (set by Run)
	stopHold   context.CancelFunc
	holdDone   chan struct{}
	takenAt    time.Time     // when the lease was taken
	waited     time.Duration // how long the campaign for it took
	standbyUp  atomic.Bool
	deposed    atomic.Bool
	deposedAt  atomic.Int64 // unix ns of the deposition, for tests and logs
	takeovers  atomic.Uint64
	takeoverNS atomic.Int64 // lease taken -> ready, of the last takeover
}

func (s *SelectorService) leased() bool { return s.cfg.Lease.ID != "" }

// mayAct reports whether the service may send a launch or a kill, or write
// the tasks bucket: always without a lease, and only while the lease is
// valid with one.
func (s *SelectorService) mayAct() bool {
	if !s.leased() {
		return true
	}
	l := s.lead.lease
	return l != nil && !s.lead.deposed.Load() && l.Valid(time.Now())
}

// Takeovers counts the times this service took the lease (0 or 1: a
// deposed service is replaced by a new one).
func (s *SelectorService) Takeovers() uint64 { return s.lead.takeovers.Load() }

// TakeoverToReady is the time from taking the lease to being ready, the
// standby's counterpart of RestartToReady; 0 before a takeover.
func (s *SelectorService) TakeoverToReady() time.Duration {
	return time.Duration(s.lead.takeoverNS.Load())
}

// Standby is true once the service stands by warm (a lease is configured
// and the buckets are watched), until it takes the lease.
func (s *SelectorService) Standby() bool {
	return s.lead.standbyUp.Load()
}

// Deposed reports whether the service lost the lease while it led.
func (s *SelectorService) Deposed() bool { return s.lead.deposed.Load() }

// Lease is the service's handle on the leader lease; nil before Run has
// opened it, and without a lease.
func (s *SelectorService) Lease() *Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lead.lease
}

// startLeader stands by until the lease is ours, then takes over and starts
// as start does. It returns errStandbyStopped (wrapped) when ctx ends first.
func (s *SelectorService) startLeader(ctx context.Context) (jetstream.ConsumeContext, error) {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	loadStart := time.Now()
	err = s.retryStart(ctx, "loading state", func() error { return s.loadWarm(ctx, js) })
	if err != nil {
		return nil, err
	}
	s.malformed[SourceTargets].n.Add(s.targets.Malformed())
	s.lead.stopTargets, s.lead.targetsDone = s.runTargets(s.onTargetChange)
	svc, err := s.startStatusService(false)
	if err != nil {
		s.stopStandby()
		return nil, err
	}
	s.mu.Lock()
	s.statusSvc = svc
	s.mu.Unlock()
	s.lead.standbyUp.Store(true)
	s.log.Info("selector standing by", "id", s.cfg.Lease.ID, "targets", len(s.warmSpecsCopy()), "tasks", s.lead.warm.size(), "load", time.Since(loadStart))

	campaign := time.Now()
	if err := s.lead.lease.Campaign(ctx); err != nil {
		s.stopStandby()
		return nil, fmt.Errorf("%w: %w", errStandbyStopped, err)
	}
	s.lead.standbyUp.Store(false)
	s.lead.takenAt = time.Now()
	s.lead.waited = s.lead.takenAt.Sub(campaign)
	s.lead.takeovers.Add(1)
	term := s.lead.lease.Term()
	holdCtx, stopHold := context.WithCancel(context.Background())
	s.lead.stopHold, s.lead.holdDone = stopHold, make(chan struct{})
	go func() {
		defer close(s.lead.holdDone)
		_ = s.lead.lease.Hold(holdCtx, s.depose)
	}()

	// Fence: the term marker ends every earlier leader's writes; the warm
	// watch delivering it proves that everything before it is applied.
	var marker uint64
	err = s.retryStart(ctx, "writing the term marker", func() error {
		opCtx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
		defer cancel()
		var err error
		marker, err = WriteTermMarker(opCtx, s.store.Tasks, term, s.cfg.Lease.ID)
		return err
	})
	if err != nil {
		s.stopStandby()
		return nil, err
	}
	waitCtx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
	werr := s.lead.warm.waitFor(waitCtx, marker)
	cancel()
	var states []schemas.TaskState
	last := marker
	if werr == nil {
		var seen uint64
		states, seen = s.lead.warm.handOver(s.tasks)
		last = max(last, seen)
	} else {
		// The watch stalled (its server went away, say): replay, as a
		// cold start would.
		s.log.Warn("takeover: the tasks watch lags; replaying the tasks bucket", "err", werr)
		s.lead.warm.stop()
		err = s.retryStart(ctx, "replaying the tasks bucket", func() error {
			opCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			var err error
			states, err = s.tasks.Replay(opCtx)
			return err
		})
		if err != nil {
			s.stopStandby()
			return nil, err
		}
	}
	s.malformed[SourceTasks].n.Add(s.tasks.Malformed())
	s.tasks.Fence(s.nc, js, term, s.cfg.Lease.ID, last)
	s.mu.Lock()
	specs := maps.Clone(s.lead.warmSpecs)
	s.lead.building = true
	s.mu.Unlock()
	s.log.Info("leader lease taken: taking over", "id", s.cfg.Lease.ID, "term", term, "marker", marker, "tasks", len(states))
	return s.build(ctx, specs, states, s.lead.takenAt)
}

// loadWarm opens the store and the lease, and starts watching both buckets.
func (s *SelectorService) loadWarm(ctx context.Context, js jetstream.JetStream) error {
	opCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	store, err := EnsureStore(opCtx, js, s.subj, s.cfg.Store)
	if err != nil {
		return err
	}
	lkv, err := js.CreateOrUpdateKeyValue(opCtx, LeaseBucketConfig(s.cfg.Store.Replicas))
	if err != nil {
		return fmt.Errorf("bus: ensure bucket %s: %w", LeaseBucket, err)
	}
	lease, err := NewLease(js, lkv, s.cfg.Lease, s.log)
	if err != nil {
		return err
	}
	tw, specs, err := WatchTargets(opCtx, store.Targets, s.log)
	if err != nil {
		return err
	}
	warm, err := startWarmTasks(opCtx, store.Tasks, s.log)
	if err != nil {
		_ = tw.Stop()
		return err
	}
	tasks := NewTaskStore(store.Tasks, s.log)
	s.mu.Lock()
	s.store, s.targets, s.tasks = store, tw, tasks
	s.lead.lease, s.lead.warm, s.lead.warmSpecs = lease, warm, specs
	s.mu.Unlock()
	return nil
}

// onTargetChange hands a target change to the engine once there is one,
// holds it while the engine is built, and keeps the warm specs before.
func (s *SelectorService) onTargetChange(ev selector.Event, _ func()) {
	s.mu.Lock()
	switch {
	case s.eng != nil:
		s.mu.Unlock()
		s.step(ev, nil)
		return
	case s.lead.building:
		s.lead.held = append(s.lead.held, ev)
	default:
		switch ev := ev.(type) {
		case *selector.TargetUpserted:
			s.lead.warmSpecs[ev.Target] = ev.Spec
		case *selector.TargetDeleted:
			delete(s.lead.warmSpecs, ev.Target)
		}
	}
	s.mu.Unlock()
}

func (s *SelectorService) warmSpecsCopy() map[string]schemas.TargetSpec {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.lead.warmSpecs)
}

// stopStandby undoes what startLeader started, for a start that ends early.
func (s *SelectorService) stopStandby() {
	s.lead.standbyUp.Store(false)
	if s.lead.stopTargets != nil {
		s.lead.stopTargets()
		_ = s.targets.Stop()
		<-s.lead.targetsDone
	}
	if s.lead.warm != nil {
		s.lead.warm.stop()
	}
	s.stopStatusService()
	s.stopHolding()
}

// standbyExit maps the error of a start that ended early: a standby
// stopped by its context (while it loads or campaigns), or a leader deposed
// while it started, is no failure of Run.
func (s *SelectorService) standbyExit(ctx context.Context, err error) error {
	if s.leased() {
		// Whatever the start left running: the targets loop, the warm
		// watch, the status service, the renewals (the lease is released
		// unless deposed).
		s.stopStandby()
	}
	switch {
	case s.lead.deposed.Load():
		return ErrDeposed
	case errors.Is(err, errStandbyStopped), s.leased() && ctx.Err() != nil:
		return nil
	}
	return err
}

// tookOver records the takeover-to-ready time once a leader is ready.
func (s *SelectorService) tookOver() {
	if !s.leased() {
		return
	}
	d := time.Since(s.lead.takenAt)
	s.lead.takeoverNS.Store(int64(d))
	s.log.Info("selector leads", "term", s.lead.lease.Term(), "takeover_to_ready", d)
}

// depose is called by the lease holder once the lease is lost: the
// service stops acting at once (mayAct is false from now on), tells the
// engine to stop launching, and ends Run.
func (s *SelectorService) depose(err error) {
	now := time.Now()
	if !s.lead.deposed.CompareAndSwap(false, true) {
		return
	}
	s.lead.deposedAt.Store(now.UnixNano())
	s.log.Error("leader lease lost: launches, kills and writes stop; standing down", "err", err)
	s.step(&selector.ShutdownRequested{}, nil)
	if s.lead.cancelRun != nil {
		s.lead.cancelRun()
	}
}

// stopHolding stops renewing the lease and, unless deposed, releases it, so
// that a standby takes over at once. Call it once every write is flushed.
func (s *SelectorService) stopHolding() {
	if s.lead.stopHold == nil {
		return
	}
	s.lead.stopHold()
	<-s.lead.holdDone
	s.lead.stopHold = nil
	if s.lead.deposed.Load() || !s.nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := s.lead.lease.Release(ctx); err != nil {
		s.log.Warn("cannot release the leader lease; a standby takes over once it expires", "err", err)
	}
}

// leaderStatus fills st's role, term and leader.
func (s *SelectorService) leaderStatus(st *schemas.SelectorStatus, leading bool) {
	l := s.lead.lease
	if !s.leased() {
		return
	}
	if leading && !s.lead.deposed.Load() {
		st.Role = schemas.RoleLeader
	} else {
		st.Role = schemas.RoleStandby
		st.Ready = false
		st.Recovering = !s.lead.standbyUp.Load()
		if st.LaunchesStopped == "" {
			st.LaunchesStopped = "standby"
		}
	}
	if l != nil {
		st.Leader, st.Term = l.Holder()
	}
}
