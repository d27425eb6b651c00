package receiver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/transport"
)

// The tests in this file drive a real Server over loopback with a scripted
// agent speaking protocol 2: BASE_GET, MANIFEST_COPY and the image
// identity recorded with each generation.

// safety bounds a wait for the receiver: it only turns a hang into a
// failure, nothing is measured with it.
const safety = 90 * time.Second

// tinyParams cut small chunks, so that a few MiB make thousands of entries.
func tinyParams() chunk.Params {
	p := chunk.DefaultParams()
	p.MinSize, p.AvgSize, p.MaxSize, p.SegmentSize = 4<<10, 4<<10, 16<<10, 1<<20
	return p
}

// testServer is a receiver serving one volume "vol" on loopback.
type testServer struct {
	t       *testing.T
	cfg     Config
	target  string
	addr    string
	cancel  context.CancelFunc
	done    chan error
	mu      sync.Mutex
	results []Result // what OnCommit saw
	// agentWindow, if set, is the stream window of the agents dialled.
	agentWindow uint32
}

func newTestServer(t *testing.T) *testServer { t.Helper(); return newTestServerWith(t, nil) }

// newTestServerWith is newTestServer with its configuration changed by mod.
func newTestServerWith(t *testing.T, mod func(*Config)) *testServer {
	t.Helper()
	dir := t.TempDir()
	s := &testServer{t: t, target: filepath.Join(dir, "target.img")}
	tc := transport.DefaultConfig()
	tc.Insecure = true
	s.cfg = Config{
		Targets: map[string]string{"vol": s.target}, StateDir: filepath.Join(dir, "state"), Transport: tc, Name: "test-receiver",
		Logger: slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		OnCommit: func(_ string, _ transport.Identity, r Result) {
			s.mu.Lock()
			s.results = append(s.results, r)
			s.mu.Unlock()
		},
	}
	if mod != nil {
		mod(&s.cfg)
	}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *testServer) start() {
	s.t.Helper()
	srv, err := New(s.cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan error, 1)
	go func() { s.done <- srv.Serve(ctx, ln) }()
}

func (s *testServer) stop() {
	if s.cancel != nil {
		s.cancel()
		if err := <-s.done; err != nil {
			s.t.Errorf("receiver: %v", err)
		}
		s.cancel = nil
	}
}

func (s *testServer) lastResult() Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.results) == 0 {
		s.t.Fatal("no commit seen")
	}
	return s.results[len(s.results)-1]
}

func (s *testServer) status() *VolumeStatus {
	s.t.Helper()
	vs, err := ReadStatus(s.cfg.StateDir, "vol")
	if err != nil {
		s.t.Fatal(err)
	}
	return vs
}

// assertTarget checks the target holds want.
func (s *testServer) assertTarget(want []byte) {
	s.t.Helper()
	got, err := os.ReadFile(s.target)
	if err != nil {
		s.t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		s.t.Fatalf("target differs from the source (%d vs %d bytes)", len(got), len(want))
	}
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// testAgent is a scripted agent: a real transport session whose frames
// the test chooses.
type testAgent struct {
	t       *testing.T
	sess    *transport.Session
	ctrl    *transport.Stream
	welcome transport.Welcome
	// control is what DATA_OPEN names: the control stream's ID after a
	// WELCOME with the rounds trailer, 0 (no trailer) otherwise.
	control uint32
}

func hello(size uint64, p chunk.Params, image string) transport.Hello {
	return transport.Hello{Version: transport.ProtocolVersion, Volume: "vol", Size: size, Params: p, Streams: 1, Agent: "test-agent", Image: image}
}

// dial opens a session and says h; it returns the receiver's ERROR for a
// refused HELLO.
func (s *testServer) dial(h transport.Message) (*testAgent, error) {
	s.t.Helper()
	tc := transport.DefaultConfig()
	tc.Insecure = true
	if s.agentWindow != 0 {
		tc.StreamWindow = s.agentWindow
	}
	sess, err := transport.Dial(s.t.Context(), s.addr, tc)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { sess.Close() })
	ctrl, err := sess.Open(s.t.Context())
	if err != nil {
		s.t.Fatal(err)
	}
	if err := ctrl.Send(h); err != nil {
		s.t.Fatal(err)
	}
	m, err := ctrl.RecvWithin(safety, "WELCOME")
	if err != nil {
		return nil, err
	}
	w, ok := m.(transport.Welcome)
	if !ok {
		s.t.Fatalf("HELLO answered with %v", m.FrameType())
	}
	a := &testAgent{t: s.t, sess: sess, ctrl: ctrl, welcome: w}
	if w.Rounds != 0 {
		a.control = ctrl.ID()
	}
	return a, nil
}

