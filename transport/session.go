package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// Config configures one end of a session. Build it from DefaultConfig.
type Config struct {
	// TLS secures the connection (TLS 1.3, both ends authenticated). It is
	// required unless Insecure is set.
	TLS *tls.Config
	// Insecure allows plain TCP when TLS is nil. It is never implied.
	Insecure bool
	// Streams is the number of data streams an agent opens (1..64).
	Streams int
	// MaxFrameSize bounds every frame's payload.
	MaxFrameSize uint32
	// BandwidthLimit caps the bytes per second this end writes to the
	// connection, TLS and framing included; 0 is unlimited.
	BandwidthLimit float64
	// StreamWindow is yamux's maximum window per stream: with the round-trip
	// time it bounds a stream's throughput to about window / (2·RTT), as
	// yamux re-credits a window once half of it was read. A receiver
	// buffers at most streams × window per session.
	StreamWindow uint32
	// HandshakeTimeout bounds the TCP+TLS handshake.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds how long one frame may wait to be written before
	// the session is considered dead.
	WriteTimeout time.Duration
	// KeepAlive is the interval of yamux keep-alive pings; the session
	// pings at least every StallTimeout/3, so that a live peer is never
	// taken for a stalled one.
	KeepAlive time.Duration
	// StallTimeout ends the session with ErrStalled when no byte came from
	// the peer for this long. Both ends ping (KeepAlive) and answer pings
	// while they work, so only a dead link or a hung peer is silent.
	StallTimeout time.Duration
	// IdleTimeout bounds how long the receiver waits for the agent's next
	// MANIFEST frame (the first one after WELCOME included): an agent that
	// says HELLO and then nothing does not hold the volume for longer.
	IdleTimeout time.Duration
	// PrepareTimeout bounds how long the agent waits for WELCOME after
	// HELLO: the receiver may index a target it has no state for first.
	PrepareTimeout time.Duration
	// WindowBudget bounds, on the receiver, the stream windows of one
	// session: once HELLO announced n data streams, each stream's window is
	// min(StreamWindow, WindowBudget/(n+1)).
	WindowBudget uint64
	// FrameBudget bounds, on the receiver, the bytes of frame payloads
	// (above 64 KiB each) that one session's streams hold at once, partly
	// read frames included; a stream waits for room before it reads a
	// large frame. At least MaxFrameSize.
	FrameBudget uint64
	// Logger receives yamux's diagnostics; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults: 4 data streams, 8 MiB stream
// windows, 9 MiB frames, 30 s handshake, 5 min write timeout, a stall
// detected after 45 s without a byte from the peer, 2 min for the next
// manifest frame, 30 min for the receiver to prepare the target, and per
// receiver session 64 MiB of windows and 64 MiB of frames.
func DefaultConfig() Config {
	return Config{
		Streams:          4,
		MaxFrameSize:     DefaultMaxFrameSize,
		StreamWindow:     8 << 20,
		HandshakeTimeout: 30 * time.Second,
		WriteTimeout:     5 * time.Minute,
		KeepAlive:        30 * time.Second,
		StallTimeout:     DefaultStallTimeout,
		IdleTimeout:      2 * time.Minute,
		PrepareTimeout:   30 * time.Minute,
		WindowBudget:     DefaultWindowBudget,
		FrameBudget:      DefaultFrameBudget,
	}
}

// Defaults of the session bounds; see Config.
const (
	DefaultStallTimeout = 45 * time.Second
	DefaultWindowBudget = 64 << 20
	DefaultFrameBudget  = 64 << 20
	// MaxDataStreams is the most data streams a session may have.
	MaxDataStreams = 64
)

// ErrNoTLS is returned by Validate when neither TLS nor Insecure is set.
var ErrNoTLS = errors.New("no TLS configuration: give --tls-cert, --tls-key and --tls-ca, or --insecure for plain TCP")

// Validate checks c.
func (c Config) Validate() error {
	switch {
	case c.TLS == nil && !c.Insecure:
		return ErrNoTLS
	case c.TLS != nil && c.Insecure:
		return errors.New("both TLS and --insecure given: choose one")
	case c.Streams < 1 || c.Streams > MaxDataStreams:
		return fmt.Errorf("streams %d: want 1..%d", c.Streams, MaxDataStreams)
	case c.MaxFrameSize < 1<<20+ChunkHeaderSize || c.MaxFrameSize > MaxFrameSizeLimit:
		return fmt.Errorf("max frame size %d: want %d..%d", c.MaxFrameSize, 1<<20+ChunkHeaderSize, MaxFrameSizeLimit)
	case c.BandwidthLimit < 0:
		return fmt.Errorf("bandwidth limit %v: want >= 0", c.BandwidthLimit)
	case c.StreamWindow < 256<<10:
		return fmt.Errorf("stream window %d: want >= 256 KiB", c.StreamWindow)
	case c.HandshakeTimeout <= 0 || c.WriteTimeout <= 0 || c.KeepAlive <= 0:
		return errors.New("timeouts must be positive")
	case c.StallTimeout < 100*time.Millisecond:
		return fmt.Errorf("stall timeout %v: want at least 100ms", c.StallTimeout)
	case c.IdleTimeout <= 0 || c.PrepareTimeout <= 0:
		return errors.New("idle and prepare timeouts must be positive")
	case c.WindowBudget < 2*(256<<10):
		return fmt.Errorf("window budget %d: want at least 512 KiB", c.WindowBudget)
	case c.FrameBudget < uint64(c.MaxFrameSize):
		return fmt.Errorf("frame budget %d: want at least the max frame size %d", c.FrameBudget, c.MaxFrameSize)
	}
	return nil
}

// keepAlive is the ping interval: KeepAlive, but at most a third of the
// stall timeout.
func (c Config) keepAlive() time.Duration { return min(c.KeepAlive, c.StallTimeout/3) }

func (c Config) yamux(client bool) *yamux.Config {
	y := yamux.DefaultConfig()
	y.MaxStreamWindowSize = c.StreamWindow
	y.ConnectionWriteTimeout = c.WriteTimeout
	y.KeepAliveInterval = c.keepAlive()
	// Streams the peer opened and this end has not accepted yet each hold
	// up to yamux's initial window (256 KiB): the receiver takes the
	// control stream and 64 data streams, the agent none.
	y.AcceptBacklog = 1 + MaxDataStreams
	if client {
		y.AcceptBacklog = 1
	}
	y.StreamCloseTimeout = c.WriteTimeout
	y.LogOutput = nil
	if c.Logger != nil {
		y.Logger = slog.NewLogLogger(c.Logger.Handler(), slog.LevelDebug)
	} else {
		y.LogOutput = io.Discard
	}
	return y
}

// Session is one authenticated, multiplexed connection between an agent
// and a receiver.
type Session struct {
	cfg    Config
	raw    *countingConn
	conn   net.Conn // raw, or TLS over raw
	ycfg   *yamux.Config
	mux    *yamux.Session
	peer   Identity
	close  sync.Once
	frames *budget // receiver: bounds the frame payloads being read
	done   chan struct{}
	// stalled is set (before the session is closed) when the watchdog
	// found the peer silent for StallTimeout.
	stalled atomic.Pointer[error]
}

// Identity is what the peer's certificate says it is.
type Identity struct {
	CommonName string
	DNSNames   []string
	URIs       []string
}

// Names returns every name of the identity: the common name, DNS names and URIs.
func (id Identity) Names() []string {
	var out []string
	if id.CommonName != "" {
		out = append(out, id.CommonName)
	}
	out = append(out, id.DNSNames...)
	return append(out, id.URIs...)
}

// Dial connects to a receiver at addr ("host:port") and opens a session.
// It returns once the receiver answered over the new session, so that a
// receiver refusing this agent's certificate (which TLS 1.3 only says after
// the handshake) fails Dial with ErrTLS and a message naming the cause.
func Dial(ctx context.Context, addr string, cfg Config) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to receiver %s: %w", addr, err)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	s, err := newSession(ctx, c, cfg, true, addr)
	if err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

// Client opens the agent end of a session over an established connection.
// With TLS, cfg.TLS.ServerName must name the receiver: there is no address
// to take it from.
func Client(ctx context.Context, c net.Conn, cfg Config) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	return newSession(ctx, c, cfg, true, "")
}

