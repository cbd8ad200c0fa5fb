package bus

import (
	"errors"
	"fmt"
)

// hostMismatchError is a message whose body names another host than its
// subject (or, for a ps reply, than the host asked). With per-host NATS
// users, a worker can only publish on its own host's subjects, so a body
// naming another host is a worker lying about its peers, or a bug: the
// message is dropped, counted as malformed and, apart, as a host mismatch
// (Counters.HostMismatches, taskselector_host_mismatches_total).
type hostMismatchError struct {
	subject, body string // the hosts the subject (or request) and the body name
}

func (e *hostMismatchError) Error() string {
	return fmt.Sprintf("host mismatch: the subject names host %q, the body %q", e.subject, e.body)
}

// checkHost returns a *hostMismatchError when body is not subject.
func checkHost(subject, body string) error {
	if subject == body {
		return nil
	}
	return &hostMismatchError{subject: subject, body: body}
}

func isHostMismatch(err error) bool {
	var hm *hostMismatchError
	return errors.As(err, &hm)
}

// HostMismatches returns the messages dropped because their body named
// another host than their subject, by source.
func (s *SelectorService) HostMismatches() map[string]uint64 {
	var out map[string]uint64
	for src, c := range s.malformed {
		if n := c.mismatches.Load(); n > 0 {
			if out == nil {
				out = make(map[string]uint64)
			}
			out[src] = n
		}
	}
	return out
}