func (s *testServer) mustDial(h transport.Hello) *testAgent {
	s.t.Helper()
	a, err := s.dial(h)
	if err != nil {
		s.t.Fatalf("HELLO: %v", err)
	}
	return a
}

// baseGet asks for the base manifest and reads the answer.
func (a *testAgent) baseGet(root chunk.ID) ([]chunk.Entry, transport.ManifestEnd, error) {
	if err := a.ctrl.Send(transport.BaseGet{Root: root}); err != nil {
		return nil, transport.ManifestEnd{}, err
	}
	var entries []chunk.Entry
	for {
		m, err := a.ctrl.RecvWithin(safety, "base manifest")
		if err != nil {
			return nil, transport.ManifestEnd{}, err
		}
		switch m := m.(type) {
		case transport.ManifestBatch:
			if len(m.Entries) > baseBatch {
				a.t.Fatalf("a MANIFEST frame of %d entries answering BASE_GET, want at most %d", len(m.Entries), baseBatch)
			}
			entries = append(entries, m.Entries...)
		case transport.ManifestEnd:
			return entries, m, nil
		default:
			a.t.Fatalf("BASE_GET answered with %v", m.FrameType())
		}
	}
}

// round plays the rest of a round: it opens a data stream, runs send (the
// manifest frames), answers every NEED from src with m's entries and
// returns the RESULT, or the receiver's ERROR.
func (a *testAgent) round(src []byte, m *chunk.Manifest, send func(ctrl *transport.Stream) error) (transport.Result, error) {
	data, err := a.sess.Open(a.t.Context())
	if err != nil {
		a.t.Fatal(err)
	}
	if err := data.Send(transport.DataOpen{Stream: 0, Control: a.control}); err != nil {
		a.t.Fatal(err)
	}
	type outcome struct {
		r   transport.Result
		err error
	}
	out := make(chan outcome, 1)
	go func() {
		for {
			msg, err := a.ctrl.RecvWithin(safety, "NEED or RESULT")
			if err != nil {
				out <- outcome{err: err}
				return
			}
			switch msg := msg.(type) {
			case transport.Need:
				for _, r := range msg.Ranges {
					for i := r.First; i < r.First+uint64(r.Count); i++ {
						e := m.Entries[i]
						if err := data.Send(transport.Chunk{Index: i, RawLen: uint32(e.Length), Data: src[e.Offset:e.End()]}); err != nil {
							out <- outcome{err: err}
							return
						}
					}
				}
			case transport.NeedEnd:
				data.CloseWrite()
			case transport.Result:
				out <- outcome{r: msg}
				return
			default:
				out <- outcome{err: fmt.Errorf("unexpected %v", msg.FrameType())}
				return
			}
		}
	}()
	if err := send(a.ctrl); err != nil {
		return transport.Result{}, err
	}
	o := <-out
	return o.r, o.err
}

// sendFull sends m whole, in MANIFEST frames.
func sendFull(m *chunk.Manifest) func(*transport.Stream) error {
	return func(ctrl *transport.Stream) error {
		for k := 0; k < len(m.Entries); k += 1000 {
			if err := ctrl.Send(transport.ManifestBatch{Entries: m.Entries[k:min(k+1000, len(m.Entries))]}); err != nil {
				return err
			}
		}
		return ctrl.Send(transport.ManifestEnd{Count: uint64(len(m.Entries)), Root: m.Root})
	}
}

