// Package ratelog limits how often a repeated log line is written, and
// counts the lines it held back so that the next one written can say how
// many there were.
//
// A Limiter lets one event through per period (Every) and suppresses the
// rest of that period; the next event let through reports how many were
// suppressed since the last one, and the count starts again from zero:
//
//	var l = ratelog.Limiter{Every: 5 * time.Second}
//
//	if ok, n := l.Allow(); ok {
//		log.Warn("malformed request", "err", err, "suppressed", n)
//	}
//
// or, the same in one call:
//
//	l.Log(log, slog.LevelWarn, "malformed request", "err", err)
//
// Keyed does the same for a small fixed set of keys, one period per key.
//
// Time comes from the Now field (time.Now when nil). time.Now carries a
// monotonic clock reading, so wall-clock steps neither open nor close a
// period early. Both types are safe for concurrent use.
package ratelog

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"time"
)

// DefaultEvery is the period of a Limiter or Keyed whose Every is zero.
const DefaultEvery = time.Second

// SuppressedKey is the attribute under which Log reports the number of
// lines suppressed since the last one written.
const SuppressedKey = "suppressed"

// Limiter lets one event through per period and counts the rest. The zero
// value lets one through per DefaultEvery, on time.Now. Set Every and Now
// before first use and do not change them afterwards. A Limiter must not be
// copied after first use.
type Limiter struct {
	// Every is the shortest gap between two events let through; zero means
	// DefaultEvery.
	Every time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu         sync.Mutex
	last       time.Time // when the last event was let through; zero before the first
	suppressed int       // events suppressed since last
}

// Allow reports whether to log now and, when it does, how many events were
// suppressed since the last one let through; the count then starts again
// from zero. The first event is always let through. When it returns false
// the count is 0 and the event is counted as suppressed.
func (l *Limiter) Allow() (ok bool, suppressed int) {
	now := clock(l.Now)
	l.mu.Lock()
	defer l.mu.Unlock()
	return allow(&l.last, &l.suppressed, now, l.Every)
}

// Log writes msg at level on log, with args and a SuppressedKey attribute,
// if Allow lets it through, and reports whether it did. The record's
// source is Log's caller.
func (l *Limiter) Log(log *slog.Logger, level slog.Level, msg string, args ...any) bool {
	ok, n := l.Allow()
	if ok {
		write(log, level, msg, n, args)
	}
	return ok
}

// Keyed is a Limiter per key: each key has its own period and count. The
// keys should be a small fixed set (constants naming call sites, say):
// their state is kept for as long as the Keyed is. The zero value lets one
// event per key through per DefaultEvery, on time.Now. Set Every and Now
// before first use and do not change them afterwards. A Keyed must not be
// copied after first use.
type Keyed struct {
	// Every is the shortest gap between two events of one key let
	// through; zero means DefaultEvery.
	Every time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu   sync.Mutex
	keys map[string]*keyState
}

type keyState struct {
	last       time.Time
	suppressed int
}

// Allow is Limiter.Allow for key.
func (k *Keyed) Allow(key string) (ok bool, suppressed int) {
	now := clock(k.Now)
	k.mu.Lock()
	defer k.mu.Unlock()
	st := k.keys[key]
	if st == nil {
		if k.keys == nil {
			k.keys = make(map[string]*keyState)
		}
		st = new(keyState)
		k.keys[key] = st
	}
	return allow(&st.last, &st.suppressed, now, k.Every)
}

// Log is Limiter.Log for key.
func (k *Keyed) Log(key string, log *slog.Logger, level slog.Level, msg string, args ...any) bool {
	ok, n := k.Allow(key)
	if ok {
		write(log, level, msg, n, args)
	}
	return ok
}

func clock(now func() time.Time) time.Time {
	if now == nil {
		return time.Now()
	}
	return now()
}

// allow is the decision, with the state's lock held. An event whose time is
// before the last one let through (callers racing between reading the
// clock and taking the lock) falls within the period and is suppressed.
func allow(last *time.Time, suppressed *int, now time.Time, every time.Duration) (bool, int) {
	if every <= 0 {
		every = DefaultEvery
	}
	if !last.IsZero() && now.Sub(*last) < every {
		*suppressed++
		return false, 0
	}
	n := *suppressed
	*last, *suppressed = now, 0
	return true, n
}

// write logs one record whose source is the caller of Limiter.Log or
// Keyed.Log, as the slog package documents for wrappers.
func write(log *slog.Logger, level slog.Level, msg string, suppressed int, args []any) {
	ctx := context.Background()
	if log == nil || !log.Enabled(ctx, level) {
		return
	}
	var pcs [1]uintptr
	runtime.Callers(3, pcs[:]) // skip Callers, write and Log
	r := slog.NewRecord(time.Now(), level, msg, pcs[0])
	r.Add(args...)
	r.AddAttrs(slog.Int(SuppressedKey, suppressed))
	_ = log.Handler().Handle(ctx, r)
}
