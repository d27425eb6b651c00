package chunk

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/restic/chunker"
)

// Incremental scans. A segment that changed extents touch is not re-read
// whole: the restic chunker resets its state at every cut, so where a chunk
// starts depends on nothing before it, and the boundaries a scan finds in
// bytes that did not change are the boundaries the previous scan found
// there. So, for each run of changed extents in a segment:
//
//	b0 := the last previous boundary at or before the first changed byte
//	re-chunk from b0; after each new cut c:
//	    absorb the changed extents that start before c
//	    stop if c is the segment's end, or if c is a previous boundary past
//	    every absorbed changed byte (the chunking has resynchronised)
//	take the previous entries between one rescanned run and the next, unread
//
// Previous boundaries are the starts of its entries, the segment's start and
// its end where the segment ends at the same offset in both images (the end
// of a volume that grew is not a boundary: it was a forced cut), and the cuts
// inside zero runs, which the manifest does not record but which are known:
// a chunk of zeros cut from a boundary is always ZeroChunkLength(p) long
// unless the segment ends first. The rescanned bytes are read in windows
// that end a little past the changed bytes; a chunk cut by a window's end
// rather than by its content is not used, the window grows instead.

// zeroChunkLengths caches ZeroChunkLength per Params.
var zeroChunkLengths sync.Map // Params → uint64

// ZeroChunkLength returns the length of the chunk p cuts from a boundary in
// bytes that are all zero (at most MaxSize).
func ZeroChunkLength(p Params) uint64 {
	if v, ok := zeroChunkLengths.Load(p); ok {
		return v.(uint64)
	}
	c := chunker.NewWithBoundaries(bytes.NewReader(make([]byte, 2*int(p.MaxSize))), chunker.Pol(p.Polynomial), uint(p.MinSize), uint(p.MaxSize))
	c.SetAverageBits(p.averageBits())
	ch, err := c.Next(nil)
	n := uint64(p.MaxSize)
	if err == nil {
		n = uint64(ch.Length)
	}
	zeroChunkLengths.Store(p, n)
	return n
}

// segmentBase is the previous manifest's view of one segment.
type segmentBase struct {
	start, end uint64  // the segment in the new image: [start, end)
	prevEnd    uint64  // where the previous image's segment ended
	entries    []Entry // previous entries clipped to [start, prevEnd)
	zeroLen    uint64
}

// zerosFrom returns the zero chunks a scan cuts from boundary c when the
// previous image held zeros there and nothing changed since (c at or past
// reach, the next change at next): whole ZeroChunkLength chunks up to the
// end of the previous zero run or the next change, or up to the segment's
// end if the run reaches it. Empty if there are none.
func (b *segmentBase) zerosFrom(c, reach, next uint64) Entry {
	if c < reach || c >= b.prevEnd || c >= next {
		return Entry{}
	}
	e := b.entries[b.entryAt(c)]
	if !e.Zero {
		return Entry{}
	}
	limit := min(e.End(), next)
	if limit == b.end {
		return Entry{Offset: c, Length: limit - c, Zero: true} // the last one is cut by the segment's end
	}
	n := (limit - c) / b.zeroLen * b.zeroLen
	return Entry{Offset: c, Length: n, Zero: n > 0}
}

// clipEntries returns a copy of the entries of all that cover [start, end),
// the first and last cut at those edges (only zero runs cross a segment's).
func clipEntries(all []Entry, start, end uint64) []Entry {
	k := sort.Search(len(all), func(k int) bool { return all[k].End() > start })
	j := sort.Search(len(all), func(j int) bool { return all[j].Offset >= end })
	out := append([]Entry(nil), all[k:j]...)
	if n := len(out); n > 0 {
		if out[0].Offset < start {
			out[0].Length -= start - out[0].Offset
			out[0].Offset = start
		}
		if e := &out[n-1]; e.End() > end {
			e.Length = end - e.Offset
		}
	}
	return out
}

// entryAt returns the index of the entry holding offset x (start <= x < prevEnd).
func (b *segmentBase) entryAt(x uint64) int {
	return sort.Search(len(b.entries), func(k int) bool { return b.entries[k].End() > x })
}

