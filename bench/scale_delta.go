package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
)

// The fixed final delta of `bench scale` (see bench/README.md): 16 regions
// of 4 MiB spread over the volume and 2,000 scattered 16 KiB page writes,
// none touching another, at the same offsets in every generation.
const (
	scaleRegions     = 16
	scaleRegionBytes = 4 * mib
	scalePages       = 2000
	scalePageBytes   = 16 << 10
	scaleAlign       = 4 << 10 // regions start on a 4 KiB block
)

// Extent is a byte range of a volume.
type Extent struct {
	Off int64 `json:"offset"`
	Len int64 `json:"length"`
}

// End is the first byte after e.
func (e Extent) End() int64 { return e.Off + e.Len }

// DeltaPlan is where the final delta writes.
type DeltaPlan struct {
	Size    int64    `json:"volume_bytes"`
	Regions []Extent `json:"regions"` // scaleRegions × scaleRegionBytes
	Pages   []Extent `json:"-"`       // scalePages × scalePageBytes, 16 KiB-aligned
}

// planDelta places the delta on a volume of size bytes, deterministically
// from seed: region i at a random 4 KiB-aligned offset within the i-th
// sixteenth of the volume, and each page on a random 16 KiB slot that
// neither overlaps nor adjoins a region or another page (so the delta is
// 2,016 separate ranges, 64 MiB + 31.25 MiB).
func planDelta(size int64, seed uint64) (DeltaPlan, error) {
	p := DeltaPlan{Size: size}
	slice := size / scaleRegions
	if slice < 2*scaleRegionBytes {
		return p, fmt.Errorf("a %d-byte volume is too small for %d regions of %d bytes", size, scaleRegions, scaleRegionBytes)
	}
	rng := rand.New(rand.NewPCG(seed, 0x5ca1e))
	slots := size / scalePageBytes
	taken := map[int64]bool{}
	block := func(e Extent) { // e's slots and their neighbours
		for s := e.Off/scalePageBytes - 1; s <= (e.End()-1)/scalePageBytes+1; s++ {
			taken[s] = true
		}
	}
	for i := range int64(scaleRegions) {
		room := (slice - scaleRegionBytes) / scaleAlign
		e := Extent{Off: i*slice + rng.Int64N(room+1)*scaleAlign, Len: scaleRegionBytes}
		p.Regions = append(p.Regions, e)
		block(e)
	}
	if free := slots - int64(len(taken)); free < 4*scalePages {
		return p, fmt.Errorf("a %d-byte volume has no room for %d scattered pages", size, scalePages)
	}
	for len(p.Pages) < scalePages {
		s := rng.Int64N(slots)
		if taken[s] {
			continue
		}
		e := Extent{Off: s * scalePageBytes, Len: scalePageBytes}
		p.Pages = append(p.Pages, e)
		block(e)
	}
	return p, nil
}

// Ranges are every extent the delta writes, sorted by offset.
func (p DeltaPlan) Ranges() []Extent {
	rs := append(append([]Extent{}, p.Regions...), p.Pages...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].Off < rs[j].Off })
	return rs
}

// ChangedBytes is how many bytes the delta writes.
func (p DeltaPlan) ChangedBytes() int64 {
	var n int64
	for _, e := range p.Ranges() {
		n += e.Len
	}
	return n
}

// changedList is the delta in `voldelta send --changed`'s text format: one
// "OFFSET LENGTH" line (decimal) per range.
func changedList(rs []Extent) string {
	var b strings.Builder
	for _, e := range rs {
		fmt.Fprintf(&b, "%d %d\n", e.Off, e.Len)
	}
	return b.String()
}

// keystream is a fast deterministic stream of random bytes named by label
// (AES-256-CTR under SHA-256(label)): gigabytes per second, where
// /dev/urandom would make the 16 GiB images slow to write.
func keystream(label string) cipher.Stream {
	key := sha256.Sum256([]byte("voldelta bench scale: " + label))
	blk, err := aes.NewCipher(key[:])
	if err != nil {
		panic(err) // a 32-byte key is always valid
	}
	return cipher.NewCTR(blk, make([]byte, aes.BlockSize))
}

