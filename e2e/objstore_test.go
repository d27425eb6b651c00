package e2e

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/voldelta/voldelta/internal/miniotest"
	"golang.org/x/time/rate"
)

// storeEnv is the environment of a voldelta process using the test store.
func storeEnv(extra ...string) []string {
	env := []string{"HOME=" + os.TempDir(), "PATH=" + os.Getenv("PATH"),
		"AWS_ACCESS_KEY_ID=" + miniotest.User, "AWS_SECRET_ACCESS_KEY=" + miniotest.Password}
	return append(env, extra...)
}

// runEnv runs voldelta with env and returns stdout, stderr and the exit code.
func runEnv(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(voldeltaBin, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// slowProxy forwards TCP connections to addr, the server's answers at most
// bytesPerSec in total, and counts what it forwarded each way.
type slowProxy struct {
	ln    net.Listener
	lim   *rate.Limiter
	down  atomic.Int64
	up    atomic.Int64
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func newSlowProxy(t *testing.T, addr string, bytesPerSec int) *slowProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &slowProxy{ln: ln, lim: rate.NewLimiter(rate.Limit(bytesPerSec), 64<<10)}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(countingWriter{s, &p.up}, c); s.(*net.TCPConn).CloseWrite() }()
			go func() {
				defer p.wg.Done()
				defer c.(*net.TCPConn).CloseWrite()
				buf := make([]byte, 16<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 {
						p.lim.WaitN(context.Background(), n)
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
						p.down.Add(int64(n))
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(p.close)
	return p
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func (p *slowProxy) addr() string { return p.ln.Addr().String() }

func (p *slowProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestStoreCLI: push, pull and gc from the command line against a real
// MinIO server: exit codes, stats JSON, and a pull killed with SIGKILL half
// way, resumed by the next one, which downloads only what was missing.
func TestStoreCLI(t *testing.T) {
	srv, err := miniotest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	if err := srv.MakeBucket(context.Background(), "e2e"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	env := storeEnv()
	store := []string{"--store", "s3://e2e/dc1", "--endpoint", srv.Endpoint, "--insecure"}

	src := filepath.Join(dir, "src.img")
	data := randBytes(42, 48<<20)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	s1 := filepath.Join(dir, "push1.json")
	if _, stderr, code := runEnv(t, env, append([]string{"push", "--source", src, "--volume", "db", "--stats-json", s1}, store...)...); code != 0 {
		t.Fatalf("push: exit %d: %s", code, stderr)
	}
	push1 := readStats(t, s1)
	for _, k := range []string{"generation", "root_hash", "chunks_uploaded", "chunks_reused", "bytes_uploaded", "bytes_uploaded_raw", "source_bytes"} {
		if _, ok := push1[k]; !ok {
			t.Errorf("push stats lack %q", k)
		}
	}
	stored := push1["bytes_uploaded"].(float64)

	// Pull through a proxy slow enough to kill the pull half way.
	proxy := newSlowProxy(t, srv.Endpoint, 12<<20)
	target := filepath.Join(dir, "replica.img")
	state := filepath.Join(dir, "state")
	pull := []string{"pull", "--volume", "db", "--target", target, "--state-dir", state, "--store", "s3://e2e/dc1", "--insecure", "--parallel", "4"}
	cmd := exec.Command(voldeltaBin, append(pull, "--endpoint", proxy.addr())...)
	cmd.Env = env
	var killedErr bytes.Buffer
	cmd.Stderr = &killedErr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for proxy.down.Load() < int64(stored/2) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	before := proxy.down.Load()
	proxy.close()
	if out, _, _ := runEnv(t, env, "status", "--state-dir", state); !strings.Contains(out, "INCOMPLETE") {
		t.Errorf("status after the killed pull does not say INCOMPLETE:\n%s", out)
	}

	s2 := filepath.Join(dir, "pull2.json")
	if _, stderr, code := runEnv(t, env, append(pull, "--endpoint", srv.Endpoint, "--stats-json", s2)...); code != 0 {
		t.Fatalf("resumed pull: exit %d: %s", code, stderr)
	}
	got, err := os.ReadFile(target)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("target differs from the source after the resumed pull (%v)", err)
	}
	pull2 := readStats(t, s2)
	second := pull2["bytes_downloaded"].(float64)
	t.Logf("killed pull downloaded %d bytes (of %.0f stored); the resumed pull %.0f (%.1f%% of the store, %.2fx what was missing), resumed=%v",
		before, stored, second, 100*second/stored, second/(stored-float64(before)), pull2["resumed"])
	if pull2["resumed"] != true || second > (stored-float64(before))*1.15+float64(4<<20) {
		t.Errorf("the resumed pull downloaded %.0f bytes, %.0f were missing", second, stored-float64(before))
	}

	// A delta: push and pull again, then gc.
	copy(data[20<<20:], randBytes(43, 1<<20))
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runEnv(t, env, append([]string{"push", "--source", src, "--volume", "db", "-q", "--bwlimit", "400MiB", "--progress", "always"}, store...)...); code != 0 {
		t.Fatalf("push 2: exit %d: %s", code, stderr)
	} else if !strings.Contains(stderr, "scanning") {
		t.Errorf("push --progress always showed no progress bar: %q", stderr)
	}
	s3 := filepath.Join(dir, "pull3.json")
	if _, stderr, code := runEnv(t, env, append(pull, "--endpoint", srv.Endpoint, "--stats-json", s3)...); code != 0 {
		t.Fatalf("pull 2: exit %d: %s", code, stderr)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, data) {
		t.Fatal("target differs from the source after the delta pull")
	}
	if d := readStats(t, s3)["bytes_downloaded"].(float64); d > 4<<20 {
		t.Errorf("delta pull of a 1 MiB change downloaded %.0f bytes", d)
	}
	sg := filepath.Join(dir, "gc.json")
	if _, stderr, code := runEnv(t, env, append([]string{"gc", "--keep", "1", "--grace", "0", "--stats-json", sg}, store...)...); code != 0 {
		t.Fatalf("gc: exit %d: %s", code, stderr)
	}
	if gs := readStats(t, sg); gs["manifests_removed"].(float64) != 1 || gs["chunks_removed"].(float64) == 0 {
		t.Errorf("gc stats: %v", gs)
	}

	// Failures: exit 1 with a clear message; bad usage: exit 2.
	for _, tc := range []struct {
		env  []string
		args []string
		code int
		msg  string
	}{
		{storeEnv("AWS_SECRET_ACCESS_KEY=wrong"), []string{"gc", "--store", "s3://e2e/dc1", "--endpoint", srv.Endpoint, "--insecure"}, 1, "bad credentials"},
		{env, []string{"gc", "--store", "s3://missing/dc1", "--endpoint", srv.Endpoint, "--insecure"}, 1, `bucket "missing" does not exist`},
		{env, []string{"pull", "--volume", "nope", "--target", target, "--state-dir", state, "--store", "s3://e2e/dc1", "--endpoint", srv.Endpoint, "--insecure"}, 1, "no generation"},
		{storeEnv("AWS_ENDPOINT_URL=http://" + srv.Endpoint), []string{"gc", "--store", "s3://e2e/dc1"}, 2, "--insecure"},
		{env, []string{"push", "--volume", "db", "--store", "s3://e2e/dc1"}, 2, "--source"},
		{env, []string{"push", "--source", src, "--volume", "db", "--store", "e2e/dc1"}, 2, "s3://"},
		{env, []string{"gc", "--store", "s3://e2e/dc1", "--keep", "-1"}, 2, "--keep"},
		{env, []string{"push", "--source", src, "--volume", "db", "--store", "s3://e2e/dc1", "--bwlimit", "fast"}, 2, "--bwlimit"},
	} {
		_, stderr, code := runEnv(t, tc.env, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.msg) {
			t.Errorf("%v: exit %d, want %d with %q; stderr %q", tc.args, code, tc.code, tc.msg, stderr)
		}
	}
}

// exited is how a voldelta process ended.
type exited struct {
	code   int
	stderr string
}

// startEnv starts voldelta with env; the returned channel yields how it
// ended.
func startEnv(t *testing.T, env []string, args ...string) <-chan exited {
	t.Helper()
	cmd := exec.Command(voldeltaBin, args...)
	cmd.Env = env
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan exited, 1)
	go func() {
		cmd.Wait()
		done <- exited{cmd.ProcessState.ExitCode(), errb.String()}
	}()
	return done
}

// restartWhen kills the MinIO server (SIGKILL) once count reaches at, while
// the voldelta process behind done still runs, and starts it again on the
// same port and data; it fails the test if the process ended first.
func restartWhen(t *testing.T, srv *miniotest.Server, count *atomic.Int64, at int64, done <-chan exited) {
	t.Helper()
	for count.Load() < at {
		select {
		case r := <-done:
			t.Fatalf("voldelta ended (exit %d) after %d of the %d bytes due before the restart: %s", r.code, count.Load(), at, r.stderr)
		case <-time.After(5 * time.Millisecond):
		}
	}
	srv.Kill()
	select {
	case r := <-done:
		t.Fatalf("voldelta ended (exit %d) before the server was killed: %s", r.code, r.stderr)
	default:
	}
	if err := srv.StartAgain(); err != nil {
		t.Fatal(err)
	}
}

// TestStoreServerRestart (14b): the MinIO server killed with SIGKILL and
// restarted on the same port and data in the middle of a push, and then of
// a pull: both complete (retrying the refused and dropped connections) and
// the target is identical to the source.
func TestStoreServerRestart(t *testing.T) {
	srv, err := miniotest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	if err := srv.MakeBucket(context.Background(), "e2e"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	env := storeEnv()
	src := filepath.Join(dir, "src.img")
	data := randBytes(44, 32<<20)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}

	// The push through a counting proxy, paced so that it lasts seconds.
	up := newSlowProxy(t, srv.Endpoint, 1<<30)
	sp := filepath.Join(dir, "push.json")
	done := startEnv(t, env, "push", "--source", src, "--volume", "db", "--store", "s3://e2e/dc1", "--endpoint", up.addr(), "--insecure",
		"--bwlimit", "8MiB", "--stats-json", sp, "-q")
	restartWhen(t, srv, &up.up, int64(len(data)/3), done)
	r := <-done
	if r.code != 0 {
		t.Fatalf("push across a MinIO restart: exit %d: %s", r.code, r.stderr)
	}
	ps := readStats(t, sp)
	t.Logf("push across a restart at a third of the upload: exit 0, %v retries, %v chunks uploaded", ps["retries"], ps["chunks_uploaded"])
	if ps["retries"].(float64) == 0 {
		t.Errorf("the push retried nothing: %v", ps)
	}

	down := newSlowProxy(t, srv.Endpoint, 8<<20)
	target := filepath.Join(dir, "replica.img")
	sl := filepath.Join(dir, "pull.json")
	done = startEnv(t, env, "pull", "--volume", "db", "--target", target, "--state-dir", filepath.Join(dir, "state"),
		"--store", "s3://e2e/dc1", "--endpoint", down.addr(), "--insecure", "--stats-json", sl, "-q")
	restartWhen(t, srv, &down.down, int64(len(data)/3), done)
	r = <-done
	if r.code != 0 {
		t.Fatalf("pull across a MinIO restart: exit %d: %s", r.code, r.stderr)
	}
	pl := readStats(t, sl)
	t.Logf("pull across a restart at a third of the download: exit 0, %v retries, %v chunks fetched", pl["retries"], pl["chunks_fetched"])
	if pl["retries"].(float64) == 0 {
		t.Errorf("the pull retried nothing: %v", pl)
	}
	if got, err := os.ReadFile(target); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("target differs from the source after a pull across a restart (%v)", err)
	}
}

// TestStoreRepairCLI (14a): a damaged chunk object fails pull with exit 1
// and a message naming the object and the repair; push --confirm-all
// re-uploads it and the next pull is identical.
func TestStoreRepairCLI(t *testing.T) {
	srv, err := miniotest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	ctx := context.Background()
	if err := srv.MakeBucket(ctx, "e2e"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	env := storeEnv()
	store := []string{"--store", "s3://e2e/dc1", "--endpoint", srv.Endpoint, "--insecure"}
	src := filepath.Join(dir, "src.img")
	data := randBytes(45, 8<<20)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runEnv(t, env, append([]string{"push", "--source", src, "--volume", "db", "-q"}, store...)...); code != 0 {
		t.Fatalf("push: exit %d: %s", code, stderr)
	}
	// Damage one chunk object: the same size, one bit flipped.
	cl, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	var key string
	for o := range cl.ListObjects(ctx, "e2e", minio.ListObjectsOptions{Prefix: "dc1/chunks/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		key = o.Key
		break
	}
	obj, err := cl.GetObject(ctx, "e2e", key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(obj)
	obj.Close()
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if _, err := cl.PutObject(ctx, "e2e", key, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}

	target := filepath.Join(dir, "replica.img")
	pull := append([]string{"pull", "--volume", "db", "--target", target, "--state-dir", filepath.Join(dir, "state")}, store...)
	_, stderr, code := runEnv(t, env, pull...)
	t.Logf("pull of the damaged generation: exit %d: %s", code, strings.TrimSpace(stderr))
	if code != 1 || !strings.Contains(stderr, key) || !strings.Contains(stderr, "is damaged") || !strings.Contains(stderr, "voldelta push --confirm-all") {
		t.Fatalf("pull of a damaged chunk: exit %d, stderr %q; want exit 1 naming %s and the repair", code, stderr, key)
	}
	sp := filepath.Join(dir, "repair.json")
	if _, stderr, code := runEnv(t, env, append([]string{"push", "--source", src, "--volume", "db", "--confirm-all", "-q", "--stats-json", sp}, store...)...); code != 0 {
		t.Fatalf("push --confirm-all: exit %d: %s", code, stderr)
	}
	st := readStats(t, sp)
	t.Logf("push --confirm-all: %v repaired, %v uploaded, %v confirmed", st["chunks_repaired"], st["chunks_uploaded"], st["chunks_confirmed"])
	if st["chunks_repaired"] != float64(1) || st["chunks_uploaded"] != float64(1) {
		t.Fatalf("push --confirm-all did not re-upload exactly the damaged chunk: %v", st)
	}
	if _, stderr, code := runEnv(t, env, pull...); code != 0 {
		t.Fatalf("pull after the repair: exit %d: %s", code, stderr)
	}
	if got, err := os.ReadFile(target); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("target differs from the source after the repair (%v)", err)
	}
}
