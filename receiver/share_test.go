package receiver

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/voldelta/voldelta/transport"
)

// sharedHello is a HELLO for volume that asks to share its session.
func sharedHello(volume string, size uint64) transport.Hello {
	h := hello(size, tinyParams(), "img-1")
	h.Volume = volume
	h.Group = &transport.Group{Name: "grp", Members: 2, Share: true}
	return h
}

// openRound starts another round on a's session: a control stream, h, and
// the receiver's WELCOME or ERROR.
func (a *testAgent) openRound(h transport.Hello) (*testAgent, error) {
	a.t.Helper()
	ctrl, err := a.sess.Open(a.t.Context())
	if err != nil {
		a.t.Fatal(err)
	}
	if err := ctrl.Send(h); err != nil {
		a.t.Fatal(err)
	}
	m, err := ctrl.RecvWithin(safety, "WELCOME")
	if err != nil {
		return nil, err
	}
	w, ok := m.(transport.Welcome)
	if !ok {
		a.t.Fatalf("HELLO answered with %v", m.FrameType())
	}
	b := &testAgent{t: a.t, sess: a.sess, ctrl: ctrl, welcome: w}
	if w.Rounds != 0 {
		b.control = ctrl.ID()
	}
	return b, nil
}

// remote returns err's receiver ERROR, failing the test without one.
func remote(t *testing.T, err error) *transport.RemoteError {
	t.Helper()
	var re *transport.RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("got %v, want an ERROR from the receiver", err)
	}
	return re
}

func withTarget2(dir string) func(*Config) {
	return func(c *Config) { c.Targets["vol2"] = filepath.Join(dir, "target2.img") }
}

