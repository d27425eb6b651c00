package delayproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// Defaults of Config.
const (
	DefaultListen      = "127.0.0.1:0"
	DefaultBufferSize  = 64 << 10
	DefaultMaxInFlight = 64 << 20
	minBufferSize      = 1 << 10
)

// Config configures a Proxy.
type Config struct {
	// Listen is the address to accept connections on; default DefaultListen.
	Listen string
	// Target is the host:port every accepted connection is forwarded to.
	Target string
	// Delay is added to each direction: the round-trip time through the
	// proxy is at least 2×Delay. Zero forwards without delay.
	Delay time.Duration
	// MaxInFlight bounds the bytes read and not yet written in each
	// direction of a connection; a full direction stops reading until its
	// writer catches up. Default DefaultMaxInFlight (64 MiB), which allows
	// MaxInFlight/Delay bytes per second.
	MaxInFlight int64
	// BufferSize is the largest single read; default DefaultBufferSize.
	BufferSize int
	// Logger receives connection failures at debug level; nil discards them.
	Logger *slog.Logger
}

// ErrConfig is wrapped by every error about a Config.
var ErrConfig = errors.New("invalid delay proxy configuration")

func (c *Config) fill() error {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.BufferSize == 0 {
		c.BufferSize = DefaultBufferSize
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Target == "":
		return fmt.Errorf("%w: no target", ErrConfig)
	case c.Delay < 0:
		return fmt.Errorf("%w: negative delay %v", ErrConfig, c.Delay)
	case c.BufferSize < minBufferSize:
		return fmt.Errorf("%w: buffer size %d is below %d", ErrConfig, c.BufferSize, minBufferSize)
	case c.MaxInFlight < int64(c.BufferSize):
		return fmt.Errorf("%w: max in flight %d is below the buffer size %d", ErrConfig, c.MaxInFlight, c.BufferSize)
	}
	return nil
}

// Proxy forwards the connections it accepts to Config.Target, delaying
// both directions. It is safe for concurrent use.
type Proxy struct {
	cfg    Config
	ln     net.Listener
	pool   *bufPool
	cancel context.CancelFunc
	wg     sync.WaitGroup

	up, down atomic.Int64 // bytes written to the target, to the client
	peak     atomic.Int64 // most bytes ever queued in one direction

	closeOnce sync.Once
	closeErr  error

	stallOnce sync.Once
	stalled   chan struct{} // closed by Stall
}

// Start listens on cfg.Listen and forwards connections until Close is
// called or ctx ends.
func Start(ctx context.Context, cfg Config) (*Proxy, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("delay proxy: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &Proxy{cfg: cfg, ln: ln, pool: newBufPool(cfg.BufferSize), cancel: cancel, stalled: make(chan struct{})}
	context.AfterFunc(ctx, func() { ln.Close() })
	p.wg.Go(func() { p.serve(ctx) })
	return p, nil
}

// Addr is the address the proxy accepts connections on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// BytesUp is the number of bytes written to the target so far.
func (p *Proxy) BytesUp() int64 { return p.up.Load() }

// BytesDown is the number of bytes written back to clients so far.
func (p *Proxy) BytesDown() int64 { return p.down.Load() }

// Stall makes every connection, current and future, stop forwarding in
// both directions without closing anything: no FIN, no reset, the bytes
// already read are held. It stands in for a link that went dead (a lost
// route, a hung middlebox). Close ends the stalled connections.
func (p *Proxy) Stall() { p.stallOnce.Do(func() { close(p.stalled) }) }

// hold blocks while the proxy is stalled, until ctx ends; it reports
// whether it held.
func (p *Proxy) hold(ctx context.Context) bool {
	select {
	case <-p.stalled:
		<-ctx.Done()
		return true
	default:
		return false
	}
}

// Close stops accepting, closes every connection (bytes still queued are
// dropped) and returns once all of the proxy's goroutines have ended.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.cancel()
		if err := p.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			p.closeErr = err
		}
		p.wg.Wait()
	})
	return p.closeErr
}

func (p *Proxy) serve(ctx context.Context) {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			p.cfg.Logger.Debug("delay proxy: accept", "err", err)
			select { // e.g. out of file descriptors: do not spin
			case <-time.After(10 * time.Millisecond):
			case <-ctx.Done():
				return
			}
			continue
		}
		p.wg.Go(func() { p.handle(ctx, c) })
	}
}

// handle forwards one connection until both directions ended, either side
// failed or ctx ended.
func (p *Proxy) handle(ctx context.Context, client net.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	context.AfterFunc(ctx, func() { client.Close() })
	var d net.Dialer
	server, err := d.DialContext(ctx, "tcp", p.cfg.Target)
	if err != nil {
		p.cfg.Logger.Debug("delay proxy: dial target", "target", p.cfg.Target, "err", err)
		reset(client)
		return
	}
	context.AfterFunc(ctx, func() { server.Close() })

	var readers, writers sync.WaitGroup
	for _, dir := range []*direction{
		p.newDirection(client, server, &p.up),
		p.newDirection(server, client, &p.down),
	} {
		readers.Go(func() { dir.read(ctx) })
		writers.Go(func() {
			if err := dir.write(ctx); err != nil && ctx.Err() == nil {
				p.cfg.Logger.Debug("delay proxy: connection failed", "client", client.RemoteAddr(), "err", err)
				reset(client)
				reset(server)
				cancel()
			}
		})
	}
	writers.Wait() // both half-closes delivered, or failed, or canceled
	cancel()
	readers.Wait()
}

