package hint

import (
	"context"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"github.com/voldelta/voldelta/chunk"
)

// Reflink is a Source for a new image that is a reflinked copy (cp
// --reflink=always, FICLONE) of the same live file as its base, on a
// filesystem that shares extents between files and reports it (XFS made
// with reflink=1, btrfs). Bytes of New that FIEMAP maps to the same
// physical extent as the same logical offset of Base are the same bytes, so
// only the rest may have changed:
//
//   - a range is unchanged only if both files map it to the same physical
//     address, both extents are flagged FIEMAP_EXTENT_SHARED, neither is
//     UNKNOWN, DELALLOC, ENCODED, DATA_ENCRYPTED, NOT_ALIGNED, DATA_INLINE
//     or DATA_TAIL (whose addresses do not locate the file's bytes), and
//     both or neither are UNWRITTEN (an unwritten extent reads as zeros
//     whatever its blocks hold);
//   - a range that is a hole in both files is unchanged (both read zeros);
//   - a hole in one file and an unwritten extent in the other also both
//     read zeros, but this is counted as changed: the only evidence of
//     "unchanged" accepted is a shared block or no mapping at all, not a
//     claim about an extent's state, and rereading a range of zeros costs
//     little (a preallocation made after the base was copied);
//   - everything else, and every byte past Base's size, may have changed.
//
// Changed returns an error wrapping ErrUnavailable, and the round falls back
// to a full scan, if the files are on different filesystems, if the
// filesystem does not map extents, or if the files share no extent at all
// while both hold data: then the base is not a reflinked copy or the
// filesystem does not report shared extents (ext4, or a plain cp), and
// "nothing shared" cannot be told from "everything changed". It also falls
// back if either file's identity (FileIdentity) changed since NewReflink:
// the base must be the image the receiver's generation was made from, and
// it must not change while it is mapped.
type Reflink struct {
	Base, New string

	baseID, newID string
	batch         int // extents per FS_IOC_FIEMAP call; 0: defaultFiemapBatch
}

// NewReflink returns a Reflink source for the new image new relative to
// the base image base. Both must be regular files; their identities are
// taken now and checked again by Changed.
func NewReflink(base, new string) (*Reflink, error) {
	r := &Reflink{Base: base, New: new}
	for _, p := range []struct {
		path, what string
		id         *string
	}{{base, "base image", &r.baseID}, {new, "source image", &r.newID}} {
		f, err := os.Open(p.path)
		if err != nil {
			return nil, fmt.Errorf("reflink hints: %s: %w", p.what, err)
		}
		fi, err := f.Stat()
		if err == nil && !fi.Mode().IsRegular() {
			err = fmt.Errorf("%s is not a regular file: reflink hints compare two files on one filesystem", p.path)
		}
		if err == nil {
			*p.id, err = fileIdentity(f)
		}
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("reflink hints: %s: %w", p.what, err)
		}
	}
	return r, nil
}

// Name implements Source.
func (r *Reflink) Name() string { return "reflink" }

// BaseImage implements Source: FileIdentity(Base) when NewReflink ran.
func (r *Reflink) BaseImage() string { return r.baseID }

// Changed implements Source.
func (r *Reflink) Changed(ctx context.Context, newSize uint64) ([]chunk.Extent, error) {
	base, err := os.Open(r.Base)
	if err != nil {
		return nil, fmt.Errorf("reflink hints: base image: %w", err)
	}
	defer base.Close()
	nf, err := os.Open(r.New)
	if err != nil {
		return nil, fmt.Errorf("reflink hints: source image: %w", err)
	}
	defer nf.Close()
	if err := r.checkIdentities(base, nf, "since the round began"); err != nil {
		return nil, err
	}
	var bst, nst unix.Stat_t
	if err := unix.Fstat(int(base.Fd()), &bst); err != nil {
		return nil, &fs.PathError{Op: "fstat", Path: r.Base, Err: err}
	}
	if err := unix.Fstat(int(nf.Fd()), &nst); err != nil {
		return nil, &fs.PathError{Op: "fstat", Path: r.New, Err: err}
	}
	switch {
	case bst.Dev != nst.Dev:
		return nil, Unavailable("base %s and source %s are on different filesystems (st_dev %d and %d): a reflinked copy is on the filesystem of its original", r.Base, r.New, bst.Dev, nst.Dev)
	case bst.Ino == nst.Ino:
		return nil, Unavailable("base %s and source %s are the same file", r.Base, r.New)
	case uint64(nst.Size) != newSize:
		return nil, Unavailable("source %s is %d bytes, not the %d being sent: it changed during the round", r.New, nst.Size, newSize)
	}
	baseSize := uint64(bst.Size)
	limit := min(baseSize, newSize)

	exts, st, err := diffExtents(ctx, newFiemapper(base, limit, r.batch), newFiemapper(nf, limit, r.batch), limit)
	if err != nil {
		return nil, err
	}
	if st.shared == 0 && st.baseData > 0 && st.newData > 0 {
		return nil, Unavailable("%s shares no extent with %s: the base is not a reflinked copy (cp --reflink=always) of the same file, or the filesystem does not report shared extents (FIEMAP_EXTENT_SHARED; XFS needs mkfs.xfs -m reflink=1, ext4 has none)", r.New, r.Base)
	}
	if newSize > baseSize {
		exts = appendExtent(exts, baseSize, newSize)
	}
	if err := r.checkIdentities(base, nf, "while it was mapped"); err != nil {
		return nil, err
	}
	if err := Check(exts, newSize); err != nil {
		return nil, fmt.Errorf("reflink hints: %w", err) // a bug here
	}
	return exts, nil
}