const genBuf = 8 * mib

// writeImages writes the same size random bytes (keystream(label)) to
// every path, creating them, and fsyncs them: the source's live image and
// the replica that a real first full sync would have written.
func writeImages(paths []string, size int64, label string) error {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		files = append(files, f)
	}
	// Generate one buffer while the previous one is written.
	bufs := make(chan []byte, 2)
	free := make(chan []byte, 3)
	for range 3 {
		free <- make([]byte, genBuf)
	}
	go func() {
		s := keystream(label)
		zero := make([]byte, genBuf)
		for left := size; left > 0; {
			n := min(left, genBuf)
			b := (<-free)[:n]
			s.XORKeyStream(b, zero[:n])
			bufs <- b
			left -= n
		}
		close(bufs)
	}()
	var werr error
	for b := range bufs {
		if werr == nil {
			for _, f := range files {
				if _, err := f.Write(b); err != nil {
					werr = err
					break
				}
			}
		}
		free <- b[:cap(b)]
	}
	if werr != nil {
		return werr
	}
	for _, f := range files {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	return nil
}

// applyDelta writes new random bytes (keystream(label)) over every range
// of the plan in the file at path, in place, and fsyncs it.
func applyDelta(path string, rs []Extent, label string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	s := keystream(label)
	buf := make([]byte, scaleRegionBytes)
	for _, e := range rs {
		for done := int64(0); done < e.Len; {
			n := min(e.Len-done, int64(len(buf)))
			b := buf[:n]
			clear(b)
			s.XORKeyStream(b, b)
			if _, err := f.WriteAt(b, e.Off+done); err != nil {
				return err
			}
			done += n
		}
	}
	return f.Sync()
}

// checkExtents are the byte ranges a replica is compared on: every
// changed range widened by 64 KiB each side (a chunk boundary the hints
// got wrong shows there), and samples 1 MiB windows at random offsets
// (damage elsewhere), clipped to size.
func checkExtents(rs []Extent, size int64, samples int, seed uint64) []Extent {
	const widen, window = 64 << 10, mib
	var out []Extent
	for _, e := range rs {
		off, end := max(0, e.Off-widen), min(size, e.End()+widen)
		out = append(out, Extent{off, end - off})
	}
	rng := rand.New(rand.NewPCG(seed, 0xc4ec))
	for range samples {
		if size <= window {
			out = append(out, Extent{0, size})
			break
		}
		out = append(out, Extent{rng.Int64N(size - window), window})
	}
	return out
}

// compareFiles compares the files at a and b on the extents (all of both
// when extents is nil, and their sizes always); "" when equal, else what
// differs first.
func compareFiles(a, b string, extents []Extent) (string, error) {
	fa, err := os.Open(a)
	if err != nil {
		return "", err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return "", err
	}
	defer fb.Close()
	sa, err := fa.Stat()
	if err != nil {
		return "", err
	}
	sb, err := fb.Stat()
	if err != nil {
		return "", err
	}
	if sa.Size() != sb.Size() {
		return fmt.Sprintf("size %d, want %d", sa.Size(), sb.Size()), nil
	}
	if extents == nil {
		extents = []Extent{{0, sa.Size()}}
	}
	ba, bb := make([]byte, genBuf), make([]byte, genBuf)
	for _, e := range extents {
		for done := int64(0); done < e.Len; {
			n := min(e.Len-done, genBuf)
			if _, err := fa.ReadAt(ba[:n], e.Off+done); err != nil && !errors.Is(err, io.EOF) {
				return "", err
			}
			if _, err := fb.ReadAt(bb[:n], e.Off+done); err != nil && !errors.Is(err, io.EOF) {
				return "", err
			}
			if !bytes.Equal(ba[:n], bb[:n]) {
				return fmt.Sprintf("bytes differ in [%d, %d)", e.Off+done, e.Off+done+n), nil
			}
			done += n
		}
	}
	return "", nil
}
