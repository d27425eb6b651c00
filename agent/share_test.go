package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// shareEnv is a real receiver of volumes "a" and "b" on loopback with
// mutual TLS, and the agent's transport configuration.
type shareEnv struct {
	t       *testing.T
	dir     string
	srv     *receiver.Server
	addr    string
	agentTC transport.Config
}

func newShareEnv(t *testing.T) *shareEnv {
	t.Helper()
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvLeaf, err := ca.Issue("receiver", []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cliLeaf, err := ca.Issue("agent-1", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tc := transport.DefaultConfig()
	tc.TLS = transport.NewTLS(srvLeaf.TLS, ca.Pool(), true)
	srv, err := receiver.New(receiver.Config{
		Targets:   map[string]string{"a": filepath.Join(dir, "a.img"), "b": filepath.Join(dir, "b.img")},
		StateDir:  filepath.Join(dir, "state"),
		Transport: tc,
		Logger:    slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("receiver: %v", err)
		}
	})
	atc := transport.DefaultConfig()
	atc.TLS = transport.NewTLS(cliLeaf.TLS, ca.Pool(), false)
	return &shareEnv{t: t, dir: dir, srv: srv, addr: ln.Addr().String(), agentTC: atc}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// source writes n pseudo-random bytes from seed to a file and returns them.
func (e *shareEnv) source(name string, seed uint64, n int) (string, []byte) {
	e.t.Helper()
	b := make([]byte, n)
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(s).Read(b)
	path := filepath.Join(e.dir, name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		e.t.Fatal(err)
	}
	return path, b
}

func (e *shareEnv) assertTarget(volume string, want []byte) {
	e.t.Helper()
	got, err := os.ReadFile(filepath.Join(e.dir, volume+".img"))
	if err != nil {
		e.t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		e.t.Fatalf("target %s differs from its source (%d vs %d bytes)", volume, len(got), len(want))
	}
}

func (e *shareEnv) dial(tc transport.Config) *transport.Session {
	e.t.Helper()
	sess, err := transport.Dial(e.t.Context(), e.addr, tc)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { sess.Close() })
	return sess
}

func (e *shareEnv) options(volume string, src agent.Image, path string) agent.Options {
	return agent.Options{Source: path, Image: src, Addr: e.addr, Volume: volume, Transport: e.agentTC,
		Group: &transport.Group{Name: "grp", Members: 2}}
}

type result struct {
	stats *agent.Stats
	err   error
}

// twoRounds runs a's round on sess and, once the receiver accepted it
// and allowed more rounds on the session, b's beside it.
func (e *shareEnv) twoRounds(sess *transport.Session, a, b agent.Options) (ra, rb result) {
	e.t.Helper()
	welcomed := make(chan int, 1)
	a.OnWelcome = func(n int) { welcomed <- n }
	outA := make(chan result, 1)
	go func() {
		st, err := agent.SyncOn(e.t.Context(), sess, a)
		outA <- result{st, err}
	}()
	select {
	case n := <-welcomed:
		if n != receiver.DefaultMaxRounds {
			e.t.Fatalf("WELCOME allows %d rounds on the session, want %d", n, receiver.DefaultMaxRounds)
		}
	case r := <-outA:
		e.t.Fatalf("round of %s ended before its WELCOME: %v", a.Volume, r.err)
	}
	st, err := agent.SyncOn(e.t.Context(), sess, b)
	return <-outA, result{st, err}
}

// TestSyncOnTwoRounds: two volumes' rounds run at once over one session
// under one bandwidth limit; both commit, the targets hold the sources,
// the receiver set up one session, and the session's limiter let through
// every byte of both rounds.
func TestSyncOnTwoRounds(t *testing.T) {
	e := newShareEnv(t)
	pa, da := e.source("a.src", 1, 3<<20)
	pb, db := e.source("b.src", 2, 2<<20+12345)
	tc := e.agentTC
	tc.BandwidthLimit = 400 << 20 // a limiter on the session, barely slowing it
	sess := e.dial(tc)
	ra, rb := e.twoRounds(sess, e.options("a", nil, pa), e.options("b", nil, pb))
	if ra.err != nil || rb.err != nil {
		t.Fatalf("rounds: a %v, b %v", ra.err, rb.err)
	}
	e.assertTarget("a", da)
	e.assertTarget("b", db)
	if n := e.srv.SessionsServed(); n != 1 {
		t.Fatalf("receiver set up %d sessions, want 1", n)
	}
	if ra.stats.Generation != 1 || rb.stats.Generation != 1 {
		t.Fatalf("generations a %d, b %d, want 1 each", ra.stats.Generation, rb.stats.Generation)
	}
	// Per-round figures are the round's own streams: each carries at least
	// its own chunks, and together they are what the session wrote, but
	// for yamux's and TLS's framing and the setup ping.
	for _, r := range []result{ra, rb} {
		if uint64(r.stats.WireBytes) < r.stats.BytesSentPayload {
			t.Fatalf("round %s: %d wire bytes, fewer than its %d chunk payload bytes", r.stats.Volume, r.stats.WireBytes, r.stats.BytesSentPayload)
		}
	}
	sum := ra.stats.WireBytes + rb.stats.WireBytes
	paced, written := sess.PacedBytes(), sess.WireBytesWritten()
	if paced != written {
		t.Fatalf("the session's limiter let %d bytes through, the session wrote %d: some bypassed the limit", paced, written)
	}
	if paced < sum || paced > sum+sum/20+64<<10 {
		t.Fatalf("the session's limiter let %d bytes through, the two rounds' streams carried %d (a %d, b %d)",
			paced, sum, ra.stats.WireBytes, rb.stats.WireBytes)
	}
}

// changingImage returns other bytes once it was read to its end: the
// scan (one segment, read in order) sees the original bytes, and at least
// the last chunk, which the agent reads again to send it after the scan
// ended, no longer matches the manifest, as with a source written during
// the round.
type changingImage struct {
	data    []byte
	changed atomic.Bool
}

func (c *changingImage) Size() uint64 { return uint64(len(c.data)) }

func (c *changingImage) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(c.data)) {
		return 0, io.EOF
	}
	n := copy(p, c.data[off:])
	if c.changed.Load() {
		for i := range p[:n] {
			p[i] ^= 0x5a
		}
	}
	if off+int64(n) == int64(len(c.data)) {
		c.changed.Store(true)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// TestSyncOnOneRoundFails: of two rounds sharing a session, the one whose
// source changes under it fails (ERROR 10, source changed) while the
// other commits; the session goes on and carries b's next round.
func TestSyncOnOneRoundFails(t *testing.T) {
	e := newShareEnv(t)
	pa, da := e.source("a.src", 3, 3<<20)
	_, db := e.source("b.src", 4, 1<<20)
	sess := e.dial(e.agentTC)
	bad := &changingImage{data: db}
	ra, rb := e.twoRounds(sess, e.options("a", nil, pa), e.options("b", bad, "b.src"))
	if ra.err != nil {
		t.Fatalf("round a: %v", ra.err)
	}
	var re *transport.RemoteError
	if !errors.As(rb.err, &re) || re.Code != transport.ErrCodeSourceChange {
		t.Fatalf("round b: %v, want the receiver's ERROR %d (source changed)", rb.err, transport.ErrCodeSourceChange)
	}
	e.assertTarget("a", da)
	select {
	case <-sess.Done():
		t.Fatal("a failed round ended the shared session")
	default:
	}
	pb := filepath.Join(e.dir, "b.src")
	st, err := agent.SyncOn(t.Context(), sess, e.options("b", nil, pb))
	if err != nil {
		t.Fatalf("round b again on the same session: %v", err)
	}
	if st.Generation != 1 {
		t.Fatalf("b committed generation %d, want 1", st.Generation)
	}
	e.assertTarget("b", db)
	if n := e.srv.SessionsServed(); n != 1 {
		t.Fatalf("receiver set up %d sessions, want 1", n)
	}
}

// TestSyncOnWithoutGroup: a round without a group does not ask to share:
// its WELCOME allows one round, as a session always did.
func TestSyncOnWithoutGroup(t *testing.T) {
	e := newShareEnv(t)
	pa, da := e.source("a.src", 5, 1<<20)
	sess := e.dial(e.agentTC)
	opt := e.options("a", nil, pa)
	opt.Group = nil
	var rounds atomic.Int32
	opt.OnWelcome = func(n int) { rounds.Store(int32(n)) }
	if _, err := agent.SyncOn(t.Context(), sess, opt); err != nil {
		t.Fatal(err)
	}
	if n := rounds.Load(); n != 1 {
		t.Fatalf("WELCOME of a round without a group allows %d rounds, want 1", n)
	}
	e.assertTarget("a", da)
}
