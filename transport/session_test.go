package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/internal/pki"
	"golang.org/x/sync/errgroup"
)

// safety bounds every test session's handshake so that a bug fails a test
// instead of hanging it; no test asserts how long anything takes.
const safety = 30 * time.Second

// kind is one way of carrying a session.
type kind struct {
	name string
	tls  bool
	tcp  bool // loopback TCP through Dial; otherwise net.Pipe
}

var kinds = []kind{
	{name: "pipe"},
	{name: "tcp", tcp: true},
	{name: "tls-pipe", tls: true},
	{name: "tls", tls: true, tcp: true},
}

// testPKI holds certificates from two unrelated CAs.
type testPKI struct {
	ca, other                *pki.CA
	receiver, agent          *pki.Leaf // from ca
	otherReceiver, otherAgnt *pki.Leaf // from other
}

const (
	receiverName = "voldelta-receiver"
	agentName    = "agent-7"
	serverHost   = "receiver.test"
)

var certs = sync.OnceValues(func() (*testPKI, error) {
	var p testPKI
	var err error
	if p.ca, err = pki.NewCA("test CA", time.Hour); err != nil {
		return nil, err
	}
	// Same name, other key: the agent offers its certificate (the name is
	// among the receiver's acceptable CAs) and the signature check refuses it.
	if p.other, err = pki.NewCA("test CA", time.Hour); err != nil {
		return nil, err
	}
	hosts := []string{"127.0.0.1", serverHost}
	if p.receiver, err = p.ca.Issue(receiverName, hosts, time.Hour); err != nil {
		return nil, err
	}
	if p.agent, err = p.ca.Issue(agentName, nil, time.Hour); err != nil {
		return nil, err
	}
	if p.otherReceiver, err = p.other.Issue(receiverName, hosts, time.Hour); err != nil {
		return nil, err
	}
	if p.otherAgnt, err = p.other.Issue(agentName, nil, time.Hour); err != nil {
		return nil, err
	}
	return &p, nil
})

func testCerts(t testing.TB) *testPKI {
	t.Helper()
	p, err := certs()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// configs returns matching agent and receiver configurations for k.
func configs(t testing.TB, k kind) (cli, srv Config) {
	cli, srv = DefaultConfig(), DefaultConfig()
	cli.HandshakeTimeout, srv.HandshakeTimeout = safety, safety
	if !k.tls {
		cli.Insecure, srv.Insecure = true, true
		return cli, srv
	}
	p := testCerts(t)
	cli.TLS = NewTLS(p.agent.TLS, p.ca.Pool(), false)
	srv.TLS = NewTLS(p.receiver.TLS, p.ca.Pool(), true)
	if !k.tcp {
		cli.TLS.ServerName = serverHost // Client has no address to take it from
	}
	return cli, srv
}

// connect opens the two ends of a session carried as k describes. Either
// error is returned; the sessions that opened are closed at cleanup.
func connect(t testing.TB, k kind, ccfg, scfg Config) (cli, srv *Session, cerr, serr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), safety)
	defer cancel()
	type res struct {
		s   *Session
		err error
	}
	sc := make(chan res, 1)
	if k.tcp {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				sc <- res{nil, err}
				return
			}
			s, err := Server(ctx, c, scfg)
			if err != nil {
				c.Close() // as a receiver does
			}
			sc <- res{s, err}
		}()
		cli, cerr = Dial(ctx, ln.Addr().String(), ccfg)
		if cerr != nil {
			ln.Close() // in case the server never got a connection
		}
	} else {
		a, b := net.Pipe()
		go func() {
			s, err := Server(ctx, b, scfg)
			if err != nil {
				b.Close()
			}
			sc <- res{s, err}
		}()
		cli, cerr = Client(ctx, a, ccfg)
		if cerr != nil {
			a.Close()
		}
	}
	r := <-sc
	srv, serr = r.s, r.err
	for _, s := range []*Session{cli, srv} {
		if s != nil {
			t.Cleanup(func() { s.Close() })
		}
	}
	return cli, srv, cerr, serr
}

