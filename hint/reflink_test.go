package hint

// These tests make real filesystems on loop devices: they need root, and
// fail (not skip) without it, saying so.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/voldelta/voldelta/chunk"
)

const MiB = 1 << 20

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test makes XFS and ext4 filesystems on loop devices and mounts them: run the tests as root (sudo go test ./hint)")
	}
}

func requireTool(t *testing.T, name, install string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found: %s", name, install)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return strings.TrimSpace(string(out))
}

// loopFS makes a 2 GiB filesystem of the kind mkfs makes on a loop device
// attached to a sparse file, mounts it and returns the mount point; the
// test's cleanup unmounts it and detaches the device it attached.
func loopFS(t *testing.T, mkfs string, mkfsArgs ...string) string {
	t.Helper()
	requireRoot(t)
	requireTool(t, "losetup", "apt-get install mount (util-linux)")
	switch mkfs {
	case "mkfs.xfs":
		requireTool(t, mkfs, "apt-get install xfsprogs")
	case "mkfs.ext4":
		requireTool(t, mkfs, "apt-get install e2fsprogs")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(2 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dev := run(t, "losetup", "--find", "--show", img)
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	run(t, mkfs, append(append([]string{}, mkfsArgs...), dev)...)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", dev, mnt)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

func xfsReflinkFS(t *testing.T) string {
	return loopFS(t, "mkfs.xfs", "-q", "-f", "-m", "reflink=1")
}

// randomBytes returns n bytes from rng.
func randomBytes(rng *rand.ChaCha8, n int) []byte {
	b := make([]byte, n)
	rng.Read(b)
	return b
}

func writeAt(t *testing.T, f *os.File, b []byte, off int64) {
	t.Helper()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// writeLive writes a random image of size bytes, leaving [holeOff,
// holeOff+holeLen) a hole.
func writeLive(t *testing.T, path string, rng *rand.ChaCha8, size, holeOff, holeLen int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < size; off += 4 * MiB {
		if off+4*MiB > holeOff && off < holeOff+holeLen {
			continue
		}
		writeAt(t, f, randomBytes(rng, int(min(4*MiB, size-off))), off)
	}
}

func reflinkCopy(t *testing.T, from, to string) {
	t.Helper()
	run(t, "cp", "--reflink=always", from, to)
}

// requireCovers checks that every byte of newPath that differs from
// basePath (and every byte past basePath's end) lies in exts.
func requireCovers(t *testing.T, basePath, newPath string, exts []chunk.Extent) (differing uint64) {
	t.Helper()
	bf, err := os.Open(basePath)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	nf, err := os.Open(newPath)
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	fi, _ := nf.Stat()
	size := uint64(fi.Size())
	bb, nb := make([]byte, MiB), make([]byte, MiB)
	k := 0
	covered := func(off uint64) bool {
		for k < len(exts) && exts[k].Offset+exts[k].Length <= off {
			k++
		}
		return k < len(exts) && exts[k].Offset <= off
	}
	for off := uint64(0); off < size; off += MiB {
		n, err := nf.ReadAt(nb, int64(off))
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		m, err := bf.ReadAt(bb[:n], int64(off))
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if m == n && bytes.Equal(bb[:n], nb[:n]) {
			continue
		}
		for i := range n {
			if i < m && bb[i] == nb[i] {
				continue
			}
			differing++
			if !covered(off + uint64(i)) {
				t.Fatalf("byte %d of %s differs from %s (or is past its end) but no changed extent covers it", off+uint64(i), newPath, basePath)
			}
		}
	}
	return differing
}

func TestReflinkXFS(t *testing.T) {
	mnt := xfsReflinkFS(t)
	ctx := context.Background()
	rng := (rand.NewChaCha8([32]byte{1}))
	live, snap1, snap2 := filepath.Join(mnt, "live.img"), filepath.Join(mnt, "snap-1.img"), filepath.Join(mnt, "snap-2.img")

	const size1 = 256 * MiB
	writeLive(t, live, rng, size1, 100*MiB, 12*MiB) // a 12 MiB hole at 100 MiB
	reflinkCopy(t, live, snap1)
	id1 := mustIdentity(t, snap1)

	// A second copy of the unchanged file: nothing changed, an empty list
	// (not nil, which would mean "read everything").
	same := filepath.Join(mnt, "same.img")
	reflinkCopy(t, live, same)
	r, err := NewReflink(snap1, same)
	if err != nil {
		t.Fatal(err)
	}
	if exts, err := r.Changed(ctx, size1); err != nil || exts == nil || len(exts) != 0 {
		t.Fatalf("unchanged copy: %v, %v", exts, err)
	}

	// Change live: scattered pages, a few unaligned bytes, a 4 MiB region,
	// a range of zeros written, a punched range, a page in the hole, a
	// preallocation in the hole (unwritten: reads zeros), growth by data and by a sparse tail.
	f, err := os.OpenFile(live, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 64 {
		writeAt(t, f, randomBytes(rng, 4096), rand.New(rng).Int64N(size1/4096)*4096)
	}
	writeAt(t, f, []byte("a few bytes, not aligned"), 12345677)
	writeAt(t, f, randomBytes(rng, 4*MiB), 40*MiB)
	writeAt(t, f, make([]byte, MiB), 60*MiB)
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 80*MiB, 2*MiB); err != nil {
		t.Fatal(err)
	}
	writeAt(t, f, randomBytes(rng, 4096), 104*MiB)
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 108*MiB, MiB); err != nil {
		t.Fatal(err)
	}
	writeAt(t, f, randomBytes(rng, 8*MiB), size1)
	const size2 = size1 + 12*MiB
	if err := f.Truncate(size2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	reflinkCopy(t, live, snap2)

	// The base's identity survived the writes to live and the new copy.
	if id := mustIdentity(t, snap1); id != id1 {
		t.Fatalf("identity of snap-1 changed without a write to it: %s, then %s", id1, id)
	}

	var exts []chunk.Extent
	for _, batch := range []int{0, 3} { // 3: many FS_IOC_FIEMAP calls per file
		r, err := NewReflink(snap1, snap2)
		if err != nil {
			t.Fatal(err)
		}
		r.batch = batch
		if r.BaseImage() != id1 || r.Name() != "reflink" {
			t.Fatalf("BaseImage %q (identity %q), Name %q", r.BaseImage(), id1, r.Name())
		}
		got, err := r.Changed(ctx, size2)
		if err != nil {
			t.Fatal(err)
		}
		if err := Check(got, size2); err != nil {
			t.Fatal(err)
		}
		if exts != nil && fmt.Sprint(got) != fmt.Sprint(exts) {
			t.Fatalf("batches of %d extents: %v; of %d: %v", batch, got, defaultFiemapBatch, exts)
		}
		exts = got
	}
	differing := requireCovers(t, snap1, snap2, exts)
	changed := Bytes(exts)
	t.Logf("%d extents, %d bytes changed by FIEMAP of %d; %d bytes differ", len(exts), changed, size2, differing)
	// 64 pages, 4+1+2 MiB, a page in the hole and 12 MiB of growth: about
	// 19.3 MiB. (XFS does not share the unwritten preallocation: the copy
	// has a hole there, as the base does.) Twice that would still be a
	// small part of the image, but more would mean FIEMAP is not used as
	// it should be.
	if changed < differing || changed > 40*MiB {
		t.Fatalf("%d bytes changed (%d differ), want about 19 MiB of %d", changed, differing, size2)
	}

	// A scan with the hints gives the full scan's manifest, reading less.
	p := chunk.DefaultParams()
	p.SegmentSize = 4 * MiB
	prev := scanFile(t, snap1, p, chunk.ScanOptions{})
	full := scanFile(t, snap2, p, chunk.ScanOptions{})
	bf, _ := os.Open(snap2)
	defer bf.Close()
	hinted, st, err := chunk.ScanManifest(ctx, bf, size2, p, chunk.ScanOptions{Previous: prev, Changed: exts})
	if err != nil {
		t.Fatal(err)
	}
	if hinted.Root != full.Root || len(hinted.Entries) != len(full.Entries) {
		t.Fatal("a scan with reflink hints differs from a full scan")
	}
	t.Logf("reused %d of %d segments (%d bytes)", st.ReusedSegments, (size2+p.SegmentSize-1)/p.SegmentSize, st.ReusedBytes)
	if st.ReusedBytes < size1/4 {
		t.Fatalf("reused only %d bytes of %d", st.ReusedBytes, size2)
	}

	// The base written (even with the byte it held) after NewReflink: its
	// identity changes and the hints are refused.
	r, err = NewReflink(snap1, snap2)
	if err != nil {
		t.Fatal(err)
	}
	bw, err := os.OpenFile(snap1, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	bw.ReadAt(one, 5*MiB)
	writeAt(t, bw, one, 5*MiB)
	bw.Close()
	if id := mustIdentity(t, snap1); id == id1 {
		t.Fatal("a write to snap-1 left its identity unchanged")
	}
	if _, err := r.Changed(ctx, size2); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "base image") || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("base written after NewReflink: %v", err)
	}

	// The size being sent is not the source's.
	r, err = NewReflink(snap1, snap2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Changed(ctx, size2-1); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("wrong size: %v", err)
	}
}

func scanFile(t *testing.T, path string, p chunk.Params, opt chunk.ScanOptions) *chunk.Manifest {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	m, _, err := chunk.ScanManifest(context.Background(), f, uint64(fi.Size()), p, opt)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestReflinkShrunk: a source smaller than its base is compared over its
// own size.
func TestReflinkShrunk(t *testing.T) {
	mnt := xfsReflinkFS(t)
	rng := (rand.NewChaCha8([32]byte{2}))
	live, snap1, snap2 := filepath.Join(mnt, "live.img"), filepath.Join(mnt, "snap-1.img"), filepath.Join(mnt, "snap-2.img")
	writeLive(t, live, rng, 32*MiB, 0, 0)
	reflinkCopy(t, live, snap1)
	if err := os.Truncate(live, 20*MiB+4096); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(live, os.O_RDWR, 0)
	writeAt(t, f, randomBytes(rng, 4096), 8*MiB)
	f.Close()
	reflinkCopy(t, live, snap2)
	r, err := NewReflink(snap1, snap2)
	if err != nil {
		t.Fatal(err)
	}
	exts, err := r.Changed(context.Background(), 20*MiB+4096)
	if err != nil {
		t.Fatal(err)
	}
	requireCovers(t, snap1, snap2, exts)
	if got := Bytes(exts); got == 0 || got > MiB {
		t.Fatalf("changed %v (%d bytes), want the one page rewritten", exts, got)
	}
}

// TestReflinkUnavailable: copies that share no extents, and files on two
// filesystems, give ErrUnavailable (a full scan), never a wrong hint.
func TestReflinkUnavailable(t *testing.T) {
	ctx := context.Background()
	xfs := xfsReflinkFS(t)
	ext4 := loopFS(t, "mkfs.ext4", "-q", "-F")
	rng := (rand.NewChaCha8([32]byte{3}))
	const size = 16 * MiB

	unavailable := func(t *testing.T, base, nw, why string) {
		t.Helper()
		r, err := NewReflink(base, nw)
		if err != nil {
			t.Fatal(err)
		}
		exts, err := r.Changed(ctx, size)
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Changed = %v, %v; want ErrUnavailable", exts, err)
		}
		if !strings.Contains(err.Error(), why) {
			t.Fatalf("error %q does not say %q", err, why)
		}
	}

	t.Run("xfs cp --reflink=never", func(t *testing.T) {
		live, copy := filepath.Join(xfs, "live.img"), filepath.Join(xfs, "copy.img")
		writeLive(t, live, rng, size, 0, 0)
		run(t, "cp", "--reflink=never", live, copy)
		unavailable(t, copy, live, "not a reflinked copy")
	})
	t.Run("ext4 cp", func(t *testing.T) {
		live, copy := filepath.Join(ext4, "live.img"), filepath.Join(ext4, "copy.img")
		writeLive(t, live, rng, size, 0, 0)
		run(t, "cp", live, copy)
		unavailable(t, copy, live, "does not report shared extents")
		if out, err := exec.Command("cp", "--reflink=always", live, copy+".2").CombinedOutput(); err == nil {
			t.Fatalf("cp --reflink=always on ext4 succeeded: %s", out)
		}
	})
	t.Run("two filesystems", func(t *testing.T) {
		base, nw := filepath.Join(ext4, "base.img"), filepath.Join(xfs, "new.img")
		writeLive(t, base, rng, size, 0, 0)
		run(t, "cp", base, nw)
		unavailable(t, base, nw, "different filesystems")
	})
}

// TestFileIdentityBlockDevice: a block device's identity names the device
// and its size, and reflink hints refuse it.
func TestFileIdentityBlockDevice(t *testing.T) {
	requireRoot(t)
	requireTool(t, "losetup", "apt-get install mount (util-linux)")
	img := filepath.Join(t.TempDir(), "dev.img")
	if err := os.WriteFile(img, make([]byte, 8*MiB), 0o644); err != nil {
		t.Fatal(err)
	}
	dev := run(t, "losetup", "--find", "--show", img)
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("blockdev:rdev=%d:%d,size=%d", unix.Major(st.Rdev), unix.Minor(st.Rdev), 8*MiB)
	if id := mustIdentity(t, dev); id != want {
		t.Fatalf("identity %q, want %q", id, want)
	}
	if _, err := NewReflink(dev, img); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("NewReflink of a block device: %v", err)
	}
	if _, err := FromFlags(dev, img, ""); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("FromFlags with a block device source: %v", err)
	}
}

// TestFiemapPaging: the extents of a fragmented file are the same whatever
// the batch, and are the data SEEK_DATA/SEEK_HOLE find.
func TestFiemapPaging(t *testing.T) {
	mnt := xfsReflinkFS(t)
	path := filepath.Join(mnt, "sparse.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 64 * MiB
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{4})
	for off := int64(0); off < size; off += 256 << 10 {
		writeAt(t, f, randomBytes(rng, 8192), off+4096)
	}
	// What SEEK_DATA and SEEK_HOLE say, merged.
	var want []chunk.Extent
	for off := int64(0); off < size; {
		d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data after off
		}
		h, err := unix.Seek(int(f.Fd()), d, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		want = appendExtent(want, uint64(d), uint64(h))
		off = h
	}
	if len(want) != size/(256<<10) {
		t.Fatalf("SEEK_DATA found %d extents, want %d", len(want), size/(256<<10))
	}
	for _, batch := range []int{1, 2, 7, 0} {
		m := newFiemapper(f, size, batch)
		var got []chunk.Extent
		calls := 0
		for {
			e, ok, err := m.next()
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			if e.Flags&(fiemapExtentUnwritten|fiemapUntrusted) != 0 {
				t.Fatalf("batch %d: extent %+v has flags %#x", batch, e, e.Flags)
			}
			got = appendExtent(got, e.Logical, e.end())
			if m.pos == 1 {
				calls++
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("batch %d: FIEMAP extents %v, SEEK_DATA %v", batch, got, want)
		}
		if batch > 0 && calls < len(want)/batch {
			t.Fatalf("batch %d: %d calls for %d extents", batch, calls, len(want))
		}
	}
	// A limit inside the file maps only up to it.
	m := newFiemapper(f, 1*MiB, 2)
	var n int
	for {
		e, ok, err := m.next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if e.Logical >= 1*MiB {
			t.Fatalf("extent %+v past the limit", e)
		}
		n++
	}
	if n != 4 {
		t.Fatalf("%d extents below 1 MiB, want 4", n)
	}
}
