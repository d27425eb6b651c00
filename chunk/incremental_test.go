package chunk

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

// smallParams cut small chunks and 1 MiB segments, so that a few MiB hold
// many chunks, zero runs and segment edges.
func smallParams(t testing.TB) Params {
	p := DefaultParams().WithSizes(4<<10, 8<<10, 32<<10)
	p.SegmentSize = 1 << 20
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

// change is one edit of an image, for the property test.
type change struct {
	kind   string // "write", "zero", "same", "grow", "shrink"
	off, n uint64
}

// randomImage makes a volume of random bytes with zero stretches, some
// crossing segment edges.
func randomImage(rng *rand.Rand, size uint64) []byte {
	b := make([]byte, size)
	fillRandom(rng, b)
	for k := rng.IntN(6); k > 0 && size > 0; k-- {
		off := rng.Uint64N(size)
		n := min(size-off, rng.Uint64N(400<<10)+1)
		clear(b[off : off+n])
	}
	return b
}

// fillRandom fills b with bytes drawn from rng.
func fillRandom(rng *rand.Rand, b []byte) {
	var seed [32]byte
	for i := range 4 {
		binary.LittleEndian.PutUint64(seed[8*i:], rng.Uint64())
	}
	rand.NewChaCha8(seed).Read(b)
}

// applyChanges edits img and returns it with the extents that changed
// (bytes past the base's end are not listed: a scan finds a size change
// itself).
func applyChanges(rng *rand.Rand, img []byte, changes []change) ([]byte, []Extent) {
	var exts []Extent
	baseLen := uint64(len(img))
	for _, c := range changes {
		size := uint64(len(img))
		switch c.kind {
		case "grow":
			grown := make([]byte, size+c.n)
			copy(grown, img)
			if rng.IntN(2) == 0 {
				fillRandom(rng, grown[size:])
			}
			if size < baseLen {
				// Regrown bytes below the base's end differ from it.
				exts = append(exts, Extent{Offset: size, Length: min(baseLen, size+c.n) - size})
			}
			img = grown
			continue
		case "shrink":
			img = img[:size-min(size-1, c.n)]
			continue
		}
		if size == 0 {
			continue
		}
		off := c.off % size
		n := min(c.n, size-off)
		switch c.kind {
		case "write":
			fillRandom(rng, img[off:off+n])
		case "zero":
			clear(img[off : off+n])
		case "same":
		}
		exts = append(exts, Extent{Offset: off, Length: n})
	}
	// Extents listed may reach past a later shrink; clip them.
	size := uint64(len(img))
	out := exts[:0]
	for _, e := range exts {
		if e.Offset >= size {
			continue
		}
		e.Length = min(e.Length, size-e.Offset)
		out = append(out, e)
	}
	return img, out
}

func randomChanges(rng *rand.Rand) []change {
	kinds := []string{"write", "write", "write", "zero", "same", "grow", "shrink"}
	var cs []change
	for k := rng.IntN(8); k >= 0; k-- {
		c := change{kind: kinds[rng.IntN(len(kinds))], off: rng.Uint64()}
		switch rng.IntN(3) {
		case 0:
			c.n = rng.Uint64N(64) + 1
		case 1:
			c.n = rng.Uint64N(16<<10) + 1
		default:
			c.n = rng.Uint64N(600<<10) + 1
		}
		cs = append(cs, c)
	}
	return cs
}

func fullScan(t testing.TB, img []byte, p Params) *Manifest {
	t.Helper()
	m, _, err := ScanManifest(context.Background(), bytes.NewReader(img), uint64(len(img)), p, ScanOptions{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestIncrementalEqualsFullScan is the property an incremental scan rests
// on: for random images, random edits (writes, zeroed ranges, unchanged
// rewrites, growth, shrinking) and their changed extents, the manifest
// built from the previous one is the one a full scan makes, entry for
// entry, with the same root.
func TestIncrementalEqualsFullScan(t *testing.T) {
	p := smallParams(t)
	cases := uint64(300) // FuzzIncrementalEqualsFullScan explores further
	if raceEnabled {
		cases = 40
	}
	var read, size uint64
	for seed := uint64(0); seed < cases; seed++ {
		st, n := checkIncremental(t, p, seed)
		read += st.ReadBytes
		size += n
	}
	t.Logf("%d cases: read %d of %d bytes (%.1f%%)", cases, read, size, 100*float64(read)/float64(size))
}

func firstDiff(got, want []Entry) string {
	for i := range max(len(got), len(want)) {
		var g, w Entry
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			return fmt.Sprintf("entry %d: got %v, want %v (of %d and %d)", i, g, w, len(got), len(want))
		}
	}
	return "same entries"
}

// TestIncrementalReadsLittle checks what an incremental scan reads for
// scattered small writes: about the changed bytes and a few chunks around
// each, not the segments they fall in.
func TestIncrementalReadsLittle(t *testing.T) {
	p := DefaultParams()
	rng := rand.New(rand.NewPCG(7, 7))
	base := randomImage(rng, 64<<20)
	prev := fullScan(t, base, p)
	img := append([]byte(nil), base...)
	var exts []Extent
	const writes, pageSize = 100, 16 << 10
	for k := range writes {
		off := uint64(k)*(64<<20)/writes + rng.Uint64N(256<<10)
		fillRandom(rng, img[off:off+pageSize])
		exts = append(exts, Extent{Offset: off, Length: pageSize})
	}
	want := fullScan(t, img, p)
	got, st, err := ScanManifest(context.Background(), bytes.NewReader(img), uint64(len(img)), p, ScanOptions{Previous: prev, Changed: exts})
	if err != nil {
		t.Fatal(err)
	}
	if got.Root != want.Root {
		t.Fatal("incremental root differs from a full scan's")
	}
	changed := uint64(writes * pageSize)
	limit := 2*changed + writes*2*uint64(p.MaxSize)
	t.Logf("read %d bytes for %d changed in %d writes (limit %d); reused %d", st.ReadBytes, changed, writes, limit, st.ReusedBytes)
	if st.ReadBytes > limit {
		t.Fatalf("read %d bytes for %d changed bytes in %d writes: more than 2× the change + 2 max chunks per write (%d)", st.ReadBytes, changed, writes, limit)
	}
}

// TestZeroChunkLength checks the length a chunk of zeros is cut at against
// a scan of zeros.
func TestZeroChunkLength(t *testing.T) {
	for _, p := range []Params{DefaultParams(), smallParams(t)} {
		z := ZeroChunkLength(p)
		if z < uint64(p.MinSize) || z > uint64(p.MaxSize) {
			t.Fatalf("%v: zero chunk length %d outside min..max", p, z)
		}
		sc := newSegmentScanner(p)
		_, st, err := sc.scan(context.Background(), bytes.NewReader(make([]byte, 10*z)), 0)
		if err != nil {
			t.Fatal(err)
		}
		if st.ZeroChunks != 10 {
			t.Fatalf("%v: %d zero bytes cut into %d chunks, want 10 of %d", p, 10*z, st.ZeroChunks, z)
		}
	}
}

// checkIncremental runs one case of the property: it fails t if the
// incremental manifest differs from a full scan's.
func checkIncremental(t testing.TB, p Params, seed uint64) (ScanStats, uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 42))
	base := randomImage(rng, rng.Uint64N(4<<20)+1)
	prev := fullScan(t, base, p)
	changes := randomChanges(rng)
	img, exts := applyChanges(rng, append([]byte(nil), base...), changes)
	want := fullScan(t, img, p)
	got, st, err := ScanManifest(context.Background(), bytes.NewReader(img), uint64(len(img)), p,
		ScanOptions{Workers: 2, Previous: prev, Changed: exts})
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	if got.Root != want.Root || !reflect.DeepEqual(got.Entries, want.Entries) {
		t.Fatalf("seed %d (%v, size %d→%d): incremental manifest differs from a full scan:\n%s", seed, changes, len(base), len(img), firstDiff(got.Entries, want.Entries))
	}
	if st.ReadBytes+st.ReusedBytes < uint64(len(img)) {
		t.Fatalf("seed %d: read %d + reused %d bytes do not cover %d", seed, st.ReadBytes, st.ReusedBytes, len(img))
	}
	return st, uint64(len(img))
}

// FuzzIncrementalEqualsFullScan explores the property over more seeds than
// the test runs.
func FuzzIncrementalEqualsFullScan(f *testing.F) {
	for _, seed := range []uint64{43, 95, 915} { // cases that once failed
		f.Add(seed)
	}
	p := smallParams(f)
	f.Fuzz(func(t *testing.T, seed uint64) { checkIncremental(t, p, seed) })
}
