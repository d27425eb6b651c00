package receiver

import (
	"context"
	"fmt"
	"sync"

	"github.com/voldelta/voldelta/chunk"
)

// FetchFunc returns the bytes of manifest entry e (at index i). It is
// called from several goroutines at once.
type FetchFunc func(ctx context.Context, i int, e chunk.Entry) ([]byte, error)

// ApplyManifest applies a complete manifest to vol with the same plan as a
// network sync (skip, copy locally, fetch the rest), fetching what the
// target lacks with fetch on up to parallel goroutines, and commits. It is
// how a target is hydrated from an object store.
func ApplyManifest(ctx context.Context, vol Volume, opt Options, m *chunk.Manifest, peer string, parallel int, fetch FetchFunc) (Result, Previous, error) {
	if parallel < 1 {
		parallel = 1
	}
	ap, err := Begin(ctx, vol, opt, Header{Size: m.Size, Params: m.Params, Peer: peer})
	if err != nil {
		return Result{}, Previous{}, err
	}
	defer ap.Close()
	prev := ap.Previous()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		const batch = 4096
		for k := 0; k < len(m.Entries); k += batch {
			if ap.AddManifest(ctx, m.Entries[k:min(k+batch, len(m.Entries))]) != nil {
				return
			}
		}
		ap.EndManifest(ctx, uint64(len(m.Entries)), m.Root)
	}()
	f := newFetchPool(ctx, ap, parallel, fetch)
	defer func() { // before ap.Close: no delivery outlives the apply
		f.stop()
		cancel(nil)
		f.wg.Wait()
	}()
	if err := ap.Run(ctx, f); err != nil {
		return Result{}, prev, err
	}
	r, err := ap.Commit(ctx)
	return r, prev, err
}

// fetchPool is a Requester that fetches asked-for chunks on a fixed number
// of goroutines and delivers them to the apply.
type fetchPool struct {
	ctx   context.Context
	ap    *Apply
	fetch FetchFunc
	mu    sync.Mutex
	cond  *sync.Cond
	queue []int
	done  bool
	wg    sync.WaitGroup
}

func newFetchPool(ctx context.Context, ap *Apply, n int, fetch FetchFunc) *fetchPool {
	f := &fetchPool{ctx: ctx, ap: ap, fetch: fetch}
	f.cond = sync.NewCond(&f.mu)
	for range n {
		f.wg.Add(1)
		go f.work()
	}
	return f
}

func (f *fetchPool) Need(indexes []int) error {
	f.mu.Lock()
	f.queue = append(f.queue, indexes...)
	f.mu.Unlock()
	f.cond.Broadcast()
	return nil
}

func (f *fetchPool) NeedEnd(uint64) error {
	f.stop()
	return nil
}

// stop lets the workers finish the queue and exit.
func (f *fetchPool) stop() {
	f.mu.Lock()
	f.done = true
	f.mu.Unlock()
	f.cond.Broadcast()
}

func (f *fetchPool) next() (int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.queue) == 0 && !f.done {
		f.cond.Wait()
	}
	if len(f.queue) == 0 || f.ctx.Err() != nil {
		return 0, false
	}
	i := f.queue[0]
	f.queue = f.queue[1:]
	return i, true
}

func (f *fetchPool) work() {
	defer f.wg.Done()
	for {
		i, ok := f.next()
		if !ok {
			return
		}
		e, _ := f.ap.Entry(uint64(i))
		data, err := f.fetch(f.ctx, i, e)
		if err == nil {
			err = f.ap.Deliver(f.ctx, uint64(i), data)
		} else {
			err = fmt.Errorf("fetch chunk %s at %d: %w", e.ID.Short(), e.Offset, err)
		}
		if err != nil {
			if f.ctx.Err() == nil {
				f.ap.Fail(f.ctx, err)
			}
			return
		}
	}
}
