package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/internal/miniotest"
)

const volSize = 32 << 20

// Acceptance: push → pull into an empty target → identical; change the
// source → push → pull into the previous target → identical, downloading
// about what changed; the second push uploads only new chunks.
func TestPushPullDelta(t *testing.T) {
	s := newStore(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "replica.img")
	state := filepath.Join(dir, "state")

	v1 := genVolume(1, volSize)
	st1 := push(t, s, "db", v1, PushOptions{})
	if st1.Generation != 1 || st1.ChunksReused != 0 || st1.ChunksUploaded != st1.ChunksDistinct {
		t.Fatalf("first push: %+v", st1)
	}
	t.Logf("push 1: %d chunks (%d distinct), %d uploaded, %d raw bytes as %d object bytes (zero runs %d, %d bytes)",
		st1.ChunksTotal, st1.ChunksDistinct, st1.ChunksUploaded, st1.BytesUploadedRaw, st1.BytesUploaded, st1.ZeroRuns, st1.ZeroBytes)
	if st1.BytesUploaded >= st1.BytesUploadedRaw {
		t.Errorf("compression did not pay on a volume with a text region: %d object bytes for %d raw", st1.BytesUploaded, st1.BytesUploadedRaw)
	}
	if n := countObjects(t, s, "chunks/"); uint64(n) != st1.ChunksDistinct {
		t.Errorf("%d chunk objects, want %d", n, st1.ChunksDistinct)
	}

	p1 := pull(t, s, PullOptions{Volume: "db", Target: target, StateDir: state})
	assertFile(t, target, v1)
	if p1.Generation != 1 || p1.LocalGeneration != 1 || p1.ChunksFetched == 0 {
		t.Fatalf("first pull: %+v", p1)
	}
	t.Logf("pull 1 into an empty target: %d chunks fetched, %d bytes downloaded", p1.ChunksFetched, p1.BytesDownloaded)

	v2, changed := mutate(2, v1, 8, 32<<10, 256<<10)
	st2 := push(t, s, "db", v2, PushOptions{})
	if st2.Generation != 2 || st2.BaseGeneration != 1 {
		t.Fatalf("second push: %+v", st2)
	}
	upRatio := float64(st2.BytesUploadedRaw) / float64(changed)
	t.Logf("push 2 (%d of %d bytes changed, %.2f%%): %d of %d distinct chunks uploaded (%d reused), %d raw bytes (%.2fx the change), %d bytes stored incl. a %d-byte manifest",
		changed, len(v2), 100*float64(changed)/float64(len(v2)), st2.ChunksUploaded, st2.ChunksDistinct, st2.ChunksReused,
		st2.BytesUploadedRaw, upRatio, st2.BytesUploaded, st2.ManifestBytes)
	if st2.ChunksUploaded+st2.ChunksReused != st2.ChunksDistinct || upRatio > 4 {
		t.Errorf("second push uploaded more than the new chunks: %+v", st2)
	}
	if n := countObjects(t, s, "chunks/"); uint64(n) != st1.ChunksDistinct+st2.ChunksUploaded {
		t.Errorf("%d chunk objects after the delta, want %d + %d", n, st1.ChunksDistinct, st2.ChunksUploaded)
	}

	p2 := pull(t, s, PullOptions{Volume: "db", Target: target, StateDir: state})
	assertFile(t, target, v2)
	ratio := float64(p2.BytesDownloaded) / float64(changed)
	chunkRatio := float64(p2.BytesDownloaded-p2.ManifestBytes) / float64(changed)
	t.Logf("pull 2 into the previous target: %d fetched, %d skipped, %d copied; %d bytes downloaded (%d manifest) for %d changed: ratio %.2f (chunks only %.2f)",
		p2.ChunksFetched, p2.ChunksSkipped, p2.ChunksCopied, p2.BytesDownloaded, p2.ManifestBytes, changed, ratio, chunkRatio)
	if p2.Generation != 2 || p2.LocalGeneration != 2 || ratio > 4 {
		t.Errorf("delta pull: %+v", p2)
	}
	if ps, err := ReadPulledState(state, "db"); err != nil || ps.Generation != 2 || ps.Root != st2.RootHash {
		t.Errorf("pulled state %+v, %v", ps, err)
	}

	// Every generation stays restorable.
	old := filepath.Join(dir, "gen1.img")
	pull(t, s, PullOptions{Volume: "db", Generation: 1, Target: old, StateDir: state + "-old"})
	assertFile(t, old, v1)

	// Deduplication: the same bytes again, and under another volume name.
	st3 := push(t, s, "db", v2, PushOptions{})
	st4 := push(t, s, "copy", v2, PushOptions{})
	if st3.Generation != 3 || st3.ChunksUploaded != 0 || st4.Generation != 1 || st4.ChunksUploaded != 0 || st4.BaseManifests != 1 {
		t.Errorf("unchanged push uploaded %d chunks (gen %d), another volume %d (gen %d, %d bases)",
			st3.ChunksUploaded, st3.Generation, st4.ChunksUploaded, st4.Generation, st4.BaseManifests)
	}
	own := push(t, s, "own", v2, PushOptions{OwnVolumeOnly: true})
	if own.ChunksUploaded != own.ChunksDistinct {
		t.Errorf("OwnVolumeOnly reused chunks of other volumes: %+v", own)
	}
}