// isBoundary reports whether x is a previous cut that the new image shares.
func (b *segmentBase) isBoundary(x uint64) bool {
	switch {
	case x == b.start:
		return true
	case x == b.prevEnd:
		return b.prevEnd == b.end
	case x > b.prevEnd:
		return false
	}
	e := b.entries[b.entryAt(x)]
	if !e.Zero {
		return x == e.Offset
	}
	return (x-e.Offset)%b.zeroLen == 0
}

// floor returns the last previous boundary at or before x.
func (b *segmentBase) floor(x uint64) uint64 {
	if x >= b.prevEnd {
		if b.isBoundary(b.prevEnd) {
			return b.prevEnd
		}
		x = b.prevEnd - 1
	}
	e := b.entries[b.entryAt(x)]
	if !e.Zero {
		return e.Offset
	}
	return e.Offset + (x-e.Offset)/b.zeroLen*b.zeroLen
}

// between returns the previous entries covering [from, to), both
// boundaries, zero runs clipped.
func (b *segmentBase) between(from, to uint64, st *ScanStats) []Entry {
	if from >= to {
		return nil
	}
	var out []Entry
	for k := b.entryAt(from); k < len(b.entries) && b.entries[k].Offset < to; k++ {
		e := b.entries[k]
		if e.Zero {
			lo, hi := max(e.Offset, from), min(e.End(), to)
			e.Offset, e.Length = lo, hi-lo
			st.ZeroBytes += e.Length
			st.ZeroChunks += (e.Length + b.zeroLen - 1) / b.zeroLen
		} else {
			st.DataChunks++
			st.DataBytes += e.Length
		}
		st.ReusedBytes += e.Length
		out = append(out, e)
	}
	return out
}

// maxWindow bounds the bytes an incremental scan holds for one segment.
const maxWindow = 8 << 20

// window reads a stretch of a segment and cuts chunks from it.
type window struct {
	r     io.ReaderAt
	p     Params
	end   uint64 // the segment's end
	buf   []byte // bytes [off, off+len(buf)) of the image
	off   uint64 // where buf and the chunker start: a boundary
	pos   uint64 // where the next chunk starts
	read  uint64 // bytes read from r
	c     *chunker.Chunker
	stale bool // the chunker does not read buf from pos
	chunk []byte
}

// seek starts the window at boundary from and makes it reach at least to
// (within the segment), keeping what it holds of [from, to).
func (w *window) seek(from, to uint64) error {
	if from >= w.off && from <= w.off+uint64(len(w.buf)) {
		w.buf = w.buf[from-w.off:]
	} else {
		w.buf = w.buf[:0]
	}
	w.off, w.pos, w.stale = from, from, true
	to = min(to, w.end)
	have := w.off + uint64(len(w.buf))
	if have >= to {
		return nil
	}
	n := int(to - have)
	buf := make([]byte, len(w.buf)+n)
	copy(buf, w.buf)
	if _, err := w.r.ReadAt(buf[len(w.buf):], int64(have)); err != nil {
		return fmt.Errorf("read at %d: %w", have, err)
	}
	w.buf = buf
	w.read += uint64(n)
	return nil
}

// grow makes the window reach further past the chunk it could not cut.
func (w *window) grow(reach uint64) error {
	have := w.off + uint64(len(w.buf))
	return w.seek(w.pos, max(have+uint64(w.p.AvgSize), min(reach, w.pos+maxWindow)))
}

