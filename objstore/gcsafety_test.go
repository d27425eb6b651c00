package objstore

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The gc tests below use a short grace period and let the first
// generation age past it, so that only the rule in the package doc keeps
// what a concurrent push relies on. Each case also runs gc without a grace
// in the same place (the negative control) to show that the situation is
// real: the pushed generation is then broken, or saved only by the push's
// confirmation step.
//
// Time is a fakeClock's, advanced past the grace instead of waited for: the
// grace need not be short, only longer than a push in these tests takes
// from reading its bases to writing its manifest, even on a loaded machine.
const testGrace = time.Hour

// fakeClock runs with the system clock plus the time it was advanced by;
// it maps the store's stamps (on the same machine's clock) to the offset
// in effect when they were made, so that objects written before an advance
// age by it and later ones do not.
type fakeClock struct {
	mu    sync.Mutex
	steps []clockStep // ascending
}

type clockStep struct {
	at     time.Time     // a millisecond boundary: stamps from it on are later
	offset time.Duration // in total, from at on
}

func (c *fakeClock) offset() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.offsetLocked()
}

func (c *fakeClock) Now() time.Time { return time.Now().Add(c.offset()) }

func (c *fakeClock) FromStore(t time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.steps) - 1; i >= 0; i-- {
		if !t.Before(c.steps[i].at) {
			return t.Add(c.steps[i].offset)
		}
	}
	return t
}

// Advance moves the clock d ahead. The store stamps with millisecond
// precision (rounded or truncated), so the boundary lies 2 ms after the
// call's millisecond and Advance returns 1 ms after it: every object
// written before the call is stamped before it and every one written after
// it from it on. (It waits at most 3 ms for the system clock to get there;
// nothing else waits for time in these tests.)
func (c *fakeClock) Advance(d time.Duration) {
	at := time.Now().Truncate(time.Millisecond).Add(2 * time.Millisecond)
	c.mu.Lock()
	c.steps = append(c.steps, clockStep{at: at, offset: c.offsetLocked() + d})
	c.mu.Unlock()
	time.Sleep(time.Until(at.Add(time.Millisecond)))
}

func (c *fakeClock) offsetLocked() time.Duration {
	if len(c.steps) == 0 {
		return 0
	}
	return c.steps[len(c.steps)-1].offset
}

func agePastGrace(c *fakeClock) { c.Advance(testGrace + time.Second) }

// tryPull pulls gen of vol into a fresh target and compares it with want.
func tryPull(t *testing.T, s *Store, vol string, gen uint64, want []byte) error {
	t.Helper()
	dir := t.TempDir()
	target := filepath.Join(dir, "t.img")
	if _, err := s.Pull(context.Background(), PullOptions{Volume: vol, Generation: gen, Target: target, StateDir: dir}); err != nil {
		return err
	}
	assertFile(t, target, want)
	return nil
}

// A gc between a push's chunk upload and its manifest write must not
// remove the chunks the push just uploaded (they are unreferenced then).
func TestGCDuringPushKeepsUploadedChunks(t *testing.T) {
	for _, grace := range []time.Duration{testGrace, -1} {
		name := map[bool]string{true: "grace", false: "no grace (negative control)"}[grace > 0]
		t.Run(name, func(t *testing.T) {
			s := newStore(t)
			clock := &fakeClock{}
			v1 := genVolume(60, 4<<20)
			push(t, s, "v", v1, PushOptions{})
			agePastGrace(clock)
			v2, _ := mutate(61, v1, 6, 32<<10, 64<<10)
			var gcst *GCStats
			st := push(t, s, "v", v2, PushOptions{Grace: time.Hour, afterUpload: func(ctx context.Context) error {
				var err error
				gcst, err = s.GC(ctx, GCOptions{Keep: 1, Grace: grace, Clock: clock})
				return err
			}})
			t.Logf("gc during the push: %d chunks removed, %d young; push uploaded %d", gcst.ChunksRemoved, gcst.ChunksYoung, st.ChunksUploaded)
			err := tryPull(t, s, "v", st.Generation, v2)
			if grace > 0 {
				if err != nil {
					t.Fatalf("generation pushed during a gc is not restorable: %v", err)
				}
				if gcst.ChunksRemoved != 0 || gcst.ChunksYoung != int(st.ChunksUploaded) {
					t.Errorf("gc: %+v", gcst)
				}
				return
			}
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("without a grace the pushed generation should miss chunks; pull: %v", err)
			}
		})
	}
}