// Acceptance: a pull killed half way and rerun ends identical, fetching
// only what was still missing.
func TestPullResume(t *testing.T) {
	for _, how := range []string{"fetch fails", "context canceled"} {
		t.Run(how, func(t *testing.T) {
			s := newStore(t)
			dir := t.TempDir()
			target := filepath.Join(dir, "replica.img")
			state := filepath.Join(dir, "state")
			v := genVolume(3, volSize)
			pst := push(t, s, "vol", v, PushOptions{})
			total := pst.ChunksDistinct

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var calls atomic.Uint64
			killed := errors.New("killed half way")
			const parallel = 4
			opt := PullOptions{Volume: "vol", Target: target, StateDir: state, Parallel: parallel}
			opt.fetched = func(i int, e chunk.Entry) error {
				if calls.Add(1) > total/2 {
					if how == "context canceled" {
						cancel()
						return ctx.Err()
					}
					return killed
				}
				return nil
			}
			st1, err := s.Pull(ctx, opt)
			if err == nil {
				t.Fatal("the interrupted pull succeeded")
			}
			first := st1.BytesFetchedRaw
			t.Logf("interrupted pull: %v; %d bytes of chunks fetched (%d downloaded) of %d", err, first, st1.BytesDownloaded, pst.BytesUploadedRaw)

			opt.fetched = nil
			st2, err := s.Pull(context.Background(), opt)
			if err != nil {
				t.Fatal(err)
			}
			assertFile(t, target, v)
			missing := pst.BytesUploadedRaw - first
			t.Logf("resumed pull: %d of %d chunks fetched, %d bytes of chunks (%d still missing, %.1f%% extra), %d downloaded, %d skipped, resumed=%v",
				st2.ChunksFetched, total, st2.BytesFetchedRaw, missing, 100*(float64(st2.BytesFetchedRaw)/float64(missing)-1), st2.BytesDownloaded, st2.ChunksSkipped, st2.Resumed)
			if !st2.Resumed || st2.LocalGeneration != 1 {
				t.Errorf("resumed pull: %+v", st2)
			}
			// Chunks fetched but not yet written when the pull died (in
			// flight, or queued for the writer) are fetched again: allow
			// a few percent.
			if st2.BytesFetchedRaw > missing+missing/10 || st2.ChunksFetched >= total*3/4 {
				t.Errorf("resumed pull fetched %d bytes, %d were missing", st2.BytesFetchedRaw, missing)
			}
		})
	}
}

// Pushes of two volumes that share chunks, for the gc tests.
type history struct {
	data map[string][][]byte // volume → generation-1 → bytes
}

func (h *history) ids(t *testing.T, vol string, gen int) map[chunk.ID]struct{} {
	t.Helper()
	b := h.data[vol][gen-1]
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(b), uint64(len(b)), smallParams(), chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[chunk.ID]struct{})
	for _, e := range m.Entries {
		if !e.Zero {
			out[e.ID] = struct{}{}
		}
	}
	return out
}