// Server opens the receiver end of a session over an accepted connection.
func Server(ctx context.Context, c net.Conn, cfg Config) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	return newSession(ctx, c, cfg, false, "")
}

func newSession(ctx context.Context, c net.Conn, cfg Config, client bool, addr string) (*Session, error) {
	if addr == "" {
		addr = c.RemoteAddr().String()
	}
	s := &Session{cfg: cfg, raw: newCountingConn(c, cfg.BandwidthLimit), done: make(chan struct{})}
	s.conn = s.raw
	// Until the session runs, the handshake is bounded by ctx through the
	// connection's deadline (a plain receiver peeks, a client pings).
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var rec *recordingConn
	if cfg.TLS != nil {
		tc := cfg.TLS.Clone()
		var t *tls.Conn
		if client {
			if tc.ServerName == "" {
				if host, _, err := net.SplitHostPort(addr); err == nil {
					tc.ServerName = host
				}
			}
			t = tls.Client(s.raw, tc)
		} else {
			t = tls.Server(s.raw, tc)
		}
		if err := t.HandshakeContext(ctx); err != nil {
			return nil, tlsFailure(addr, client, err, false)
		}
		st := t.ConnectionState()
		if len(st.PeerCertificates) > 0 {
			pc := st.PeerCertificates[0]
			s.peer = Identity{CommonName: pc.Subject.CommonName, DNSNames: pc.DNSNames}
			for _, u := range pc.URIs {
				s.peer.URIs = append(s.peer.URIs, u.String())
			}
		}
		s.conn = t
	} else if !client {
		p, err := peekPlain(s.raw)
		if err != nil {
			return nil, plainFailure(addr, client, err, nil)
		}
		s.conn = p
	}
	if client {
		rec = &recordingConn{Conn: s.conn}
		s.conn = rec
	}
	s.ycfg = cfg.yamux(client)
	var err error
	if client {
		s.mux, err = yamux.Client(s.conn, s.ycfg)
	} else {
		s.mux, err = yamux.Server(s.conn, s.ycfg)
		s.frames = newBudget(int64(cfg.FrameBudget))
	}
	if err != nil {
		return nil, fmt.Errorf("start multiplexer: %w", err)
	}
	if client {
		// One round trip over the session: the receiver's verdict on our
		// certificate, or its refusal to speak our protocol, arrives now.
		if _, err := s.mux.Ping(); err != nil {
			s.mux.Close()
			if ctx.Err() != nil && rec.readErr() == nil {
				return nil, fmt.Errorf("receiver %s did not answer within %v after the handshake: %w", addr, cfg.HandshakeTimeout, ctx.Err())
			}
			if cfg.TLS != nil {
				return nil, tlsFailure(addr, client, firstErr(rec.readErr(), err), true)
			}
			return nil, plainFailure(addr, client, firstErr(rec.readErr(), err), rec.first())
		}
	}
	if !stop() {
		s.mux.Close()
		return nil, fmt.Errorf("start session with %s: %w", addr, context.Cause(ctx))
	}
	c.SetDeadline(time.Time{})
	s.raw.lastRead.Store(time.Now().UnixNano())
	go s.watch()
	return s, nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// watch ends the session with ErrStalled once no byte came from the peer
// for StallTimeout, and closes s.done when the session ends.
func (s *Session) watch() {
	defer close(s.done)
	defer s.frames.close()
	d := s.cfg.StallTimeout
	tick := time.NewTicker(max(d/8, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-s.mux.CloseChan():
			return
		case now := <-tick.C:
			if idle := now.Sub(time.Unix(0, s.raw.lastRead.Load())); idle >= d {
				err := fmt.Errorf("%w: no data from the peer for %v (the network or the peer hung; the next sync resumes)", ErrStalled, d)
				s.stalled.Store(&err)
				s.Close()
				return
			}
		}
	}
}

// ErrStalled ends a session whose peer sent nothing for Config.StallTimeout
// while the connection stayed open (no FIN, no reset): a dead link, a lost
// route or a hung peer. A later session may succeed (IsConnLost).
var ErrStalled = errors.New("connection stalled")

// ErrIdle is returned when the peer, although alive, did not send a
// message the protocol expected within its deadline (RecvWithin).
var ErrIdle = errors.New("peer sent nothing")

// ErrNotReading is returned by SendWithin when the peer, although alive,
// did not take a frame within its deadline: it does not read the stream,
// whose window is full.
var ErrNotReading = errors.New("peer does not read")

// Err returns why the session ended if this end decided it (ErrStalled),
// nil otherwise.
func (s *Session) Err() error {
	if p := s.stalled.Load(); p != nil {
		return *p
	}
	return nil
}

// cause replaces err by the session's own verdict, if it has one.
func (s *Session) cause(err error) error {
	if err == nil {
		return nil
	}
	if se := s.Err(); se != nil {
		return se
	}
	return err
}

// LimitStreams applies the window budget once the receiver knows how many
// data streams the agent announced: every stream's window becomes
// min(StreamWindow, WindowBudget/(n+1)), at least 256 KiB. Call it before
// any data stream is accepted and while no stream is being read: yamux
// reads the value when a stream reads or is accepted.
func (s *Session) LimitStreams(n int) {
	w := min(uint64(s.cfg.StreamWindow), s.cfg.WindowBudget/uint64(n+1))
	s.ycfg.MaxStreamWindowSize = uint32(max(w, 256<<10))
}

// StreamWindow returns the window of this session's streams.
func (s *Session) StreamWindow() uint32 { return s.ycfg.MaxStreamWindowSize }

// FramesHeld returns the bytes of frame payloads this (receiver) session
// holds now, and the most it ever held.
func (s *Session) FramesHeld() (now, peak int64) { return s.frames.held() }

// Peer returns the identity from the peer's certificate (empty without TLS).
func (s *Session) Peer() Identity { return s.peer }

// RemoteAddr returns the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.raw.RemoteAddr() }

// WireBytesWritten returns the bytes this end wrote to the TCP connection,
// TLS records, yamux headers and frames included.
func (s *Session) WireBytesWritten() int64 { return s.raw.written.Load() }

// WireBytesRead returns the bytes this end read from the TCP connection.
func (s *Session) WireBytesRead() int64 { return s.raw.read.Load() }

// PacedBytes returns the bytes this end's bandwidth limiter let through:
// with Config.BandwidthLimit set, every byte the session wrote, whichever
// round's stream it came from (one limiter per session); 0 without a limit.
func (s *Session) PacedBytes() int64 { return s.raw.paced.Load() }

// Open opens a new stream.
func (s *Session) Open(ctx context.Context) (*Stream, error) {
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", s.cause(err))
	}
	return newStream(s, st), nil
}

