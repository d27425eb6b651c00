package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/receiver"
	"github.com/voldelta/voldelta/transport"
)

// The tests in this file drive the real receiver with a scripted agent,
// and the real agent with a scripted receiver, over real TLS sockets.
// Every session must end with a clear error, and no hostile agent may
// leave the target reported current with bytes it did not verify.

// safetyWait bounds a wait for the peer's answer: it only turns a hang
// into a failure, the tests measure nothing with it.
const safetyWait = 90 * time.Second

// fakeAgent is a raw yamux session to the receiver, over the pair's TLS,
// on which a test writes whatever bytes it likes.
type fakeAgent struct {
	t   *testing.T
	mux *yamux.Session
}

func dialFakeAgent(t *testing.T, p *pair) *fakeAgent {
	t.Helper()
	var c net.Conn
	var err error
	if p.agentTLS != nil {
		tc := p.agentTLS.Clone()
		tc.ServerName = "127.0.0.1"
		c, err = tls.Dial("tcp", p.addr, tc)
	} else {
		c, err = net.Dial("tcp", p.addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	mux, err := yamux.Client(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mux.Close() })
	return &fakeAgent{t: t, mux: mux}
}

func (f *fakeAgent) open() *yamux.Stream {
	f.t.Helper()
	st, err := f.mux.OpenStream()
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}

// frame encodes m as one frame.
func frame(m transport.Message) []byte {
	b := transport.AppendFrameHeader(nil, m.FrameType(), 0)
	b = m.AppendPayload(b)
	transport.AppendFrameHeader(b[:0], m.FrameType(), len(b)-transport.HeaderSize)
	return b
}

func send(w io.Writer, ms ...transport.Message) error {
	for _, m := range ms {
		if _, err := w.Write(frame(m)); err != nil {
			return err
		}
	}
	return nil
}

// recvMsg reads the next message from a raw stream (an ERROR is returned
// as a *transport.RemoteError).
func recvMsg(st *yamux.Stream) (transport.Message, error) {
	st.SetReadDeadline(time.Now().Add(safetyWait))
	ty, p, err := transport.NewFrameReader(st, transport.DefaultMaxFrameSize).Next()
	if err != nil {
		return nil, err
	}
	m, err := transport.Decode(ty, p)
	if err != nil {
		return nil, err
	}
	if e, ok := m.(transport.ErrorMsg); ok {
		return nil, &transport.RemoteError{Code: e.Code, Message: e.Message}
	}
	return m, nil
}

// awaitError reads control frames until the receiver's ERROR and returns it.
func awaitError(t *testing.T, ctrl *yamux.Stream) *transport.RemoteError {
	t.Helper()
	for {
		_, err := recvMsg(ctrl)
		var re *transport.RemoteError
		if errors.As(err, &re) {
			t.Logf("receiver answered: %v", re)
			return re
		}
		if err != nil {
			t.Fatalf("the receiver ended the session without an ERROR: %v", err)
		}
	}
}

func hostileHello(size uint64, streams uint16) transport.Hello {
	return transport.Hello{Version: transport.ProtocolVersion, Volume: "vol", Size: size, Params: chunk.DefaultParams(),
		Streams: streams, Agent: "hostile"}
}

// helloWelcome opens the control stream, says HELLO and expects WELCOME.
func (f *fakeAgent) helloWelcome(h transport.Hello) *yamux.Stream {
	f.t.Helper()
	ctrl := f.open()
	if err := send(ctrl, h); err != nil {
		f.t.Fatal(err)
	}
	m, err := recvMsg(ctrl)
	if err != nil {
		f.t.Fatalf("HELLO: %v", err)
	}
	if _, ok := m.(transport.Welcome); !ok {
		f.t.Fatalf("HELLO answered with %v", m.FrameType())
	}
	return ctrl
}

// committedPair is a receiver whose target holds generation 1 of base.
func committedPair(t *testing.T, mod func(*receiver.Config)) (*pair, []byte, *agent.Stats) {
	t.Helper()
	p := newPair(t, pairOpts{})
	if mod != nil {
		p.stop()
		mod(&p.srvCfg)
		p.start()
	}
	base := randBytes(71, 4*MiB)
	src := filepath.Join(p.dir, "base.img")
	writeFile(t, src, base)
	st := p.sync(src, "vol")
	return p, base, st
}

// assertNotLying checks that the target still reports generation 1 with
// its root, and is not current unless the session never began an apply.
func assertNotLying(t *testing.T, p *pair, gen1 *agent.Stats, begun bool) {
	t.Helper()
	vs, err := receiver.ReadStatus(p.stateDir, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if vs.Generation != gen1.Generation || vs.Root != gen1.RootHash {
		t.Fatalf("after a hostile session: generation %d root %s, want generation %d root %s", vs.Generation, vs.Root, gen1.Generation, gen1.RootHash)
	}
	if begun && vs.Current {
		t.Fatal("target reported current after a hostile session wrote into it")
	}
}

// modified returns base with its first 64 KiB replaced, and its manifest.
func modified(t *testing.T, base []byte) ([]byte, *chunk.Manifest) {
	data := append([]byte(nil), base...)
	copy(data, randBytes(72, 64<<10))
	m, _, err := chunk.ScanManifest(context.Background(), bytes.NewReader(data), uint64(len(data)), chunk.DefaultParams(), chunk.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return data, m
}

// A scripted agent breaks the protocol after HELLO; the receiver must end
// the session with the ERROR named, and the target must not be current.
func TestHostileAgent(t *testing.T) {
	cases := []struct {
		name string
		code transport.ErrorCode
		want string
		// run plays the agent after WELCOME.
		run func(t *testing.T, f *fakeAgent, ctrl *yamux.Stream, data []byte, m *chunk.Manifest)
	}{
		{"DATA before the manifest", transport.ErrCodeProtocol, "not a data entry of the manifest",
			func(t *testing.T, f *fakeAgent, ctrl *yamux.Stream, data []byte, m *chunk.Manifest) {
				e := m.Entries[0]
				send(f.open(), transport.DataOpen{}, transport.Chunk{Index: 0, RawLen: uint32(e.Length), Data: data[e.Offset:e.End()]})
			}},
		{"unrequested CHUNK", transport.ErrCodeProtocol, "was not asked for",
			func(t *testing.T, f *fakeAgent, ctrl *yamux.Stream, data []byte, m *chunk.Manifest) {
				send(ctrl, transport.ManifestBatch{Entries: m.Entries})
				needs := awaitNeed(t, ctrl)
				last := uint64(len(m.Entries) - 1)
				if needs[last] {
					t.Fatal("the last chunk is unchanged, yet asked for")
				}
				e := m.Entries[last]
				send(f.open(), transport.DataOpen{}, transport.Chunk{Index: last, RawLen: uint32(e.Length), Data: data[e.Offset:e.End()]})
			}},
		{"duplicate CHUNK", transport.ErrCodeProtocol, "sent twice",
			func(t *testing.T, f *fakeAgent, ctrl *yamux.Stream, data []byte, m *chunk.Manifest) {
				send(ctrl, transport.ManifestBatch{Entries: m.Entries})
				i := firstNeed(awaitNeed(t, ctrl))
				e := m.Entries[i]
				c := transport.Chunk{Index: i, RawLen: uint32(e.Length), Data: data[e.Offset:e.End()]}
				send(f.open(), transport.DataOpen{}, c, c)
			}},
		{"mis-hashed CHUNK", transport.ErrCodeSourceChange, "does not hash to",
			func(t *testing.T, f *fakeAgent, ctrl *yamux.Stream, data []byte, m *chunk.Manifest) {
				send(ctrl, transport.ManifestBatch{Entries: m.Entries})
				i := firstNeed(awaitNeed(t, ctrl))
				e := m.Entries[i]
				bad := bytes.Clone(data[e.Offset:e.End()])
				bad[0] ^= 1
				send(f.open(), transport.DataOpen{}, transport.Chunk{Index: i, RawLen: uint32(e.Length), Data: bad})
			}},
		{"NEED from the agent", transport.ErrCodeProtocol, "unexpected NEED",
			func(t *testing.T, f *fakeAgent, ctrl *yamux.Stream, data []byte, m *chunk.Manifest) {
				send(ctrl, transport.ManifestBatch{Entries: m.Entries[:1]}, transport.Need{Ranges: []transport.IndexRange{{First: 0, Count: 1}}})
			}},
		{"more data streams than announced", transport.ErrCodeProtocol, "more data streams",
			func(t *testing.T, f *fakeAgent, ctrl *yamux.Stream, data []byte, m *chunk.Manifest) {
				for range 3 { // HELLO said 2
					send(f.open(), transport.DataOpen{})
				}
			}},
		{"manifest past the volume", transport.ErrCodeProtocol, "past the volume size",
			func(t *testing.T, f *fakeAgent, ctrl *yamux.Stream, data []byte, m *chunk.Manifest) {
				last := m.Entries[len(m.Entries)-1]
				send(ctrl, transport.ManifestBatch{Entries: append(slicesClone(m.Entries), chunk.Entry{Offset: last.End(), Length: 1, ID: chunk.Sum([]byte{1})})})
			}},
		{"MANIFEST_COPY past the committed manifest", transport.ErrCodeProtocol, "but the committed manifest has",
			func(t *testing.T, f *fakeAgent, ctrl *yamux.Stream, data []byte, m *chunk.Manifest) {
				send(ctrl, transport.ManifestCopy{First: 0, Count: 1 << 40})
			}},
		{"BASE_GET with another root", transport.ErrCodeProtocol, "but the committed manifest's root is",
			func(t *testing.T, f *fakeAgent, ctrl *yamux.Stream, data []byte, m *chunk.Manifest) {
				send(ctrl, transport.BaseGet{Root: m.Root})
			}},
		{"MANIFEST_END with another root", transport.ErrCodeProtocol, "root",
			func(t *testing.T, f *fakeAgent, ctrl *yamux.Stream, data []byte, m *chunk.Manifest) {
				send(ctrl, transport.ManifestBatch{Entries: m.Entries}, transport.ManifestEnd{Count: uint64(len(m.Entries)), Root: chunk.Sum([]byte("other"))})
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, base, gen1 := committedPair(t, nil)
			data, m := modified(t, base)
			f := dialFakeAgent(t, p)
			ctrl := f.helloWelcome(hostileHello(uint64(len(data)), 2))
			tc.run(t, f, ctrl, data, m)
			re := awaitError(t, ctrl)
			if re.Code != tc.code || !strings.Contains(re.Message, tc.want) {
				t.Errorf("ERROR %d %q: want code %d (%v) saying %q", re.Code, re.Message, tc.code, tc.code, tc.want)
			}
			f.mux.Close()
			assertNotLying(t, p, gen1, true)
		})
	}
}

func slicesClone(es []chunk.Entry) []chunk.Entry { return append([]chunk.Entry(nil), es...) }

// awaitNeed reads NEED frames until one arrives and returns the indexes asked.
func awaitNeed(t *testing.T, ctrl *yamux.Stream) map[uint64]bool {
	t.Helper()
	m, err := recvMsg(ctrl)
	if err != nil {
		t.Fatalf("waiting for NEED: %v", err)
	}
	n, ok := m.(transport.Need)
	if !ok {
		t.Fatalf("got %v, want NEED", m.FrameType())
	}
	out := make(map[uint64]bool)
	for _, r := range n.Ranges {
		for i := r.First; i < r.First+uint64(r.Count); i++ {
			out[i] = true
		}
	}
	return out
}

func firstNeed(n map[uint64]bool) uint64 {
	first := ^uint64(0)
	for i := range n {
		first = min(first, i)
	}
	return first
}

// Item 11: a HELLO cut short is a protocol error (code 1, not retryable),
// and nothing of the target is touched.
func TestTruncatedHello(t *testing.T) {
	p, _, gen1 := committedPair(t, nil)
	f := dialFakeAgent(t, p)
	ctrl := f.open()
	hello := frame(hostileHello(4*MiB, 1))
	ctrl.Write(hello[:len(hello)-5])
	ctrl.Close() // FIN inside the frame
	re := awaitError(t, ctrl)
	if re.Code != transport.ErrCodeProtocol || re.Code.Retryable() || !strings.Contains(re.Message, "truncated HELLO") {
		t.Fatalf("ERROR %d %q: want code 1 (protocol) naming the truncated HELLO", re.Code, re.Message)
	}
	vs, err := receiver.ReadStatus(p.stateDir, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if !vs.Current || vs.Generation != gen1.Generation {
		t.Fatalf("a truncated HELLO changed the target's state: current %v generation %d", vs.Current, vs.Generation)
	}
}

// Item 7: an agent that opens the control stream and says nothing, or says
// HELLO and then nothing, is answered within the configured deadlines (2 s
// here) and the volume is released: a real round then commits.
func TestSilentAgent(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		hello      bool
	}{
		{"no HELLO", "no HELLO", false},
		{"HELLO then nothing", "no MANIFEST after WELCOME", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, base, gen1 := committedPair(t, func(c *receiver.Config) {
				c.Transport.HandshakeTimeout = 2 * time.Second
				c.Transport.IdleTimeout = 2 * time.Second
			})
			f := dialFakeAgent(t, p)
			var ctrl *yamux.Stream
			if tc.hello {
				ctrl = f.helloWelcome(hostileHello(uint64(len(base)), 1))
			} else {
				ctrl = f.open()
				ctrl.Write(nil)
				send(ctrl) // nothing: yamux opens the stream with its first window update
			}
			re := awaitError(t, ctrl)
			if re.Code != transport.ErrCodeProtocol || !strings.Contains(re.Message, tc.want) || !strings.Contains(re.Message, "2s") {
				t.Fatalf("ERROR %d %q: want code 1 saying %q within 2s", re.Code, re.Message, tc.want)
			}
			assertNotLying(t, p, gen1, tc.hello)
			// The volume is free again: a real round commits generation 2.
			data, _ := modified(t, base)
			src := filepath.Join(p.dir, "next.img")
			writeFile(t, src, data)
			st := p.sync(src, "vol")
			if st.Generation != gen1.Generation+1 {
				t.Fatalf("next round committed generation %d", st.Generation)
			}
		})
	}
}

// heapProbe measures the live heap of this process (the receiver runs in
// it; the hostile client's own memory is small: it writes from one shared
// buffer).
type heapProbe struct {
	base uint64
	peak atomic.Uint64
	stop chan struct{}
	done chan struct{}
}

func newHeapProbe() *heapProbe {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	h := &heapProbe{base: ms.HeapInuse, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-tick.C:
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > h.peak.Load() {
					h.peak.Store(ms.HeapInuse)
				}
			}
		}
	}()
	return h
}

