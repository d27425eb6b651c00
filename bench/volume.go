package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Volume is an image file attached to a loop device, optionally with an
// ext4 on it mounted at Mount.
type Volume struct {
	Name   string
	Image  string
	Dev    string
	Mount  string // "" when not mounted
	FS     string // the filesystem MountAt mounts: "" is ext4
	Size   int64
	detach func() error
	umount func() error
	cl     *Cleanup
}

// newVolume creates a sparse image of size bytes and attaches it to a
// free loop device (losetup with extra args, e.g. --direct-io=on); the
// cleanup detaches exactly that device.
func newVolume(ctx context.Context, cl *Cleanup, work, name string, size int64, losetup ...string) (*Volume, error) {
	img := filepath.Join(work, "img", name+".img")
	if err := os.MkdirAll(filepath.Dir(img), 0o755); err != nil {
		return nil, err
	}
	os.Remove(img)
	f, err := os.Create(img)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	dev, err := sh(ctx, append(append([]string{"losetup", "-f", "--show"}, losetup...), img)...)
	if err != nil {
		return nil, err
	}
	v := &Volume{Name: name, Image: img, Dev: dev, Size: size, cl: cl}
	v.detach = cl.Add("detach "+dev, func() error {
		_, err := sh(context.Background(), "losetup", "-d", dev)
		os.Remove(img)
		return err
	})
	return v, nil
}

// Mkfs makes an ext4 on the volume (inode tables and journal zeroed now,
// so no lazy-init thread writes during a measurement).
func (v *Volume) Mkfs(ctx context.Context) error {
	_, err := sh(ctx, "mkfs.ext4", "-q", "-F", "-L", v.Name, "-E", "lazy_itable_init=0,lazy_journal_init=0", v.Dev)
	return err
}

// MkfsXFS makes an XFS with reflinks (cp --reflink=always, FICLONE) on
// the volume; MountAt then mounts it as XFS.
func (v *Volume) MkfsXFS(ctx context.Context) error {
	v.FS = "xfs"
	_, err := sh(ctx, "mkfs.xfs", "-q", "-f", "-m", "reflink=1", "-L", v.Name, v.Dev)
	return err
}

// MountAt mounts the volume's filesystem (ext4 unless MkfsXFS made it) at
// dir (read-only: ro,noload; noload is ext4's, norecovery XFS's).
func (v *Volume) MountAt(ctx context.Context, dir string, ro bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fstype := v.FS
	if fstype == "" {
		fstype = "ext4"
	}
	args := []string{"mount", "-t", fstype}
	if ro {
		opt := "ro,noload"
		if fstype == "xfs" {
			opt = "ro,norecovery"
		}
		args = append(args, "-o", opt)
	}
	if _, err := sh(ctx, append(args, v.Dev, dir)...); err != nil {
		return err
	}
	v.Mount = dir
	v.umount = v.cl.Add("umount "+dir, func() error {
		// A frozen filesystem cannot be unmounted: thaw first (an error
		// just means it was not frozen).
		sh(context.Background(), "fsfreeze", "-u", dir)
		_, err := sh(context.Background(), "umount", dir)
		return err
	})
	return nil
}

// Umount unmounts the volume if mounted.
func (v *Volume) Umount() error {
	if v.umount == nil {
		return nil
	}
	err := v.umount()
	v.umount, v.Mount = nil, ""
	return err
}

// Close unmounts and detaches the volume and removes its image.
func (v *Volume) Close() error {
	err := v.Umount()
	if derr := v.detach(); err == nil {
		err = derr
	}
	return err
}

// Freeze freezes the mounted filesystem (flushing it to the device) and
// drops the block device's page cache, so a read of the device sees what
// the filesystem wrote; the returned function thaws it.
func (v *Volume) Freeze(ctx context.Context) (func() error, error) {
	if _, err := sh(ctx, "sync", "-f", v.Mount); err != nil {
		return nil, err
	}
	if _, err := sh(ctx, "fsfreeze", "-f", v.Mount); err != nil {
		return nil, err
	}
	thaw := v.cl.Add("thaw "+v.Mount, func() error {
		_, err := sh(context.Background(), "fsfreeze", "-u", v.Mount)
		return err
	})
	if _, err := sh(ctx, "blockdev", "--flushbufs", v.Dev); err != nil {
		thaw()
		return nil, err
	}
	return thaw, nil
}