// Accept waits for the peer to open a stream.
func (s *Session) Accept(ctx context.Context) (*Stream, error) {
	st, err := s.mux.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("accept stream: %w", s.cause(err))
	}
	return newStream(s, st), nil
}

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.done }

// Close ends the session and its connection.
func (s *Session) Close() error {
	var err error
	s.close.Do(func() {
		err = s.mux.Close()
		s.conn.Close()
	})
	return err
}

// Stream is a framed, bidirectional stream of a session. Send may be called
// from one goroutine while another calls Recv.
type Stream struct {
	sess    *Session
	st      *yamux.Stream
	dr      *deadlineReader
	fr      *FrameReader
	mu      sync.Mutex
	buf     []byte
	written atomic.Int64 // frame bytes sent, headers included
}

func newStream(sess *Session, st *yamux.Stream) *Stream {
	dr := &deadlineReader{st: st}
	fr := NewFrameReader(dr, sess.cfg.MaxFrameSize)
	fr.budget = sess.frames
	return &Stream{sess: sess, st: st, dr: dr, fr: fr}
}

// ID returns the stream's yamux stream ID: the agent's streams are odd,
// counting from 1 in the order it opened them (DATA_OPEN's trailer names
// a control stream by it).
func (s *Stream) ID() uint32 { return s.st.StreamID() }