// reset makes the next Close of c send a TCP reset, so a failure on one
// side is seen as a failure on the other, not as a clean end.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// direction moves bytes from src to dst, each Delay after it was read.
type direction struct {
	p        *Proxy
	src, dst net.Conn
	count    *atomic.Int64
	budget   *semaphore.Weighted
	queued   atomic.Int64
	q        queue
}

func (p *Proxy) newDirection(src, dst net.Conn, count *atomic.Int64) *direction {
	return &direction{p: p, src: src, dst: dst, count: count,
		budget: semaphore.NewWeighted(p.cfg.MaxInFlight), q: queue{wake: make(chan struct{}, 1)}}
}

// item is one read, or the end of the stream (end: io.EOF for a
// half-close, another error for a failure), to be written at due.
type item struct {
	buf *[]byte
	n   int
	due time.Time
	end error
}

func (d *direction) read(ctx context.Context) {
	pool := d.p.pool
	full := int64(d.p.cfg.BufferSize)
	rb := pool.get(pool.largest())
	defer func() {
		if rb != nil {
			pool.put(rb)
		}
	}()
	for {
		// The read buffer counts against the budget from before the read,
		// so every byte is held in budgeted memory for at least Delay.
		if d.budget.Acquire(ctx, full) != nil {
			return
		}
		if d.p.hold(ctx) {
			d.budget.Release(full)
			return
		}
		n, err := d.src.Read(*rb)
		if d.p.hold(ctx) {
			d.budget.Release(full)
			return
		}
		at := time.Now()
		if n > 0 {
			b := rb
			if k := pool.class(n); k != pool.largest() {
				b = pool.get(k)
				copy(*b, (*rb)[:n])
			} else {
				rb = nil
			}
			size := int64(cap(*b))
			d.budget.Release(full - size)
			d.p.notePeak(d.queued.Add(size))
			d.q.push(item{buf: b, n: n, due: at.Add(d.p.cfg.Delay)})
			if rb == nil {
				rb = pool.get(pool.largest())
			}
		} else {
			d.budget.Release(full)
		}
		if err != nil {
			if ctx.Err() == nil {
				d.q.push(item{due: at.Add(d.p.cfg.Delay), end: err})
			}
			return
		}
	}
}

// write returns nil once it delivered a half-close, ctx's error when
// canceled, and any other error when the connection failed.
func (d *direction) write(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		it, ok := d.q.pop(ctx)
		if !ok {
			return ctx.Err()
		}
		if wait := time.Until(it.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if d.p.hold(ctx) {
			return ctx.Err()
		}
		if it.buf == nil {
			if it.end != io.EOF {
				return fmt.Errorf("read: %w", it.end)
			}
			if cw, ok := d.dst.(interface{ CloseWrite() error }); ok {
				if err := cw.CloseWrite(); err != nil {
					return fmt.Errorf("half-close: %w", err)
				}
			}
			return nil
		}
		n, err := d.dst.Write((*it.buf)[:it.n])
		d.count.Add(int64(n))
		size := int64(cap(*it.buf))
		d.queued.Add(-size)
		d.budget.Release(size)
		d.p.pool.put(it.buf)
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
	}
}

func (p *Proxy) notePeak(n int64) {
	for {
		old := p.peak.Load()
		if n <= old || p.peak.CompareAndSwap(old, n) {
			return
		}
	}
}

// queue is a FIFO of items with one consumer; its length is bounded by
// the direction's budget, not here.
type queue struct {
	mu    sync.Mutex
	items []item
	head  int
	wake  chan struct{} // holds a token when items may have been pushed
}

func (q *queue) push(it item) {
	q.mu.Lock()
	if q.head > 0 && q.head >= len(q.items)/2 { // reuse the consumed front
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	q.items = append(q.items, it)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// pop waits for the next item; false once ctx ended.
func (q *queue) pop(ctx context.Context) (item, bool) {
	for {
		q.mu.Lock()
		if q.head < len(q.items) {
			it := q.items[q.head]
			q.items[q.head] = item{}
			q.head++
			if q.head == len(q.items) {
				q.items, q.head = q.items[:0], 0
			}
			q.mu.Unlock()
			return it, true
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-ctx.Done():
			return item{}, false
		}
	}
}

// bufPool pools buffers in a few size classes, the largest being the read
// size, so that a small read does not hold (or count as) a large buffer.
type bufPool struct {
	sizes []int
	pools []sync.Pool
}

func newBufPool(max int) *bufPool {
	var sizes []int
	for s := 512; s < max; s *= 8 {
		sizes = append(sizes, s)
	}
	sizes = append(sizes, max)
	bp := &bufPool{sizes: sizes, pools: make([]sync.Pool, len(sizes))}
	for k, s := range sizes {
		bp.pools[k].New = func() any { b := make([]byte, s); return &b }
	}
	return bp
}

func (bp *bufPool) largest() int { return len(bp.sizes) - 1 }

// class is the smallest class holding n bytes.
func (bp *bufPool) class(n int) int {
	for k, s := range bp.sizes {
		if n <= s {
			return k
		}
	}
	return bp.largest()
}

func (bp *bufPool) get(k int) *[]byte { return bp.pools[k].Get().(*[]byte) }

func (bp *bufPool) put(b *[]byte) {
	for k, s := range bp.sizes {
		if cap(*b) == s {
			*b = (*b)[:s]
			bp.pools[k].Put(b)
			return
		}
	}
}