// delta is m as the agent sends it against base: runs of entries equal to
// base entries as MANIFEST_COPY, the rest literally.
func delta(base []chunk.Entry, m *chunk.Manifest) []transport.Message {
	at := make(map[chunk.Entry]uint64, len(base))
	for i, e := range base {
		at[e] = uint64(i)
	}
	var out []transport.Message
	var lit []chunk.Entry
	flush := func() {
		if len(lit) > 0 {
			out = append(out, transport.ManifestBatch{Entries: lit})
			lit = nil
		}
	}
	for _, e := range m.Entries {
		i, ok := at[e]
		if !ok {
			lit = append(lit, e)
			continue
		}
		flush()
		if n := len(out); n > 0 {
			if c, ok := out[n-1].(transport.ManifestCopy); ok && c.First+c.Count == i {
				c.Count++
				out[n-1] = c
				continue
			}
		}
		out = append(out, transport.ManifestCopy{First: i, Count: 1})
	}
	flush()
	return append(out, transport.ManifestEnd{Count: uint64(len(m.Entries)), Root: m.Root})
}

func sendAll(ms []transport.Message) func(*transport.Stream) error {
	return func(ctrl *transport.Stream) error {
		for _, m := range ms {
			if err := ctrl.Send(m); err != nil {
				return err
			}
		}
		return nil
	}
}

