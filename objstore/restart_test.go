package objstore

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/voldelta/voldelta/internal/miniotest"
)

// restartingTransport kills the MinIO server when the n-th request matching
// match is about to be sent, sends that request to the dead server (it
// fails: refused, or reset on a kept-alive connection), and restarts the
// server in the background; requests meanwhile fail the same way.
type restartingTransport struct {
	next   http.RoundTripper
	srv    *miniotest.Server
	match  func(*http.Request) bool
	n      int64
	seen   atomic.Int64
	done   chan struct{} // closed when the server is live again
	failed atomic.Pointer[error]
}

func (r *restartingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !r.match(req) || r.seen.Add(1) != r.n {
		return r.next.RoundTrip(req)
	}
	r.srv.Kill()
	resp, err := r.next.RoundTrip(req) // to the dead server
	go func() {
		defer close(r.done)
		if err := r.srv.StartAgain(); err != nil {
			r.failed.Store(&err)
		}
	}()
	return resp, err
}

// wait waits for the restart and fails the test if it did not happen.
func (r *restartingTransport) wait(t *testing.T) {
	t.Helper()
	if r.seen.Load() < r.n {
		t.Fatalf("the server was not restarted: %d matching requests, the restart was due at %d", r.seen.Load(), r.n)
	}
	<-r.done
	if err := r.failed.Load(); err != nil {
		t.Fatal(*err)
	}
}

// 14b: MinIO killed (SIGKILL) and restarted on the same port and data in the
// middle of a push, and then of a pull: both complete through retries, and
// the pulled target is identical to the source.
func TestPushPullSurviveServerRestart(t *testing.T) {
	srv, err := miniotest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	ctx := context.Background()
	if err := srv.MakeBucket(ctx, "restart"); err != nil {
		t.Fatal(err)
	}
	isChunk := func(method string) func(*http.Request) bool {
		return func(r *http.Request) bool { return r.Method == method && strings.Contains(r.URL.Path, "/chunks/") }
	}
	open := func(rt *restartingTransport) *Store {
		cfg := testConfig("restart")
		cfg.Endpoint = srv.Endpoint
		// Long enough for a MinIO restart (about a second, more when loaded).
		cfg.Retry = Retry{Attempts: 40, Base: 20 * time.Millisecond, Max: time.Second}
		rt.next = defaultTransport(t)
		cfg.Transport = rt
		s, err := Open(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	v := genVolume(31, 16<<20)
	up := &restartingTransport{srv: srv, match: isChunk(http.MethodPut), n: 40, done: make(chan struct{})}
	s := open(up)
	st := push(t, s, "v", v, PushOptions{Parallel: 8})
	up.wait(t)
	t.Logf("push across a restart after %d of %d chunk uploads: %d retries, generation %d", up.n, st.ChunksUploaded, st.Retries, st.Generation)
	if st.Retries == 0 || st.ChunksUploaded <= uint64(up.n) {
		t.Fatalf("the restart did not happen during the push: %+v", st)
	}

	down := &restartingTransport{srv: srv, match: isChunk(http.MethodGet), n: 40, done: make(chan struct{})}
	s = open(down)
	dir := t.TempDir()
	target := filepath.Join(dir, "t.img")
	p := pull(t, s, PullOptions{Volume: "v", Target: target, StateDir: dir, Parallel: 8})
	down.wait(t)
	t.Logf("pull across a restart after %d of %d chunk downloads: %d retries", down.n, p.ChunksFetched, p.Retries)
	if p.Retries == 0 || p.ChunksFetched <= uint64(down.n) {
		t.Fatalf("the restart did not happen during the pull: %+v", p)
	}
	assertFile(t, target, v)
}