// BytesWritten returns the bytes of the frames this end sent on the
// stream, their headers included (not yamux's or TLS's framing).
func (s *Stream) BytesWritten() int64 { return s.written.Load() }

// BytesRead returns the bytes this end read from the stream.
func (s *Stream) BytesRead() int64 { return s.dr.read.Load() }

// Send writes one message as a single frame. It waits for window space
// as long as the peer takes to read (see SendWithin).
func (s *Stream) Send(m Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.send(m)
}

// SendWithin is Send, failing with ErrNotReading (naming what) when the
// frame is not taken within d: a peer that stops reading fills the
// stream's window, and Send would wait for it forever. The stream is out
// of step after such a failure (part of the frame may be sent).
func (s *Stream) SendWithin(d time.Duration, what string, m Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.SetWriteDeadline(time.Now().Add(d))
	defer s.st.SetWriteDeadline(time.Time{})
	err := s.send(m)
	if err != nil && errors.Is(err, yamux.ErrTimeout) {
		return fmt.Errorf("%w: %s not taken within %v", ErrNotReading, what, d)
	}
	return err
}

// SendAll sends ms in order with one write: small frames sent one by one
// each wait their turn on the connection (behind the data streams, and the
// bandwidth limit), together they wait once.
func (s *Stream) SendAll(ms []Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buf[:0]
	for _, m := range ms {
		start := len(b)
		b = AppendFrameHeader(b, m.FrameType(), 0)
		b = m.AppendPayload(b)
		n := len(b) - start - HeaderSize
		if uint64(n) > uint64(s.fr.max) {
			return fmt.Errorf("send %v: %w: %d bytes, limit %d", m.FrameType(), ErrFrameTooLarge, n, s.fr.max)
		}
		AppendFrameHeader(b[start:start], m.FrameType(), n)
	}
	if cap(b) <= 2<<20 {
		s.buf = b
	}
	if len(b) == 0 {
		return nil
	}
	n, err := s.st.Write(b)
	s.written.Add(int64(n))
	if err != nil {
		return fmt.Errorf("send %d frames: %w", len(ms), s.sess.cause(err))
	}
	return nil
}

