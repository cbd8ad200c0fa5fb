package ratelog

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Unix(1000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func want(t *testing.T, what string, ok bool, n int, wantOK bool, wantN int) {
	t.Helper()
	if ok != wantOK || n != wantN {
		t.Fatalf("%s: got (%v, %d), want (%v, %d)", what, ok, n, wantOK, wantN)
	}
}

func TestLimiterBurst(t *testing.T) {
	c := newClock()
	l := Limiter{Every: 5 * time.Second, Now: c.Now}
	ok, n := l.Allow()
	want(t, "first", ok, n, true, 0)
	for i := range 3 {
		c.Advance(time.Second)
		ok, n := l.Allow()
		want(t, "within the period "+string(rune('1'+i)), ok, n, false, 0)
	}
	c.Advance(2*time.Second - time.Nanosecond) // 5 s less 1 ns after the first
	ok, n = l.Allow()
	want(t, "just before the period ends", ok, n, false, 0)

	c.Advance(time.Nanosecond) // exactly 5 s after the first
	ok, n = l.Allow()
	want(t, "after the period", ok, n, true, 4)

	// The count was reset with the line that reported it.
	c.Advance(time.Second)
	ok, n = l.Allow()
	want(t, "new period", ok, n, false, 0)
	c.Advance(5 * time.Second)
	ok, n = l.Allow()
	want(t, "next line", ok, n, true, 1)
	c.Advance(5 * time.Second)
	ok, n = l.Allow()
	want(t, "quiet period", ok, n, true, 0)
}

func TestLimiterZeroValue(t *testing.T) {
	c := newClock()
	l := Limiter{Now: c.Now}
	ok, n := l.Allow()
	want(t, "first", ok, n, true, 0)
	c.Advance(DefaultEvery - time.Nanosecond)
	ok, n = l.Allow()
	want(t, "within DefaultEvery", ok, n, false, 0)
	c.Advance(time.Nanosecond)
	ok, n = l.Allow()
	want(t, "after DefaultEvery", ok, n, true, 1)

	// With no clock at all it runs on time.Now.
	var z Limiter
	ok, n = z.Allow()
	want(t, "time.Now first", ok, n, true, 0)
	ok, n = z.Allow()
	want(t, "time.Now second", ok, n, false, 0)
}

func TestLimiterClockBackwards(t *testing.T) {
	c := newClock()
	l := Limiter{Every: time.Second, Now: c.Now}
	l.Allow()
	c.Advance(-time.Hour)
	ok, n := l.Allow()
	want(t, "earlier than the last line", ok, n, false, 0)
	c.Advance(time.Hour + time.Second)
	ok, n = l.Allow()
	want(t, "after the period", ok, n, true, 1)
}

func TestKeyed(t *testing.T) {
	c := newClock()
	k := Keyed{Every: time.Second, Now: c.Now}
	ok, n := k.Allow("a")
	want(t, "a first", ok, n, true, 0)
	ok, n = k.Allow("b")
	want(t, "b first", ok, n, true, 0)
	k.Allow("a")
	k.Allow("a")
	k.Allow("b")
	c.Advance(time.Second)
	ok, n = k.Allow("a")
	want(t, "a after the period", ok, n, true, 2)
	ok, n = k.Allow("b")
	want(t, "b after the period", ok, n, true, 1)
	ok, n = k.Allow("a")
	want(t, "a again", ok, n, false, 0)

	var z Keyed
	ok, n = z.Allow("x")
	want(t, "zero value", ok, n, true, 0)
}

func TestLog(t *testing.T) {
	c := newClock()
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{AddSource: true}))
	l := Limiter{Every: time.Second, Now: c.Now}
	if !l.Log(log, slog.LevelWarn, "bad", "k", "v") {
		t.Fatal("first line not logged")
	}
	if l.Log(log, slog.LevelWarn, "bad", "k", "v") || l.Log(log, slog.LevelWarn, "bad", "k", "v") {
		t.Fatal("line within the period logged")
	}
	c.Advance(time.Second)
	if !l.Log(log, slog.LevelInfo, "good") {
		t.Fatal("line after the period not logged")
	}
	var k Keyed
	k.Now = c.Now
	k.Log("key", log, slog.LevelError, "keyed")

	type line struct {
		Level      string
		Msg        string
		K          string
		Suppressed *int
		Source     struct{ File string }
	}
	var got []line
	dec := json.NewDecoder(&buf)
	for dec.More() {
		var ln line
		if err := dec.Decode(&ln); err != nil {
			t.Fatal(err)
		}
		got = append(got, ln)
	}
	if len(got) != 3 {
		t.Fatalf("got %d lines, want 3: %+v", len(got), got)
	}
	for i, w := range []struct {
		level, msg, k string
		n             int
	}{{"WARN", "bad", "v", 0}, {"INFO", "good", "", 2}, {"ERROR", "keyed", "", 0}} {
		g := got[i]
		if g.Level != w.level || g.Msg != w.msg || g.K != w.k || g.Suppressed == nil || *g.Suppressed != w.n {
			t.Errorf("line %d: %+v, want level %s msg %s k %q suppressed %d", i, g, w.level, w.msg, w.k, w.n)
		}
		if filepath.Base(g.Source.File) != "ratelog_test.go" {
			t.Errorf("line %d: source %q, want the caller of Log", i, g.Source.File)
		}
	}
}

func TestLogDisabledLevelOrNilLogger(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c := newClock()
	l := Limiter{Now: c.Now}
	if !l.Log(log, slog.LevelDebug, "hidden") {
		t.Fatal("Log reports whether the limiter let the line through")
	}
	if buf.Len() != 0 {
		t.Fatalf("disabled level written: %q", buf.String())
	}
	c.Advance(time.Second)
	l.Log(nil, slog.LevelWarn, "nowhere") // must not panic
}

// TestConcurrent runs many callers on one clock instant: exactly one gets
// through, and the next period reports all the others. Run with -race.
func TestConcurrent(t *testing.T) {
	const goroutines, calls = 8, 500
	c := newClock()
	l := Limiter{Every: time.Second, Now: c.Now}
	k := Keyed{Every: time.Second, Now: c.Now}
	var mu sync.Mutex
	allowed, keyedAllowed := 0, 0
	var wg sync.WaitGroup
	for g := range goroutines {
		key := "even"
		if g%2 == 1 {
			key = "odd"
		}
		wg.Go(func() {
			a, ka := 0, 0
			for range calls {
				if ok, _ := l.Allow(); ok {
					a++
				}
				if ok, _ := k.Allow(key); ok {
					ka++
				}
			}
			mu.Lock()
			allowed += a
			keyedAllowed += ka
			mu.Unlock()
		})
	}
	wg.Wait()
	if allowed != 1 {
		t.Fatalf("%d lines let through in one instant, want 1", allowed)
	}
	if keyedAllowed != 2 {
		t.Fatalf("%d keyed lines let through in one instant, want 2 (one per key)", keyedAllowed)
	}
	c.Advance(time.Second)
	ok, n := l.Allow()
	want(t, "after the period", ok, n, true, goroutines*calls-1)
	ok, n = k.Allow("odd")
	want(t, "odd after the period", ok, n, true, goroutines/2*calls-1)
}