// A gc that removes the generation a push deduplicated against, between the
// push's confirmation and its manifest write, must keep that generation's
// chunks: they are referenced from the trash for the grace period.
func TestGCDuringPushKeepsBaseChunks(t *testing.T) {
	for _, grace := range []time.Duration{testGrace, -1} {
		name := map[bool]string{true: "grace", false: "no grace (negative control)"}[grace > 0]
		t.Run(name, func(t *testing.T) {
			s := newStore(t)
			clock := &fakeClock{}
			v1 := genVolume(70, 4<<20)
			push(t, s, "v", v1, PushOptions{})
			agePastGrace(clock)
			v2, _ := mutate(71, v1, 4, 16<<10, 0) // reuses most of generation 1
			other := genVolume(72, 1<<20)         // shares nothing with it
			st := push(t, s, "v", v2, PushOptions{Grace: time.Hour, beforeWrite: func(ctx context.Context) error {
				// Another push makes generation 1 old; gc --keep 1 removes it.
				push(t, s, "v", other, PushOptions{})
				gst, err := s.GC(ctx, GCOptions{Keep: 1, Grace: grace, Clock: clock})
				if err == nil && gst.ManifestsRemoved != 1 {
					t.Errorf("gc removed %d manifests, want 1", gst.ManifestsRemoved)
				}
				return err
			}})
			if st.Generation != 3 || st.ChunksReused == 0 {
				t.Fatalf("push: %+v", st)
			}
			err := tryPull(t, s, "v", 3, v2)
			if grace > 0 {
				if err != nil {
					t.Fatalf("generation deduplicated against a removed one is not restorable: %v", err)
				}
				if err := tryPull(t, s, "v", 2, other); err != nil {
					t.Fatal(err)
				}
				// Once the grace has passed, gc removes what only the
				// trashed generation referenced, and nothing else.
				agePastGrace(clock)
				gst, err := s.GC(context.Background(), GCOptions{Keep: 2, Grace: grace, Clock: clock})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("gc after the grace: %+v", gst)
				if gst.TrashRemoved != 1 || countObjects(t, s, "trash/") != 0 {
					t.Errorf("trash not emptied: %+v", gst)
				}
				if err := tryPull(t, s, "v", 3, v2); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("without a grace the pushed generation should miss chunks; pull: %v", err)
			}
		})
	}
}

// A base generation deleted by hand during a push, with its chunks: the
// push notices its base is gone, confirms the chunks it reused and uploads
// the missing ones.
func TestPushConfirmsVanishedBase(t *testing.T) {
	s := newStore(t)
	v1 := genVolume(80, 4<<20)
	push(t, s, "v", v1, PushOptions{})
	v2, _ := mutate(81, v1, 4, 16<<10, 0)
	st := push(t, s, "v", v2, PushOptions{afterUpload: func(ctx context.Context) error {
		m, _, err := s.ReadManifest(ctx, "v", 1)
		if err != nil {
			return err
		}
		keys := []string{s.manifestKey("v", 1)}
		for _, e := range m.Entries {
			if !e.Zero {
				keys = append(keys, s.chunkKey(e.ID))
			}
		}
		return s.removeMany(ctx, "delete by hand", keys)
	}})
	t.Logf("push after its base vanished: %d reused, %d confirmed, %d uploaded", st.ChunksReused, st.ChunksConfirmed, st.ChunksUploaded)
	if st.ChunksConfirmed != st.ChunksReused || st.ChunksUploaded != st.ChunksDistinct {
		t.Errorf("push did not confirm and re-upload: %+v", st)
	}
	if err := tryPull(t, s, "v", st.Generation, v2); err != nil {
		t.Fatal(err)
	}
}

// A push slower than half the grace refreshes the chunks it relies on
// before writing its manifest.
func TestSlowPushRefreshes(t *testing.T) {
	s := newStore(t)
	v1 := genVolume(90, 2<<20)
	push(t, s, "v", v1, PushOptions{})
	v2, _ := mutate(91, v1, 3, 16<<10, 16<<10)
	const grace = 4 * time.Second
	clock := &fakeClock{}
	st := push(t, s, "v", v2, PushOptions{Grace: grace, Clock: clock, afterUpload: func(context.Context) error {
		clock.Advance(grace/2 + 100*time.Millisecond)
		return nil
	}})
	t.Logf("slow push: %d uploaded, %d refreshed, %d reused", st.ChunksUploaded, st.ChunksRefreshed, st.ChunksReused)
	// Once, or more often on a machine so loaded that a refresh takes
	// half the grace.
	if st.ChunksRefreshed == 0 || st.ChunksRefreshed%st.ChunksUploaded != 0 {
		t.Errorf("slow push did not refresh its uploads: %+v", st)
	}
	if err := tryPull(t, s, "v", 2, v2); err != nil {
		t.Fatal(err)
	}
	// A refresh keeps the chunk objects' metadata: a confirm-all push
	// finds them intact.
	if c := push(t, s, "v", v2, PushOptions{ConfirmAll: true}); c.ChunksRepaired != 0 || c.ChunksConfirmed != c.ChunksReused {
		t.Errorf("confirm-all after a refresh: %+v", c)
	}
}
