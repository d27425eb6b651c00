package receiver

import (
	"sort"

	"github.com/voldelta/voldelta/chunk"
)

// index knows which extents of the target hold which bytes: data chunks by
// ID and zero runs. It starts from the committed manifest (or what recovery
// or a rescan proved) and forgets every extent a write touches, so it only
// ever claims what is still intact.
type index struct {
	exts []chunk.Entry // sorted by offset, non-overlapping
	dead []bool
	byID map[chunk.ID][]int
	data int // live data extents
}

func newIndex(exts []chunk.Entry) *index {
	x := &index{exts: exts, dead: make([]bool, len(exts)), byID: make(map[chunk.ID][]int)}
	for i, e := range exts {
		if !e.Zero {
			x.byID[e.ID] = append(x.byID[e.ID], i)
			x.data++
		}
	}
	return x
}

// hasData reports whether any data extent is still known: only then can a
// chunk be copied locally, and only then must writes be ordered.
func (x *index) hasData() bool { return x.data > 0 }

// first returns the index of the first extent ending after off.
func (x *index) first(off uint64) int {
	return sort.Search(len(x.exts), func(i int) bool { return x.exts[i].End() > off })
}

// inPlace reports whether the target already holds e at e.Offset.
func (x *index) inPlace(e chunk.Entry) bool {
	i := x.first(e.Offset)
	if !e.Zero {
		return i < len(x.exts) && !x.dead[i] && x.exts[i].Offset == e.Offset &&
			x.exts[i].Length == e.Length && !x.exts[i].Zero && x.exts[i].ID == e.ID
	}
	// A zero run is in place if live zero extents cover it without a gap.
	pos := e.Offset
	for ; i < len(x.exts) && pos < e.End(); i++ {
		x := x.exts[i]
		if x.Offset > pos || !x.Zero {
			return false
		}
		pos = x.End()
	}
	if pos < e.End() {
		return false
	}
	// re-check liveness of the covering extents
	for j := x.first(e.Offset); j < len(x.exts) && x.exts[j].Offset < e.End(); j++ {
		if x.dead[j] {
			return false
		}
	}
	return true
}

// source returns the offset of an intact copy of data chunk e, if any.
func (x *index) source(e chunk.Entry) (uint64, bool) {
	for _, i := range x.byID[e.ID] {
		if !x.dead[i] && x.exts[i].Length == e.Length {
			return x.exts[i].Offset, true
		}
	}
	return 0, false
}

// clobber forgets every extent overlapping [off, off+n).
func (x *index) clobber(off, n uint64) {
	end := off + n
	for i := x.first(off); i < len(x.exts) && x.exts[i].Offset < end; i++ {
		if !x.dead[i] {
			x.dead[i] = true
			if !x.exts[i].Zero {
				x.data--
			}
		}
	}
}

// truncate forgets everything at or past size.
func (x *index) truncate(size uint64) {
	if size < ^uint64(0) {
		x.clobber(size, ^uint64(0)-size)
	}
}

// live returns the intact extents in offset order.
func (x *index) live() []chunk.Entry {
	out := make([]chunk.Entry, 0, len(x.exts))
	for i, e := range x.exts {
		if !x.dead[i] {
			out = append(out, e)
		}
	}
	return out
}

// withZeroTail returns the live extents plus a zero run over [from, to),
// which must lie past every live extent.
func withZeroTail(live []chunk.Entry, from, to uint64) []chunk.Entry {
	if to <= from {
		return live
	}
	if n := len(live); n > 0 && live[n-1].End() > from {
		return live
	}
	return append(live, chunk.Entry{Offset: from, Length: to - from, Zero: true})
}

// merge combines live extents with proven entries (which take precedence
// where they overlap), keeping offset order.
func merge(base []chunk.Entry, proven []chunk.Entry) []chunk.Entry {
	if len(proven) == 0 {
		return base
	}
	sort.Slice(proven, func(i, j int) bool { return proven[i].Offset < proven[j].Offset })
	x := newIndex(base)
	for _, p := range proven {
		x.clobber(p.Offset, p.Length)
	}
	out := append(x.live(), proven...)
	sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	// proven entries come from one manifest, so they do not overlap each other
	return out
}
