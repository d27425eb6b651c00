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
	// KeepAlive is the interval of yamux keep-alive pings.
	KeepAlive time.Duration
	// Logger receives yamux's diagnostics; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults: 4 data streams, 8 MiB stream
// windows, 9 MiB frames, 30 s handshake, 5 min write timeout.
func DefaultConfig() Config {
	return Config{
		Streams:          4,
		MaxFrameSize:     DefaultMaxFrameSize,
		StreamWindow:     8 << 20,
		HandshakeTimeout: 30 * time.Second,
		WriteTimeout:     5 * time.Minute,
		KeepAlive:        30 * time.Second,
	}
}

// ErrNoTLS is returned by Validate when neither TLS nor Insecure is set.
var ErrNoTLS = errors.New("no TLS configuration: give --tls-cert, --tls-key and --tls-ca, or --insecure for plain TCP")

// Validate checks c.
func (c Config) Validate() error {
	switch {
	case c.TLS == nil && !c.Insecure:
		return ErrNoTLS
	case c.TLS != nil && c.Insecure:
		return errors.New("both TLS and --insecure given: choose one")
	case c.Streams < 1 || c.Streams > 64:
		return fmt.Errorf("streams %d: want 1..64", c.Streams)
	case c.MaxFrameSize < 1<<20+ChunkHeaderSize || c.MaxFrameSize > MaxFrameSizeLimit:
		return fmt.Errorf("max frame size %d: want %d..%d", c.MaxFrameSize, 1<<20+ChunkHeaderSize, MaxFrameSizeLimit)
	case c.BandwidthLimit < 0:
		return fmt.Errorf("bandwidth limit %v: want >= 0", c.BandwidthLimit)
	case c.StreamWindow < 256<<10:
		return fmt.Errorf("stream window %d: want >= 256 KiB", c.StreamWindow)
	case c.HandshakeTimeout <= 0 || c.WriteTimeout <= 0 || c.KeepAlive <= 0:
		return errors.New("timeouts must be positive")
	}
	return nil
}

func (c Config) yamux() *yamux.Config {
	y := yamux.DefaultConfig()
	y.MaxStreamWindowSize = c.StreamWindow
	y.ConnectionWriteTimeout = c.WriteTimeout
	y.KeepAliveInterval = c.KeepAlive
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
	cfg   Config
	raw   *countingConn
	conn  net.Conn // raw, or TLS over raw
	mux   *yamux.Session
	peer  Identity
	close sync.Once
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
	s := &Session{cfg: cfg, raw: newCountingConn(c, cfg.BandwidthLimit)}
	s.conn = s.raw
	if cfg.TLS != nil {
		tc := cfg.TLS.Clone()
		var t *tls.Conn
		if client {
			if tc.ServerName == "" && addr != "" {
				if host, _, err := net.SplitHostPort(addr); err == nil {
					tc.ServerName = host
				}
			}
			t = tls.Client(s.raw, tc)
		} else {
			t = tls.Server(s.raw, tc)
		}
		if err := t.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("TLS handshake with %s: %w (both ends need certificates from the same CA; a peer started with --insecure cannot talk TLS)", c.RemoteAddr(), err)
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
	}
	var err error
	if client {
		s.mux, err = yamux.Client(s.conn, cfg.yamux())
	} else {
		s.mux, err = yamux.Server(s.conn, cfg.yamux())
	}
	if err != nil {
		return nil, fmt.Errorf("start multiplexer: %w", err)
	}
	return s, nil
}

// Peer returns the identity from the peer's certificate (empty without TLS).
func (s *Session) Peer() Identity { return s.peer }

// RemoteAddr returns the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.raw.RemoteAddr() }

// WireBytesWritten returns the bytes this end wrote to the TCP connection,
// TLS records, yamux headers and frames included.
func (s *Session) WireBytesWritten() int64 { return s.raw.written.Load() }

// WireBytesRead returns the bytes this end read from the TCP connection.
func (s *Session) WireBytesRead() int64 { return s.raw.read.Load() }

// Open opens a new stream.
func (s *Session) Open(ctx context.Context) (*Stream, error) {
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	return newStream(st, s.cfg.MaxFrameSize), nil
}

// Accept waits for the peer to open a stream.
func (s *Session) Accept(ctx context.Context) (*Stream, error) {
	st, err := s.mux.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("accept stream: %w", err)
	}
	return newStream(st, s.cfg.MaxFrameSize), nil
}

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.mux.CloseChan() }

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
	st  *yamux.Stream
	fr  *FrameReader
	mu  sync.Mutex
	buf []byte
}

func newStream(st *yamux.Stream, max uint32) *Stream {
	return &Stream{st: st, fr: NewFrameReader(st, max)}
}

// Send writes one message as a single frame.
func (s *Stream) Send(m Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
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
	if _, err := s.st.Write(b); err != nil {
		return fmt.Errorf("send %v: %w", m.FrameType(), err)
	}
	return nil
}

// SendError sends an ERROR frame, ignoring failures: it is the last word.
func (s *Stream) SendError(code ErrorCode, format string, a ...any) {
	_ = s.Send(ErrorMsg{Code: code, Message: fmt.Sprintf(format, a...)})
}

// Recv reads the next message. An ERROR frame from the peer is returned as
// a *RemoteError. A Chunk's Data is valid until the next Recv.
func (s *Stream) Recv() (Message, error) {
	t, payload, err := s.fr.Next()
	if err != nil {
		return nil, err
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

// CloseWrite says this end sends nothing more; the peer's Recv sees io.EOF.
func (s *Stream) CloseWrite() error { return s.st.Close() }

// Close closes the stream.
func (s *Stream) Close() error { return s.st.Close() }

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
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
