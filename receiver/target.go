package receiver

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// target is the file or block device a volume is written into, in place.
// Writes that fail for lack of space come back as ErrTargetFull.
type target struct {
	path  string
	f     *os.File
	block bool
}

// openTarget opens path for an apply. A missing regular file is created;
// a block device must exist and is opened exclusively (O_EXCL), so it
// cannot be mounted while the round writes it and a mounted one is
// refused.
func openTarget(path string) (*target, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// A missing regular file is created; a block device must exist.
	case err != nil:
		return nil, fmt.Errorf("stat target %s: %w", path, err)
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		f, err := os.OpenFile(path, os.O_RDWR|unix.O_EXCL, 0)
		if errors.Is(err, unix.EBUSY) {
			return nil, failf(ErrBusy, "block device %s is in use (mounted, or held open exclusively by another program): unmount it; a replica must not be used while it is synced", path)
		}
		if err != nil {
			return nil, fmt.Errorf("open block device %s: %w", path, err)
		}
		return &target{path: path, f: f, block: true}, nil
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("target %s is neither a regular file nor a block device (%v)", path, fi.Mode().Type())
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, classifySpace(fmt.Errorf("open target %s: %w", path, err), "the target's filesystem")
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

func (t *target) WriteAt(p []byte, off int64) (int, error) {
	n, err := t.f.WriteAt(p, off)
	return n, t.full(err)
}

// full classifies err as ErrTargetFull where it says so.
func (t *target) full(err error) error { return classifySpace(err, "target "+t.path) }

func (t *target) sync() error {
	if err := t.f.Sync(); err != nil {
		return t.full(fmt.Errorf("fsync target %s: %w", t.path, err))
	}
	return nil
}

// resize sets a file target's size; block devices keep theirs.
func (t *target) resize(n uint64) error {
	if t.block {
		return nil
	}
	if err := t.f.Truncate(int64(n)); err != nil {
		return t.full(fmt.Errorf("resize target %s to %d: %w", t.path, n, err))
	}
	return nil
}

// reserve allocates the file's blocks under [off, off+n) without changing
// its size, so that a full filesystem fails the round before its writes
// rather than in the middle of them. Filesystems without fallocate(2) are
// left to fail at the write; block devices need nothing.
func (t *target) reserve(off, n uint64) error {
	if t.block || n == 0 {
		return nil
	}
	err := unix.Fallocate(int(t.f.Fd()), unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(n))
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return nil
	}
	if err != nil {
		return t.full(fmt.Errorf("reserve %d bytes at %d in target %s: %w", n, off, t.path, err))
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
		if _, err := t.WriteAt(buf[:k], int64(off)); err != nil {
			return fmt.Errorf("zero target %s at %d: %w", t.path, off, err)
		}
		off += k
		n -= k
	}
	return nil
}

// fingerprint describes the open target as it is now.
func (t *target) fingerprint() (Fingerprint, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(t.f.Fd()), &st); err != nil {
		return Fingerprint{}, fmt.Errorf("stat target %s: %w", t.path, err)
	}
	if t.block {
		n, err := t.size()
		return blockFingerprint(int64(n), st.Rdev), err
	}
	return fileFingerprint(&st), nil
}

func fileFingerprint(st *unix.Stat_t) Fingerprint {
	return Fingerprint{Size: st.Size, MtimeNs: st.Mtim.Nano(), CtimeNs: st.Ctim.Nano(), Inode: st.Ino, Device: uint64(st.Dev)}
}

func blockFingerprint(size int64, rdev uint64) Fingerprint {
	return Fingerprint{Size: size, Block: true, Device: rdev, Writes: readBlockWrites(rdev)}
}

// observeTarget fingerprints the target at path without writing to it, for
// status: nil and an error saying so if it is gone.
func observeTarget(path string) (Fingerprint, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Fingerprint{}, fmt.Errorf("target %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return fileFingerprint(&st), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return Fingerprint{}, fmt.Errorf("open block device %s: %w", path, err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return Fingerprint{}, fmt.Errorf("size of block device %s: %w", path, err)
	}
	return blockFingerprint(n, st.Rdev), nil
}

// stillAt checks that the open target is still what its path names: not
// deleted, renamed away or replaced while the round wrote it.
func (t *target) stillAt() error {
	var open, named unix.Stat_t
	if err := unix.Fstat(int(t.f.Fd()), &open); err != nil {
		return fmt.Errorf("stat target %s: %w", t.path, err)
	}
	err := unix.Stat(t.path, &named)
	switch {
	case errors.Is(err, unix.ENOENT):
		return failf(ErrTargetGone, "target %s was deleted during the round: nothing was committed", t.path)
	case err != nil:
		return fmt.Errorf("stat target %s: %w", t.path, err)
	case t.block && named.Rdev != open.Rdev, !t.block && (named.Ino != open.Ino || named.Dev != open.Dev), !t.block && open.Nlink == 0:
		return failf(ErrTargetGone, "target %s was replaced by another file or device during the round: nothing was committed", t.path)
	}
	return nil
}

// identity names the file or device behind an open target, the same for
// every path that reaches it.
func (t *target) identity() (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(t.f.Fd()), &st); err != nil {
		return "", fmt.Errorf("stat target %s: %w", t.path, err)
	}
	return identityOf(&st), nil
}

// sysfs is where block device counters are read; tests may point it elsewhere.
var sysfs = "/sys"

var bootID = sync.OnceValue(func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
})

// readBlockWrites reads the write and discard counters of the device
// rdev, nil if they cannot be read.
func readBlockWrites(rdev uint64) *BlockWrites {
	boot := bootID()
	if boot == "" {
		return nil
	}
	f, err := os.Open(fmt.Sprintf("%s/dev/block/%d:%d/stat", sysfs, unix.Major(rdev), unix.Minor(rdev)))
	if err != nil {
		return nil
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && line == "" {
		return nil
	}
	fields := strings.Fields(line)
	if len(fields) < 15 {
		return nil // kernels before 4.18 count no discards: cannot vouch
	}
	var v [15]uint64
	for i := range v {
		if v[i], err = strconv.ParseUint(fields[i], 10, 64); err != nil {
			return nil
		}
	}
	// Fields (Documentation/block/stat.rst): 5 write I/Os, 7 write sectors,
	// 12 discard I/Os, 14 discard sectors (1-based).
	return &BlockWrites{BootID: boot, WriteIOs: v[4], WriteSectors: v[6], DiscardIOs: v[11], DiscardSectors: v[13]}
}