// pair opens a working session of kind k.
func pair(t testing.TB, k kind, mod func(cli, srv *Config)) (cli, srv *Session) {
	t.Helper()
	ccfg, scfg := configs(t, k)
	if mod != nil {
		mod(&ccfg, &scfg)
	}
	cli, srv, cerr, serr := connect(t, k, ccfg, scfg)
	if cerr != nil || serr != nil {
		t.Fatalf("session: agent %v, receiver %v", cerr, serr)
	}
	return cli, srv
}

// chunkData returns the bytes of chunk i: compressible for even i, random
// for odd i, of varying lengths.
func chunkData(i uint64) []byte {
	n := 1000 + int(i*7919%(64<<10))
	if i%2 == 0 {
		return compressible(i, n)
	}
	return seeded(i, n)
}

// counted sends m on st and adds its frame size to n.
func counted(st *Stream, n *atomic.Int64, m Message) error {
	if err := st.Send(m); err != nil {
		return err
	}
	n.Add(int64(HeaderSize + len(encode(m))))
	return nil
}

// TestSessionExchange runs the shape of a sync over every kind of
// connection: a control stream carrying HELLO/WELCOME, then MANIFEST frames
// one way while NEED frames go the other, and several data streams carrying
// CHUNK frames concurrently, ending with RESULT.
func TestSessionExchange(t *testing.T) {
	const (
		streams   = 4
		chunks    = 96
		batches   = 5
		needSends = 7
	)
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			cli, srv := pair(t, k, func(c, s *Config) { c.Streams = streams })
			ctx := t.Context()
			var cliPayload, srvPayload atomic.Int64

			hello := Hello{Version: ProtocolVersion, Volume: "pvc-1234", Size: 1 << 30, Params: chunk.DefaultParams(), Streams: streams, Agent: "test/" + k.name}
			welcome := Welcome{Generation: 41, Root: idOf(0x41), State: TargetCommitted, Receiver: "test receiver"}
			entries := make([]chunk.Entry, chunks)
			for i := range entries {
				entries[i] = chunk.Entry{Offset: uint64(i) << 20, Length: 1 << 20, ID: chunk.Sum(chunkData(uint64(i)))}
			}
			// The receiver asks for every third index, in needSends frames.
			var need []IndexRange
			for i := uint64(0); i < chunks; i += 3 {
				need = append(need, IndexRange{First: i, Count: 1})
			}

			var g errgroup.Group
			run := func(name string, f func() error) {
				g.Go(func() error {
					if err := f(); err != nil {
						cli.Close() // unblock everyone else
						srv.Close()
						return fmt.Errorf("%s: %w", name, err)
					}
					return nil
				})
			}

			// Agent.
			run("agent", func() error {
				ctl, err := cli.Open(ctx)
				if err != nil {
					return err
				}
				if err := counted(ctl, &cliPayload, hello); err != nil {
					return err
				}
				m, err := ctl.Recv()
				if err != nil {
					return err
				}
				if !equalMsg(m, welcome) {
					return fmt.Errorf("got %#v, want %#v", m, welcome)
				}
				var ag errgroup.Group
				ag.Go(func() error { // manifest out
					per := (chunks + batches - 1) / batches
					for i := 0; i < chunks; i += per {
						if err := counted(ctl, &cliPayload, ManifestBatch{Entries: entries[i:min(i+per, chunks)]}); err != nil {
							return err
						}
					}
					return counted(ctl, &cliPayload, ManifestEnd{Count: chunks, Root: idOf(0x99)})
				})
				ag.Go(func() error { // needs in, then the result
					var got []IndexRange
					for {
						m, err := ctl.Recv()
						if err != nil {
							return err
						}
						if n, ok := m.(Need); ok {
							got = append(got, n.Ranges...)
							continue
						}
						if e, ok := m.(NeedEnd); !ok || e.Total != uint64(len(need)) {
							return fmt.Errorf("got %#v, want NEED_END %d", m, len(need))
						}
						break
					}
					if !equalMsg(Need{Ranges: got}, Need{Ranges: need}) {
						return fmt.Errorf("NEED ranges differ: %v", got)
					}
					m, err := ctl.Recv()
					if err != nil {
						return err
					}
					if r, ok := m.(Result); !ok || r.Fetched != chunks || r.Generation != 42 {
						return fmt.Errorf("got %#v, want RESULT for %d chunks", m, chunks)
					}
					return nil
				})
				c, err := NewCompressor(CompressionFastest)
				if err != nil {
					return err
				}
				for s := range streams {
					st, err := cli.Open(ctx)
					if err != nil {
						return err
					}
					ag.Go(func() error {
						if err := counted(st, &cliPayload, DataOpen{Stream: uint16(s)}); err != nil {
							return err
						}
						var scratch []byte
						for i := uint64(s); i < chunks; i += streams {
							raw := chunkData(i)
							codec, data := c.Compress(raw, scratch)
							if err := counted(st, &cliPayload, Chunk{Index: i, Codec: codec, RawLen: uint32(len(raw)), Data: data}); err != nil {
								return err
							}
						}
						return st.CloseWrite()
					})
				}
				return ag.Wait()
			})

			// Receiver.
			run("receiver", func() error {
				ctl, err := srv.Accept(ctx)
				if err != nil {
					return err
				}
				m, err := ctl.Recv()
				if err != nil {
					return err
				}
				if !equalMsg(m, hello) {
					return fmt.Errorf("got %#v, want %#v", m, hello)
				}
				if err := counted(ctl, &srvPayload, welcome); err != nil {
					return err
				}
				var rg errgroup.Group
				rg.Go(func() error { // manifest in
					var got []chunk.Entry
					for {
						m, err := ctl.Recv()
						if err != nil {
							return err
						}
						if b, ok := m.(ManifestBatch); ok {
							got = append(got, b.Entries...)
							continue
						}
						if e, ok := m.(ManifestEnd); !ok || e.Count != chunks {
							return fmt.Errorf("got %#v, want MANIFEST_END", m)
						}
						if !equalMsg(ManifestBatch{Entries: got}, ManifestBatch{Entries: entries}) {
							return errors.New("manifest entries differ")
						}
						return nil
					}
				})
				rg.Go(func() error { // needs out
					per := (len(need) + needSends - 1) / needSends
					for i := 0; i < len(need); i += per {
						if err := counted(ctl, &srvPayload, Need{Ranges: need[i:min(i+per, len(need))]}); err != nil {
							return err
						}
					}
					return counted(ctl, &srvPayload, NeedEnd{Total: uint64(len(need))})
				})
				d, err := NewDecompressor()
				if err != nil {
					return err
				}
				defer d.Close()
				var fetched atomic.Int64
				var seen sync.Map
				for range streams {
					st, err := srv.Accept(ctx)
					if err != nil {
						return err
					}
					rg.Go(func() error {
						m, err := st.Recv()
						if err != nil {
							return err
						}
						open, ok := m.(DataOpen)
						if !ok {
							return fmt.Errorf("first data frame is %#v", m)
						}
						if _, dup := seen.LoadOrStore(open.Stream, true); dup {
							return fmt.Errorf("stream %d opened twice", open.Stream)
						}
						raw := make([]byte, 0, chunk.MaxChunkSize)
						for {
							m, err := st.Recv()
							if err == io.EOF {
								return nil
							}
							if err != nil {
								return err
							}
							c, ok := m.(Chunk)
							if !ok || c.Index%streams != uint64(open.Stream) {
								return fmt.Errorf("stream %d got %v", open.Stream, m.FrameType())
							}
							out, err := d.Decode(c, raw)
							if err != nil {
								return err
							}
							if chunk.Sum(out) != entries[c.Index].ID {
								return fmt.Errorf("chunk %d arrived damaged", c.Index)
							}
							fetched.Add(1)
						}
					})
				}
				if err := rg.Wait(); err != nil {
					return err
				}
				return counted(ctl, &srvPayload, Result{Generation: 42, Root: idOf(0x99), Fetched: uint64(fetched.Load())})
			})

			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}

			if k.tls {
				if id := srv.Peer(); id.CommonName != agentName {
					t.Errorf("receiver sees peer %+v, want common name %q", id, agentName)
				}
				if id := cli.Peer(); id.CommonName != receiverName || !slicesContain(id.DNSNames, serverHost) {
					t.Errorf("agent sees peer %+v", id)
				}
			} else if n := srv.Peer().Names(); len(n) != 0 {
				t.Errorf("plain session has a peer identity %v", n)
			}
			if srv.RemoteAddr() == nil || cli.RemoteAddr() == nil {
				t.Errorf("no remote address")
			}

			// The agent closes; once the receiver has seen the end, it has
			// read every byte the agent wrote.
			if err := cli.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-srv.Done():
			case <-time.After(safety):
				t.Fatal("receiver did not notice the agent closing")
			}
			// On a synchronous pipe a reader counts a write (the receiver's
			// TLS close_notify) before the writer's Write has returned and
			// counted it: wait for the writer.
			for end := time.Now().Add(safety); srv.WireBytesWritten() < cli.WireBytesRead() && time.Now().Before(end); {
				time.Sleep(time.Millisecond)
			}
			cw, cr, sw, sr := cli.WireBytesWritten(), cli.WireBytesRead(), srv.WireBytesWritten(), srv.WireBytesRead()
			t.Logf("frames: agent %d, receiver %d bytes; wire: agent wrote %d read %d, receiver wrote %d read %d",
				cliPayload.Load(), srvPayload.Load(), cw, cr, sw, sr)
			if cw <= cliPayload.Load() || sw <= srvPayload.Load() {
				t.Errorf("wire bytes written (%d, %d) not above frame bytes (%d, %d)", cw, sw, cliPayload.Load(), srvPayload.Load())
			}
			if cw != sr {
				t.Errorf("agent wrote %d bytes, receiver read %d", cw, sr)
			}
			if sw < cr {
				t.Errorf("receiver wrote %d bytes, agent read %d", sw, cr)
			}
		})
	}
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Messages go both ways at once on one stream and on many.
func TestSessionBothWays(t *testing.T) {
	const streams, frames = 6, 50
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			cli, srv := pair(t, k, nil)
			ctx := t.Context()
			var g errgroup.Group
			// Each end echoes what it receives with the index doubled, while
			// sending its own frames.
			talk := func(st *Stream, base uint64) {
				g.Go(func() error {
					for i := range uint64(frames) {
						if err := st.Send(Chunk{Index: base + i, RawLen: 100, Data: seeded(base+i, 100)}); err != nil {
							return err
						}
					}
					return st.CloseWrite()
				})
				g.Go(func() error {
					n := 0
					for {
						m, err := st.Recv()
						if err == io.EOF {
							break
						}
						if err != nil {
							return err
						}
						c := m.(Chunk)
						if !bytes.Equal(c.Data, seeded(c.Index, 100)) {
							return fmt.Errorf("chunk %d damaged", c.Index)
						}
						n++
					}
					if n != frames {
						return fmt.Errorf("got %d frames, want %d", n, frames)
					}
					return nil
				})
			}
			for s := range uint64(streams) {
				st, err := cli.Open(ctx)
				if err != nil {
					t.Fatal(err)
				}
				talk(st, s<<32)
				st2, err := srv.Accept(ctx)
				if err != nil {
					t.Fatal(err)
				}
				talk(st2, s<<32|1<<31)
			}
			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestStreamRecvRemoteError(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			cli, srv := pair(t, k, nil)
			ctx := t.Context()
			ctl, err := cli.Open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// An agent of a later protocol; the rest of its HELLO is unknown to us.
			if err := ctl.Send(rawMsg{FrameHello, []byte("VDLT\x00\x03future fields")}); err != nil {
				t.Fatal(err)
			}
			rctl, err := srv.Accept(ctx)
			if err != nil {
				t.Fatal(err)
			}
			m, err := rctl.Recv()
			if err != nil {
				t.Fatalf("receiver: %v", err)
			}
			h := m.(Hello)
			rctl.SendError(ErrCodeVersion, "agent speaks protocol %d, receiver speaks %d", h.Version, ProtocolVersion)
			_, err = ctl.Recv()
			if !errors.Is(err, &RemoteError{Code: ErrCodeVersion}) {
				t.Fatalf("agent got %v, want a version error", err)
			}
			var re *RemoteError
			if !errors.As(err, &re) || re.Message != "agent speaks protocol 3, receiver speaks 2" || re.Code.Retryable() {
				t.Fatalf("remote error %#v", re)
			}
		})
	}
}