// held returns the live heap above the baseline (after a GC) and the peak
// heap in use above it (garbage included).
func (h *heapProbe) held() (live, peak int64) {
	close(h.stop)
	<-h.done
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse) - int64(h.base), int64(h.peak.Load()) - int64(h.base)
}

// settle waits until the counter stops moving: the hostile writers are all
// blocked on windows the receiver no longer opens.
func settle(n *atomic.Int64) {
	last, still := n.Load(), 0
	for still < 10 {
		time.Sleep(100 * time.Millisecond)
		if v := n.Load(); v == last {
			still++
		} else {
			last, still = v, 0
		}
	}
}

// countingWriter counts what it wrote.
func writeCounted(w io.Writer, b []byte, n *atomic.Int64) error {
	for len(b) > 0 {
		k := min(len(b), 256<<10)
		m, err := w.Write(b[:k])
		n.Add(int64(m))
		if err != nil {
			return err
		}
		b = b[k:]
	}
	return nil
}

// sessionBound is the documented memory bound of one receiver session
// (spec.md §6): 64 MiB of stream windows, 64 MiB of frames, 16 MiB of
// streams not yet accepted, and the manifest.
const sessionBound = 256 * MiB

// Item 9: hostile agents cannot make one session hold more than the
// documented bound: 64 streams each sending most of a 9 MiB CHUNK, 200
// streams filled before HELLO, a 2-million-entry manifest.
func TestHostileMemory(t *testing.T) {
	big := make([]byte, transport.DefaultMaxFrameSize)
	t.Run("64 partial 9 MiB chunks", func(t *testing.T) {
		p, base, gen1 := committedPair(t, nil)
		f := dialFakeAgent(t, p)
		probe := newHeapProbe()
		ctrl := f.helloWelcome(hostileHello(uint64(len(base)), 64))
		var wrote atomic.Int64
		var wg sync.WaitGroup
		for range 64 {
			st := f.open()
			wg.Go(func() {
				hdr := transport.AppendFrameHeader(frame(transport.DataOpen{}), transport.FrameChunk, len(big))
				if writeCounted(st, hdr, &wrote) == nil {
					writeCounted(st, big[:len(big)-1], &wrote) // never the last byte
				}
			})
		}
		settle(&wrote)
		live, peak := probe.held()
		t.Logf("client wrote %d MiB; receiver holds %d MiB live (peak in use %d MiB), bound %d MiB", wrote.Load()>>20, live>>20, peak>>20, sessionBound>>20)
		if live > sessionBound {
			t.Errorf("one session holds %d MiB, bound %d MiB", live>>20, sessionBound>>20)
		}
		f.mux.Close()
		wg.Wait()
		_ = ctrl
		assertNotLying(t, p, gen1, true)
	})
	t.Run("200 streams before HELLO", func(t *testing.T) {
		p, _, gen1 := committedPair(t, nil)
		f := dialFakeAgent(t, p)
		probe := newHeapProbe()
		var wrote atomic.Int64
		var wg sync.WaitGroup
		for range 200 {
			st, err := f.mux.OpenStream()
			if err != nil {
				break
			}
			wg.Go(func() { writeCounted(st, big[:1<<20], &wrote) })
		}
		settle(&wrote)
		live, peak := probe.held()
		t.Logf("client wrote %d MiB; receiver holds %d MiB live (peak in use %d MiB)", wrote.Load()>>20, live>>20, peak>>20)
		if live > 48*MiB {
			t.Errorf("streams before HELLO hold %d MiB, bound 48 MiB (65 streams of 256 KiB)", live>>20)
		}
		f.mux.Close()
		wg.Wait()
		assertNotLying(t, p, gen1, false)
	})
	t.Run("2 million manifest entries", func(t *testing.T) {
		p, _, gen1 := committedPair(t, nil)
		f := dialFakeAgent(t, p)
		probe := newHeapProbe()
		const size = 64 * MiB
		ctrl := f.helloWelcome(hostileHello(size, 1))
		// 1-byte entries, data and zero runs in turn: each passes the
		// builder's checks, but a manifest of a 64 MiB volume cut at
		// 16 KiB or more has at most 4098 of them.
		const perFrame = (transport.DefaultMaxFrameSize - 4) / chunk.EntrySize
		id := chunk.Sum([]byte{1})
		var wrote atomic.Int64
		var off uint64
		go func() {
			batch := make([]chunk.Entry, perFrame)
			for sent := 0; sent < 2_000_000; sent += perFrame {
				for k := range batch {
					batch[k] = chunk.Entry{Offset: off, Length: 1, Zero: off%2 == 1}
					if !batch[k].Zero {
						batch[k].ID = id
					}
					off++
				}
				if writeCounted(ctrl, frame(transport.ManifestBatch{Entries: batch}), &wrote) != nil {
					return
				}
			}
		}()
		re := awaitError(t, ctrl)
		settle(&wrote)
		live, peak := probe.held()
		t.Logf("client wrote %d MiB of manifest; receiver holds %d MiB live (peak in use %d MiB)", wrote.Load()>>20, live>>20, peak>>20)
		if re.Code != transport.ErrCodeProtocol || !strings.Contains(re.Message, "manifest of more than") {
			t.Errorf("ERROR %d %q: want code 1 bounding the manifest", re.Code, re.Message)
		}
		if peak > sessionBound {
			t.Errorf("a manifest flood held %d MiB, bound %d MiB", peak>>20, sessionBound>>20)
		}
		assertNotLying(t, p, gen1, true)
	})
}

