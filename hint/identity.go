package hint

import (
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// FileIdentity returns an identity of the content version of the file or
// block device at path, for HELLO's Image field and Source.BaseImage.
//
// For a regular file it is
//
//	file:dev=<st_dev>,ino=<st_ino>,size=<st_size>,ctime=<sec>.<nsec>
//
// The inode change time is set by the kernel on every write, truncate,
// fallocate, reflink into the file, chmod, chown or link count change, and
// cannot be set back by a user (mtime can, with touch -d or utimes), so the
// identity changes whenever the file may have been written: a base image
// that was modified after the round that sent it never matches the
// identity that round recorded, and its hints are not trusted. It also
// changes when nothing was written but the inode was touched (chmod) or the
// file was moved to another filesystem, or the filesystem came back under
// another device number (a loop device attached at another minor, a btrfs
// subvolume's anonymous device): the cost is a full scan, never a wrong
// hint. On filesystems with coarse timestamps (kernels before 6.13, or
// filesystems without multigrain timestamps) two changes within one clock
// tick share a ctime; the identity is meant for snapshots, files that are
// not written after they are made, not for a file being written.
//
// For a block device it is
//
//	blockdev:rdev=<major>:<minor>,size=<size>
//
// which names the device but not its content version: a block device's
// inode does not change when the device is written. No Source in this
// package vouches for a base by a blockdev identity; a source that names
// block devices as bases (a storage system's snapshot) must use an identity
// that changes with their content, such as the snapshot's name and id.
func FileIdentity(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return fileIdentity(f)
}

// fileIdentity is FileIdentity of an open file.
func fileIdentity(f *os.File) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", &fs.PathError{Op: "fstat", Path: f.Name(), Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return fmt.Sprintf("file:dev=%d,ino=%d,size=%d,ctime=%d.%09d", st.Dev, st.Ino, st.Size, st.Ctim.Sec, st.Ctim.Nsec), nil
	case unix.S_IFBLK:
		n, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			return "", fmt.Errorf("size of block device %s: %w", f.Name(), err)
		}
		return fmt.Sprintf("blockdev:rdev=%d:%d,size=%d", unix.Major(st.Rdev), unix.Minor(st.Rdev), n), nil
	}
	return "", fmt.Errorf("%s is neither a regular file nor a block device", f.Name())
}
