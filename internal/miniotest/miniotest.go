package miniotest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/voldelta/voldelta/internal/toolcache"
)

// Root credentials of every test server.
const (
	User     = "voldelta-test"
	Password = "voldelta-test-secret"
)

// Server is a running MinIO server.
type Server struct {
	Endpoint string // 127.0.0.1:PORT, plain HTTP
	bin      string
	dir      string
	mu       sync.Mutex
	log      bytes.Buffer
	cmd      *exec.Cmd     // the running process
	exited   chan struct{} // closed when it exited
}

// Binary returns the path of the MinIO server built by
// scripts/ensure-minio.sh ($VOLDELTA_MINIO overrides it), or an error that
// says how to build it.
func Binary() (string, error) {
	path := toolcache.Bin("VOLDELTA_MINIO", "minio")
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("these tests need the MinIO server binary at %s (%v): run scripts/ensure-minio.sh or `make tools` (builds it once, several minutes), or set VOLDELTA_MINIO", path, err)
	}
	return path, nil
}

// Start starts a server and waits until it is live.
func Start() (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "voldelta-minio-")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 { // a free port may be taken before the server binds it
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &Server{Endpoint: fmt.Sprintf("127.0.0.1:%d", port), bin: bin, dir: dir}
		if lastErr = s.run(); lastErr == nil {
			return s, nil
		}
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

// run starts the server process on s.Endpoint and s.dir and waits until it
// is live; on failure it is killed.
func (s *Server) run() error {
	cmd := exec.Command(s.bin, "server", "--quiet", "--address", s.Endpoint, filepath.Join(s.dir, "data"))
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+User, "MINIO_ROOT_PASSWORD="+Password,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	cmd.Stdout, cmd.Stderr = (*lockedWriter)(s), (*lockedWriter)(s)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start minio: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	if err := s.waitLive(30*time.Second, exited); err != nil {
		s.kill(false)
		return err
	}
	return nil
}

// Restart kills the server with SIGKILL, as a crash would, and starts it
// again on the same address with the same data (Kill, then StartAgain).
func (s *Server) Restart() error {
	s.Kill()
	return s.StartAgain()
}

// Kill kills the server with SIGKILL, as a crash would, and returns once
// the process is gone: clients see refused and reset connections.
func (s *Server) Kill() { s.kill(true) }

// StartAgain starts a killed server on the same address with the same data
// and returns once it is live.
func (s *Server) StartAgain() error {
	var err error
	for range 50 { // the port may linger for a moment after the kill
		if err = s.run(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("restart minio at %s: %w", s.Endpoint, err)
}

type lockedWriter Server

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.log.Write(p)
}

// Log returns what the server printed.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) waitLive(timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("minio exited: %s", s.Log())
		default:
		}
		resp, err := http.Get("http://" + s.Endpoint + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("minio at %s not live after %s: %s", s.Endpoint, timeout, s.Log())
}

// kill stops the running process: SIGKILL with hard, else SIGINT (SIGKILL
// after 10 s); it returns once the process exited.
func (s *Server) kill(hard bool) {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if hard {
		cmd.Process.Kill()
		<-exited
		return
	}
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

// Stop stops the server and removes its data.
func (s *Server) Stop() {
	s.kill(false)
	os.RemoveAll(s.dir)
}

// Creds returns the root credentials.
func Creds() *credentials.Credentials { return credentials.NewStaticV4(User, Password, "") }

// Client returns a client with the root credentials.
func (s *Server) Client() (*minio.Client, error) {
	return minio.New(s.Endpoint, &minio.Options{Creds: Creds()})
}

// MakeBucket creates a bucket.
func (s *Server) MakeBucket(ctx context.Context, name string) error {
	cl, err := s.Client()
	if err != nil {
		return err
	}
	return cl.MakeBucket(ctx, name, minio.MakeBucketOptions{})
}