// fakeReceiver serves one session on loopback with the test's script.
func fakeReceiver(t *testing.T, script func(ctrl *transport.Stream, m *chunk.Manifest)) (string, *tls.Config) {
	t.Helper()
	certs := newTestCerts(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		cfg := transport.DefaultConfig()
		cfg.TLS = certs.receiver
		sess, err := transport.Server(context.Background(), c, cfg)
		if err != nil {
			c.Close()
			return
		}
		defer sess.Close()
		ctrl, err := sess.Accept(context.Background())
		if err != nil {
			return
		}
		msg, err := ctrl.Recv()
		if err != nil {
			return
		}
		h := msg.(transport.Hello)
		if script == nil { // silent after HELLO
			<-sess.Done()
			return
		}
		ctrl.Send(transport.Welcome{State: transport.TargetNew, Receiver: "scripted"})
		go func() { // accept the data streams, read and drop what comes
			for {
				st, err := sess.Accept(context.Background())
				if err != nil {
					return
				}
				go func() {
					for {
						if _, err := st.Recv(); err != nil {
							return
						}
					}
				}()
			}
		}()
		m := &chunk.Manifest{Params: h.Params, Size: h.Size}
		for {
			msg, err := ctrl.Recv()
			if err != nil {
				return
			}
			if b, ok := msg.(transport.ManifestBatch); ok {
				m.Entries = append(m.Entries, b.Entries...)
			}
			if b, ok := msg.(transport.ManifestNext); ok { // offsets from the manifest's end so far
				var end uint64
				if n := len(m.Entries); n > 0 {
					end = m.Entries[n-1].End()
				}
				for _, e := range b.Entries {
					e.Offset += end
					m.Entries = append(m.Entries, e)
				}
			}
			if e, ok := msg.(transport.ManifestEnd); ok {
				m.Root = e.Root
				break
			}
		}
		script(ctrl, m)
		<-sess.Done()
	}()
	return ln.Addr().String(), certs.agent
}