// cleanStaleVolumes unmounts what an earlier, killed run left mounted
// under work and detaches the loop devices backed by its images.
func cleanStaleVolumes(ctx context.Context, work string) {
	mounts, _ := os.ReadFile("/proc/self/mounts")
	var stale []string
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && strings.HasPrefix(f[1], work+"/") {
			stale = append(stale, f[1])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(stale)))
	for _, m := range stale {
		log.Printf("unmounting %s left by an earlier run", m)
		sh(ctx, "fsfreeze", "-u", m)
		if _, err := sh(ctx, "umount", m); err != nil {
			log.Printf("cleanup: %v", err)
		}
	}
	imgs, _ := filepath.Glob(filepath.Join(work, "img", "*.img"))
	for _, img := range imgs {
		out, _ := sh(ctx, "losetup", "-j", img)
		for _, line := range strings.Split(out, "\n") {
			dev, _, ok := strings.Cut(line, ":")
			if ok && strings.HasPrefix(dev, "/dev/loop") {
				log.Printf("detaching %s (%s) left by an earlier run", dev, img)
				if _, err := sh(ctx, "losetup", "-d", dev); err != nil {
					log.Printf("cleanup: %v", err)
				}
			}
		}
	}
}

// Tree is a listing of a directory tree: every regular file's relative
// path with its size and SHA-256, every directory and symlink by name.
type Tree map[string]string

// listTree walks root. Entries under skip (relative names) are left out.
func listTree(root string, skip ...string) (Tree, error) {
	t := Tree{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		for _, s := range skip {
			if rel == s {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		switch {
		case d.IsDir():
			t[rel] = "dir"
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			t[rel] = "link " + target
		case d.Type().IsRegular():
			sum, size, err := hashFile(p)
			if err != nil {
				return err
			}
			t[rel] = fmt.Sprintf("%d %s", size, sum)
		default:
			t[rel] = "special " + d.Type().String()
		}
		return nil
	})
	return t, err
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20))
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// Diff describes how two trees differ ("" when identical), with at most a
// few examples.
func (t Tree) Diff(other Tree) string {
	var diffs []string
	for k, v := range t {
		if o, ok := other[k]; !ok {
			diffs = append(diffs, "missing "+k)
		} else if o != v {
			diffs = append(diffs, "differs "+k)
		}
	}
	for k := range other {
		if _, ok := t[k]; !ok {
			diffs = append(diffs, "extra "+k)
		}
	}
	if len(diffs) == 0 {
		return ""
	}
	sort.Strings(diffs)
	n := len(diffs)
	if n > 5 {
		diffs = append(diffs[:5], "…")
	}
	return fmt.Sprintf("%d differences: %s", n, strings.Join(diffs, ", "))
}

// Bytes is the total size of the tree's regular files.
func (t Tree) Bytes() int64 {
	var n int64
	for _, v := range t {
		var size int64
		var sum string
		if _, err := fmt.Sscanf(v, "%d %s", &size, &sum); err == nil {
			n += size
		}
	}
	return n
}

// evict drops what the kernel caches of our volumes above the loop
// devices: every file's pages under the given mounted trees
// (fadvise DONTNEED, after a sync of the filesystem) and each block
// device's own page cache (blockdev --flushbufs). What stays cached is the
// loop devices' backing images on the host, so every tool reads its
// volumes through the same path: filesystem or device → loop → host cache,
// and none is favoured by a cache the others lack.
func evict(ctx context.Context, trees []string, devs []string) error {
	for _, root := range trees {
		if _, err := sh(ctx, "sync", "-f", root); err != nil {
			return err
		}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		})
		if err != nil {
			return fmt.Errorf("evict %s: %w", root, err)
		}
	}
	for _, dev := range devs {
		if _, err := sh(ctx, "blockdev", "--flushbufs", dev); err != nil {
			return err
		}
	}
	return nil
}
