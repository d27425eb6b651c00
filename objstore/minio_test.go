package objstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/internal/miniotest"
)

// The tests run against one real MinIO server for the package, started by
// TestMain on loopback with a temporary data directory. Each test makes its
// own bucket.

var server *miniotest.Server

func TestMain(m *testing.M) {
	var err error
	if server, err = miniotest.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: start minio:", err)
		os.Exit(1)
	}
	code := m.Run()
	server.Stop()
	os.Exit(code)
}

// adminClient talks to the test server with the root credentials.
func adminClient(t testing.TB) *minio.Client {
	cl, err := server.Client()
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

var (
	bucketSeq      atomic.Uint64
	badBucketChars = regexp.MustCompile(`[^a-z0-9]+`)
)

// newBucket creates an empty bucket for one test.
func newBucket(t testing.TB) string {
	name := fmt.Sprintf("t%d-%s", bucketSeq.Add(1), strings.Trim(badBucketChars.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-"))
	if len(name) > 63 {
		name = name[:63]
	}
	name = strings.TrimRight(name, "-")
	if err := adminClient(t).MakeBucket(context.Background(), name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	return name
}

func testConfig(bucket string) Config {
	return Config{
		Endpoint: server.Endpoint, Insecure: true, Bucket: bucket, Prefix: "vd/test",
		Creds: miniotest.Creds(),
		Retry: Retry{Attempts: 6, Base: 5 * time.Millisecond, Max: 100 * time.Millisecond},
	}
}

// newStore opens a store on a fresh bucket.
func newStore(t testing.TB) *Store {
	s, err := Open(context.Background(), testConfig(newBucket(t)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// countObjects counts the objects under the store's prefix + sub.
func countObjects(t testing.TB, s *Store, sub string) int {
	n := 0
	for o := range adminClient(t).ListObjects(context.Background(), s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + sub, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		n++
	}
	return n
}

// Test data.

// smallParams cut test volumes into ~16 KiB chunks so that small changes
// change little.
func smallParams() chunk.Params {
	p := chunk.DefaultParams().WithSizes(4<<10, 16<<10, 64<<10)
	p.SegmentSize = 4 << 20
	return p
}

// genVolume returns size bytes: random data, a zero region and a
// compressible region.
func genVolume(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, size)
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	// A hole of 1/8 of the volume and a text-like 1/8.
	zero := b[size/4 : size/4+size/8]
	clear(zero)
	text := b[size/2 : size/2+size/8]
	words := []string{"voldelta ", "chunk ", "manifest ", "generation ", "replica ", "store "}
	for i := 0; i < len(text); {
		i += copy(text[i:], words[r.IntN(len(words))])
	}
	return b
}

// mutate changes about frac of b: n scattered rewrites of random bytes and
// an append; it returns the new volume and the bytes changed.
func mutate(seed uint64, b []byte, rewrites, rewriteLen, appendLen int) ([]byte, int) {
	r := rand.New(rand.NewPCG(seed, 7))
	out := bytes.Clone(b)
	for range rewrites {
		off := r.IntN(len(out) - rewriteLen)
		for k := range rewriteLen {
			out[off+k] = byte(r.Uint32())
		}
	}
	tail := make([]byte, appendLen)
	for k := range tail {
		tail[k] = byte(r.Uint32())
	}
	return append(out, tail...), rewrites*rewriteLen + appendLen
}

// writeFile writes data to dir/name and returns the path.
func writeFile(t testing.TB, dir, name string, data []byte) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func assertFile(t testing.TB, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s differs from the source: %d bytes, want %d, first difference at %d", path, len(got), len(want), i)
	}
}

func push(t testing.TB, s *Store, volume string, data []byte, opt PushOptions) *PushStats {
	t.Helper()
	opt.Volume = volume
	if opt.Params == (chunk.Params{}) {
		opt.Params = smallParams()
	}
	st, err := s.Push(context.Background(), bytes.NewReader(data), uint64(len(data)), opt)
	if err != nil {
		t.Fatalf("push %s: %v", volume, err)
	}
	return st
}

func pull(t testing.TB, s *Store, opt PullOptions) *PullStats {
	t.Helper()
	st, err := s.Pull(context.Background(), opt)
	if err != nil {
		t.Fatalf("pull %s generation %d: %v", opt.Volume, opt.Generation, err)
	}
	return st
}

// faultyTransport fails requests as told, in front of the real transport.
type faultyTransport struct {
	next http.RoundTripper
	// fail returns a status to answer with instead of the server (0: pass
	// through), or an error.
	fail func(r *http.Request) (int, error)
}

func (f *faultyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if f.fail != nil {
		code, err := f.fail(r)
		if err != nil {
			return nil, err
		}
		if code != 0 {
			if r.Body != nil {
				r.Body.Close()
			}
			body := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>injected</Message></Error>`, codeName(code))
			return &http.Response{StatusCode: code, Status: http.StatusText(code), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Header: http.Header{"Content-Type": {"application/xml"}}, Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Request: r}, nil
		}
	}
	return f.next.RoundTrip(r)
}

func codeName(code int) string {
	switch code {
	case http.StatusServiceUnavailable:
		return "ServiceUnavailable"
	case http.StatusInternalServerError:
		return "InternalError"
	case http.StatusForbidden:
		return "AccessDenied"
	}
	return "Injected"
}

// errReset is what a connection reset looks like to the HTTP client.
var errReset = &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}

func staticCreds(user, pass string) *credentials.Credentials {
	return credentials.NewStaticV4(user, pass, "")
}

func defaultTransport(t testing.TB) http.RoundTripper {
	tr, err := minio.DefaultTransport(false)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}