func (h *history) union(t *testing.T, keep map[string][]int) int {
	all := make(map[chunk.ID]struct{})
	for vol, gens := range keep {
		for _, g := range gens {
			for id := range h.ids(t, vol, g) {
				all[id] = struct{}{}
			}
		}
	}
	return len(all)
}

func (h *history) assertRestorable(t *testing.T, s *Store, vol string, gens ...int) {
	t.Helper()
	for _, g := range gens {
		dir := t.TempDir()
		target := filepath.Join(dir, "t.img")
		pull(t, s, PullOptions{Volume: vol, Generation: uint64(g), Target: target, StateDir: dir})
		assertFile(t, target, h.data[vol][g-1])
	}
}

func makeHistory(t *testing.T, s *Store) *history {
	h := &history{data: map[string][][]byte{}}
	a := genVolume(10, 8<<20)
	for g := range 3 {
		if g > 0 {
			a, _ = mutate(uint64(20+g), a, 6, 64<<10, 128<<10)
		}
		h.data["a"] = append(h.data["a"], a)
		push(t, s, "a", a, PushOptions{})
	}
	b, _ := mutate(30, a, 4, 64<<10, 0) // shares most chunks with a
	h.data["b"] = [][]byte{b}
	push(t, s, "b", b, PushOptions{})
	return h
}

