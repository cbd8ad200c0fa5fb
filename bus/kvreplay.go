package bus

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// replayed is one entry of a replay with its decoded value.
type replayed[T any] struct {
	e   jetstream.KeyValueEntry
	v   T
	err error
}

// replayDecode reads w's initial values, up to its end-of-initial-values
// marker, and decodes them on every core while it reads, in batches. The
// result keeps the order of the watcher.
func replayDecode[T any](ctx context.Context, w jetstream.KeyWatcher, bucket string, decode func(jetstream.KeyValueEntry) (T, error)) ([]replayed[T], error) {
	const batchSize = 256
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan []replayed[T], 4*workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for b := range jobs {
				for i := range b {
					b[i].v, b[i].err = decode(b[i].e)
				}
			}
		})
	}
	finish := func() { close(jobs); wg.Wait() }
	var batches [][]replayed[T]
	cur := make([]replayed[T], 0, batchSize)
	n := 0
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case e, ok = <-w.Updates():
		case <-ctx.Done():
			finish()
			return nil, fmt.Errorf("bus: replay %s: %w", bucket, ctx.Err())
		}
		if !ok {
			finish()
			return nil, fmt.Errorf("bus: replay %s: watcher closed before the end of the initial values", bucket)
		}
		if e == nil {
			break
		}
		cur = append(cur, replayed[T]{e: e})
		n++
		if len(cur) == batchSize {
			batches = append(batches, cur)
			jobs <- cur
			cur = make([]replayed[T], 0, batchSize)
		}
	}
	if len(cur) > 0 {
		batches = append(batches, cur)
		jobs <- cur
	}
	finish()
	out := make([]replayed[T], 0, n)
	for _, b := range batches {
		out = append(out, b...)
	}
	return out, nil
}

// startWatch starts a watcher of every key of kv that lives until its cancel
// function is called (or it is stopped). Only its creation is bounded, by ctx
// and by 10 s.
func startWatch(ctx context.Context, kv jetstream.KeyValue, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, context.CancelFunc, error) {
	wctx, cancel := context.WithCancel(context.Background())
	createCtx, stopCreate := context.WithTimeout(ctx, 10*time.Second)
	defer stopCreate()
	unhook := context.AfterFunc(createCtx, cancel)
	w, err := kv.WatchAll(wctx, opts...)
	if !unhook() {
		// ctx ended or the creation took too long: the watcher's context
		// is already cancelled.
		if err == nil {
			_ = w.Stop()
			err = createCtx.Err()
		}
	}
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return w, cancel, nil
}