// rawMsg sends arbitrary payload bytes as a frame of type t.
type rawMsg struct {
	t FrameType
	p []byte
}

func (m rawMsg) FrameType() FrameType            { return m.t }
func (m rawMsg) AppendPayload(dst []byte) []byte { return append(dst, m.p...) }

// Each end enforces its own frame limit, on what it sends and on what it
// reads; an oversized Send leaves the stream usable.
func TestSessionFrameLimits(t *testing.T) {
	const small = 1<<20 + ChunkHeaderSize
	cli, srv := pair(t, kinds[1], func(c, s *Config) { c.MaxFrameSize = small })
	ctx := t.Context()
	st, err := cli.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = st.Send(Chunk{Index: 1, RawLen: 1<<20 + 1, Data: make([]byte, 1<<20+1)})
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized send: %v, want ErrFrameTooLarge", err)
	}
	// More than the initial 256 KiB window: it goes as the receiver reads.
	errc := make(chan error, 1)
	go func() { errc <- st.Send(Chunk{Index: 2, RawLen: 1 << 20, Data: make([]byte, 1<<20)}) }()
	rst, err := srv.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, err := rst.Recv()
	if err := <-errc; err != nil {
		t.Fatalf("send at the limit: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if c := m.(Chunk); c.Index != 2 {
		t.Fatalf("received chunk %d, want 2 (the oversized one must not be sent)", c.Index)
	}

	// The other way: the receiver (default 9 MiB) sends 2 MiB, more than
	// the agent reads.
	if err := rst.Send(Chunk{Index: 3, RawLen: 2 << 20, Data: make([]byte, 2<<20)}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("agent read %v, want ErrFrameTooLarge", err)
	}
}

