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
	// Previous and Changed let a scan read only what changed: Previous is
	// the manifest (same Params) of an earlier image, Changed every extent
	// that may differ from that image — as changed-block tracking reports
	// it (a Longhorn snapshot chain, reflinked files, CSI snapshot
	// metadata). The scan re-cuts chunks from the last previous boundary
	// before each changed extent until the cuts fall in step with
	// Previous's again and takes every other entry from Previous unread;
	// the manifest is the one a full scan would make. A changed byte
	// missing from Changed goes unnoticed: the entries over it are
	// Previous's. A nil Changed reads every segment.
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
	// ReusedSegments counts the segments taken whole from
	// ScanOptions.Previous, ReusedBytes every byte whose entries were taken
	// from it unread, ReadBytes the bytes read from the image.
	ReusedSegments uint64
	ReusedBytes    uint64
	ReadBytes      uint64
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
				entries, st, ok, err := reuse.segment(gctx, r, i)
				if !ok && err == nil {
					entries, st, err = sc.scan(gctx, io.NewSectionReader(r, int64(off), int64(n)), off)
					st.ReadBytes = n
				}
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
			total.ReadBytes += res.stats.ReadBytes
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
	zeroLen uint64
}

func newReuser(p Params, size uint64, prev *Manifest, changed []Extent) *reuser {
	if prev == nil || changed == nil || prev.Params != p {
		return nil
	}
	return &reuser{p: p, size: size, prev: prev, changed: mergeExtents(changed), zeroLen: ZeroChunkLength(p)}
}

// segment returns segment i's entries built from the previous manifest: all
// of them if no changed extent touches the segment, else the previous
// entries around the changed extents and the chunks re-cut over them (see
// incremental.go). ok is false if the segment must be read whole.
func (u *reuser) segment(ctx context.Context, r io.ReaderAt, i uint64) (entries []Entry, st ScanStats, ok bool, err error) {
	if u == nil {
		return nil, ScanStats{}, false, nil
	}
	start := i * u.p.SegmentSize
	end := min(u.size, start+u.p.SegmentSize)
	if start >= u.prev.Size {
		return nil, ScanStats{}, false, nil // the segment is new
	}
	b := &segmentBase{start: start, end: end, prevEnd: min(u.prev.Size, start+u.p.SegmentSize), zeroLen: u.zeroLen}
	b.entries = clipEntries(u.prev.Entries, start, b.prevEnd)
	changed := segmentChanges(u.changed, start, end, b.prevEnd)
	if len(changed) == 0 {
		entries = b.between(start, end, &st)
		st.ReusedSegments = 1
		return entries, st, true, nil
	}
	entries, st, err = b.incremental(ctx, r, u.p, changed)
	return entries, st, err == nil, err
}

// mergeExtents returns exts sorted, empty ones dropped, overlapping and
// adjacent ones merged: both offsets and ends then increase.
func mergeExtents(exts []Extent) []Extent {
	c := make([]Extent, 0, len(exts))
	for _, e := range exts {
		if e.Length > 0 {
			c = append(c, e)
		}
	}
	sort.Slice(c, func(i, j int) bool { return c[i].Offset < c[j].Offset })
	out := c[:0]
	for _, e := range c {
		if n := len(out); n > 0 && e.Offset <= out[n-1].Offset+out[n-1].Length {
			out[n-1].Length = max(out[n-1].Offset+out[n-1].Length, e.Offset+e.Length) - out[n-1].Offset
			continue
		}
		out = append(out, e)
	}
	return out
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
