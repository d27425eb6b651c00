package delayproxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(s).Read(b)
	return b
}

// startTarget serves handle on a loopback listener until the test ends.
func startTarget(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

func start(t *testing.T, cfg Config) *Proxy {
	t.Helper()
	p, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return p
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// writeSlices writes data in pseudo-random slices of 1 byte to 100 KiB,
// then half-closes c.
func writeSlices(c net.Conn, data []byte, seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 0))
	for len(data) > 0 {
		n := min(len(data), 1+r.IntN(100<<10))
		if _, err := c.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return c.(interface{ CloseWrite() error }).CloseWrite()
}

// TestIntegrity sends 32 MiB each way at once and checks both arrive
// intact, also with a budget so small that back-pressure is constant.
func TestIntegrity(t *testing.T) {
	const size = 32 << 20
	up, down := randBytes(1, size), randBytes(2, size)
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no delay", Config{}},
		{"5ms", Config{Delay: 5 * time.Millisecond}},
		{"1ms small budget", Config{Delay: time.Millisecond, MaxInFlight: 64 << 10, BufferSize: 4 << 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan []byte, 1)
			tc.cfg.Target = startTarget(t, func(c net.Conn) {
				werr := make(chan error, 1)
				go func() { werr <- writeSlices(c, down, 3) }()
				b, err := io.ReadAll(c)
				if err != nil {
					t.Errorf("target read: %v", err)
				}
				if err := <-werr; err != nil {
					t.Errorf("target write: %v", err)
				}
				got <- b
			})
			p := start(t, tc.cfg)
			c := dial(t, p.Addr())
			werr := make(chan error, 1)
			go func() { werr <- writeSlices(c, up, 4) }()
			b, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("client read: %v", err)
			}
			if err := <-werr; err != nil {
				t.Fatalf("client write: %v", err)
			}
			if !bytes.Equal(b, down) {
				t.Errorf("client received %d bytes that differ from the %d sent", len(b), len(down))
			}
			if b := <-got; !bytes.Equal(b, up) {
				t.Errorf("target received %d bytes that differ from the %d sent", len(b), len(up))
			}
			if p.BytesUp() != size || p.BytesDown() != size {
				t.Errorf("counted %d bytes up and %d down, want %d each", p.BytesUp(), p.BytesDown(), size)
			}
			if max := p.cfg.MaxInFlight; p.peak.Load() > max {
				t.Errorf("%d bytes queued in one direction, budget %d", p.peak.Load(), max)
			}
		})
	}
}

// TestHalfClose checks that a half-close reaches the far side after the
// data written before it, no sooner than the delay, and leaves the other
// direction open.
func TestHalfClose(t *testing.T) {
	const delay = 20 * time.Millisecond
	data := randBytes(5, 1<<20)
	var closedAt time.Time
	var mu sync.Mutex
	target := startTarget(t, func(c net.Conn) {
		b, err := io.ReadAll(c)
		eofAt := time.Now()
		if err != nil || !bytes.Equal(b, data) {
			t.Errorf("target read %d bytes, err %v; want the %d sent, then EOF", len(b), err, len(data))
		}
		mu.Lock()
		if d := eofAt.Sub(closedAt); d < delay {
			t.Errorf("EOF arrived %v after the half-close; delay is %v", d, delay)
		}
		mu.Unlock()
		if _, err := c.Write([]byte("bye")); err != nil {
			t.Errorf("write after the peer's half-close: %v", err)
		}
		c.(*net.TCPConn).CloseWrite()
	})
	p := start(t, Config{Target: target, Delay: delay})
	c := dial(t, p.Addr())
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	closedAt = time.Now()
	mu.Unlock()
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "bye" {
		t.Fatalf("client read %q, err %v; want \"bye\", then EOF", b, err)
	}
}

// TestRoundTripTime checks that every 1-byte ping-pong takes at least
// twice the delay.
func TestRoundTripTime(t *testing.T) {
	const delay = 10 * time.Millisecond
	target := startTarget(t, func(c net.Conn) { io.Copy(c, c) })
	p := start(t, Config{Target: target, Delay: delay})
	c := dial(t, p.Addr())
	b := []byte{0}
	for i := range 10 {
		b[0] = byte(i)
		t0 := time.Now()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		rtt := time.Since(t0)
		if b[0] != byte(i) {
			t.Fatalf("ping %d came back as %d", i, b[0])
		}
		if rtt < 2*delay {
			t.Errorf("ping %d: round trip %v, want >= %v", i, rtt, 2*delay)
		}
	}
}