// With a bandwidth limit the bytes still arrive whole and are counted;
// how fast is for BenchmarkLimitedWrite.
func TestSessionBandwidthLimit(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			cli, srv := pair(t, k, func(c, s *Config) { c.BandwidthLimit = 64 << 20 })
			if cli.raw.limiter == nil || srv.raw.limiter != nil {
				t.Fatal("limiter not where configured")
			}
			ctx := t.Context()
			st, err := cli.Open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			data := seeded(1, 3<<20)
			errc := make(chan error, 1)
			go func() {
				for i := range 3 {
					if err := st.Send(Chunk{Index: uint64(i), RawLen: 1 << 20, Data: data[i<<20 : (i+1)<<20]}); err != nil {
						errc <- err
						return
					}
				}
				errc <- st.CloseWrite()
			}()
			rst, err := srv.Accept(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				m, err := rst.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if c := m.(Chunk); !bytes.Equal(c.Data, data[i<<20:(i+1)<<20]) {
					t.Fatalf("chunk %d damaged", i)
				}
			}
			if _, err := rst.Recv(); err != io.EOF {
				t.Fatalf("after the last chunk: %v", err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if w := cli.WireBytesWritten(); w < 3<<20+3*(HeaderSize+ChunkHeaderSize) {
				t.Fatalf("wrote %d wire bytes for 3 MiB of chunks", w)
			}
		})
	}
}

