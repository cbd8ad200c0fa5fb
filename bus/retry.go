package bus

import (
	"time"

	"github.com/taskselector/taskselector/internal/natsconn"
)

// reconnectDelay is the wait before the service retries a failed start step
// for the n-th time (n >= 1): the same backoff as a connection's reconnects.
func reconnectDelay(n int) time.Duration { return natsconn.ReconnectDelay(n) }