// TestBackpressure checks the budget: one direction never queues more than
// MaxInFlight bytes, so N bytes take at least N/MaxInFlight delays.
func TestBackpressure(t *testing.T) {
	const (
		delay  = 50 * time.Millisecond
		budget = 128 << 10
		size   = 2 << 20
	)
	data := randBytes(6, size)
	done := make(chan time.Time, 1)
	target := startTarget(t, func(c net.Conn) {
		b, err := io.ReadAll(c)
		done <- time.Now()
		if err != nil || !bytes.Equal(b, data) {
			t.Errorf("target read %d bytes, err %v; want the %d sent", len(b), err, len(data))
		}
	})
	p := start(t, Config{Target: target, Delay: delay, MaxInFlight: budget, BufferSize: 16 << 10})
	c := dial(t, p.Addr())
	t0 := time.Now()
	if err := writeSlices(c, data, 7); err != nil {
		t.Fatal(err)
	}
	elapsed := (<-done).Sub(t0)
	if peak := p.peak.Load(); peak > budget || peak == 0 {
		t.Errorf("peak queued %d bytes, budget %d", peak, budget)
	}
	if least := time.Duration(size / budget * int64(delay)); elapsed < least {
		t.Errorf("%d bytes through a %d-byte budget with %v delay took %v, want >= %v", size, budget, delay, elapsed, least)
	}
}

// TestCloseEndsConnections checks that closing the proxy, or ending its
// context, ends the connections passing through it on both sides.
func TestCloseEndsConnections(t *testing.T) {
	for _, how := range []string{"Close", "context"} {
		t.Run(how, func(t *testing.T) {
			targetEnd := make(chan error, 1)
			target := startTarget(t, func(c net.Conn) {
				b := make([]byte, 1)
				if _, err := io.ReadFull(c, b); err != nil {
					t.Errorf("target: %v", err)
				}
				c.Write(b)
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, err := c.Read(b)
				targetEnd <- err
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p, err := Start(ctx, Config{Target: target, Delay: 5 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			c := dial(t, p.Addr())
			b := []byte{1}
			if _, err := c.Write(b); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, b); err != nil {
				t.Fatal(err)
			}
			if how == "Close" {
				if err := p.Close(); err != nil {
					t.Fatal(err)
				}
			} else {
				cancel()
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(b); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("client read after %s: %v, want the connection closed", how, err)
			}
			if err := <-targetEnd; err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("target read after %s: %v, want the connection closed", how, err)
			}
			if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
				c.Close()
				t.Errorf("proxy still accepts after %s", how)
			}
		})
	}
}

func TestConfigRejected(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Target: "127.0.0.1:1", Delay: -time.Millisecond},
		{Target: "127.0.0.1:1", BufferSize: 100},
		{Target: "127.0.0.1:1", BufferSize: 1 << 20, MaxInFlight: 1 << 10},
	} {
		if p, err := Start(context.Background(), cfg); !errors.Is(err, ErrConfig) {
			if p != nil {
				p.Close()
			}
			t.Errorf("Start(%+v): %v, want ErrConfig", cfg, err)
		}
	}
}

// TestUnreachableTarget checks that a client of an unreachable target sees
// its connection fail rather than hang.
func TestUnreachableTarget(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := start(t, Config{Target: addr})
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		return // reset before the connect returned
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read through a proxy to a closed port: %v, want the connection closed", err)
	}
}

// A stalled proxy forwards nothing more, in either direction, and closes
// nothing: the client's read waits (here until its deadline) instead of
// seeing EOF or a reset.
func TestStall(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c) // echo
	}()
	p, err := Start(t.Context(), Config{Target: ln.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 5)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("before the stall: %q, %v", buf, err)
	}
	p.Stall()
	if _, err := c.Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	n, err := c.Read(buf)
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("stalled proxy: read %d bytes, %v; want nothing and no end", n, err)
	}
}