func TestTLSRejectsForeignCertificates(t *testing.T) {
	p := testCerts(t)
	cases := []struct {
		name          string
		agent, server *pki.Leaf
	}{
		{"agent from another CA", p.otherAgnt, p.receiver},
		{"receiver from another CA", p.agent, p.otherReceiver},
	}
	for _, tc := range cases {
		for _, k := range []kind{kinds[2], kinds[3]} {
			t.Run(tc.name+"/"+k.name, func(t *testing.T) {
				ccfg, scfg := configs(t, k)
				ccfg.TLS.Certificates = []tls.Certificate{tc.agent.TLS}
				scfg.TLS.Certificates = []tls.Certificate{tc.server.TLS}
				cli, _, cerr, serr := connect(t, k, ccfg, scfg)
				if serr == nil {
					t.Fatal("receiver accepted the session")
				}
				t.Logf("receiver: %v", serr)
				if cerr == nil {
					// TLS 1.3: the agent finishes its handshake before the
					// receiver checks its certificate; the refusal ends the
					// session as soon as the agent uses it.
					cerr = useSession(t, cli)
				}
				if cerr == nil {
					t.Fatal("agent got through")
				}
				t.Logf("agent: %v", cerr)
				// The end that checked the foreign certificate says why.
				checker := serr
				if tc.agent == p.agent {
					checker = cerr
				}
				var uae x509.UnknownAuthorityError
				if !errors.As(checker, &uae) {
					t.Errorf("%v does not say the certificate's authority is unknown", checker)
				}
			})
		}
	}
}