// checkIdentities checks that neither file changed since NewReflink.
func (r *Reflink) checkIdentities(base, nf *os.File, when string) error {
	for _, c := range []struct {
		f         *os.File
		want, who string
	}{{base, r.baseID, "base image"}, {nf, r.newID, "source image"}} {
		id, err := fileIdentity(c.f)
		if err != nil {
			return fmt.Errorf("reflink hints: %s: %w", c.who, err)
		}
		if id != c.want {
			return Unavailable("the %s %s changed %s (identity %s, was %s)", c.who, c.f.Name(), when, id, c.want)
		}
	}
	return nil
}

// diffStats counts, in bytes of [0, limit), what diffExtents compared.
type diffStats struct {
	shared   uint64 // mapped by both to the same physical extent
	baseData uint64 // mapped by the base (written or not)
	newData  uint64 // mapped by the new image
}

// diffExtents walks the extents of two files over [0, limit) and returns
// the ranges that may differ (see Reflink), sorted and merged.
func diffExtents(ctx context.Context, base, nw extentSource, limit uint64) ([]chunk.Extent, diffStats, error) {
	var st diffStats
	out := []chunk.Extent{}
	a, b := &cursor{src: base}, &cursor{src: nw}
	for pos, steps := uint64(0), 0; pos < limit; steps++ {
		if steps%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, st, err
			}
		}
		if err := a.seek(pos); err != nil {
			return nil, st, err
		}
		if err := b.seek(pos); err != nil {
			return nil, st, err
		}
		am, aEnd := a.at(pos, limit)
		bm, bEnd := b.at(pos, limit)
		next := min(aEnd, bEnd, limit)
		n := next - pos
		if am {
			st.baseData += n
		}
		if bm {
			st.newData += n
		}
		switch {
		case !am && !bm:
			// a hole in both: zeros in both
		case am && bm && sameBytes(a.cur, b.cur, pos):
			st.shared += n
		default:
			out = appendExtent(out, pos, next)
		}
		pos = next
	}
	return out, st, nil
}

// sameBytes says whether extents a and b, both covering pos, hold the same
// bytes there.
func sameBytes(a, b extent, pos uint64) bool {
	switch {
	case a.Flags&fiemapUntrusted != 0 || b.Flags&fiemapUntrusted != 0:
		return false
	case a.Flags&fiemapExtentShared == 0 || b.Flags&fiemapExtentShared == 0:
		return false
	case a.Flags&fiemapExtentUnwritten != b.Flags&fiemapExtentUnwritten:
		return false
	}
	return a.Physical+(pos-a.Logical) == b.Physical+(pos-b.Logical)
}

// cursor is the extent of a file at or after a position.
type cursor struct {
	src extentSource
	cur extent
	ok  bool // cur is valid
	eof bool
}

// seek moves to the first extent that ends after pos.
func (c *cursor) seek(pos uint64) error {
	for !c.eof && (!c.ok || c.cur.end() <= pos) {
		e, ok, err := c.src.next()
		if err != nil {
			return err
		}
		if !ok {
			c.eof, c.ok = true, false
			break
		}
		c.cur, c.ok = e, true
	}
	if c.ok && c.cur.end() <= pos {
		c.ok = false
	}
	return nil
}

// at says whether pos is mapped, and where that mapping (or hole) ends.
func (c *cursor) at(pos, limit uint64) (mapped bool, end uint64) {
	switch {
	case !c.ok:
		return false, limit
	case c.cur.Logical <= pos:
		return true, c.cur.end()
	}
	return false, c.cur.Logical
}

// appendExtent appends [from, to) to exts, merging it with the last one if
// they touch.
func appendExtent(exts []chunk.Extent, from, to uint64) []chunk.Extent {
	if n := len(exts); n > 0 && exts[n-1].Offset+exts[n-1].Length == from {
		exts[n-1].Length += to - from
		return exts
	}
	return append(exts, chunk.Extent{Offset: from, Length: to - from})
}
