package k8sagent

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/voldelta/voldelta/agent"
	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// poolEnv is a real receiver of volumes "a" and "b" on loopback (mutual
// TLS) and two VolumeSyncs of one group sending to it.
type poolEnv struct {
	t       *testing.T
	dir     string
	srv     *receiver.Server
	addr    string
	agentTC transport.Config
	syncs   [2]*v1alpha1.VolumeSync
	data    [2][]byte
}

func newPoolEnv(t *testing.T, maxRounds int) *poolEnv {
	t.Helper()
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvLeaf, err := ca.Issue("receiver", []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cliLeaf, err := ca.Issue("agent", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e := &poolEnv{t: t, dir: t.TempDir()}
	tc := transport.DefaultConfig()
	tc.TLS = transport.NewTLS(srvLeaf.TLS, ca.Pool(), true)
	e.srv, err = receiver.New(receiver.Config{
		Targets:   map[string]string{"a": filepath.Join(e.dir, "a.img"), "b": filepath.Join(e.dir, "b.img")},
		StateDir:  filepath.Join(e.dir, "state"),
		Transport: tc,
		MaxRounds: maxRounds,
		Logger:    slog.New(slog.NewTextHandler(poolLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("receiver: %v", err)
		}
	})
	e.agentTC = transport.DefaultConfig()
	e.agentTC.TLS = transport.NewTLS(cliLeaf.TLS, ca.Pool(), false)
	e.agentTC.BandwidthLimit = 200 << 20
	for i, name := range []string{"a", "b"} {
		e.syncs[i] = &v1alpha1.VolumeSync{
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: name},
			Spec: v1alpha1.VolumeSyncSpec{
				SourcePVC:   name,
				Destination: v1alpha1.Destination{Address: e.addr, TLSSecretName: "tls"},
				Trigger:     v1alpha1.Trigger{Manual: "final-1"},
				Group:       &v1alpha1.SyncGroup{Name: "shop-final", Members: 2, Promote: false},
			},
			Status: v1alpha1.VolumeSyncStatus{PendingManualTrigger: "final-1"},
		}
		e.data[i] = make([]byte, 1<<20+i*4096)
		var seed [32]byte
		seed[0] = byte(i + 1)
		rand.NewChaCha8(seed).Read(e.data[i])
	}
	return e
}

type poolLog struct{ t *testing.T }

func (w poolLog) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

type memSource struct{ *bytes.Reader }

func (m memSource) Size() uint64 { return uint64(m.Len()) }

// options are the agent options of VolumeSync i's round, as send builds
// them: its group from roundGroup, its receiver and transport.
func (e *poolEnv) options(i int) agent.Options {
	vs := e.syncs[i]
	return agent.Options{Source: vs.Name, Image: memSource{bytes.NewReader(e.data[i])}, Addr: e.addr, Volume: vs.Name,
		Transport: e.agentTC, Group: roundGroup(vs)}
}

// runBoth runs both VolumeSyncs' rounds through p at once; a's round ends
// only once b's began on a session, so that b finds a's session still open.
func (e *poolEnv) runBoth(p *sessionPool) [2]error {
	e.t.Helper()
	bStarted := make(chan struct{})
	var once sync.Once
	started := func() { once.Do(func() { close(bStarted) }) }
	syncOn, syncOwn := p.syncOn, p.sync
	p.syncOn = func(ctx context.Context, sess *transport.Session, opt agent.Options) (*agent.Stats, error) {
		if opt.Volume == "b" {
			started()
			return syncOn(ctx, sess, opt)
		}
		st, err := syncOn(ctx, sess, opt)
		<-bStarted
		return st, err
	}
	p.sync = func(ctx context.Context, opt agent.Options) (*agent.Stats, error) {
		started()
		return syncOwn(ctx, opt)
	}
	var errs [2]error
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			vs := e.syncs[i]
			opt := e.options(i)
			st, err := p.run(e.t.Context(), sessionKey(vs, vs.Spec.Destination.Address, opt.Group.Name), opt)
			if err == nil && st.Generation != 1 {
				e.t.Errorf("%s committed generation %d, want 1", vs.Name, st.Generation)
			}
			errs[i] = err
		})
		if i == 0 {
			// b asks once a's round holds the group's session.
			deadline := time.Now().Add(30 * time.Second)
			for !p.has(sessionKey(e.syncs[0], e.addr, "shop-final")) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
	}
	wg.Wait()
	return errs
}

// has says whether the pool holds a session for key.
func (p *sessionPool) has(key poolKey) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.entries[key] != nil
}

func (e *poolEnv) assertTargets() {
	e.t.Helper()
	for i, name := range []string{"a", "b"} {
		got, err := os.ReadFile(filepath.Join(e.dir, name+".img"))
		if err != nil {
			e.t.Fatal(err)
		}
		if !bytes.Equal(got, e.data[i]) {
			e.t.Fatalf("target %s differs from its source", name)
		}
	}
}

// TestPoolGroupSharesSession: the rounds of two VolumeSyncs of one group
// to one receiver run over one session (the receiver set up exactly one)
// and both commit; the pool closes the session after the last round.
func TestPoolGroupSharesSession(t *testing.T) {
	e := newPoolEnv(t, 0)
	p := newSessionPool()
	if errs := e.runBoth(p); errs[0] != nil || errs[1] != nil {
		t.Fatalf("rounds: a %v, b %v", errs[0], errs[1])
	}
	e.assertTargets()
	if n := e.srv.SessionsServed(); n != 1 {
		t.Fatalf("receiver set up %d sessions for the group's two rounds, want 1", n)
	}
	if p.has(sessionKey(e.syncs[0], e.addr, "shop-final")) {
		t.Fatal("the pool kept the group's session after its last round")
	}
}

// TestPoolFallsBack: a receiver that runs one round per session makes
// the second round fall back to a session of its own; both commit.
func TestPoolFallsBack(t *testing.T) {
	e := newPoolEnv(t, 1)
	if errs := e.runBoth(newSessionPool()); errs[0] != nil || errs[1] != nil {
		t.Fatalf("rounds: a %v, b %v", errs[0], errs[1])
	}
	e.assertTargets()
	if n := e.srv.SessionsServed(); n != 2 {
		t.Fatalf("receiver set up %d sessions, want 2 (one round each)", n)
	}
}