// rawConns returns the two ends of a connection carried as k describes.
func rawConns(t *testing.T, k kind) (client, server net.Conn) {
	if !k.tcp {
		client, server = net.Pipe()
	} else {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if client, err = net.Dial("tcp", ln.Addr().String()); err != nil {
			t.Fatal(err)
		}
		if server, err = ln.Accept(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// useSession opens a stream, sends a HELLO and waits for an answer.
func useSession(t *testing.T, s *Session) error {
	st, err := s.Open(t.Context())
	if err != nil {
		return err
	}
	if err := st.Send(Hello{Version: ProtocolVersion, Volume: "v"}); err != nil {
		return err
	}
	m, err := st.Recv()
	if err == nil {
		return fmt.Errorf("unexpected answer %v", m.FrameType())
	}
	select {
	case <-s.Done():
	case <-time.After(safety):
		return errors.New("session still open")
	}
	return err
}

// A plain end and a TLS end never talk, neither waits forever, and each
// says which end spoke what: the session fails to start on both sides.
func TestPlainAndTLSDoNotMix(t *testing.T) {
	for _, k := range []kind{kinds[2], kinds[3]} {
		t.Run("plain agent/"+k.name, func(t *testing.T) {
			ccfg, scfg := configs(t, k)
			ccfg.TLS, ccfg.Insecure = nil, true
			_, _, cerr, serr := connect(t, k, ccfg, scfg)
			t.Logf("agent: %v", cerr)
			t.Logf("receiver: %v", serr)
			if !errors.Is(cerr, ErrTLS) || !strings.Contains(cerr.Error(), "--insecure") {
				t.Errorf("agent error %v: want ErrTLS naming --insecure", cerr)
			}
			if !errors.Is(serr, ErrTLS) || !strings.Contains(serr.Error(), "did not speak TLS") {
				t.Errorf("receiver error %v: want ErrTLS saying the client did not speak TLS", serr)
			}
		})
		t.Run("TLS agent/plain "+k.name, func(t *testing.T) {
			ccfg, scfg := configs(t, k)
			scfg.TLS, scfg.Insecure = nil, true
			_, _, cerr, serr := connect(t, k, ccfg, scfg)
			t.Logf("agent: %v", cerr)
			t.Logf("receiver: %v", serr)
			if !errors.Is(serr, ErrTLS) || !strings.Contains(serr.Error(), "client at") || !strings.Contains(serr.Error(), "spoke TLS but this receiver is plain (--insecure)") {
				t.Errorf("receiver error %v: want ErrTLS saying the client spoke TLS to a plain receiver", serr)
			}
			if !errors.Is(cerr, ErrTLS) || !strings.Contains(cerr.Error(), "does not speak TLS") {
				t.Errorf("agent error %v: want ErrTLS saying the receiver does not speak TLS", cerr)
			}
		})
	}
}

func TestDialErrors(t *testing.T) {
	cfg := DefaultConfig()
	if _, err := Dial(t.Context(), "127.0.0.1:1", cfg); !errors.Is(err, ErrNoTLS) {
		t.Errorf("Dial without TLS: %v, want ErrNoTLS", err)
	}
	if _, err := Client(t.Context(), nil, cfg); !errors.Is(err, ErrNoTLS) {
		t.Errorf("Client without TLS: %v, want ErrNoTLS", err)
	}
	if _, err := Server(t.Context(), nil, cfg); !errors.Is(err, ErrNoTLS) {
		t.Errorf("Server without TLS: %v, want ErrNoTLS", err)
	}
	// A port nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg.Insecure = true
	if _, err := Dial(t.Context(), addr, cfg); err == nil || !strings.Contains(err.Error(), addr) {
		t.Errorf("Dial to a closed port: %v", err)
	}
}

func TestAcceptHonoursContext(t *testing.T) {
	_, srv := pair(t, kinds[0], nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := srv.Accept(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Accept with a canceled context: %v", err)
	}
}

// Closing one end ends the other's streams and Accept.
func TestSessionClose(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			cli, srv := pair(t, k, nil)
			st, err := cli.Open(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(DataOpen{Stream: 1}); err != nil {
				t.Fatal(err)
			}
			rst, err := srv.Accept(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := rst.Recv(); err != nil {
				t.Fatal(err)
			}
			if err := cli.Close(); err != nil {
				t.Fatal(err)
			}
			if err := cli.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			<-srv.Done()
			if _, err := srv.Accept(t.Context()); err == nil {
				t.Error("Accept on a closed session")
			}
			if _, err := rst.Recv(); err == nil {
				t.Error("Recv on a closed session")
			}
			if err := st.Send(DataOpen{}); err == nil {
				t.Error("Send on a closed session")
			}
			if _, err := cli.Open(t.Context()); err == nil {
				t.Error("Open on a closed session")
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	p := testCerts(t)
	tlsCfg := NewTLS(p.agent.TLS, p.ca.Pool(), false)
	cases := []struct {
		name string
		mod  func(*Config)
		is   error  // errors.Is target, if any
		want string // in the message
	}{
		{"no TLS, not insecure", func(c *Config) { c.TLS, c.Insecure = nil, false }, ErrNoTLS, "--insecure"},
		{"TLS and insecure", func(c *Config) { c.Insecure = true }, nil, "choose one"},
		{"zero streams", func(c *Config) { c.Streams = 0 }, nil, "streams 0"},
		{"negative streams", func(c *Config) { c.Streams = -1 }, nil, "streams -1"},
		{"65 streams", func(c *Config) { c.Streams = 65 }, nil, "streams 65"},
		{"frame too small", func(c *Config) { c.MaxFrameSize = 1 << 20 }, nil, "max frame size"},
		{"frame too big", func(c *Config) { c.MaxFrameSize = MaxFrameSizeLimit + 1 }, nil, "max frame size"},
		{"negative bandwidth", func(c *Config) { c.BandwidthLimit = -1 }, nil, "bandwidth"},
		{"small window", func(c *Config) { c.StreamWindow = 128 << 10 }, nil, "stream window"},
		{"no handshake timeout", func(c *Config) { c.HandshakeTimeout = 0 }, nil, "timeouts"},
		{"no write timeout", func(c *Config) { c.WriteTimeout = -time.Second }, nil, "timeouts"},
		{"no keep-alive", func(c *Config) { c.KeepAlive = 0 }, nil, "timeouts"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.TLS = tlsCfg
			tc.mod(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("%v is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%q does not say %q", err, tc.want)
			}
		})
	}
	for name, mod := range map[string]func(*Config){
		"TLS defaults":      func(c *Config) { c.TLS = tlsCfg },
		"insecure defaults": func(c *Config) { c.Insecure = true },
		"limits": func(c *Config) {
			c.Insecure, c.Streams, c.MaxFrameSize, c.StreamWindow = true, 64, MaxFrameSizeLimit, 256<<10
		},
		"smallest frame": func(c *Config) { c.Insecure, c.Streams, c.MaxFrameSize = true, 1, 1<<20+ChunkHeaderSize },
	} {
		c := DefaultConfig()
		mod(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("%s rejected: %v", name, err)
		}
	}
	d := DefaultConfig()
	if d.Streams != 4 || d.MaxFrameSize != DefaultMaxFrameSize || d.StreamWindow != 8<<20 || d.TLS != nil || d.Insecure {
		t.Errorf("defaults changed: %+v", d)
	}
	if DefaultMaxFrameSize < chunk.MaxChunkSize+ChunkHeaderSize {
		t.Errorf("the default frame limit %d cannot carry the largest chunk", DefaultMaxFrameSize)
	}
}

// Certificates written by pki.WriteDir load with LoadTLS and carry a session.
func TestLoadTLS(t *testing.T) {
	dir := t.TempDir()
	f, err := pki.WriteDir(dir, []string{"127.0.0.1"}, "agent-from-files", time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	scfgTLS, err := LoadTLS(f.ServerCert, f.ServerKey, f.CA, true)
	if err != nil {
		t.Fatal(err)
	}
	ccfgTLS, err := LoadTLS(f.ClientCert, f.ClientKey, f.CA, false)
	if err != nil {
		t.Fatal(err)
	}
	if scfgTLS.MinVersion != tls.VersionTLS13 || scfgTLS.ClientAuth != tls.RequireAndVerifyClientCert || ccfgTLS.RootCAs == nil {
		t.Fatalf("not mutual TLS 1.3: %+v", scfgTLS)
	}
	_, srv := pair(t, kinds[3], func(c, s *Config) { c.TLS, s.TLS = ccfgTLS, scfgTLS })
	if cn := srv.Peer().CommonName; cn != "agent-from-files" {
		t.Fatalf("peer %q", cn)
	}

	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][3]string{
		"no cert":       {"", f.ClientKey, f.CA},
		"no key":        {f.ClientCert, "", f.CA},
		"no CA":         {f.ClientCert, f.ClientKey, ""},
		"missing cert":  {filepath.Join(dir, "nope.pem"), f.ClientKey, f.CA},
		"key mismatch":  {f.ClientCert, f.ServerKey, f.CA},
		"missing CA":    {f.ClientCert, f.ClientKey, filepath.Join(dir, "nope.pem")},
		"CA is not PEM": {f.ClientCert, f.ClientKey, notPEM},
	} {
		if _, err := LoadTLS(args[0], args[1], args[2], false); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A peer that stops reading fills the stream's window: SendWithin then
// fails with ErrNotReading instead of waiting for it forever, and so does
// SendError, bounded by WriteTimeout, rather than block its caller.
func TestSendWithinPeerNotReading(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			cli, srv := pair(t, k, func(cli, srv *Config) {
				cli.StreamWindow, srv.StreamWindow = 256<<10, 256<<10
				srv.WriteTimeout = 200 * time.Millisecond
			})
			ctx := t.Context()
			cst, err := cli.Open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := cst.Send(DataOpen{}); err != nil { // yamux opens the stream with its first frame
				t.Fatal(err)
			}
			sst, err := srv.Accept(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// The agent never reads cst: its window (256 KiB) fills.
			batch := ManifestBatch{Entries: make([]chunk.Entry, 1000)} // 49 KiB
			for i := range batch.Entries {
				batch.Entries[i] = chunk.Entry{Offset: uint64(i), Length: 1, ID: idOf(byte(i))}
			}
			var sent int
			for ; sent < 100; sent++ {
				if err = sst.SendWithin(200*time.Millisecond, "the base manifest", batch); err != nil {
					break
				}
			}
			if !errors.Is(err, ErrNotReading) || !strings.Contains(err.Error(), "the base manifest not taken within 200ms") {
				t.Fatalf("after %d frames: %v, want ErrNotReading naming the frame", sent, err)
			}
			if sent < 4 || sent > 8 {
				t.Fatalf("%d frames of 49 KiB taken before the 256 KiB window was full", sent)
			}
			sst.SendError(ErrCodeProtocol, "you do not read") // returns: bounded by WriteTimeout
		})
	}
}

// TestSendAll: frames sent together arrive one by one, in order; one too
// large sends nothing.
func TestSendAll(t *testing.T) {
	cli, srv := pair(t, kinds[1], func(c, s *Config) { c.MaxFrameSize = 1<<20 + ChunkHeaderSize })
	ctx := t.Context()
	st, err := cli.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	big := Chunk{Index: 9, RawLen: 2 << 20, Data: make([]byte, 2<<20)}
	if err := st.SendAll([]Message{NeedEnd{Total: 1}, big}); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("a batch with an oversized frame: %v, want ErrFrameTooLarge", err)
	}
	var want []Message
	for _, m := range sampleMessages() {
		if _, isErr := m.(ErrorMsg); !isErr { // Recv returns those as errors
			want = append(want, m)
		}
	}
	if err := st.SendAll(want); err != nil {
		t.Fatal(err)
	}
	if err := st.SendAll(nil); err != nil {
		t.Fatalf("an empty batch: %v", err)
	}
	rst, err := srv.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		m, err := rst.Recv()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !equalMsg(m, w) {
			t.Fatalf("frame %d: got %#v, want %#v (the oversized batch must send nothing)", i, m, w)
		}
	}
}
