package chunk

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"sort"
	"sync"

	"github.com/restic/chunker"
	"golang.org/x/sync/errgroup"
)

// ScanOptions tune Scan. The zero value uses all cores.
type ScanOptions struct {
	// Workers is the number of segments chunked at once; 0 means GOMAXPROCS.
	Workers int
	// Progress, if set, is called with the number of bytes scanned so far,
	// in order, from the goroutine that calls emit.
	Progress func(scanned uint64)
	// Previous and Changed let a scan skip segments that did not change:
	// a segment that no Changed extent touches, and that Previous (a
	// manifest with the same Params) covers the same way, reuses
	// Previous's entries instead of being read. Changed must include every
	// byte that may differ from the volume Previous was made from — as
	// storage with changed-block tracking reports it (Longhorn's snapshot
	// chain); a missing extent would go unnoticed. A nil Changed reads
	// every segment.
	Previous *Manifest
	Changed  []Extent
}

// Extent is a byte range of a volume.
type Extent struct {
	Offset, Length uint64
}

// ScanStats counts what a scan found. Zero chunks are counted before they
// are coalesced into zero runs.
type ScanStats struct {
	DataChunks uint64
	DataBytes  uint64
	ZeroChunks uint64 // in reused segments: zero bytes / MinSize, rounded up per run
	ZeroBytes  uint64
	// ReusedSegments and ReusedBytes count what was taken from
	// ScanOptions.Previous instead of being read.
	ReusedSegments uint64
	ReusedBytes    uint64
}

// Chunks returns the number of chunks cut, data and zero.
func (s ScanStats) Chunks() uint64 { return s.DataChunks + s.ZeroChunks }

type segResult struct {
	entries []Entry
	stats   ScanStats
	err     error
}

// Scan cuts [0, size) of r into chunks with p and calls emit with every
// entry of the manifest in offset order, adjacent zero chunks coalesced into
// one zero run. Segments are chunked on opt.Workers goroutines; at most
// 2×Workers segments are in flight, so memory stays bounded whatever the
// size. Scan returns the first error of r, emit or ctx.
func Scan(ctx context.Context, r io.ReaderAt, size uint64, p Params, opt ScanOptions, emit func(Entry) error) (ScanStats, error) {
	if err := p.Validate(); err != nil {
		return ScanStats{}, err
	}
	workers := opt.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	nseg := (size + p.SegmentSize - 1) / p.SegmentSize
	window := uint64(2 * workers)

	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)

	results := make([]chan segResult, nseg)
	for i := range results {
		results[i] = make(chan segResult, 1)
	}
	tokens := make(chan struct{}, window) // one per segment in flight
	jobs := make(chan uint64)

	g.Go(func() error {
		defer close(jobs)
		for i := uint64(0); i < nseg; i++ {
			select {
			case tokens <- struct{}{}:
			case <-gctx.Done():
				return nil
			}
			select {
			case jobs <- i:
			case <-gctx.Done():
				return nil
			}
		}
		return nil
	})
	reuse := newReuser(p, size, opt.Previous, opt.Changed)
	for w := 0; w < workers; w++ {
		g.Go(func() error {
			sc := newSegmentScanner(p)
			for i := range jobs {
				off := i * p.SegmentSize
				n := min(p.SegmentSize, size-off)
				if entries, st, ok := reuse.segment(i); ok {
					results[i] <- segResult{entries: entries, stats: st}
					continue
				}
				entries, st, err := sc.scan(gctx, io.NewSectionReader(r, int64(off), int64(n)), off)
				results[i] <- segResult{entries, st, err}
			}
			return nil
		})
	}

	var total ScanStats
	emitErr := func() error {
		var pending *Entry // a zero run that may continue into the next segment
		flush := func() error {
			if pending == nil {
				return nil
			}
			e := *pending
			pending = nil
			return emit(e)
		}
		for i := uint64(0); i < nseg; i++ {
			var res segResult
			select {
			case res = <-results[i]:
			case <-gctx.Done():
				return gctx.Err()
			}
			<-tokens
			if res.err != nil {
				return res.err
			}
			total.DataChunks += res.stats.DataChunks
			total.DataBytes += res.stats.DataBytes
			total.ZeroChunks += res.stats.ZeroChunks
			total.ZeroBytes += res.stats.ZeroBytes
			total.ReusedSegments += res.stats.ReusedSegments
			total.ReusedBytes += res.stats.ReusedBytes
			for _, e := range res.entries {
				if e.Zero && pending != nil {
					pending.Length += e.Length
					continue
				}
				if err := flush(); err != nil {
					return err
				}
				if e.Zero {
					z := e
					pending = &z
					continue
				}
				if err := emit(e); err != nil {
					return err
				}
			}
			if opt.Progress != nil {
				opt.Progress(min(size, (i+1)*p.SegmentSize))
			}
		}
		return flush()
	}()
	cancel()
	if err := g.Wait(); err != nil && emitErr == nil {
		emitErr = err
	}
	if emitErr == nil {
		if err := parent.Err(); err != nil {
			emitErr = err
		}
	}
	return total, emitErr
}

// reuser finds the segments a scan may take from a previous manifest.
type reuser struct {
	p       Params
	size    uint64
	prev    *Manifest
	changed []Extent // sorted by offset
}

