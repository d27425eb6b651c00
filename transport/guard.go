package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// ErrTLS is wrapped by every failure to set up a session's security: a
// certificate refused by either end, or one end speaking TLS and the other
// plain TCP. The message says which and what to check; it is not retryable.
var ErrTLS = errors.New("TLS setup failed")

// tlsFailure explains a failed TLS handshake (or, after = true, the first
// round trip after it, where TLS 1.3 reports a refused client certificate)
// on the side that can act on it.
func tlsFailure(addr string, client bool, err error, after bool) error {
	msg := err.Error()
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	var hn x509.HostnameError
	local := errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &ci) || errors.As(err, &hn)
	remote := strings.Contains(msg, "remote error: tls:")
	eof := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.ErrClosedPipe) || IsConnLost(err)
	if client {
		switch {
		case local && errors.As(err, &hn):
			return fmt.Errorf("%w: the receiver at %s presented a certificate for other names (%w): dial a name or address its certificate holds", ErrTLS, addr, err)
		case local:
			return fmt.Errorf("%w: the receiver at %s presented a certificate this agent does not trust (%w): check --tls-ca, and that the receiver's certificate has not expired", ErrTLS, addr, err)
		case remote && strings.Contains(msg, "protocol version"):
			return fmt.Errorf("%w: the receiver at %s refused TLS 1.3 (%w)", ErrTLS, addr, err)
		case remote:
			return fmt.Errorf("%w: the receiver at %s rejected this agent's certificate (%w): check --tls-cert/--tls-key, and that the receiver's --tls-ca signed it and it has not expired", ErrTLS, addr, err)
		case eof && after:
			return fmt.Errorf("%w: the receiver at %s closed the session right after the TLS handshake (%w): it may have rejected this agent's certificate (check --tls-cert and the receiver's --tls-ca and log)", ErrTLS, addr, err)
		case eof || strings.Contains(msg, "does not look like a TLS handshake"):
			return fmt.Errorf("%w: the receiver at %s does not speak TLS (%w): it may be a plain receiver started with --insecure, or not a voldelta receiver", ErrTLS, addr, err)
		}
		return fmt.Errorf("%w: TLS handshake with the receiver at %s: %w", ErrTLS, addr, err)
	}
	switch {
	case local:
		return fmt.Errorf("%w: rejected the certificate of the agent at %s (%w): it is not signed by this receiver's --tls-ca, or has expired", ErrTLS, addr, err)
	case strings.Contains(msg, "didn't provide a certificate"):
		return fmt.Errorf("%w: the agent at %s sent no certificate (%w): give it --tls-cert and --tls-key", ErrTLS, addr, err)
	case strings.Contains(msg, "does not look like a TLS handshake"):
		return fmt.Errorf("%w: the client at %s did not speak TLS (%w): an agent started with --insecure, or not a voldelta agent", ErrTLS, addr, err)
	case remote:
		return fmt.Errorf("%w: the agent at %s rejected this receiver's certificate (%w): check --tls-cert and the agent's --tls-ca, and the name it dials", ErrTLS, addr, err)
	}
	return fmt.Errorf("TLS handshake with %s: %w", addr, err)
}

// plainFailure explains a failed start of a plain (--insecure) session:
// first holds the first bytes the client read from the receiver.
func plainFailure(addr string, client bool, err error, first []byte) error {
	if client {
		if len(first) >= 2 && (first[0] == 0x15 || first[0] == 0x16) && first[1] == 3 {
			return fmt.Errorf("%w: the receiver at %s speaks TLS; this agent was started with --insecure: give --tls-cert, --tls-key and --tls-ca", ErrTLS, addr)
		}
		if errors.Is(err, io.EOF) || IsConnLost(err) {
			return fmt.Errorf("%w: the receiver at %s closed the connection at once (%w): it may expect TLS (this agent was started with --insecure), or not be a voldelta receiver", ErrTLS, addr, err)
		}
		return fmt.Errorf("start session with the receiver at %s: %w", addr, err)
	}
	if errors.Is(err, errPeerTLS) {
		return fmt.Errorf("%w: the client at %s spoke TLS but this receiver is plain (--insecure): give the receiver --tls-cert, --tls-key and --tls-ca, or the agent --insecure", ErrTLS, addr)
	}
	return fmt.Errorf("read from client %s: %w", addr, err)
}

var errPeerTLS = errors.New("client spoke TLS")

// peekPlain reads the first byte a client sends to a plain receiver: yamux
// starts with version 0, TLS with a handshake record (0x16).
func peekPlain(c net.Conn) (net.Conn, error) {
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return nil, err
	}
	if b[0] == 0x16 {
		return nil, errPeerTLS
	}
	return &peekedConn{Conn: c, head: b[:]}, nil
}

// peekedConn returns head before what is left of Conn.
type peekedConn struct {
	net.Conn
	head []byte
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// recordingConn keeps the first bytes and the first error read from its
// connection, to explain why a session could not start.
type recordingConn struct {
	net.Conn
	mu   sync.Mutex
	head []byte
	err  error
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	if len(c.head) < 16 {
		c.head = append(c.head, p[:min(n, 16-len(c.head))]...)
	}
	if err != nil && c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	return n, err
}

func (c *recordingConn) readErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *recordingConn) first() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.head...)
}

// budget bounds the bytes of large frame payloads a session holds. A nil
// budget bounds nothing.
type budget struct {
	sem          *semaphore.Weighted
	ctx          context.Context
	cancel       context.CancelFunc
	now, peakVal atomic.Int64
}

func newBudget(n int64) *budget {
	ctx, cancel := context.WithCancel(context.Background())
	return &budget{sem: semaphore.NewWeighted(n), ctx: ctx, cancel: cancel}
}

// acquire waits for n bytes; it fails once the session ended.
func (b *budget) acquire(n int64) error {
	if b == nil {
		return nil
	}
	if err := b.sem.Acquire(b.ctx, n); err != nil {
		return fmt.Errorf("wait for frame memory: %w", ErrSessionEnded)
	}
	v := b.now.Add(n)
	for {
		p := b.peakVal.Load()
		if v <= p || b.peakVal.CompareAndSwap(p, v) {
			return nil
		}
	}
}

func (b *budget) release(n int64) {
	if b == nil || n == 0 {
		return
	}
	b.now.Add(-n)
	b.sem.Release(n)
}

func (b *budget) close() {
	if b != nil {
		b.cancel()
	}
}

func (b *budget) held() (int64, int64) {
	if b == nil {
		return 0, 0
	}
	return b.now.Load(), b.peakVal.Load()
}

// ErrSessionEnded is returned by a read that waited for frame memory when
// the session ended.
var ErrSessionEnded = errors.New("session ended")
