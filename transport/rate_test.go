package transport

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
)

func TestParseRate(t *testing.T) {
	cases := []struct {
		in   string
		want float64
	}{
		{"100Mbit", 12.5e6},
		{"12MiB", 12582912},
		{"500k", 500e3},
		{"1.5Gbit", 187.5e6},
		{"0", 0},
		{"10MB/s", 10e6},
		{"100Mbps", 12.5e6},
		{"100MBps", 100e6},
		{"64KiB", 65536},
		{"2GiB", 2 << 30},
		{"8kbit", 1000},
		{"8Kbit", 1000},
		{"1G", 1e9},
		{"1GB", 1e9},
		{"800bit", 100},
		{"1234", 1234},
		{"1234B", 1234},
		{" 10 MiB ", 10 << 20},
		{"0.5M", 500e3},
	}
	for _, tc := range cases {
		got, err := ParseRate(tc.in)
		if err != nil {
			t.Errorf("ParseRate(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseRate(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	for _, in := range []string{"", "abc", "-5M", "10 parsecs", "M", "1.2.3M", "1e6", "NaN", "Inf", "5 mbit", "10MiB/h", "1" + string(make([]byte, 400))} {
		if got, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) = %v, want an error", in, got)
		}
	}
}

// recordConn is a net.Conn that remembers the size of every Write that
// reaches it.
type recordConn struct {
	net.Conn
	mu     sync.Mutex
	writes []int
}

func (r *recordConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.writes = append(r.writes, len(p))
	r.mu.Unlock()
	return r.Conn.Write(p)
}

// The counters are exact, with and without a limit, and a limited write
// reaches the connection in pieces no larger than the limiter's burst.
func TestCountingConn(t *testing.T) {
	cases := []struct {
		name  string
		rate  float64
		burst int // 0: no limiter
	}{
		{"unlimited", 0, 0},
		{"1 GB/s", 1e9, 1 << 20},
		{"2 MiB/s", 2 << 20, 2 << 20 / 20},
		// Bursts smaller than a write: every write is split (and, past the
		// first burst, paced: this case takes about 0.2 s).
		{"400 kB/s", 400e3, 20e3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			rec := &recordConn{Conn: a}
			cw := newCountingConn(rec, tc.rate)
			cr := newCountingConn(b, 0)
			if tc.burst == 0 {
				if cw.limiter != nil {
					t.Fatal("limiter without a rate")
				}
			} else if cw.limiter == nil || cw.limiter.Burst() != tc.burst {
				t.Fatalf("burst %v, want %d", cw.limiter, tc.burst)
			}
			// Within the first burst at 2 MiB/s and above, so those cases
			// never wait for tokens.
			data := seeded(1, 100_000)
			var got []byte
			done := make(chan error, 1)
			go func() {
				var err error
				got, err = io.ReadAll(cr)
				done <- err
			}()
			for off := 0; off < len(data); {
				n := min(len(data)-off, 30_000)
				if w, err := cw.Write(data[off : off+n]); w != n || err != nil {
					t.Fatalf("Write = %d, %v", w, err)
				}
				off += n
			}
			cw.Close()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("bytes differ")
			}
			if cw.written.Load() != int64(len(data)) || cr.read.Load() != int64(len(data)) {
				t.Fatalf("written %d, read %d, want %d", cw.written.Load(), cr.read.Load(), len(data))
			}
			if cw.read.Load() != 0 || cr.written.Load() != 0 {
				t.Fatalf("counted traffic in the wrong direction")
			}
			if tc.burst == 0 {
				return
			}
			for _, w := range rec.writes {
				if w > tc.burst {
					t.Fatalf("a write of %d bytes exceeds the burst %d", w, tc.burst)
				}
			}
			if want := (len(data) + tc.burst - 1) / tc.burst; len(rec.writes) < want {
				t.Fatalf("%d writes of at most %d bytes carried %d bytes", len(rec.writes), tc.burst, len(data))
			}
		})
	}
}

func TestLimiterBurst(t *testing.T) {
	cases := []struct {
		rate  float64
		burst int
	}{
		{1, 16 << 10}, // never below 16 KiB
		{100e3, 16 << 10},
		{1e6, 50e3}, // 1/20 s of the rate
		{2 << 20, 104857},
		{20 << 20, 1 << 20},
		{1e10, 1 << 20}, // never above 1 MiB
	}
	for _, tc := range cases {
		c := newCountingConn(nil, tc.rate)
		if b := c.limiter.Burst(); b != tc.burst {
			t.Errorf("rate %v: burst %d, want %d", tc.rate, b, tc.burst)
		}
		if l := float64(c.limiter.Limit()); l != tc.rate {
			t.Errorf("rate %v: limit %v", tc.rate, l)
		}
	}
	// A write error is returned with the bytes that got through.
	a, b := net.Pipe()
	b.Close()
	c := newCountingConn(a, 1e9)
	if n, err := c.Write(make([]byte, 10)); err == nil || n != 0 || c.written.Load() != 0 {
		t.Errorf("write to a closed pipe: %d, %v, counted %d", n, err, c.written.Load())
	}
}

// A Pacer's connections share one limiter; a nil Pacer leaves connections
// as they are.
func TestPacer(t *testing.T) {
	if p := NewPacer(0); p != nil {
		t.Fatalf("NewPacer(0) = %v, want nil", p)
	}
	a, _ := net.Pipe()
	defer a.Close()
	var none *Pacer
	if none.Conn(a) != a {
		t.Fatal("a nil Pacer wrapped the connection")
	}
	p := NewPacer(2 << 20)
	c1, c2 := p.Conn(a).(*countingConn), p.Conn(a).(*countingConn)
	if c1.limiter == nil || c1.limiter != c2.limiter {
		t.Fatal("connections of one Pacer do not share its limiter")
	}
	if c1.limiter.Burst() != 2<<20/20 {
		t.Fatalf("burst %d", c1.limiter.Burst())
	}
	// Data passes unchanged.
	x, y := net.Pipe()
	w := p.Conn(x)
	data := seeded(2, 50_000)
	done := make(chan []byte, 1)
	go func() { got, _ := io.ReadAll(y); done <- got }()
	if n, err := w.Write(data); n != len(data) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	w.Close()
	if got := <-done; !bytes.Equal(got, data) {
		t.Fatal("bytes differ")
	}
}
