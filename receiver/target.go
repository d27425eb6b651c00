package receiver

import (
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// target is the file or block device a volume is written into, in place.
type target struct {
	path  string
	f     *os.File
	block bool
}

func openTarget(path string) (*target, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// A missing regular file is created; a block device must exist.
	case err != nil:
		return nil, fmt.Errorf("stat target %s: %w", path, err)
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("open block device %s: %w", path, err)
		}
		return &target{path: path, f: f, block: true}, nil
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("target %s is neither a regular file nor a block device (%v)", path, fi.Mode().Type())
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open target %s: %w", path, err)
	}
	return &target{path: path, f: f}, nil
}

func (t *target) Close() error { return t.f.Close() }

// size returns the current size of the file or device.
func (t *target) size() (uint64, error) {
	if t.block {
		n, err := t.f.Seek(0, io.SeekEnd)
		if err != nil {
			return 0, fmt.Errorf("size of block device %s: %w", t.path, err)
		}
		return uint64(n), nil
	}
	fi, err := t.f.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat target %s: %w", t.path, err)
	}
	return uint64(fi.Size()), nil
}

func (t *target) ReadAt(p []byte, off int64) (int, error) { return t.f.ReadAt(p, off) }

func (t *target) WriteAt(p []byte, off int64) (int, error) { return t.f.WriteAt(p, off) }

func (t *target) sync() error {
	if err := t.f.Sync(); err != nil {
		return fmt.Errorf("fsync target %s: %w", t.path, err)
	}
	return nil
}

// resize sets a file target's size; block devices keep theirs.
func (t *target) resize(n uint64) error {
	if t.block {
		return nil
	}
	if err := t.f.Truncate(int64(n)); err != nil {
		return fmt.Errorf("resize target %s to %d: %w", t.path, n, err)
	}
	return nil
}

// blkZeroOut is BLKZEROOUT, _IO(0x12, 127).
const blkZeroOut = 0x127f

// zero makes [off, off+n) read as zeros: a hole in a file, a zeroed range
// on a block device, falling back to writing zeros where neither works.
func (t *target) zero(off, n uint64) error {
	if n == 0 {
		return nil
	}
	if t.block {
		rng := [2]uint64{off, n}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, t.f.Fd(), blkZeroOut, uintptr(unsafe.Pointer(&rng))); errno == 0 {
			return nil
		}
	} else if err := unix.Fallocate(int(t.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(n)); err == nil {
		return nil
	}
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, uint64(len(buf)))
		if _, err := t.f.WriteAt(buf[:k], int64(off)); err != nil {
			return fmt.Errorf("zero target %s at %d: %w", t.path, off, err)
		}
		off += k
		n -= k
	}
	return nil
}

// fingerprint describes the target as it is now.
func (t *target) fingerprint() (Fingerprint, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(t.f.Fd()), &st); err != nil {
		return Fingerprint{}, fmt.Errorf("stat target %s: %w", t.path, err)
	}
	if t.block {
		n, err := t.size()
		return Fingerprint{Size: int64(n), Block: true, Device: uint64(st.Rdev)}, err
	}
	return Fingerprint{
		Size:    st.Size,
		MtimeNs: st.Mtim.Nano(),
		Inode:   st.Ino,
		Device:  uint64(st.Dev),
	}, nil
}