// Acceptance: gc leaves every retained generation restorable and removes
// the chunks of the generations it removed.
func TestGC(t *testing.T) {
	s := newStore(t)
	h := makeHistory(t, s)
	// An orphan: a push that died after uploading its chunks.
	orphan := genVolume(40, 1<<20)
	_, err := s.Push(context.Background(), bytes.NewReader(orphan), uint64(len(orphan)), PushOptions{Volume: "a", Params: smallParams(),
		afterUpload: func(context.Context) error { return errors.New("push killed") }})
	if err == nil {
		t.Fatal("the killed push succeeded")
	}
	all := h.union(t, map[string][]int{"a": {1, 2, 3}, "b": {1}})
	if n := countObjects(t, s, "chunks/"); n <= all {
		t.Fatalf("%d chunk objects, want more than %d (the orphan's)", n, all)
	}

	// The default grace protects the young orphan; keep-all removes nothing else.
	st, err := s.GC(context.Background(), GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.ChunksRemoved != 0 || st.ManifestsRemoved != 0 || st.ChunksYoung == 0 {
		t.Errorf("gc with the default grace: %+v", st)
	}
	// Without a grace (no push running) the orphan goes.
	st, err = s.GC(context.Background(), GCOptions{Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gc keep all: %+v", st)
	if n := countObjects(t, s, "chunks/"); n != all || st.ManifestsRemoved != 0 || st.ChunksRemoved == 0 {
		t.Errorf("after gc keep-all: %d chunk objects, want %d; %+v", n, all, st)
	}
	h.assertRestorable(t, s, "a", 1, 2, 3)
	h.assertRestorable(t, s, "b", 1)

	// Keep 2 with the default grace: generation 1 goes to the trash, its
	// chunks stay for the grace period.
	st, err = s.GC(context.Background(), GCOptions{Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	if st.ManifestsRemoved != 1 || st.ChunksRemoved != 0 || countObjects(t, s, "trash/") != 1 {
		t.Errorf("gc keep 2 with grace: %+v", st)
	}
	if _, err := s.Pull(context.Background(), PullOptions{Volume: "a", Generation: 1, Target: filepath.Join(t.TempDir(), "x"), StateDir: t.TempDir()}); !errors.Is(err, ErrNotFound) {
		t.Errorf("pull of a removed generation: %v, want ErrNotFound", err)
	}
	// Without a grace the trash and generation 1's own chunks go.
	st, err = s.GC(context.Background(), GCOptions{Keep: 2, Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	want := h.union(t, map[string][]int{"a": {2, 3}, "b": {1}})
	t.Logf("gc keep 2: %+v", st)
	if n := countObjects(t, s, "chunks/"); n != want || st.ChunksRemoved == 0 || countObjects(t, s, "trash/") != 0 {
		t.Errorf("after gc keep 2: %d chunk objects, want %d; %+v", n, want, st)
	}
	h.assertRestorable(t, s, "a", 2, 3)
	h.assertRestorable(t, s, "b", 1)

	// Keep 1, then pull the latest into a target holding generation 2.
	dir := t.TempDir()
	target := filepath.Join(dir, "t.img")
	pull(t, s, PullOptions{Volume: "a", Generation: 2, Target: target, StateDir: dir})
	st, err = s.GC(context.Background(), GCOptions{Keep: 1, Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	want = h.union(t, map[string][]int{"a": {3}, "b": {1}})
	if n := countObjects(t, s, "chunks/"); n != want || countObjects(t, s, "manifests/") != 2 {
		t.Errorf("after gc keep 1: %d chunk objects (want %d), %d manifests (want 2)", n, want, countObjects(t, s, "manifests/"))
	}
	p := pull(t, s, PullOptions{Volume: "a", Target: target, StateDir: dir})
	assertFile(t, target, h.data["a"][2])
	if p.Generation != 3 {
		t.Errorf("pulled generation %d, want 3", p.Generation)
	}
	h.assertRestorable(t, s, "b", 1)

	// A dry run removes nothing.
	push(t, s, "a", genVolume(50, 1<<20), PushOptions{})
	before := countObjects(t, s, "chunks/")
	st, err = s.GC(context.Background(), GCOptions{Keep: 1, Grace: -1, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.ManifestsRemoved != 1 || st.ChunksRemoved == 0 || countObjects(t, s, "chunks/") != before || countObjects(t, s, "manifests/") != 3 {
		t.Errorf("dry run: %+v", st)
	}
}

// Acceptance (d): bad credentials and a missing bucket fail at once with
// clear errors.
func TestPermanentErrors(t *testing.T) {
	bucket := newBucket(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, user, pass string
	}{
		{"wrong secret", miniotest.User, "not-the-secret"},
		{"unknown key", "nobody", "whatever-secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(bucket)
			cfg.Creds = staticCreds(tc.user, tc.pass)
			var requests atomic.Int64
			cfg.Transport = &faultyTransport{next: defaultTransport(t), fail: func(*http.Request) (int, error) { requests.Add(1); return 0, nil }}
			_, err := Open(ctx, cfg)
			if !errors.Is(err, ErrBadCredentials) {
				t.Fatalf("open with %s: %v, want ErrBadCredentials", tc.name, err)
			}
			t.Logf("%s: %v", tc.name, err)
			if requests.Load() != 1 {
				t.Errorf("%d requests: a permanent error was retried", requests.Load())
			}
		})
	}
	t.Run("no credentials", func(t *testing.T) {
		cfg := testConfig(bucket)
		cfg.Creds = staticCreds("", "")
		_, err := Open(ctx, cfg)
		if !errors.Is(err, ErrBadCredentials) || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
			t.Fatalf("open without credentials: %v", err)
		}
	})
	t.Run("missing bucket", func(t *testing.T) {
		_, err := Open(ctx, testConfig("no-such-bucket"))
		if !errors.Is(err, ErrNoBucket) || !strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist`) {
			t.Fatalf("open of a missing bucket: %v", err)
		}
		t.Log(err)
	})
	t.Run("bucket removed after open", func(t *testing.T) {
		b := newBucket(t)
		s, err := Open(ctx, testConfig(b))
		if err != nil {
			t.Fatal(err)
		}
		if err := adminClient(t).RemoveBucket(ctx, b); err != nil {
			t.Fatal(err)
		}
		v := genVolume(5, 1<<20)
		_, err = s.Push(ctx, bytes.NewReader(v), uint64(len(v)), PushOptions{Volume: "v", Params: smallParams()})
		if !errors.Is(err, ErrNoBucket) {
			t.Fatalf("push into a removed bucket: %v", err)
		}
	})
	t.Run("https against http", func(t *testing.T) {
		cfg := testConfig(bucket)
		cfg.Insecure = false
		cfg.Retry = Retry{Attempts: 1}
		_, err := Open(ctx, cfg)
		if err == nil || !strings.Contains(err.Error(), "--insecure") {
			t.Fatalf("HTTPS to a plain HTTP endpoint: %v", err)
		}
	})
	t.Run("injected access denied", func(t *testing.T) {
		s := newStore(t)
		s2cfg := testConfig(s.bucket)
		var requests atomic.Int64
		s2cfg.Transport = &faultyTransport{next: defaultTransport(t), fail: func(r *http.Request) (int, error) {
			if r.Method == http.MethodPut {
				requests.Add(1)
				return http.StatusForbidden, nil
			}
			return 0, nil
		}}
		s2, err := Open(ctx, s2cfg)
		if err != nil {
			t.Fatal(err)
		}
		v := genVolume(6, 1<<20)
		_, err = s2.Push(ctx, bytes.NewReader(v), uint64(len(v)), PushOptions{Volume: "v", Params: smallParams(), Parallel: 1})
		if !errors.Is(err, ErrBadCredentials) || requests.Load() != 1 {
			t.Fatalf("push with PUTs denied: %v after %d PUTs", err, requests.Load())
		}
	})
}

// Transient failures (5xx, connection resets) are retried with backoff.
func TestTransientErrorsRetried(t *testing.T) {
	bucket := newBucket(t)
	cfg := testConfig(bucket)
	// The first attempt of every 5th distinct chunk upload and of every 4th
	// distinct chunk download fails (per object, so that no object fails
	// more often than once, however the concurrent requests interleave).
	var puts, gets atomic.Int64
	var seen sync.Map
	first := func(r *http.Request) bool {
		_, dup := seen.LoadOrStore(r.Method+" "+r.URL.Path, true)
		return !dup
	}
	cfg.Transport = &faultyTransport{next: defaultTransport(t), fail: func(r *http.Request) (int, error) {
		if !strings.Contains(r.URL.Path, "/chunks/") || !first(r) {
			return 0, nil
		}
		switch r.Method {
		case http.MethodPut:
			if n := puts.Add(1); n%5 == 1 {
				return []int{http.StatusServiceUnavailable, http.StatusInternalServerError}[n%2], nil
			}
		case http.MethodGet:
			if gets.Add(1)%4 == 1 {
				return 0, errReset
			}
		}
		return 0, nil
	}}
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	v := genVolume(7, 4<<20)
	st := push(t, s, "v", v, PushOptions{})
	dir := t.TempDir()
	p := pull(t, s, PullOptions{Volume: "v", Target: filepath.Join(dir, "t"), StateDir: dir})
	assertFile(t, filepath.Join(dir, "t"), v)
	t.Logf("push retried %d times (%d PUTs of chunks), pull %d times", st.Retries, puts.Load(), p.Retries)
	if st.Retries == 0 || p.Retries == 0 {
		t.Errorf("no retries: push %d, pull %d", st.Retries, p.Retries)
	}

	// A store that never recovers: the push gives up after the policy.
	cfg.Transport = &faultyTransport{next: defaultTransport(t), fail: func(r *http.Request) (int, error) {
		if r.Method == http.MethodPut {
			return http.StatusServiceUnavailable, nil
		}
		return 0, nil
	}}
	s, err = Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Push(context.Background(), bytes.NewReader(v), uint64(len(v)), PushOptions{Volume: "w", Params: smallParams()})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("gave up after %d attempts", cfg.Retry.Attempts)) {
		t.Fatalf("push to a failing store: %v", err)
	}
	if gens, err := s.Generations(context.Background(), "w"); err != nil || len(gens) != 0 {
		t.Fatalf("a failed push left generations %v (%v)", gens, err)
	}
}

// Push and pull from the command line's point of view are covered in
// cmd/voldelta; here: a push that races another of the same volume takes
// the next generation.
func TestConcurrentPushSameVolume(t *testing.T) {
	s := newStore(t)
	v1 := genVolume(8, 2<<20)
	v2, _ := mutate(9, v1, 2, 4096, 0)
	push(t, s, "v", v1, PushOptions{})
	st := push(t, s, "v", v2, PushOptions{beforeWrite: func(context.Context) error {
		other := push(t, s, "v", v1, PushOptions{})
		if other.Generation != 2 {
			return fmt.Errorf("the racing push took generation %d", other.Generation)
		}
		return nil
	}})
	if st.Generation != 3 {
		t.Fatalf("push took generation %d, want 3", st.Generation)
	}
	h := &history{data: map[string][][]byte{"v": {v1, v1, v2}}}
	h.assertRestorable(t, s, "v", 1, 2, 3)
}

// ConfirmAll finds a chunk deleted behind voldelta's back and uploads it.
func TestConfirmAll(t *testing.T) {
	s := newStore(t)
	v := genVolume(11, 2<<20)
	push(t, s, "v", v, PushOptions{})
	m, _, err := s.ReadManifest(context.Background(), "v", 1)
	if err != nil {
		t.Fatal(err)
	}
	var victim chunk.ID
	for _, e := range m.Entries {
		if !e.Zero {
			victim = e.ID
			break
		}
	}
	if err := adminClient(t).RemoveObject(context.Background(), s.bucket, s.chunkKey(victim), minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	st := push(t, s, "v", v, PushOptions{ConfirmAll: true})
	if st.ChunksUploaded != 1 || st.ChunksConfirmed != st.ChunksReused {
		t.Fatalf("confirm-all push: %+v", st)
	}
	h := &history{data: map[string][][]byte{"v": {v, v}}}
	h.assertRestorable(t, s, "v", 2)
}

// lostAnswer performs the first manifest PUT and then reports a connection
// reset, as when the answer is lost.
type lostAnswer struct {
	next http.RoundTripper
	done atomic.Bool
}

func (l *lostAnswer) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(r)
	if err == nil && r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") && l.done.CompareAndSwap(false, true) {
		resp.Body.Close()
		return nil, errReset
	}
	return resp, err
}

// A manifest write whose answer is lost is retried; the retry finds the
// generation written (by itself) and does not take another number.
func TestManifestWriteAnswerLost(t *testing.T) {
	cfg := testConfig(newBucket(t))
	cfg.Transport = &lostAnswer{next: defaultTransport(t)}
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	v := genVolume(12, 1<<20)
	st := push(t, s, "v", v, PushOptions{})
	if st.Generation != 1 || st.Retries == 0 || countObjects(t, s, "manifests/") != 1 {
		t.Fatalf("push with a lost answer: generation %d, %d retries, %d manifests", st.Generation, st.Retries, countObjects(t, s, "manifests/"))
	}
}

// A push given the previous push's manifest and the extents changed since
// reads only the segments those extents touch, stores the same generation
// a full scan would, and reports its progress up to the uploaded bytes.
func TestPushFromPreviousManifest(t *testing.T) {
	cfg := testConfig(newBucket(t))
	cfg.BandwidthLimit = 64 << 20 // paced connections carry the data unchanged
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	v1 := genVolume(11, volSize)
	st1 := push(t, s, "vm", v1, PushOptions{})
	if st1.Manifest == nil || st1.Manifest.Root.String() != st1.RootHash || st1.ReusedBytes != 0 {
		t.Fatalf("first push: manifest %v, reused %d", st1.Manifest != nil, st1.ReusedBytes)
	}
	// Change 4 KiB in the second segment (smallParams: 4 MiB segments).
	seg := smallParams().SegmentSize
	v2 := bytes.Clone(v1)
	at := int(seg) + 12345
	for i := range 4096 {
		v2[at+i] ^= 0x5a
	}
	var mu sync.Mutex
	var last PushProgress
	var calls int
	st2 := push(t, s, "vm", v2, PushOptions{Previous: st1.Manifest,
		Changed: []chunk.Extent{{Offset: uint64(at), Length: 4096}},
		Progress: func(p PushProgress) {
			mu.Lock()
			defer mu.Unlock()
			calls++
			if p.ScannedBytes > last.ScannedBytes || p.UploadedBytes > last.UploadedBytes || p.ScanDone && !last.ScanDone {
				last = p
			}
		}})
	full, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(v2), uint64(len(v2)), smallParams(), chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st2.RootHash != full.Root.String() {
		t.Fatalf("push from the previous manifest stored root %s, a full scan gives %s", st2.RootHash, full.Root)
	}
	if least := uint64(volSize) - seg; st2.ReusedBytes < least || st2.ReusedBytes > uint64(volSize)-4096 {
		t.Errorf("reused %d bytes, want at least every segment but the changed one (%d) and not the changed 4 KiB", st2.ReusedBytes, least)
	}
	if st2.ChunksUploaded == 0 || st2.ChunksUploaded > 3 {
		t.Errorf("a 4 KiB change uploaded %d chunks", st2.ChunksUploaded)
	}
	if calls == 0 || !last.ScanDone || last.SourceBytes != uint64(len(v2)) || last.ScannedBytes != uint64(len(v2)) ||
		last.UploadBytes != st2.BytesUploadedRaw || last.UploadedBytes != st2.BytesUploadedRaw {
		t.Errorf("last progress %+v after %d calls; stats uploaded %d raw bytes", last, calls, st2.BytesUploadedRaw)
	}
	target := filepath.Join(t.TempDir(), "vm.img")
	pull(t, s, PullOptions{Volume: "vm", Target: target, StateDir: filepath.Join(t.TempDir(), "state")})
	assertFile(t, target, v2)
}

// failingReader fails reads at or past off.
type failingReader struct {
	r   io.ReaderAt
	off int64
}

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.off {
		return 0, errors.New("injected read error")
	}
	return f.r.ReadAt(p, off)
}

// A source that cannot be read half way fails the push with a scan error
// (after the uploads it started stop) and stores no generation; an upload
// that fails is reported as such, not as a scan error.
func TestPushErrorsAreTheirOwn(t *testing.T) {
	s := newStore(t)
	v := genVolume(12, 16<<20)
	_, err := s.Push(context.Background(), failingReader{bytes.NewReader(v), 10 << 20}, uint64(len(v)), PushOptions{Volume: "r", Params: smallParams()})
	if err == nil || !strings.Contains(err.Error(), "scan source") || !strings.Contains(err.Error(), "injected read error") {
		t.Fatalf("push of an unreadable source: %v", err)
	}
	if gens, err := s.Generations(context.Background(), "r"); err != nil || len(gens) != 0 {
		t.Fatalf("a failed push left generations %v (%v)", gens, err)
	}
	cfg := testConfig(newBucket(t))
	cfg.Transport = &faultyTransport{next: defaultTransport(t), fail: func(r *http.Request) (int, error) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/chunks/") {
			return http.StatusForbidden, nil
		}
		return 0, nil
	}}
	s, err = Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Push(context.Background(), bytes.NewReader(v), uint64(len(v)), PushOptions{Volume: "u", Params: smallParams()})
	if err == nil || strings.Contains(err.Error(), "scan source") || !strings.Contains(err.Error(), "upload chunk") {
		t.Fatalf("push whose uploads are refused: %v", err)
	}
}

// TestForget: a forgotten generation is gone for pulls, the others stay
// restorable, and its own chunks go with the next gc without a grace; a
// generation that does not exist is ErrNotFound.
func TestForget(t *testing.T) {
	s := newStore(t)
	h := makeHistory(t, s)
	ctx := context.Background()
	if err := s.Forget(ctx, "a", 2); err != nil {
		t.Fatal(err)
	}
	if gens, err := s.Generations(ctx, "a"); err != nil || len(gens) != 2 || gens[0] != 1 || gens[1] != 3 {
		t.Fatalf("generations after forgetting 2: %v, %v", gens, err)
	}
	if _, err := s.Pull(ctx, PullOptions{Volume: "a", Generation: 2, Target: filepath.Join(t.TempDir(), "x"), StateDir: t.TempDir()}); !errors.Is(err, ErrNotFound) {
		t.Errorf("pull of a forgotten generation: %v, want ErrNotFound", err)
	}
	if err := s.Forget(ctx, "a", 2); !errors.Is(err, ErrNotFound) {
		t.Errorf("forget it again: %v, want ErrNotFound", err)
	}
	if _, err := s.GC(ctx, GCOptions{Grace: -1}); err != nil {
		t.Fatal(err)
	}
	if n, want := countObjects(t, s, "chunks/"), h.union(t, map[string][]int{"a": {1, 3}, "b": {1}}); n != want {
		t.Errorf("after gc: %d chunk objects, want %d", n, want)
	}
	h.assertRestorable(t, s, "a", 1, 3)
	h.assertRestorable(t, s, "b", 1)
}
