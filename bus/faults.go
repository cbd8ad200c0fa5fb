package bus

import "context"

// ServiceFaults injects faults into a SelectorService. It is a test hook:
// tests set it to make the store slow or failing, or the service a slow
// consumer, and check that the selector copes. Production code leaves
// ServiceConfig.Faults nil; every field is optional.
type ServiceFaults struct {
	// BeforeWrite runs before each attempt to write target's state to the
	// tasks bucket, in the store writer's goroutine. It may block to slow
	// the store down; it should return once ctx (the writer's, which ends
	// when the service stops) is done. A non-nil error fails the attempt
	// as a transient store error would, before anything is written: the
	// writer retries it with backoff.
	BeforeWrite func(ctx context.Context, target string) error
	// BeforeInput runs in a subscription's callback before each message of
	// source (selector.InputHeartbeats or selector.InputHostStatuses) is
	// handled. Blocking in it makes the service a slow consumer of that
	// source, so that its subscription drops messages once its pending
	// limit (ServiceConfig.HeartbeatPending, HostStatusPending) is reached.
	// Below the limit the messages wait in the queue, and the engine judges
	// silence only up to the arrival of the oldest one waiting (see
	// selector.Tick).
	BeforeInput func(source string)
}

func (f *ServiceFaults) beforeWrite(ctx context.Context, target string) error {
	if f == nil || f.BeforeWrite == nil {
		return nil
	}
	return f.BeforeWrite(ctx, target)
}

func (f *ServiceFaults) beforeInput(source string) {
	if f != nil && f.BeforeInput != nil {
		f.BeforeInput(source)
	}
}
