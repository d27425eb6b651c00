package longhorn

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"
)

// Extent is a byte range [Offset, Offset+Length) of a volume.
type Extent struct {
	Offset, Length uint64
}

// End is the offset just past the extent.
func (e Extent) End() uint64 { return e.Offset + e.Length }

// mergeExtents sorts es and merges overlapping and adjacent extents, dropping
// empty ones. It reuses es.
func mergeExtents(es []Extent) []Extent {
	slices.SortFunc(es, func(a, b Extent) int {
		switch {
		case a.Offset < b.Offset:
			return -1
		case a.Offset > b.Offset:
			return 1
		}
		return 0
	})
	out := es[:0]
	for _, e := range es {
		if e.Length == 0 {
			continue
		}
		if n := len(out); n > 0 && e.Offset <= out[n-1].End() {
			if e.End() > out[n-1].End() {
				out[n-1].Length = e.End() - out[n-1].Offset
			}
			continue
		}
		out = append(out, e)
	}
	return out
}

// clipExtents drops what of sorted es lies at or past limit.
func clipExtents(es []Extent, limit uint64) []Extent {
	for i, e := range es {
		if e.Offset >= limit {
			return es[:i]
		}
		if e.End() > limit {
			es[i].Length = limit - e.Offset
			return es[:i+1]
		}
	}
	return es
}

// dataExtents lists the data extents of f's first size bytes with
// SEEK_DATA/SEEK_HOLE, sorted and maximal. It moves f's offset (reads use
// pread and do not care).
//
// A filesystem without SEEK_HOLE support reports the whole file as data;
// that is refused (ErrNoHoleSupport) when it contradicts the blocks the
// file has allocated, since a layer's holes would then hide its parent.
func dataExtents(f *os.File, size uint64) ([]Extent, error) {
	fd := int(f.Fd())
	var es []Extent
	var off uint64
	for off < size {
		d, err := unix.Seek(fd, int64(off), unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data at or past off
		}
		if err != nil {
			return nil, fmt.Errorf("seek data at %d in %s: %w", off, f.Name(), err)
		}
		if d < 0 || uint64(d) >= size {
			break
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if errors.Is(err, unix.ENXIO) {
			h = int64(size) // the file shrank under us; the end is a hole
		} else if err != nil {
			return nil, fmt.Errorf("seek hole at %d in %s: %w", d, f.Name(), err)
		}
		end := min(uint64(h), size)
		if end <= uint64(d) {
			return nil, fmt.Errorf("seek hole at %d in %s: got %d", d, f.Name(), h)
		}
		es = append(es, Extent{Offset: uint64(d), Length: end - uint64(d)})
		off = end
	}
	if len(es) == 1 && es[0].Offset == 0 && es[0].Length == size && size >= 1<<20 {
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err == nil && holesUnreported(size, st.Blocks) {
			return nil, fmt.Errorf("%s: %w", f.Name(), ErrNoHoleSupport)
		}
	}
	return es, nil
}

// holesUnreported reports whether a file whose first size bytes were all
// reported as data has allocated so few 512-byte blocks that most of it must
// be holes: the filesystem does not implement SEEK_HOLE and fell back to
// "all data". Half is the threshold, far from any real allocation.
func holesUnreported(size uint64, blocks int64) bool {
	return blocks >= 0 && uint64(blocks)*512 < size/2
}