// TestSessionTwoRounds: two rounds of different volumes on one session at
// once both commit; a DATA_OPEN without the control trailer on a session
// of two rounds, and one naming no round, are refused on their stream
// alone; a second round of a volume being synced is ERROR 4 on its control
// stream alone.
func TestSessionTwoRounds(t *testing.T) {
	src := gen1Source()
	dir := t.TempDir()
	s := newTestServerWith(t, withTarget2(dir))
	m := scan(t, src, tinyParams())
	a := s.mustDial(sharedHello("vol", m.Size))
	if a.welcome.Rounds != DefaultMaxRounds || a.control != 1 {
		t.Fatalf("WELCOME to a HELLO asking to share allows %d rounds (control %d), want %d", a.welcome.Rounds, a.control, DefaultMaxRounds)
	}
	b, err := a.openRound(sharedHello("vol2", m.Size))
	if err != nil {
		t.Fatalf("second round: %v", err)
	}
	if _, err := a.openRound(sharedHello("vol", m.Size)); remote(t, err).Code != transport.ErrCodeBusy {
		t.Fatalf("a second round of volume vol: %v, want ERROR 4", err)
	}
	for _, open := range []transport.DataOpen{{Stream: 7}, {Stream: 7, Control: 99}} {
		st, err := a.sess.Open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(open); err != nil {
			t.Fatal(err)
		}
		_, err = st.RecvWithin(safety, "ERROR")
		if re := remote(t, err); re.Code != transport.ErrCodeProtocol || !strings.Contains(re.Message, "control stream") {
			t.Fatalf("DATA_OPEN %+v answered %v, want ERROR 1 naming the control stream", open, re)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, r := range []*testAgent{a, b} {
		wg.Go(func() { _, errs[i] = r.round(src, m, sendFull(m)) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("rounds: %v, %v", errs[0], errs[1])
	}
	s.assertTarget(src)
	for _, v := range []string{"vol", "vol2"} {
		vs, err := ReadStatus(s.cfg.StateDir, v)
		if err != nil || vs.Generation != 1 {
			t.Fatalf("%s: generation %v, %v; want 1", v, vs, err)
		}
	}
}

// TestSessionRoundFailsAlone: a round opening more data streams than its
// HELLO announced fails (ERROR 1 on its control stream); the session's
// other round commits.
func TestSessionRoundFailsAlone(t *testing.T) {
	src := gen1Source()
	dir := t.TempDir()
	s := newTestServerWith(t, withTarget2(dir))
	m := scan(t, src, tinyParams())
	a := s.mustDial(sharedHello("vol", m.Size))
	b, err := a.openRound(sharedHello("vol2", m.Size))
	if err != nil {
		t.Fatal(err)
	}
	for k := range 2 { // b's HELLO announced 1
		st, err := b.sess.Open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(transport.DataOpen{Stream: uint16(k), Control: b.control}); err != nil {
			t.Fatal(err)
		}
	}
	if re := awaitRemoteError(t, b); re.Code != transport.ErrCodeProtocol || !strings.Contains(re.Message, "more data streams") {
		t.Fatalf("round b: %v, want ERROR 1 for its extra data stream", re)
	}
	if _, err := a.round(src, m, sendFull(m)); err != nil {
		t.Fatalf("round a after b failed: %v", err)
	}
	s.assertTarget(src)
}

// TestSessionOneRoundWithoutShare: a HELLO that does not ask to share
// (with or without a group) gets a WELCOME without the rounds trailer, and
// a second HELLO on its session ERROR 4 on that stream only, while the
// first round commits as it always did.
func TestSessionOneRoundWithoutShare(t *testing.T) {
	src := gen1Source()
	dir := t.TempDir()
	s := newTestServerWith(t, withTarget2(dir))
	m := scan(t, src, tinyParams())
	h := hello(m.Size, m.Params, "img-1")
	h.Group = &transport.Group{Name: "grp", Members: 2}
	a := s.mustDial(h)
	if a.welcome.Rounds != 0 {
		t.Fatalf("WELCOME to a HELLO not asking to share carries the rounds trailer (%d)", a.welcome.Rounds)
	}
	if _, err := a.openRound(sharedHello("vol2", m.Size)); remote(t, err).Code != transport.ErrCodeBusy {
		t.Fatalf("a second round on an unshared session: %v, want ERROR 4", err)
	}
	if _, err := a.round(src, m, sendFull(m)); err != nil {
		t.Fatalf("the session's round: %v", err)
	}
	s.assertTarget(src)
}

// TestSessionMaxRoundsOne: a receiver configured for one round per session
// never offers more.
func TestSessionMaxRoundsOne(t *testing.T) {
	src := gen1Source()
	s := newTestServerWith(t, func(c *Config) { c.MaxRounds = 1 })
	m := scan(t, src, tinyParams())
	a := s.mustDial(sharedHello("vol", m.Size))
	if a.welcome.Rounds != 0 || a.control != 0 {
		t.Fatalf("MaxRounds 1: WELCOME allows %d rounds", a.welcome.Rounds)
	}
	if _, err := a.round(src, m, sendFull(m)); err != nil {
		t.Fatal(err)
	}
}

// TestSessionLossEndsAllRounds: the loss of a shared session ends every
// round on it and releases their volumes: each takes a new round.
func TestSessionLossEndsAllRounds(t *testing.T) {
	src := gen1Source()
	dir := t.TempDir()
	s := newTestServerWith(t, withTarget2(dir))
	m := scan(t, src, tinyParams())
	a := s.mustDial(sharedHello("vol", m.Size))
	b, err := a.openRound(sharedHello("vol2", m.Size))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*testAgent{a, b} { // half a manifest each
		if err := r.ctrl.Send(transport.ManifestBatch{Entries: m.Entries[:len(m.Entries)/2]}); err != nil {
			t.Fatal(err)
		}
	}
	a.sess.Close()
	for _, v := range []string{"vol", "vol2"} {
		h := hello(m.Size, m.Params, "img-2")
		h.Volume = v
		var next *testAgent
		for range 200 { // the lost rounds release their volumes as they end
			n, err := s.dial(h)
			if err == nil {
				next = n
				break
			}
			if remote(t, err).Code != transport.ErrCodeBusy {
				t.Fatalf("%s after the session was lost: %v", v, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if next == nil {
			t.Fatalf("%s still busy after its session was lost", v)
		}
		if _, err := next.round(src, m, sendFull(m)); err != nil {
			t.Fatalf("%s: round after the lost session: %v", v, err)
		}
		next.sess.Close()
	}
}