// next cuts the chunk that starts at w.pos. ok is false if the window ends
// before the chunk's content does: grow it and call again.
func (w *window) next() (e Entry, ok bool, err error) {
	if w.pos == w.off+uint64(len(w.buf)) {
		return Entry{}, false, nil
	}
	if w.stale {
		rd := bytes.NewReader(w.buf[w.pos-w.off:])
		if w.c == nil {
			w.c = chunker.NewWithBoundaries(rd, chunker.Pol(w.p.Polynomial), uint(w.p.MinSize), uint(w.p.MaxSize))
		} else {
			w.c.ResetWithBoundaries(rd, chunker.Pol(w.p.Polynomial), uint(w.p.MinSize), uint(w.p.MaxSize))
		}
		w.c.SetAverageBits(w.p.averageBits())
		w.stale = false
	}
	c, err := w.c.Next(w.chunk[:0])
	if err != nil {
		return Entry{}, false, fmt.Errorf("chunk at %d: %w", w.pos, err)
	}
	w.chunk = c.Data
	n := uint64(c.Length)
	if end := w.pos + n; end == w.off+uint64(len(w.buf)) && end < w.end && n < uint64(w.p.MaxSize) {
		w.stale = true
		return Entry{}, false, nil // cut by the window's end, not by content
	}
	e = Entry{Offset: w.pos, Length: n}
	if IsZero(c.Data) {
		e.Zero = true
	} else {
		e.ID = Sum(c.Data)
	}
	w.pos += n
	return e, true, nil
}

// incremental rescans one segment around its changed extents (sorted,
// within [b.start, b.end)) and reuses the rest of the previous entries.
func (b *segmentBase) incremental(ctx context.Context, r io.ReaderAt, p Params, changed []Extent) ([]Entry, ScanStats, error) {
	var (
		out []Entry
		st  ScanStats
		cur = b.start // every entry before cur is in out
	)
	w := &window{r: r, p: p, end: b.end}
	lookahead := uint64(2 * p.AvgSize)
	for i := 0; i < len(changed); {
		b0 := max(b.floor(changed[i].Offset), cur)
		out = append(out, b.between(cur, b0, &st)...)
		reach := changed[i].Offset + changed[i].Length
		i++
		if err := w.seek(b0, min(reach+lookahead, b0+maxWindow)); err != nil {
			return nil, st, err
		}
		for {
			if err := ctx.Err(); err != nil {
				return nil, st, err
			}
			e, ok, err := w.next()
			if err != nil {
				return nil, st, err
			}
			if !ok {
				if err := w.grow(reach + lookahead); err != nil {
					return nil, st, err
				}
				continue
			}
			out = append(out, e)
			if e.Zero {
				st.ZeroChunks++
				st.ZeroBytes += e.Length
			} else {
				st.DataChunks++
				st.DataBytes += e.Length
			}
			c := e.End()
			for i < len(changed) && changed[i].Offset < c {
				reach = max(reach, changed[i].Offset+changed[i].Length)
				i++
			}
			next := b.end // where the next changed extent starts
			if i < len(changed) {
				next = changed[i].Offset
			}
			if z := b.zerosFrom(c, reach, next); z.Length > 0 {
				// Unchanged zeros: their cuts are known without reading.
				out = append(out, z)
				st.ZeroChunks += (z.Length + b.zeroLen - 1) / b.zeroLen
				st.ZeroBytes += z.Length
				st.ReusedBytes += z.Length
				c = z.End()
				if err := w.seek(c, min(c+lookahead, next+lookahead)); err != nil {
					return nil, st, err
				}
			}
			if c == b.end || c >= reach && c < b.prevEnd && b.isBoundary(c) {
				cur = c
				break
			}
		}
	}
	if cur < b.end {
		out = append(out, b.between(cur, b.end, &st)...)
	}
	st.ReadBytes = w.read
	return out, st, nil
}

// segmentChanges returns the changed extents of segment [start, end),
// clipped and sorted, plus the bytes a size change touches: the chunk
// holding the old or new end is cut anew.
func segmentChanges(changed []Extent, start, end, prevEnd uint64) []Extent {
	k := sort.Search(len(changed), func(k int) bool { return changed[k].Offset+changed[k].Length > start })
	var out []Extent
	for ; k < len(changed) && changed[k].Offset < end; k++ {
		e := changed[k]
		if e.Length == 0 {
			continue
		}
		lo, hi := max(e.Offset, start), min(e.Offset+e.Length, end)
		out = append(out, Extent{Offset: lo, Length: hi - lo})
	}
	if prevEnd != end {
		lo := min(prevEnd, end) - 1
		out = append(out, Extent{Offset: lo, Length: end - lo})
		sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	}
	return out
}