func scan(t *testing.T, src []byte, p chunk.Params) *chunk.Manifest {
	t.Helper()
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(src), uint64(len(src)), p, chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// gen1Source is 24 MiB of random data with a zero run in it: about 2900
// entries with tinyParams, so the base takes more than one frame.
func gen1Source() []byte {
	src := randBytes(201, 24*MiB)
	clear(src[5*MiB : 6*MiB])
	return src
}

// gen2Of changes a few small regions of src and grows it by 100 KiB.
func gen2Of(src []byte) []byte {
	b := append(bytes.Clone(src), randBytes(203, 100<<10)...)
	copy(b[1*MiB:], randBytes(202, 10<<10))
	copy(b[7*MiB+12345:], randBytes(204, 30<<10))
	clear(b[9*MiB : 9*MiB+64<<10])
	return b
}

// committed returns a server whose target holds gen1 of src, sent with
// image "img-1".
func committed(t *testing.T, src []byte) (*testServer, *chunk.Manifest) {
	t.Helper()
	return committedWith(t, src, nil)
}

func committedWith(t *testing.T, src []byte, mod func(*Config)) (*testServer, *chunk.Manifest) {
	t.Helper()
	s := newTestServerWith(t, mod)
	m := scan(t, src, tinyParams())
	a := s.mustDial(hello(m.Size, m.Params, "img-1"))
	if a.welcome.HasBase || a.welcome.Generation != 0 || a.welcome.State != transport.TargetNew {
		t.Fatalf("WELCOME for a new target: %+v", a.welcome)
	}
	r, err := a.round(src, m, sendFull(m))
	if err != nil {
		t.Fatalf("first round: %v", err)
	}
	if r.Generation != 1 || r.Root != m.Root {
		t.Fatalf("first round committed generation %d root %s, want 1 %s", r.Generation, r.Root.Short(), m.Root.Short())
	}
	a.sess.Close()
	s.assertTarget(src)
	return s, m
}

// TestBaseGet: BASE_GET returns exactly the committed manifest, in
// frames of at most 2048 entries, and WELCOME names its size and image.
func TestBaseGet(t *testing.T) {
	src := gen1Source()
	s, m1 := committed(t, src)
	if len(m1.Entries) <= baseBatch {
		t.Fatalf("only %d entries: the base must take more than one frame", len(m1.Entries))
	}
	src2 := gen2Of(src)
	a := s.mustDial(hello(uint64(len(src2)), tinyParams(), "img-2"))
	w := a.welcome
	if !w.HasBase || w.Generation != 1 || w.Root != m1.Root || w.State != transport.TargetCommitted || w.Size != m1.Size || w.Image != "img-1" {
		t.Fatalf("WELCOME %+v, want generation 1, root %s, size %d, image img-1, with a base", w, m1.Root.Short(), m1.Size)
	}
	entries, end, err := a.baseGet(w.Root)
	if err != nil {
		t.Fatalf("BASE_GET: %v", err)
	}
	got := chunk.Manifest{Params: tinyParams(), Size: w.Size, Entries: entries}
	if err := got.Build(); err != nil {
		t.Fatalf("the base does not build: %v", err)
	}
	if got.Root != w.Root || end.Root != w.Root || end.Count != uint64(len(entries)) {
		t.Fatalf("base root %s (MANIFEST_END %d entries, root %s), WELCOME's %s", got.Root.Short(), end.Count, end.Root.Short(), w.Root.Short())
	}
	if !reflect.DeepEqual(entries, m1.Entries) {
		t.Fatal("the base's entries are not the committed manifest's")
	}
	// The session goes on: the manifest sent against the base commits.
	m2 := scan(t, src2, tinyParams())
	r, err := a.round(src2, m2, sendAll(delta(entries, m2)))
	if err != nil {
		t.Fatalf("round after BASE_GET: %v", err)
	}
	if r.Generation != 2 || r.Root != m2.Root {
		t.Fatalf("committed generation %d root %s, want 2 %s", r.Generation, r.Root.Short(), m2.Root.Short())
	}
	s.assertTarget(src2)
}

// TestManifestCopyRound: a manifest sent as MANIFEST_COPY ranges and
// literal batches commits the same root and bytes as the same manifest
// sent whole; the image is recorded with the generation, survives a
// restart and is named in the next WELCOME.
func TestManifestCopyRound(t *testing.T) {
	src := gen1Source()
	src2 := gen2Of(src)
	m2 := scan(t, src2, tinyParams())

	full, _ := committed(t, src)
	a := full.mustDial(hello(m2.Size, m2.Params, "img-2"))
	rFull, err := a.round(src2, m2, sendFull(m2))
	if err != nil {
		t.Fatalf("full manifest: %v", err)
	}
	if r := full.lastResult(); r.ManifestCopied != 0 || r.ManifestLiteral != uint64(len(m2.Entries)) {
		t.Fatalf("full manifest counted %d literal, %d copied entries, want %d, 0", r.ManifestLiteral, r.ManifestCopied, len(m2.Entries))
	}

	s, m1 := committed(t, src)
	a = s.mustDial(hello(m2.Size, m2.Params, "img-2"))
	if !a.welcome.HasBase {
		t.Fatalf("WELCOME %+v without a base", a.welcome)
	}
	msgs := delta(m1.Entries, m2)
	var copies, literal int
	for _, m := range msgs {
		switch m := m.(type) {
		case transport.ManifestCopy:
			copies += int(m.Count)
		case transport.ManifestBatch:
			literal += len(m.Entries)
		}
	}
	if copies == 0 || literal == 0 || copies < 10*literal {
		t.Fatalf("the delta copies %d and sends %d entries: the test wants mostly copies and some literals", copies, literal)
	}
	rDelta, err := a.round(src2, m2, sendAll(msgs))
	if err != nil {
		t.Fatalf("delta manifest: %v", err)
	}
	if rDelta.Root != rFull.Root || rDelta.Root != m2.Root || rDelta.Generation != rFull.Generation {
		t.Fatalf("delta committed generation %d root %s, full %d %s", rDelta.Generation, rDelta.Root.Short(), rFull.Generation, rFull.Root.Short())
	}
	if rDelta.Fetched != rFull.Fetched || rDelta.Skipped != rFull.Skipped {
		t.Fatalf("delta round fetched %d skipped %d, the full one %d %d", rDelta.Fetched, rDelta.Skipped, rFull.Fetched, rFull.Skipped)
	}
	s.assertTarget(src2)
	full.assertTarget(src2)
	if r := s.lastResult(); r.ManifestCopied != uint64(copies) || r.ManifestLiteral != uint64(literal) {
		t.Fatalf("counted %d literal, %d copied entries, want %d, %d", r.ManifestLiteral, r.ManifestCopied, literal, copies)
	}
	a.sess.Close()

	vs := s.status()
	if vs.Image != "img-2" || len(vs.History) != 2 || vs.History[0].Image != "img-1" || vs.History[1].Image != "img-2" {
		t.Fatalf("status image %q, history %+v: want img-2, and img-1 then img-2", vs.Image, vs.History)
	}
	s.stop()
	s.start()
	a = s.mustDial(hello(m2.Size, m2.Params, "img-3"))
	if w := a.welcome; w.Image != "img-2" || w.Size != m2.Size || w.Generation != 2 || w.Root != m2.Root || !w.HasBase {
		t.Fatalf("WELCOME after a restart: %+v, want generation 2, size %d, image img-2, with a base", w, m2.Size)
	}
}

// TestHostileV2: an agent breaks the rules of BASE_GET or MANIFEST_COPY
// after WELCOME. The receiver answers a clear ERROR 1, and the target is
// as it was: same bytes, same committed generation, root and image.
func TestHostileV2(t *testing.T) {
	src := gen1Source()
	src2 := gen2Of(src)
	m2 := scan(t, src2, tinyParams())
	other := tinyParams().WithSizes(4<<10, 8<<10, 32<<10)
	n1 := len(scan(t, src, tinyParams()).Entries)
	cases := []struct {
		name   string
		params chunk.Params
		base   bool   // WELCOME must offer a base
		size   uint64 // HELLO's size; 0: the source's
		run    func(t *testing.T, a *testAgent, m1 *chunk.Manifest) error
		want   string
	}{
		{"copy without a base", other, false, 0, func(t *testing.T, a *testAgent, m1 *chunk.Manifest) error {
			return a.ctrl.Send(transport.ManifestCopy{First: 0, Count: 10})
		}, "holds no base manifest"},
		{"BASE_GET without a base", other, false, 0, func(t *testing.T, a *testAgent, m1 *chunk.Manifest) error {
			return a.ctrl.Send(transport.BaseGet{Root: m1.Root})
		}, "holds no base manifest"},
		{"copy out of range", tinyParams(), true, 0, func(t *testing.T, a *testAgent, m1 *chunk.Manifest) error {
			return a.ctrl.Send(transport.ManifestCopy{First: 0, Count: uint64(len(m1.Entries)) + 1})
		}, fmt.Sprintf("but the committed manifest has %d entries", n1)},
		{"copy past the end", tinyParams(), true, 0, func(t *testing.T, a *testAgent, m1 *chunk.Manifest) error {
			return a.ctrl.Send(transport.ManifestCopy{First: uint64(len(m1.Entries)), Count: 1})
		}, fmt.Sprintf("but the committed manifest has %d entries", n1)},
		{"copy not contiguous", tinyParams(), true, 0, func(t *testing.T, a *testAgent, m1 *chunk.Manifest) error {
			return sendAll([]transport.Message{transport.ManifestCopy{First: 0, Count: 5}, transport.ManifestCopy{First: 6, Count: 5}})(a.ctrl)
		}, "copied entries must continue it"},
		{"copies beyond the manifest limit", tinyParams(), true, 1 << 20, func(t *testing.T, a *testAgent, m1 *chunk.Manifest) error {
			// A 1 MiB volume has at most 1 MiB/4 KiB + 1 + 1 entries.
			return a.ctrl.Send(transport.ManifestCopy{First: 0, Count: uint64(len(m1.Entries))})
		}, "manifest of more than 258 entries"},
		{"BASE_GET with a wrong root", tinyParams(), true, 0, func(t *testing.T, a *testAgent, m1 *chunk.Manifest) error {
			return a.ctrl.Send(transport.BaseGet{Root: chunk.Sum([]byte("another generation"))})
		}, "but the committed manifest's root is"},
		{"BASE_GET after a manifest frame", tinyParams(), true, 0, func(t *testing.T, a *testAgent, m1 *chunk.Manifest) error {
			if err := a.ctrl.Send(transport.ManifestBatch{Entries: m2.Entries[:1]}); err != nil {
				return err
			}
			return a.ctrl.Send(transport.BaseGet{Root: m1.Root})
		}, "BASE_GET after the manifest began"},
		{"BASE_GET after MANIFEST_COPY", tinyParams(), true, 0, func(t *testing.T, a *testAgent, m1 *chunk.Manifest) error {
			if err := a.ctrl.Send(transport.ManifestCopy{First: 0, Count: 1}); err != nil {
				return err
			}
			return a.ctrl.Send(transport.BaseGet{Root: m1.Root})
		}, "BASE_GET after the manifest began"},
		{"second BASE_GET", tinyParams(), true, 0, func(t *testing.T, a *testAgent, m1 *chunk.Manifest) error {
			if _, _, err := a.baseGet(m1.Root); err != nil {
				return err
			}
			return a.ctrl.Send(transport.BaseGet{Root: m1.Root})
		}, "second BASE_GET"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, m1 := committed(t, src)
			size := tc.size
			if size == 0 {
				size = uint64(len(src))
			}
			a := s.mustDial(hello(size, tc.params, "hostile"))
			if a.welcome.HasBase != tc.base {
				t.Fatalf("WELCOME HasBase %v, want %v", a.welcome.HasBase, tc.base)
			}
			if err := tc.run(t, a, m1); err != nil {
				t.Fatalf("send: %v", err)
			}
			re := awaitRemoteError(t, a)
			if re.Code != transport.ErrCodeProtocol || !strings.Contains(re.Message, tc.want) {
				t.Fatalf("ERROR %d %q: want code 1 (protocol) saying %q", re.Code, re.Message, tc.want)
			}
			a.sess.Close()
			s.stop() // the session is over once Serve returned
			s.assertTarget(src)
			vs := s.status()
			if vs.Generation != 1 || vs.Root != m1.Root.String() || vs.Image != "img-1" {
				t.Fatalf("after a hostile session: generation %d root %s image %q", vs.Generation, vs.Root, vs.Image)
			}
		})
	}
}

