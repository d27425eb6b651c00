package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// randBytes returns n pseudo-random bytes from seed.
func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(s).Read(b)
	return b
}

// pair is a receiver serving on loopback and the agent options to reach it.
type pair struct {
	t        *testing.T
	dir      string
	addr     string
	stateDir string
	targets  map[string]string
	agentTLS *tls.Config
	srvCfg   receiver.Config
	cancel   context.CancelFunc
	done     chan error
}

type pairOpts struct {
	insecure bool
	verify   receiver.VerifyMode
	targets  map[string]string // default: "vol" -> dir/target.img
	buffer   int64
}

func newPair(t *testing.T, o pairOpts) *pair {
	t.Helper()
	dir := t.TempDir()
	p := &pair{t: t, dir: dir, stateDir: filepath.Join(dir, "state"), targets: o.targets}
	if p.targets == nil {
		p.targets = map[string]string{"vol": filepath.Join(dir, "target.img")}
	}
	tc := transport.DefaultConfig()
	if o.insecure {
		tc.Insecure = true
	} else {
		certs := newTestCerts(t)
		tc.TLS, p.agentTLS = certs.receiver, certs.agent
	}
	p.srvCfg = receiver.Config{
		Targets: p.targets, StateDir: p.stateDir, Transport: tc, Verify: o.verify, ApplyBuffer: o.buffer,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	p.start()
	return p
}

func (p *pair) start() {
	p.t.Helper()
	srv, err := receiver.New(p.srvCfg)
	if err != nil {
		p.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		p.t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.done = make(chan error, 1)
	go func() { p.done <- srv.Serve(ctx, ln) }()
	p.t.Cleanup(p.stop)
}

func (p *pair) stop() {
	if p.cancel != nil {
		p.cancel()
		if err := <-p.done; err != nil {
			p.t.Errorf("receiver: %v", err)
		}
		p.cancel = nil
	}
}

func (p *pair) options(source, volume string) agent.Options {
	tc := transport.DefaultConfig()
	if p.agentTLS != nil {
		tc.TLS = p.agentTLS
	} else {
		tc.Insecure = true
	}
	return agent.Options{Source: source, Addr: p.addr, Volume: volume, Transport: tc}
}

func (p *pair) sync(source, volume string) *agent.Stats {
	p.t.Helper()
	st, err := agent.Sync(context.Background(), p.options(source, volume))
	if err != nil {
		p.t.Fatalf("sync %s: %v", volume, err)
	}
	return st
}

// testWriter sends log output to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(b, "\n")))
	return len(b), nil
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// assertSame fails unless the file at path holds exactly want.
func assertSame(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, source has %d", path, len(got), len(want))
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s differs from the source at byte %d", path, i)
			}
		}
	}
}

func rootOf(t *testing.T, data []byte) chunk.ID {
	t.Helper()
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(data), uint64(len(data)), chunk.DefaultParams(), chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m.Root
}

func remoteCode(err error) transport.ErrorCode {
	var re *transport.RemoteError
	if errors.As(err, &re) {
		return re.Code
	}
	return 0
}
