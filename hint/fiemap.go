package hint

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FIEMAP, from linux/fiemap.h and linux/fs.h (golang.org/x/sys/unix does
// not define them).
const (
	fsIocFiemap = 0xC020660B // _IOWR('f', 11, struct fiemap)

	fiemapFlagSync = 0x1 // sync the file before mapping

	fiemapExtentLast          = 0x1    // last extent of the file
	fiemapExtentUnknown       = 0x2    // data location unknown
	fiemapExtentDelalloc      = 0x4    // location still pending (implies unknown)
	fiemapExtentEncoded       = 0x8    // data cannot be read while the fs is unmounted (compressed...)
	fiemapExtentDataEncrypted = 0x80   // data is encrypted by the fs (implies encoded)
	fiemapExtentNotAligned    = 0x100  // extent offsets may not be block aligned
	fiemapExtentDataInline    = 0x200  // data mixed with metadata (implies not aligned)
	fiemapExtentDataTail      = 0x400  // multiple files in block (implies not aligned)
	fiemapExtentUnwritten     = 0x800  // space allocated but not written: reads as zeros
	fiemapExtentShared        = 0x2000 // space shared with other files

	// Flags under which an extent's physical address does not say which
	// bytes the file holds: such an extent is never "the same" as another.
	fiemapUntrusted = fiemapExtentUnknown | fiemapExtentDelalloc | fiemapExtentEncoded |
		fiemapExtentDataEncrypted | fiemapExtentNotAligned | fiemapExtentDataInline | fiemapExtentDataTail
)

// struct fiemap and struct fiemap_extent.
type fiemapHeader struct {
	Start         uint64
	Length        uint64
	Flags         uint32
	MappedExtents uint32
	ExtentCount   uint32
	Reserved      uint32
}

type fiemapExtentRaw struct {
	Logical    uint64
	Physical   uint64
	Length     uint64
	Reserved64 [2]uint64
	Flags      uint32
	Reserved   [3]uint32
}

// extent is one mapped extent of a file.
type extent struct {
	Logical, Physical, Length uint64
	Flags                     uint32
}

func (e extent) end() uint64 { return e.Logical + e.Length }

// extentSource yields a file's extents in logical order, none overlapping
// the one before; ok is false after the last.
type extentSource interface {
	next() (e extent, ok bool, err error)
}

// defaultFiemapBatch is how many extents one FS_IOC_FIEMAP call returns at
// most: the memory a mapping holds, whatever the file's fragmentation.
const defaultFiemapBatch = 512

// fiemapper pages through the extents of [0, limit) of f with FS_IOC_FIEMAP.
type fiemapper struct {
	f     *os.File
	limit uint64
	batch int
	flags uint32 // fiemapFlagSync on the first call only

	buf   []byte
	exts  []extent
	pos   int
	start uint64 // where the next call starts
	done  bool
	prev  uint64 // end of the last extent returned
}

func newFiemapper(f *os.File, limit uint64, batch int) *fiemapper {
	if batch <= 0 {
		batch = defaultFiemapBatch
	}
	hdr := int(unsafe.Sizeof(fiemapHeader{}))
	ext := int(unsafe.Sizeof(fiemapExtentRaw{}))
	// A []uint64 keeps the buffer 8-byte aligned for the structs.
	words := make([]uint64, (hdr+batch*ext+7)/8)
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(words)*8)
	return &fiemapper{f: f, limit: limit, batch: batch, flags: fiemapFlagSync, buf: buf, done: limit == 0}
}

func (m *fiemapper) next() (extent, bool, error) {
	for m.pos >= len(m.exts) {
		if m.done {
			return extent{}, false, nil
		}
		if err := m.fill(); err != nil {
			return extent{}, false, err
		}
	}
	e := m.exts[m.pos]
	m.pos++
	return e, true, nil
}

// fill maps the next batch of extents from m.start.
func (m *fiemapper) fill() error {
	clear(m.buf)
	h := (*fiemapHeader)(unsafe.Pointer(&m.buf[0]))
	h.Start = m.start
	h.Length = m.limit - m.start
	h.Flags = m.flags
	h.ExtentCount = uint32(m.batch)
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, m.f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&m.buf[0])))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			if errors.Is(errno, unix.EOPNOTSUPP) || errors.Is(errno, unix.ENOTTY) || errors.Is(errno, unix.EINVAL) {
				return Unavailable("the filesystem of %s does not map extents (FS_IOC_FIEMAP: %v)", m.f.Name(), errno)
			}
			return fmt.Errorf("FS_IOC_FIEMAP %s at %d: %w", m.f.Name(), m.start, errno)
		}
		break
	}
	m.flags = 0
	n := int(h.MappedExtents)
	if n > m.batch {
		return fmt.Errorf("FS_IOC_FIEMAP %s: %d extents mapped into room for %d", m.f.Name(), n, m.batch)
	}
	raw := unsafe.Slice((*fiemapExtentRaw)(unsafe.Pointer(&m.buf[unsafe.Sizeof(fiemapHeader{})])), m.batch)[:n]
	m.exts, m.pos = m.exts[:0], 0
	if n == 0 {
		m.done = true
		return nil
	}
	for _, r := range raw {
		e := extent{Logical: r.Logical, Physical: r.Physical, Length: r.Length, Flags: r.Flags}
		if e.Length == 0 || e.Logical+e.Length < e.Logical || e.Physical+e.Length < e.Physical {
			return Unavailable("FS_IOC_FIEMAP %s returned a malformed extent (%d+%d at %d)", m.f.Name(), e.Logical, e.Length, e.Physical)
		}
		if e.end() <= m.prev {
			// The extent the last batch ended in, returned again: FIEMAP
			// returns every extent that overlaps [Start, Start+Length).
			if e.Flags&fiemapExtentLast != 0 {
				m.done = true
			}
			continue
		}
		if e.Logical < m.prev {
			// An extent that overlaps the one before: a filesystem that
			// splits extents differently when asked from another offset.
			// Within an extent, logical and physical offsets advance
			// together (for the extents whose addresses are trusted at
			// all), so the part after the one before is kept.
			d := m.prev - e.Logical
			e.Logical, e.Physical, e.Length = m.prev, e.Physical+d, e.Length-d
		}
		m.prev = e.end()
		m.exts = append(m.exts, e)
		if e.Flags&fiemapExtentLast != 0 || e.end() >= m.limit {
			m.done = true
		}
	}
	m.start = m.prev
	if n < m.batch || m.start >= m.limit {
		// Fewer than asked for: [Start, limit) has no more extents.
		m.done = true
	}
	if len(m.exts) == 0 && !m.done {
		return fmt.Errorf("FS_IOC_FIEMAP %s at %d made no progress", m.f.Name(), h.Start)
	}
	return nil
}