// A scripted receiver breaks the protocol; the real agent must end the
// round with an error saying what the receiver did.
func TestHostileReceiver(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := append(append(randBytes(81, MiB), make([]byte, 2*MiB)...), randBytes(82, MiB)...)
	writeFile(t, src, data)
	cases := []struct {
		name   string
		script func(ctrl *transport.Stream, m *chunk.Manifest)
		is     error
		want   string
	}{
		{"NEED for a zero run", func(ctrl *transport.Stream, m *chunk.Manifest) {
			for i, e := range m.Entries {
				if e.Zero {
					ctrl.Send(transport.Need{Ranges: []transport.IndexRange{{First: uint64(i), Count: 1}}})
					return
				}
			}
		}, transport.ErrProtocol, "not a data chunk"},
		{"NEED out of range", func(ctrl *transport.Stream, m *chunk.Manifest) {
			ctrl.Send(transport.Need{Ranges: []transport.IndexRange{{First: uint64(len(m.Entries)) + 10, Count: 1}}})
		}, transport.ErrProtocol, "not a data chunk"},
		{"RESULT with another root", func(ctrl *transport.Stream, m *chunk.Manifest) {
			ctrl.Send(transport.NeedEnd{})
			ctrl.Send(transport.Result{Generation: 1, Root: chunk.Sum([]byte("other"))})
		}, agent.ErrRootMismatch, "different root"},
		{"RESULT before NEED_END", func(ctrl *transport.Stream, m *chunk.Manifest) {
			ctrl.Send(transport.Result{Generation: 1, Root: m.Root})
		}, transport.ErrProtocol, "RESULT before NEED_END"},
		{"NEED after NEED_END", func(ctrl *transport.Stream, m *chunk.Manifest) {
			ctrl.Send(transport.NeedEnd{})
			ctrl.Send(transport.Need{Ranges: []transport.IndexRange{{First: 0, Count: 1}}})
			ctrl.Send(transport.Result{Generation: 1, Root: m.Root})
		}, transport.ErrProtocol, "NEED after NEED_END"},
		{"silent after HELLO", nil, transport.ErrIdle, "no WELCOME after HELLO within 2s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr, tlsCfg := fakeReceiver(t, tc.script)
			tcfg := transport.DefaultConfig()
			tcfg.TLS = tlsCfg
			tcfg.PrepareTimeout = 2 * time.Second
			ctx, cancel := context.WithTimeout(t.Context(), safetyWait)
			defer cancel()
			st, err := agent.Sync(ctx, agent.Options{Source: src, Addr: addr, Volume: "vol", Transport: tcfg,
				Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			t.Logf("agent: %v", err)
			if err == nil {
				t.Fatalf("round succeeded against a lying receiver: %+v", st)
			}
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("agent error %v: want %v saying %q", err, tc.is, tc.want)
			}
		})
	}
}

