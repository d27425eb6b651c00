package longhorn

import (
	"bytes"
	"encoding/binary"
	"os"
	"slices"
	"testing"
)

// fuzzMaxLayer bounds the layer files FuzzDataExtents writes, so that each
// run can read all of one back.
const fuzzMaxLayer = 2 << 20

// sparseLayer creates a sparse file of size bytes in dir holding 0xa5 at
// every extent of es (clipped to size) and nothing elsewhere.
func sparseLayer(t *testing.T, dir string, size uint64, es []Extent) *os.File {
	t.Helper()
	f, err := os.CreateTemp(dir, "layer-*.img")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	for _, e := range clipExtents(mergeExtents(slices.Clone(es)), size) {
		if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, int(e.Length)), int64(e.Offset)); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// FuzzDataExtents fuzzes the extent list of a layer file as SEEK_DATA and
// SEEK_HOLE report it, over real sparse files: the file's size, the limit
// dataExtents reads up to, and the writes (6 bytes each: offset and length,
// 24 bits each, reduced to fit the file). Whatever list dataExtents returns
// must be sorted, maximal and within the limit, cover every written byte,
// leave only zeros outside it, and come back unchanged when written as a new
// sparse file and listed again.
func FuzzDataExtents(f *testing.F) {
	// w encodes writes given as offset, length pairs.
	w := func(pairs ...uint32) []byte {
		var b []byte
		for i := 0; i+1 < len(pairs); i += 2 {
			off, n := pairs[i], pairs[i+1]-1
			b = append(b, byte(off>>16), byte(off>>8), byte(off), byte(n>>16), byte(n>>8), byte(n))
		}
		return b
	}
	f.Add(uint32(1<<20), uint32(1<<20), w(0, 4096, 64<<10, 100))
	f.Add(uint32(fuzzMaxLayer), uint32(fuzzMaxLayer), w(0, fuzzMaxLayer)) // all data, above the hole-support check
	f.Add(uint32(fuzzMaxLayer), uint32(1<<20+1), w(1<<20-10, 20))         // limit inside a block
	f.Add(uint32(3*4096+7), uint32(3*4096+7), w(3*4096, 7, 1, 1))         // data in the last, partial block
	f.Add(uint32(1<<20), uint32(1<<20), []byte(nil))                      // all hole
	f.Add(uint32(0), uint32(0), w(0, 1))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, size, limit uint32, writes []byte) {
		fsize := uint64(size) % (fuzzMaxLayer + 1)
		lim := uint64(limit) % (fsize + 1)
		var written []Extent
		for len(writes) >= 6 && len(written) < 16 && fsize > 0 {
			off := uint64(writes[0])<<16 | uint64(writes[1])<<8 | uint64(writes[2])
			n := uint64(writes[3])<<16 | uint64(writes[4])<<8 | uint64(writes[5])
			writes = writes[6:]
			off %= fsize
			n = n%(fsize-off) + 1 // 1..fsize-off
			written = append(written, Extent{Offset: off, Length: n})
		}
		layer := sparseLayer(t, dir, fsize, written)
		es, err := dataExtents(layer, lim)
		if err != nil {
			t.Fatalf("dataExtents(%d of %d, writes %v): %v", lim, fsize, written, err)
		}
		// Sorted, disjoint, not adjacent (maximal), not empty, within the limit.
		for i, e := range es {
			if e.Length == 0 || e.End() > lim || (i > 0 && e.Offset <= es[i-1].End()) {
				t.Fatalf("limit %d: extent %d %+v of %v is empty, past the limit or not after the previous", lim, i, e, es)
			}
		}
		if !slices.Equal(mergeExtents(slices.Clone(es)), es) || !slices.Equal(clipExtents(slices.Clone(es), lim), es) {
			t.Fatalf("%v is not merged or not clipped to %d", es, lim)
		}
		// Every written byte below the limit is in an extent.
		for _, wr := range clipExtents(mergeExtents(slices.Clone(written)), lim) {
			i, _ := slices.BinarySearchFunc(es, wr.Offset, func(e Extent, off uint64) int {
				if e.End() <= off {
					return -1
				}
				if e.Offset > off {
					return 1
				}
				return 0
			})
			if i == len(es) || es[i].Offset > wr.Offset || es[i].End() < wr.End() {
				t.Fatalf("written %+v is not inside one extent of %v", wr, es)
			}
		}
		// Outside the extents, the file reads as zeros.
		var at uint64
		for _, hole := range append(slices.Clone(es), Extent{Offset: lim}) {
			if hole.Offset > at {
				buf := make([]byte, hole.Offset-at)
				if _, err := layer.ReadAt(buf, int64(at)); err != nil {
					t.Fatal(err)
				}
				if i := bytes.IndexFunc(buf, func(r rune) bool { return r != 0 }); i >= 0 {
					t.Fatalf("data at %d, outside the extents %v", at+uint64(i), es)
				}
			}
			at = hole.End()
		}
		// Round trip: the extents written as a new layer list as themselves.
		again, err := dataExtents(sparseLayer(t, dir, fsize, es), lim)
		if err != nil {
			t.Fatalf("re-encoded layer: %v", err)
		}
		if !slices.Equal(again, es) {
			t.Fatalf("round trip changed the extents: %v -> %v", es, again)
		}
	})
}

