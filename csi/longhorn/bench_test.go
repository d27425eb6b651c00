package longhorn

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// benchImage builds a 128 MiB volume of three layers — base half full in
// 64 KiB runs, s1 with scattered 4–64 KiB writes over a fifth of it, s2
// with single 4 KiB blocks over a tenth — and opens s2.
func benchImage(b *testing.B) (*fixture, *Image) {
	b.Helper()
	const size = 128 * mib
	f := newFixture(b, size)
	f.rng = rand.New(rand.NewPCG(1, 2))
	blocks := int(size / blk)
	base := f.snap("base", "")
	for i := 0; i < blocks; i += 32 {
		f.fill(base, i, 16)
	}
	s1 := f.snap("s1", "base")
	for range blocks / 5 / 8 {
		n := 1 + f.rng.IntN(16)
		f.fill(s1, f.rng.IntN(blocks-n), n)
	}
	s2 := f.snap("s2", "s1")
	for range blocks / 10 {
		f.fill(s2, f.rng.IntN(blocks), 1)
	}
	f.head("s2")
	img, err := f.open().OpenSnapshot("s2")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { img.Close() })
	return f, img
}

func BenchmarkReadAt(b *testing.B) {
	f, img := benchImage(b)
	size := int64(img.Size())
	b.Logf("%d layers, %d extents, %d segments", img.Layers(), len(img.Extents()), len(img.segs))

	seq := func(r interface {
		ReadAt([]byte, int64) (int, error)
	}, n int) func(b *testing.B) {
		return func(b *testing.B) {
			buf := make([]byte, n)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			var off int64
			for b.Loop() {
				if _, err := r.ReadAt(buf, off); err != nil {
					b.Fatal(err)
				}
				if off += int64(n); off+int64(n) > size {
					off = 0
				}
			}
		}
	}
	b.Run("composed/seq-1MiB", seq(img, mib))
	b.Run("composed/seq-64KiB", seq(img, 64<<10))
	b.Run("composed/rand-64KiB", func(b *testing.B) {
		rng := rand.New(rand.NewPCG(3, 4))
		buf := make([]byte, 64<<10)
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		for b.Loop() {
			off := rng.Int64N(size - int64(len(buf)))
			if _, err := img.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The baseline: the same image as one flat file, read with pread.
	flat := filepath.Join(b.TempDir(), "flat.img")
	data := make([]byte, size)
	if _, err := img.ReadAt(data, 0); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(flat, data, 0o644); err != nil {
		b.Fatal(err)
	}
	fh, err := os.Open(flat)
	if err != nil {
		b.Fatal(err)
	}
	defer fh.Close()
	b.Run("flat-file/seq-1MiB", seq(fh, mib))
	b.Run("flat-file/seq-64KiB", seq(fh, 64<<10))
	_ = f
}

// BenchmarkOpenSnapshot measures building the composed extent map.
func BenchmarkOpenSnapshot(b *testing.B) {
	f, img := benchImage(b)
	r := f.open()
	b.Logf("%d extents", len(img.Extents()))
	b.ReportAllocs()
	for b.Loop() {
		img, err := r.OpenSnapshot("s2")
		if err != nil {
			b.Fatal(err)
		}
		img.Close()
	}
}
