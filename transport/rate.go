package transport

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// ParseRate parses a bandwidth such as "100Mbit", "12MiB", "500k" or
// "1.5Gbit" into bytes per second. Units: bit, kbit, Mbit, Gbit (powers of
// 1000, bits); B, k/kB, M/MB, G/GB (powers of 1000, bytes); KiB, MiB, GiB
// (powers of 1024, bytes). A bare number is bytes per second. An optional
// "/s" or "ps" suffix is accepted. "0" means unlimited.
func ParseRate(s string) (float64, error) {
	in := s
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(strings.TrimSuffix(s, "/s"), "ps")
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bandwidth %q: want a number with a unit such as 100Mbit or 12MiB", in)
	}
	mult, ok := map[string]float64{
		"": 1, "B": 1,
		"k": 1e3, "K": 1e3, "kB": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9,
		"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
		"bit": 1.0 / 8, "kbit": 1e3 / 8, "Kbit": 1e3 / 8, "Mbit": 1e6 / 8, "Gbit": 1e9 / 8,
		"kb": 1e3 / 8, "Mb": 1e6 / 8, "Gb": 1e9 / 8,
	}[unit]
	if !ok {
		return 0, fmt.Errorf("bandwidth %q: unknown unit %q (use bit, kbit, Mbit, Gbit, B, kB, MB, GB, KiB, MiB or GiB)", in, unit)
	}
	return v * mult, nil
}

// countingConn counts the bytes that cross a connection and, if limiter
// is set, paces writes to its rate.
type countingConn struct {
	net.Conn
	limiter *rate.Limiter
	written atomic.Int64
	read    atomic.Int64
	paced   atomic.Int64 // bytes the limiter let through
	// lastRead is when bytes last came from the peer (UnixNano), for the
	// stall watchdog (Config.StallTimeout).
	lastRead atomic.Int64
}

func newCountingConn(c net.Conn, bytesPerSec float64) *countingConn {
	return &countingConn{Conn: c, limiter: newLimiter(bytesPerSec)}
}

// newLimiter returns a limiter of bytesPerSec, nil if it is not positive.
func newLimiter(bytesPerSec float64) *rate.Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	burst := int(min(max(bytesPerSec/20, 16<<10), 1<<20))
	return rate.NewLimiter(rate.Limit(bytesPerSec), burst)
}

// Pacer paces the writes of any number of connections to one shared rate
// (e.g. every connection of an HTTP client's pool).
type Pacer struct{ l *rate.Limiter }

// NewPacer returns a Pacer of bytesPerSec; nil (which paces nothing) if
// bytesPerSec is not positive.
func NewPacer(bytesPerSec float64) *Pacer {
	if bytesPerSec <= 0 {
		return nil
	}
	return &Pacer{l: newLimiter(bytesPerSec)}
}

// Conn returns c with its writes paced; a nil Pacer returns c.
func (p *Pacer) Conn(c net.Conn) net.Conn {
	if p == nil {
		return c
	}
	return &countingConn{Conn: c, limiter: p.l}
}

func (c *countingConn) Write(p []byte) (int, error) {
	if c.limiter == nil {
		n, err := c.Conn.Write(p)
		c.written.Add(int64(n))
		return n, err
	}
	var total int
	for len(p) > 0 {
		n := min(len(p), c.limiter.Burst())
		if err := c.limiter.WaitN(context.Background(), n); err != nil {
			return total, err
		}
		c.paced.Add(int64(n))
		w, err := c.Conn.Write(p[:n])
		total += w
		c.written.Add(int64(w))
		if err != nil {
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.read.Add(int64(n))
		c.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}
