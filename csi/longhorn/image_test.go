package longhorn

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/iotest"
)

const mib = 1 << 20

// checkImage opens snapshot name and compares everything readable with the
// model: whole image, Extents, reads at odd offsets and lengths around every
// extent edge, and the io.Reader contract through a SectionReader.
func checkImage(t *testing.T, f *fixture, r *Replica, name string) {
	t.Helper()
	img, err := r.OpenSnapshot(name)
	if err != nil {
		t.Fatalf("OpenSnapshot(%s): %v", name, err)
	}
	defer img.Close()
	want := f.image(name)
	if img.Size() != uint64(len(want)) {
		t.Fatalf("%s: Size %d, want %d", name, img.Size(), len(want))
	}
	got := make([]byte, len(want))
	if n, err := img.ReadAt(got, 0); n != len(got) || err != nil {
		t.Fatalf("%s: ReadAt whole: %d, %v", name, n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: image differs from the model at %d", name, firstDiff(got, want))
	}
	if es, wes := img.Extents(), f.extents(name); !slices.Equal(es, wes) {
		t.Fatalf("%s: Extents %v, want %v", name, es, wes)
	}
	// Reads starting at and around every extent edge, of odd lengths.
	var offs []int64
	for _, e := range img.Extents() {
		for _, edge := range []uint64{e.Offset, e.End()} {
			for _, d := range []int64{-4097, -4096, -1, 0, 1, 511, 4095} {
				if o := int64(edge) + d; o >= 0 && o < int64(len(want)) {
					offs = append(offs, o)
				}
			}
		}
	}
	offs = append(offs, 0, 1, int64(len(want))-1)
	for _, off := range offs {
		for _, n := range []int{1, 7, 4095, 4097, 10000, 3*blk + 13} {
			buf := make([]byte, n)
			k, err := img.ReadAt(buf, off)
			end := min(off+int64(n), int64(len(want)))
			if k != int(end-off) {
				t.Fatalf("%s: ReadAt(%d, %d) = %d bytes, want %d", name, n, off, k, end-off)
			}
			if end-off < int64(n) && err != io.EOF {
				t.Fatalf("%s: short ReadAt(%d, %d): err %v, want io.EOF", name, n, off, err)
			}
			if end-off == int64(n) && err != nil {
				t.Fatalf("%s: ReadAt(%d, %d): %v", name, n, off, err)
			}
			if !bytes.Equal(buf[:k], want[off:end]) {
				t.Fatalf("%s: ReadAt(%d, %d) differs at %d", name, n, off, off+int64(firstDiff(buf[:k], want[off:end])))
			}
		}
	}
	if n, err := img.ReadAt(make([]byte, 1), int64(len(want))); n != 0 || err != io.EOF {
		t.Fatalf("%s: ReadAt at the end: %d, %v", name, n, err)
	}
	if _, err := img.ReadAt(make([]byte, 1), -1); err == nil {
		t.Fatalf("%s: ReadAt at -1 succeeded", name)
	}
	// The io.Reader contract (iotest reads byte by byte: keep the windows
	// small): at the start, around the first extent, and at the end.
	wins := []int64{0, int64(len(want)) - 12*1024}
	if es := img.Extents(); len(es) > 0 {
		wins = append(wins, int64(es[0].Offset)-5000)
	}
	for _, w := range wins {
		w = max(w, 0)
		e := min(w+12*1024, int64(len(want)))
		if err := iotest.TestReader(io.NewSectionReader(img, w, e-w), want[w:e]); err != nil {
			t.Fatalf("%s: window at %d: %v", name, w, err)
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestBaseOnly(t *testing.T) {
	f := newFixture(t, 2*mib)
	base := f.snap("base", "")
	f.fill(base, 0, 1)
	f.fill(base, 10, 3)
	f.fill(base, 511, 1) // the last block
	h := f.head("base")
	f.fill(h, 10, 1) // live writes are not part of any snapshot
	r := f.open()

	snaps := r.Snapshots()
	if len(snaps) != 1 || snaps[0].Name != "base" || snaps[0].File != "volume-snap-base.img" ||
		snaps[0].Parent != "" || snaps[0].Size != 2*mib || snaps[0].Created.IsZero() || snaps[0].Labels["k"] != "v" {
		t.Fatalf("Snapshots = %+v", snaps)
	}
	if r.Size() != 2*mib || r.Info().Head != "volume-head-001.img" || !r.Info().Dirty {
		t.Fatalf("Info = %+v", r.Info())
	}
	checkImage(t, f, r, "base")
	checkImage(t, f, r, "volume-snap-base.img") // the file name works too
}

func TestEmptyVolume(t *testing.T) {
	f := newFixture(t, mib)
	f.snap("base", "")
	f.head("base")
	r := f.open()
	checkImage(t, f, r, "base")
	img, err := r.OpenSnapshot("base")
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if len(img.Extents()) != 0 {
		t.Fatalf("Extents of an empty image: %v", img.Extents())
	}
}

// overlapping builds base ← s1 ← s2 ← head with overlapping writes; s2
// writes zeros over data of base and s1.
func overlapping(t *testing.T) *fixture {
	f := newFixture(t, 4*mib)
	base := f.snap("base", "")
	f.fill(base, 0, 64)    // 0..64
	f.fill(base, 200, 100) // 200..300
	f.fill(base, 1000, 24) // 1000..1024 (the end)
	s1 := f.snap("s1", "base")
	f.fill(s1, 32, 64) // 32..96: over base's end and past it
	f.fill(s1, 250, 1) // inside base's run
	f.fill(s1, 600, 8) // alone
	s2 := f.snap("s2", "s1")
	f.zero(s2, 40, 8)  // zeros over s1's data
	f.zero(s2, 210, 5) // zeros over base's data
	f.fill(s2, 95, 10) // straddles s1's end
	f.fill(s2, 700, 1)
	h := f.head("s2")
	f.fill(h, 0, 1024) // the head overwrites everything: invisible
	return f
}

func TestOverlappingChain(t *testing.T) {
	f := overlapping(t)
	r := f.open()
	var names []string
	for _, s := range r.Snapshots() {
		names = append(names, s.Name+"<"+s.Parent)
	}
	if want := []string{"base<", "s1<base", "s2<s1"}; !slices.Equal(names, want) {
		t.Fatalf("Snapshots = %v, want %v", names, want)
	}
	for _, n := range []string{"base", "s1", "s2"} {
		checkImage(t, f, r, n)
	}
	// The zeros written by s2 hide the data below them.
	img, err := r.OpenSnapshot("s2")
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	buf := make([]byte, 8*blk)
	if _, err := img.ReadAt(buf, 40*blk); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, make([]byte, len(buf))) {
		t.Fatal("zeros written in s2 do not hide s1's data")
	}
	if img.Layers() != 3 || img.Snapshot().Name != "s2" {
		t.Fatalf("Layers %d, Snapshot %+v", img.Layers(), img.Snapshot())
	}
}

func TestRandomChains(t *testing.T) {
	for seed := range uint64(8) {
		rng := rand.New(rand.NewPCG(seed, 1))
		f := newFixture(t, uint64(64+rng.IntN(64))*blk)
		f.rng = rng
		var names []string
		parent := ""
		for i := range 2 + rng.IntN(5) {
			name := string(rune('a' + i))
			l := f.snap(name, parent)
			blocks := int(l.size / blk)
			for range rng.IntN(12) {
				b := rng.IntN(blocks)
				n := 1 + rng.IntN(min(8, blocks-b))
				if rng.IntN(4) == 0 {
					f.zero(l, b, n)
				} else {
					f.fill(l, b, n)
				}
			}
			names = append(names, name)
			parent = name
		}
		f.head(parent)
		r := f.open()
		for i, n := range names {
			checkImage(t, f, r, n)
			for _, b := range append([]string{""}, names[:i+1]...) {
				checkDelta(t, f, r, b, n)
			}
		}
	}
}

// TestExpandedVolume: layers taken before an expansion are shorter than the
// volume; their snapshots are read at their own size.
func TestExpandedVolume(t *testing.T) {
	f := newFixture(t, 2*mib)
	small := f.layer(snapshotFile("small"), "", mib)
	f.fill(small, 0, 4)
	f.fill(small, 255, 1) // the old last block
	big := f.snap("big", "small")
	f.fill(big, 300, 2)
	f.head("big")
	r := f.open()
	checkImage(t, f, r, "small")
	checkImage(t, f, r, "big")
	if s, _ := r.Snapshot("small"); s.Size != mib {
		t.Fatalf("small: Size %d", s.Size)
	}
	checkDelta(t, f, r, "small", "big")
	d, _ := r.Delta("small", "big")
	if d[len(d)-1] != (Extent{Offset: mib, Length: mib}) {
		t.Fatalf("Delta over an expansion does not cover the new range: %v", d)
	}
}

// TestRemovedSnapshot: a snapshot marked Removed still lends its data to
// its descendants but is not read or used as a base.
func TestRemovedSnapshot(t *testing.T) {
	f := newFixture(t, mib)
	base := f.snap("base", "")
	f.fill(base, 0, 8)
	rm := f.snap("rm", "base")
	f.fill(rm, 4, 8)
	rm.removed = true
	f.meta(rm, false)
	top := f.snap("top", "rm")
	f.fill(top, 6, 1)
	f.head("top")
	r := f.open()
	if s := r.Snapshots(); len(s) != 3 || !s[1].Removed || s[0].Removed {
		t.Fatalf("Snapshots = %+v", s)
	}
	checkImage(t, f, r, "top")
	checkDelta(t, f, r, "base", "top")
	if _, err := r.OpenSnapshot("rm"); !errors.Is(err, ErrSnapshotRemoved) {
		t.Fatalf("OpenSnapshot(removed): %v", err)
	}
	if _, err := r.Delta("rm", "top"); !errors.Is(err, ErrSnapshotRemoved) {
		t.Fatalf("Delta from a removed base: %v", err)
	}
}

// TestBranch: after a revert the head starts on an older snapshot; the
// abandoned branch is off the live chain but still readable.
func TestBranch(t *testing.T) {
	f := newFixture(t, mib)
	base := f.snap("base", "")
	f.fill(base, 0, 16)
	a := f.snap("a", "base")
	f.fill(a, 8, 16)
	b := f.snap("b", "base")
	f.fill(b, 12, 2)
	f.head("b")
	r := f.open()
	var names []string
	for _, s := range r.Snapshots() {
		names = append(names, s.Name)
	}
	if !slices.Equal(names, []string{"base", "b"}) {
		t.Fatalf("Snapshots = %v", names)
	}
	checkImage(t, f, r, "a")
	checkImage(t, f, r, "b")
	checkDelta(t, f, r, "base", "a")
	if _, err := r.Delta("a", "b"); !errors.Is(err, ErrNotAncestor) {
		t.Fatalf("Delta across branches: %v", err)
	}
	if _, err := r.Delta("b", "base"); !errors.Is(err, ErrNotAncestor) {
		t.Fatalf("Delta backwards: %v", err)
	}
}

func TestConcurrentReadAt(t *testing.T) {
	f := overlapping(t)
	r := f.open()
	img, err := r.OpenSnapshot("s2")
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	want := f.image("s2")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 2))
			buf := make([]byte, 3*blk)
			for range 2000 {
				off := rng.IntN(len(want))
				n := 1 + rng.IntN(len(buf))
				k, _ := img.ReadAt(buf[:n], int64(off))
				if !bytes.Equal(buf[:k], want[off:off+k]) || k != min(n, len(want)-off) {
					errs <- errors.New("concurrent read differs")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestPurgeWhileOpen: an open image keeps reading the same bytes when
// Longhorn deletes or replaces its layer files (the descriptors stay open).
func TestPurgeWhileOpen(t *testing.T) {
	f := overlapping(t)
	r := f.open()
	img, err := r.OpenSnapshot("s2")
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, n := range []string{"base", "s1"} {
		if err := os.Remove(filepath.Join(f.dir, snapshotFile(n))); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, img.Size())
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, f.image("s2")) {
		t.Fatal("image changed after its layer files were removed")
	}
	// Opening again through the stale Replica reports the change.
	if _, err := r.OpenSnapshot("s2"); !errors.Is(err, ErrChainChanged) {
		t.Fatalf("OpenSnapshot after purge: %v", err)
	}
	if _, err := r.Delta("", "s2"); !errors.Is(err, ErrChainChanged) {
		t.Fatalf("Delta after purge: %v", err)
	}
}

func TestClose(t *testing.T) {
	f := overlapping(t)
	img, err := f.open().OpenSnapshot("s1")
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, off := range []int64{0, 900 * blk} { // data, and a hole
		if _, err := img.ReadAt(make([]byte, blk), off); !errors.Is(err, os.ErrClosed) {
			t.Fatalf("ReadAt at %d after Close: %v", off, err)
		}
	}
}

// TestCompose checks the sweep against a per-byte brute force over random
// extent sets.
func TestCompose(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	for range 500 {
		const span = 300
		layers := make([][]Extent, 1+rng.IntN(70)) // > 64: several bitset words
		for i := range layers {
			for range rng.IntN(6) {
				off := uint64(rng.IntN(span))
				layers[i] = append(layers[i], Extent{Offset: off, Length: uint64(rng.IntN(span - int(off) + 1))})
			}
			layers[i] = mergeExtents(layers[i])
		}
		want := make([]int, span)
		for x := range want {
			want[x] = -1
			for i, es := range layers {
				for _, e := range es {
					if uint64(x) >= e.Offset && uint64(x) < e.End() {
						want[x] = i
					}
				}
			}
		}
		got := make([]int, span)
		for x := range got {
			got[x] = -1
		}
		segs := compose(layers)
		for i, s := range segs {
			if s.off >= s.end || (i > 0 && s.off < segs[i-1].end) ||
				(i > 0 && s.off == segs[i-1].end && s.layer == segs[i-1].layer) {
				t.Fatalf("bad segments %v", segs)
			}
			for x := s.off; x < s.end; x++ {
				got[x] = s.layer
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("compose(%v) = %v", layers, segs)
		}
	}
}

func TestMergeExtents(t *testing.T) {
	got := mergeExtents([]Extent{{10, 5}, {0, 3}, {3, 2}, {14, 10}, {40, 0}, {30, 1}})
	want := []Extent{{0, 5}, {10, 14}, {30, 1}}
	if !slices.Equal(got, want) {
		t.Fatalf("mergeExtents = %v, want %v", got, want)
	}
	if got := clipExtents([]Extent{{0, 5}, {10, 14}, {30, 1}}, 12); !slices.Equal(got, []Extent{{0, 5}, {10, 2}}) {
		t.Fatalf("clipExtents = %v", got)
	}
	if !holesUnreported(1<<30, 8) || holesUnreported(1<<30, 1<<21) {
		t.Fatal("holesUnreported")
	}
}
