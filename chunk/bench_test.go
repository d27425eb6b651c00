package chunk

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

var (
	benchOnce sync.Once
	benchPath string
	benchErr  error
)

// benchImage writes a 1 GiB random image once per test binary; later reads
// come from the page cache.
func benchImage(b *testing.B) (*os.File, uint64) {
	b.Helper()
	const size = 1 << 30
	benchOnce.Do(func() {
		dir, err := os.MkdirTemp("", "voldelta-scan-bench")
		if err != nil {
			benchErr = err
			return
		}
		benchPath = filepath.Join(dir, "image")
		f, err := os.Create(benchPath)
		if err != nil {
			benchErr = err
			return
		}
		var seed [32]byte
		r := rand.NewChaCha8(seed)
		buf := make([]byte, 8<<20)
		for n := 0; n < size; n += len(buf) {
			r.Read(buf)
			if _, err := f.Write(buf); err != nil {
				benchErr = err
				return
			}
		}
		benchErr = f.Close()
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	f, err := os.Open(benchPath)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f, size
}

// BenchmarkScan measures chunking + hashing of a 1 GiB image from the page
// cache with 1 and 2 workers (the scaling target is ≥ 1.8× on 2 cores).
func BenchmarkScan(b *testing.B) {
	f, size := benchImage(b)
	// Warm the page cache.
	if _, _, err := ScanManifest(context.Background(), f, size, DefaultParams(), ScanOptions{Workers: 2}); err != nil {
		b.Fatal(err)
	}
	for _, w := range []int{1, 2} {
		b.Run(fmt.Sprintf("workers=%d", w), func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := ScanManifest(context.Background(), f, size, DefaultParams(), ScanOptions{Workers: w}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSegment measures one segment scanner over in-memory data: the
// single-core cost of Rabin chunking plus BLAKE3.
func BenchmarkSegment(b *testing.B) {
	data := seeded(42, 64<<20)
	s := newSegmentScanner(DefaultParams())
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := s.scan(context.Background(), newBytesReader(data), 0); err != nil {
			b.Fatal(err)
		}
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if benchPath != "" {
		os.RemoveAll(filepath.Dir(benchPath))
	}
	os.Exit(code)
}