// awaitRemoteError reads the control stream until the receiver's ERROR.
func awaitRemoteError(t *testing.T, a *testAgent) *transport.RemoteError {
	t.Helper()
	for {
		_, err := a.ctrl.RecvWithin(safety, "ERROR")
		var re *transport.RemoteError
		if errors.As(err, &re) {
			return re
		}
		if err != nil {
			t.Fatalf("the receiver ended the session without an ERROR: %v", err)
		}
	}
}

// TestHasBase: WELCOME offers a base only while the round's index is the
// committed manifest for the HELLO's params.
func TestHasBase(t *testing.T) {
	src := gen1Source()
	t.Run("params differ", func(t *testing.T) {
		s, m1 := committed(t, src)
		a := s.mustDial(hello(m1.Size, tinyParams().WithSizes(4<<10, 8<<10, 32<<10), "x"))
		if w := a.welcome; w.HasBase || w.Generation != 1 || w.Image != "img-1" {
			t.Fatalf("WELCOME %+v: want generation 1, image img-1, no base", w)
		}
	})
	t.Run("rescan pending", func(t *testing.T) {
		s, m1 := committed(t, src)
		vd := volumeDir{dir: filepath.Join(s.cfg.StateDir, "vol")}
		st, err := vd.loadState()
		if err != nil {
			t.Fatal(err)
		}
		st.Rescan = "a test says so"
		if err := vd.saveState(st); err != nil {
			t.Fatal(err)
		}
		a := s.mustDial(hello(m1.Size, m1.Params, "x"))
		if w := a.welcome; w.HasBase || w.Generation != 1 || w.State != transport.TargetCommitted {
			t.Fatalf("WELCOME %+v: want generation 1 without a base", w)
		}
	})
	t.Run("changed outside voldelta", func(t *testing.T) {
		s, m1 := committed(t, src)
		tamper(t, s.target, 100, 10, false)
		a := s.mustDial(hello(m1.Size, m1.Params, "x"))
		if a.welcome.HasBase {
			t.Fatalf("WELCOME %+v offers a base over a rescanned index", a.welcome)
		}
	})
	t.Run("interrupted apply", func(t *testing.T) {
		s, m1 := committed(t, src)
		a := s.mustDial(hello(m1.Size, m1.Params, "x"))
		if !a.welcome.HasBase {
			t.Fatalf("WELCOME %+v without a base", a.welcome)
		}
		a.sess.Close() // after WELCOME: the round began and is left incomplete
		s.stop()
		s.start()
		a = s.mustDial(hello(m1.Size, m1.Params, "x"))
		if w := a.welcome; w.HasBase || w.State != transport.TargetIncomplete || w.Generation != 1 || w.Image != "img-1" {
			t.Fatalf("WELCOME %+v: want an incomplete generation 1 of img-1 without a base", w)
		}
		// A full manifest still commits, and the base is back.
		if _, err := a.round(src, m1, sendFull(m1)); err != nil {
			t.Fatal(err)
		}
		a.sess.Close()
		a = s.mustDial(hello(m1.Size, m1.Params, "y"))
		if w := a.welcome; !w.HasBase || w.Generation != 2 || w.Image != "x" {
			t.Fatalf("WELCOME %+v: want generation 2 of image x with a base", w)
		}
	})
	t.Run("committedBase checks the root", func(t *testing.T) {
		m := scan(t, src, tinyParams())
		if committedBase(m.Entries, m.Params, m.Size, m.Root) == nil {
			t.Fatal("no base from the manifest itself")
		}
		if committedBase(m.Entries, m.Params, m.Size, chunk.Sum([]byte("x"))) != nil {
			t.Fatal("a base under another root")
		}
		if committedBase(m.Entries[:len(m.Entries)-1], m.Params, m.Size, m.Root) != nil {
			t.Fatal("a base from a short manifest")
		}
		if committedBase(m.Entries, m.Params.WithSizes(4<<10, 8<<10, 32<<10), m.Size, m.Root) != nil {
			t.Fatal("a base under other params")
		}
	})
}