// FuzzMergeExtents checks mergeExtents and clipExtents, which turn the
// extent lists of a snapshot's layers into the sorted, maximal list that
// Delta and OpenSnapshot report, against a byte map. Extents are 4 bytes
// each (offset, length: 16 bits each); the limit is the first 2 bytes.
func FuzzMergeExtents(f *testing.F) {
	enc := func(limit uint16, es ...Extent) []byte {
		b := binary.BigEndian.AppendUint16(nil, limit)
		for _, e := range es {
			b = binary.BigEndian.AppendUint16(b, uint16(e.Offset))
			b = binary.BigEndian.AppendUint16(b, uint16(e.Length))
		}
		return b
	}
	f.Add(enc(100, Extent{0, 10}, Extent{10, 5}, Extent{30, 0}, Extent{5, 50}, Extent{90, 20}))
	f.Add(enc(0xffff, Extent{0xffff, 0xffff}, Extent{0, 1}))
	f.Add(enc(7))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		limit := uint64(binary.BigEndian.Uint16(data))
		var es []Extent
		for b := data[2:]; len(b) >= 4; b = b[4:] {
			es = append(es, Extent{Offset: uint64(binary.BigEndian.Uint16(b)), Length: uint64(binary.BigEndian.Uint16(b[2:]))})
		}
		want := make([]bool, 2<<16)
		for _, e := range es {
			for i := e.Offset; i < e.End(); i++ {
				want[i] = true
			}
		}
		merged := mergeExtents(slices.Clone(es))
		for i, e := range merged {
			if e.Length == 0 || (i > 0 && e.Offset <= merged[i-1].End()) {
				t.Fatalf("extent %d %+v of %v is empty or not after the previous", i, e, merged)
			}
		}
		got := make([]bool, len(want))
		for _, e := range merged {
			for i := e.Offset; i < e.End(); i++ {
				got[i] = true
			}
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("merge of %v is %v: byte %d differs", es, merged, i)
			}
		}
		if again := mergeExtents(slices.Clone(merged)); !slices.Equal(again, merged) {
			t.Fatalf("merging %v again gives %v", merged, again)
		}
		clipped := clipExtents(slices.Clone(merged), limit)
		for i := range got {
			got[i] = false
		}
		for _, e := range clipped {
			if e.Length == 0 || e.End() > limit {
				t.Fatalf("clip of %v to %d: %v", merged, limit, clipped)
			}
			for i := e.Offset; i < e.End(); i++ {
				got[i] = true
			}
		}
		for i := range want {
			if got[i] != (want[i] && uint64(i) < limit) {
				t.Fatalf("clip of %v to %d is %v: byte %d", merged, limit, clipped, i)
			}
		}
	})
}