// Item 13: a source that shrinks while it is sent is reported as a source
// error, not as a lost connection; the receiver is told the agent gave up.
func TestSourceShrinks(t *testing.T) {
	p := newPair(t, pairOpts{})
	src := filepath.Join(p.dir, "source.img")
	writeFile(t, src, randBytes(91, 256*MiB))
	opt := p.options(src, "vol")
	opt.ScanWorkers = 1
	var once sync.Once
	opt.Progress = func(pr agent.Progress) {
		if pr.ScannedBytes > 0 {
			once.Do(func() {
				if err := os.Truncate(src, 100*MiB); err != nil {
					t.Error(err)
				}
			})
		}
	}
	_, err := agent.Sync(t.Context(), opt)
	t.Logf("agent: %v", err)
	if !errors.Is(err, agent.ErrSourceRead) || !strings.Contains(err.Error(), "shrank from 268435456 to 104857600 bytes") {
		t.Fatalf("agent error %v: want ErrSourceRead saying the source shrank", err)
	}
	if strings.Contains(err.Error(), "connection") || transport.IsConnLost(err) && !errors.Is(err, agent.ErrSourceRead) {
		t.Fatalf("a source error blamed on the connection: %v", err)
	}
	vs, err := receiver.ReadStatus(p.stateDir, "vol")
	if err == nil && vs.Current {
		t.Fatal("target current after a round whose source shrank")
	}
}