func newReuser(p Params, size uint64, prev *Manifest, changed []Extent) *reuser {
	if prev == nil || changed == nil || prev.Params != p {
		return nil
	}
	c := append([]Extent(nil), changed...)
	sort.Slice(c, func(i, j int) bool { return c[i].Offset < c[j].Offset })
	return &reuser{p: p, size: size, prev: prev, changed: c}
}

// segment returns segment i's entries from the previous manifest, zero
// runs cut at the segment's edges, if the segment may be reused.
func (u *reuser) segment(i uint64) ([]Entry, ScanStats, bool) {
	if u == nil {
		return nil, ScanStats{}, false
	}
	start := i * u.p.SegmentSize
	end := min(u.size, start+u.p.SegmentSize)
	if prevEnd := min(u.prev.Size, start+u.p.SegmentSize); prevEnd != end || start >= u.prev.Size {
		return nil, ScanStats{}, false // the segment's extent changed with the volume size
	}
	k := sort.Search(len(u.changed), func(k int) bool { return u.changed[k].Offset+u.changed[k].Length > start })
	if k < len(u.changed) && u.changed[k].Offset < end && u.changed[k].Length > 0 {
		return nil, ScanStats{}, false
	}
	prev := u.prev.Entries
	j := sort.Search(len(prev), func(j int) bool { return prev[j].End() > start })
	var out []Entry
	st := ScanStats{ReusedSegments: 1, ReusedBytes: end - start}
	for ; j < len(prev) && prev[j].Offset < end; j++ {
		e := prev[j]
		if e.Zero {
			lo, hi := max(e.Offset, start), min(e.End(), end)
			e.Offset, e.Length = lo, hi-lo
			st.ZeroBytes += e.Length
			st.ZeroChunks += (e.Length + uint64(u.p.MinSize) - 1) / uint64(u.p.MinSize)
		} else {
			st.DataChunks++
			st.DataBytes += e.Length
		}
		out = append(out, e)
	}
	return out, st, true
}

// segmentScanner chunks one segment at a time, reusing its buffers.
type segmentScanner struct {
	p   Params
	c   *chunker.Chunker
	buf []byte
}

func newSegmentScanner(p Params) *segmentScanner {
	return &segmentScanner{p: p, buf: make([]byte, 0, p.MaxSize)}
}

func (s *segmentScanner) scan(ctx context.Context, rd io.Reader, base uint64) ([]Entry, ScanStats, error) {
	if s.c == nil {
		s.c = chunker.NewWithBoundaries(rd, chunker.Pol(s.p.Polynomial), uint(s.p.MinSize), uint(s.p.MaxSize))
	} else {
		s.c.ResetWithBoundaries(rd, chunker.Pol(s.p.Polynomial), uint(s.p.MinSize), uint(s.p.MaxSize))
	}
	s.c.SetAverageBits(s.p.averageBits())
	var (
		entries []Entry
		st      ScanStats
		off     = base
	)
	for {
		if err := ctx.Err(); err != nil {
			return nil, st, err
		}
		c, err := s.c.Next(s.buf[:0])
		if err == io.EOF {
			return entries, st, nil
		}
		if err != nil {
			return nil, st, fmt.Errorf("read chunk at %d: %w", off, err)
		}
		e := Entry{Offset: off, Length: uint64(c.Length)}
		if IsZero(c.Data) {
			e.Zero = true
			st.ZeroChunks++
			st.ZeroBytes += e.Length
			if n := len(entries); n > 0 && entries[n-1].Zero {
				entries[n-1].Length += e.Length
			} else {
				entries = append(entries, e)
			}
		} else {
			e.ID = Sum(c.Data)
			st.DataChunks++
			st.DataBytes += e.Length
			entries = append(entries, e)
		}
		off += e.Length
		s.buf = c.Data
	}
}

var zeros = make([]byte, 1<<20)

// IsZero reports whether every byte of b is zero.
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// ScanManifest scans r into a complete Manifest with its root.
func ScanManifest(ctx context.Context, r io.ReaderAt, size uint64, p Params, opt ScanOptions) (*Manifest, ScanStats, error) {
	m := &Manifest{Params: p, Size: size}
	b := NewBuilder(p, size)
	st, err := Scan(ctx, r, size, p, opt, func(e Entry) error {
		m.Entries = append(m.Entries, e)
		return b.Add(e)
	})
	if err != nil {
		return nil, st, err
	}
	if m.Root, err = b.Finish(); err != nil {
		return nil, st, err
	}
	return m, st, nil
}

// Scratch buffers for callers that read whole chunks, pooled by size class
// (powers of two from 4 KiB to MaxChunkSize) so a 256 KiB chunk does not pin
// an 8 MiB buffer.
const minClass = 12

var bufPools [24 - minClass]sync.Pool

func sizeClass(n int) int {
	c := minClass
	for 1<<c < n {
		c++
	}
	return c - minClass
}

// GetBuffer returns a scratch buffer of n bytes (n <= MaxChunkSize); give
// it back with PutBuffer.
func GetBuffer(n int) *[]byte {
	if n > MaxChunkSize {
		panic("chunk: GetBuffer above MaxChunkSize")
	}
	c := sizeClass(n)
	if bp, ok := bufPools[c].Get().(*[]byte); ok {
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n, 1<<(c+minClass))
	return &b
}

// PutBuffer returns a buffer taken with GetBuffer.
func PutBuffer(bp *[]byte) {
	c := sizeClass(cap(*bp))
	if 1<<(c+minClass) != cap(*bp) {
		return // not one of ours
	}
	bufPools[c].Put(bp)
}