func (s *Stream) send(m Message) error {
	b := AppendFrameHeader(s.buf[:0], m.FrameType(), 0)
	b = m.AppendPayload(b)
	n := len(b) - HeaderSize
	if uint64(n) > uint64(s.fr.max) {
		return fmt.Errorf("send %v: %w: %d bytes, limit %d", m.FrameType(), ErrFrameTooLarge, n, s.fr.max)
	}
	AppendFrameHeader(b[:0], m.FrameType(), n)
	if cap(b) <= 2<<20 {
		s.buf = b
	}
	w, err := s.st.Write(b)
	s.written.Add(int64(w))
	if err != nil {
		return fmt.Errorf("send %v: %w", m.FrameType(), s.sess.cause(err))
	}
	return nil
}

// SendError sends an ERROR frame, ignoring failures: it is the last word.
// A peer that does not take it within Config.WriteTimeout does not get it.
func (s *Stream) SendError(code ErrorCode, format string, a ...any) {
	_ = s.SendWithin(s.sess.cfg.WriteTimeout, "ERROR", ErrorMsg{Code: code, Message: fmt.Sprintf(format, a...)})
}

// Recv reads the next message. An ERROR frame from the peer is returned as
// a *RemoteError. A Chunk's Data is valid until the next Recv.
func (s *Stream) Recv() (Message, error) {
	t, payload, err := s.fr.Next()
	if err != nil {
		return nil, s.sess.cause(err)
	}
	m, err := Decode(t, payload)
	if err != nil {
		return nil, err
	}
	if e, ok := m.(ErrorMsg); ok {
		return nil, &RemoteError{Code: e.Code, Message: e.Message}
	}
	return m, nil
}