// rawFrame is a frame of type t with payload p, whatever they are.
type rawFrame struct {
	t transport.FrameType
	p []byte
}

func (f rawFrame) FrameType() transport.FrameType  { return f.t }
func (f rawFrame) AppendPayload(dst []byte) []byte { return append(dst, f.p...) }

// TestVersionMismatch: an agent of protocol 1 is told clearly that the
// versions differ, and nothing is claimed.
func TestVersionMismatch(t *testing.T) {
	src := gen1Source()
	s, m1 := committed(t, src)
	// A protocol-1 HELLO as such an agent encodes it: no image field.
	v1 := hello(uint64(len(src)), tinyParams(), "")
	v1.Version = 1
	b := v1.AppendPayload(nil)
	_, err := s.dial(rawFrame{transport.FrameHello, b[:len(b)-1]})
	var re *transport.RemoteError
	if !errors.As(err, &re) || re.Code != transport.ErrCodeVersion || re.Code.Retryable() ||
		!strings.Contains(re.Message, "agent speaks 1, receiver speaks 2") {
		t.Fatalf("a v1 HELLO answered %v, want ERROR 2 naming both versions", err)
	}
	if vs := s.status(); !vs.Current || vs.Generation != 1 || vs.Root != m1.Root.String() {
		t.Fatalf("a refused HELLO changed the target's state: %+v", vs)
	}
}

