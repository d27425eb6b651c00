package longhorn

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
)

// Image is the point-in-time image of one snapshot, composed from its layer
// files: each byte comes from the topmost layer of the snapshot's chain that
// holds data there, and reads as zero where no layer does. It keeps the layer
// files open until Close, so Longhorn may purge or replace them meanwhile
// without changing what it reads. ReadAt may be called concurrently.
type Image struct {
	snap    Snapshot
	size    uint64
	files   []*os.File // layer files, base first
	segs    []segment  // sorted, disjoint
	extents []Extent   // the union of segs

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// segment maps [off, end) of the image to files[layer] at the same offset.
type segment struct {
	off, end uint64
	layer    int
}

// OpenSnapshot opens the image of snapshot name (the bare name, or its file
// name "volume-snap-<name>.img"). The image's size is the snapshot layer's
// size: the volume size when the snapshot was taken. It builds the composed
// extent map once, from every layer's SEEK_DATA/SEEK_HOLE extents.
func (r *Replica) OpenSnapshot(name string) (*Image, error) {
	d, err := r.lookup(name)
	if err != nil {
		return nil, err
	}
	if err := r.readable(d); err != nil {
		return nil, err
	}
	if r.info.BackingFilePath != "" {
		return nil, fmt.Errorf("%s: %w", r.dir, ErrBackingFile)
	}
	chain := r.ancestry(d)
	slices.Reverse(chain)
	img := &Image{snap: r.snapshot(d), files: make([]*os.File, 0, len(chain))}
	ok := false
	defer func() {
		if !ok {
			img.Close()
		}
	}()
	for _, l := range chain {
		f, err := r.openLayer(l.file)
		if err != nil {
			return nil, err
		}
		img.files = append(img.files, f)
	}
	st, err := img.files[len(img.files)-1].Stat()
	if err != nil {
		return nil, fmt.Errorf("stat layer: %w", err)
	}
	img.size = uint64(st.Size())
	img.snap.Size = img.size
	layers := make([][]Extent, len(img.files))
	for i, f := range img.files {
		st, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("stat layer: %w", err)
		}
		es, err := dataExtents(f, min(uint64(st.Size()), img.size))
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", chain[i].file, err)
		}
		layers[i] = es
	}
	img.segs = compose(layers)
	for _, s := range img.segs {
		if n := len(img.extents); n > 0 && img.extents[n-1].End() == s.off {
			img.extents[n-1].Length += s.end - s.off
		} else {
			img.extents = append(img.extents, Extent{Offset: s.off, Length: s.end - s.off})
		}
	}
	ok = true
	return img, nil
}

// compose maps each byte range to the topmost layer holding data there.
// layers[i] lists layer i's sorted, disjoint extents; higher i is nearer the
// top. It sweeps over the extents' edges, keeping the set of layers with data
// at the current offset.
func compose(layers [][]Extent) []segment {
	type edge struct {
		at    uint64
		layer int
		start bool
	}
	var edges []edge
	for i, es := range layers {
		for _, e := range mergeExtents(slices.Clone(es)) {
			edges = append(edges, edge{e.Offset, i, true}, edge{e.End(), i, false})
		}
	}
	// Within one layer, merged extents never share an edge, so the order
	// of edges at the same offset does not matter.
	slices.SortFunc(edges, func(a, b edge) int {
		switch {
		case a.at < b.at:
			return -1
		case a.at > b.at:
			return 1
		}
		return 0
	})
	active := make([]uint64, (len(layers)+63)/64)
	top := func() int {
		for w := len(active) - 1; w >= 0; w-- {
			if active[w] != 0 {
				return w*64 + 63 - bits.LeadingZeros64(active[w])
			}
		}
		return -1
	}
	var segs []segment
	cur, prev := -1, uint64(0)
	for i := 0; i < len(edges); {
		at := edges[i].at
		if cur >= 0 && at > prev {
			if n := len(segs); n > 0 && segs[n-1].layer == cur && segs[n-1].end == prev {
				segs[n-1].end = at
			} else {
				segs = append(segs, segment{off: prev, end: at, layer: cur})
			}
		}
		for ; i < len(edges) && edges[i].at == at; i++ {
			e := edges[i]
			if e.start {
				active[e.layer/64] |= 1 << (e.layer % 64)
			} else {
				active[e.layer/64] &^= 1 << (e.layer % 64)
			}
		}
		cur, prev = top(), at
	}
	return segs
}

// Snapshot describes the snapshot this image was opened from.
func (img *Image) Snapshot() Snapshot { return img.snap }

// Size is the image's size in bytes.
func (img *Image) Size() uint64 { return img.size }

// Extents lists the data extents of the composed image (the union over its
// layers), sorted and merged. Outside them the image reads as zeros.
func (img *Image) Extents() []Extent { return slices.Clone(img.extents) }

// Layers is the number of layer files the image is composed of.
func (img *Image) Layers() int { return len(img.files) }

// ReadAt reads len(p) bytes at off, as io.ReaderAt: it returns io.EOF with
// fewer bytes at the end of the image. Safe for concurrent use.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if img.closed.Load() {
		return 0, fmt.Errorf("read snapshot %s: %w", img.snap.Name, os.ErrClosed)
	}
	if off < 0 {
		return 0, fmt.Errorf("read at negative offset %d", off)
	}
	if uint64(off) >= img.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	var eof error
	if rest := img.size - uint64(off); uint64(len(p)) > rest {
		p, eof = p[:rest], io.EOF
	}
	pos, end := uint64(off), uint64(off)+uint64(len(p))
	i := sort.Search(len(img.segs), func(i int) bool { return img.segs[i].end > pos })
	for pos < end {
		if i < len(img.segs) && img.segs[i].off <= pos {
			s := img.segs[i]
			stop := min(s.end, end)
			buf := p[pos-uint64(off) : stop-uint64(off)]
			if n, err := img.files[s.layer].ReadAt(buf, int64(pos)); err != nil {
				if errors.Is(err, io.EOF) {
					err = fmt.Errorf("layer %d ends inside a data extent at %d", s.layer, pos+uint64(n))
				}
				return int(pos-uint64(off)) + n, fmt.Errorf("read snapshot %s: %w", img.snap.Name, err)
			}
			pos = stop
			if stop == s.end {
				i++
			}
			continue
		}
		stop := end
		if i < len(img.segs) {
			stop = min(stop, img.segs[i].off)
		}
		clear(p[pos-uint64(off) : stop-uint64(off)])
		pos = stop
	}
	return len(p), eof
}

// Close closes the layer files. Reads after Close fail.
func (img *Image) Close() error {
	img.closeOnce.Do(func() {
		img.closed.Store(true)
		var errs []error
		for _, f := range img.files {
			if err := f.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		img.closeErr = errors.Join(errs...)
	})
	return img.closeErr
}