// RecvWithin is Recv, failing with ErrIdle (naming what, e.g. "HELLO")
// when no byte of the next frame came for d; a frame still arriving keeps
// it waiting. The deadline applies to this call only.
func (s *Stream) RecvWithin(d time.Duration, what string) (Message, error) {
	s.dr.idle = d
	defer func() { s.dr.idle = 0; s.st.SetReadDeadline(time.Time{}) }()
	m, err := s.Recv()
	if err != nil && errors.Is(err, yamux.ErrTimeout) {
		return nil, fmt.Errorf("%w: no %s within %v", ErrIdle, what, d)
	}
	return m, err
}

// deadlineReader re-arms the stream's read deadline before every read
// while idle is set: the deadline bounds silence, not the frame's length.
type deadlineReader struct {
	st      *yamux.Stream
	idle    time.Duration // only touched by the reading goroutine
	read    atomic.Int64
	aborted atomic.Bool
}

// ErrStreamAborted is returned by a stream's Recv and Send after Abort.
var ErrStreamAborted = errors.New("stream aborted by this end")

func (r *deadlineReader) Read(p []byte) (int, error) {
	if r.aborted.Load() {
		return 0, ErrStreamAborted
	}
	if r.idle > 0 {
		r.st.SetReadDeadline(time.Now().Add(r.idle))
	}
	n, err := r.st.Read(p)
	r.read.Add(int64(n))
	return n, err
}

// Release gives back the frame buffer the last Recv returned (a Chunk's
// Data) before the next Recv, so that a stream that waits does not hold it.
func (s *Stream) Release() { s.fr.release() }

// CloseWrite says this end sends nothing more; the peer's Recv sees io.EOF.
func (s *Stream) CloseWrite() error { return s.st.Close() }

// Abort ends the stream at once on this end: a Recv or Send waiting on it
// returns (ErrStreamAborted, or a timeout), and the stream is closed. It
// ends one round's streams on a session other rounds go on using.
func (s *Stream) Abort() {
	s.dr.aborted.Store(true)
	s.st.SetDeadline(time.Unix(1, 0))
	s.st.Close()
}

// Close closes the stream.
func (s *Stream) Close() error {
	s.fr.release()
	return s.st.Close()
}

// LoadTLS builds a TLS 1.3 configuration with mutual authentication from
// PEM files: this end's certificate and key, and the CA that signs the
// peer's certificate. server selects which side's checks apply.
func LoadTLS(certFile, keyFile, caFile string, server bool) (*tls.Config, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("TLS needs all of --tls-cert, --tls-key and --tls-ca")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s / key %s: %w", certFile, keyFile, err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("read TLS CA %s: no PEM certificate found", caFile)
	}
	return NewTLS(cert, pool, server), nil
}

// NewTLS builds the TLS 1.3 mutual-authentication configuration from a
// loaded certificate and CA pool.
func NewTLS(cert tls.Certificate, ca *x509.CertPool, server bool) *tls.Config {
	c := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
	}
	if server {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = ca
	} else {
		c.RootCAs = ca
	}
	return c
}

// IsConnLost reports whether err means the connection or session died
// (the peer went away, the network failed, or the session was closed),
// as opposed to an error the peer reported or a protocol violation.
func IsConnLost(err error) bool {
	return errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, yamux.ErrStreamClosed) ||
		errors.Is(err, yamux.ErrConnectionReset) ||
		errors.Is(err, yamux.ErrConnectionWriteTimeout) || errors.Is(err, yamux.ErrKeepAliveTimeout) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, ErrStalled) || errors.Is(err, ErrSessionEnded)
}