// TestImageNotUTF8: an image identity the state file could not keep
// unchanged is refused before anything is claimed.
func TestImageNotUTF8(t *testing.T) {
	src := gen1Source()
	s, m1 := committed(t, src)
	_, err := s.dial(hello(m1.Size, m1.Params, "snap-\xff"))
	var re *transport.RemoteError
	if !errors.As(err, &re) || re.Code != transport.ErrCodeProtocol || !strings.Contains(re.Message, "not valid UTF-8") {
		t.Fatalf("HELLO with a non-UTF-8 image answered %v, want ERROR 1 saying so", err)
	}
	if vs := s.status(); !vs.Current || vs.Generation != 1 || vs.Image != "img-1" {
		t.Fatalf("a refused HELLO changed the target's state: %+v", vs)
	}
}

// stateBeforeImages is a state.json as the receiver wrote it before
// generations recorded their image (protocol 1): its checksum was computed
// without the image field.
const stateBeforeImages = `{
  "volume": "vol",
  "target": "/dev/x",
  "phase": "committed",
  "generation": 3,
  "root": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
  "size": 1048576,
  "committed_at": "2023-11-14T22:13:20Z",
  "params": {
    "Algorithm": "rabin-seg/blake3/v1",
    "Polynomial": 17349423945073011,
    "MinSize": 16384,
    "AvgSize": 65536,
    "MaxSize": 262144,
    "SegmentSize": 4194304
  },
  "extents": "extents-00.bin",
  "history": [
    {
      "generation": 3,
      "root": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
      "size": 1048576,
      "at": "2023-11-14T22:13:20Z"
    }
  ],
  "updated": "2023-11-14T22:13:21Z",
  "checksum": "45c853a5b7ac46f1587ea546222b7cfd113e208de2eed0cc05f5fcfb134f2181"
}`

