package k8sutil

import (
	"context"
	"sync"
	"time"
)

// Reporter publishes the latest value given to Set every interval (not
// before the first Set), until Stop or its context ends: the progress of a
// running round or pull, written to an object's status.
type Reporter[T any] struct {
	mu   sync.Mutex
	last T
	seen bool
	done chan struct{}
	wg   sync.WaitGroup
}

// StartReporter starts a Reporter that calls publish with the latest value
// every interval.
func StartReporter[T any](ctx context.Context, every time.Duration, publish func(context.Context, T)) *Reporter[T] {
	r := &Reporter[T]{done: make(chan struct{})}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-r.done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			r.mu.Lock()
			v, seen := r.last, r.seen
			r.mu.Unlock()
			if seen {
				publish(ctx, v)
			}
		}
	}()
	return r
}

// Set records the latest value; safe for concurrent use.
func (r *Reporter[T]) Set(v T) {
	r.mu.Lock()
	r.last, r.seen = v, true
	r.mu.Unlock()
}

// Stop ends the reporting and waits for a publish in progress.
func (r *Reporter[T]) Stop() {
	close(r.done)
	r.wg.Wait()
}