// TestStateBeforeImagesLoads: upgrading the receiver keeps every volume's
// state readable (an empty image is left out of the checksummed JSON), and
// an image recorded later is checksummed and read back.
func TestStateBeforeImagesLoads(t *testing.T) {
	st, err := decodeState([]byte(stateBeforeImages))
	if err != nil {
		t.Fatalf("a state written before images does not load: %v", err)
	}
	if st.Generation != 3 || st.Image != "" || st.History[0].Image != "" {
		t.Fatalf("decoded %+v", st)
	}
	vd := volumeDir{dir: t.TempDir()}
	st.Image, st.History[0].Image = "snap-3", "snap-3"
	if err := vd.saveState(st); err != nil {
		t.Fatal(err)
	}
	got, err := vd.loadState()
	if err != nil {
		t.Fatal(err)
	}
	if got.Image != "snap-3" || got.History[0].Image != "snap-3" {
		t.Fatalf("image %q, history %+v after a reload", got.Image, got.History)
	}
}

// TestBaseGetNotRead: an agent that asks for the base and does not read
// it (the control stream's window fills) does not hold the volume: the
// frame not taken within the idle timeout ends the session, and the next
// round commits.
func TestBaseGetNotRead(t *testing.T) {
	src := randBytes(210, 64*MiB) // about 8000 entries: the base is more than the 256 KiB window
	s, m1 := committedWith(t, src, func(c *Config) {
		c.Transport.IdleTimeout = time.Second
		c.Transport.WriteTimeout = time.Second
	})
	if n := len(m1.Entries) * chunk.EntrySize; n < 300<<10 {
		t.Fatalf("the base is %d bytes: too small to fill the window", n)
	}
	s.agentWindow = 256 << 10 // what it lets the receiver send before it reads
	a := s.mustDial(hello(m1.Size, m1.Params, "img-2"))
	if !a.welcome.HasBase {
		t.Fatalf("WELCOME %+v without a base", a.welcome)
	}
	if err := a.ctrl.Send(transport.BaseGet{Root: a.welcome.Root}); err != nil {
		t.Fatal(err)
	}
	select { // the receiver ends the session
	case <-a.sess.Done():
	case <-time.After(safety):
		t.Fatal("the receiver still holds a session whose agent does not read")
	}
	b := s.mustDial(hello(m1.Size, m1.Params, "img-2"))
	if w := b.welcome; w.Generation != 1 || w.State != transport.TargetIncomplete {
		t.Fatalf("WELCOME %+v after the abandoned round: want generation 1, incomplete", w)
	}
	r, err := b.round(src, m1, sendFull(m1))
	if err != nil || r.Generation != 2 || r.Root != m1.Root {
		t.Fatalf("the next round: %+v, %v", r, err)
	}
	s.assertTarget(src)
}
