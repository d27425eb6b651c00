package hint

import (
	"context"
	"reflect"
	"testing"

	"github.com/voldelta/voldelta/chunk"
)

// sliceSource yields extents from a slice.
type sliceSource []extent

func (s *sliceSource) next() (extent, bool, error) {
	if len(*s) == 0 {
		return extent{}, false, nil
	}
	e := (*s)[0]
	*s = (*s)[1:]
	return e, true, nil
}

func diffOf(t *testing.T, base, nw []extent, limit uint64) ([]chunk.Extent, diffStats) {
	t.Helper()
	b, n := sliceSource(base), sliceSource(nw)
	got, st, err := diffExtents(context.Background(), &b, &n, limit)
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(got, limit); err != nil {
		t.Fatal(err)
	}
	return got, st
}

const sh = fiemapExtentShared

func TestDiffExtents(t *testing.T) {
	const K = 4096
	for _, c := range []struct {
		name      string
		base, nw  []extent
		limit     uint64
		want      []chunk.Extent
		wantShare uint64
	}{
		{"identical shared", []extent{{0, 1000 * K, 100 * K, sh}}, []extent{{0, 1000 * K, 100 * K, sh}}, 100 * K, []chunk.Extent{}, 100 * K},
		{"split differently, same blocks",
			[]extent{{0, 1000 * K, 100 * K, sh}},
			[]extent{{0, 1000 * K, 30 * K, sh}, {30 * K, 1030 * K, 70 * K, sh}},
			100 * K, []chunk.Extent{}, 100 * K},
		{"one page rewritten (COW)",
			[]extent{{0, 1000 * K, 100 * K, sh}},
			[]extent{{0, 1000 * K, 10 * K, sh}, {10 * K, 5000 * K, 1 * K, 0}, {11 * K, 1011 * K, 89 * K, sh}},
			100 * K, []chunk.Extent{x(10*K, K)}, 99 * K},
		{"same blocks at another offset",
			[]extent{{0, 1000 * K, 10 * K, sh}},
			[]extent{{0, 1001 * K, 10 * K, sh}},
			10 * K, []chunk.Extent{x(0, 10*K)}, 0},
		{"same physical but not flagged shared",
			[]extent{{0, 0, 10 * K, 0}},
			[]extent{{0, 0, 10 * K, 0}},
			10 * K, []chunk.Extent{x(0, 10*K)}, 0},
		{"holes in both", []extent{{0, 1000 * K, K, sh}, {9 * K, 1009 * K, K, sh}}, []extent{{0, 1000 * K, K, sh}, {9 * K, 1009 * K, K, sh}},
			10 * K, []chunk.Extent{}, 2 * K},
		{"hole in one",
			[]extent{{0, 1000 * K, 10 * K, sh}},
			[]extent{{0, 1000 * K, 2 * K, sh}, {5 * K, 1005 * K, 5 * K, sh}},
			10 * K, []chunk.Extent{x(2*K, 3*K)}, 7 * K},
		{"hole vs unwritten is changed",
			nil,
			[]extent{{2 * K, 1000 * K, 2 * K, fiemapExtentUnwritten}},
			10 * K, []chunk.Extent{x(2*K, 2*K)}, 0},
		{"unwritten in both at the same place",
			[]extent{{0, 1000 * K, 4 * K, sh | fiemapExtentUnwritten}},
			[]extent{{0, 1000 * K, 4 * K, sh | fiemapExtentUnwritten}},
			4 * K, []chunk.Extent{}, 4 * K},
		{"unwritten vs written at the same place",
			[]extent{{0, 1000 * K, 4 * K, sh | fiemapExtentUnwritten}},
			[]extent{{0, 1000 * K, 4 * K, sh}},
			4 * K, []chunk.Extent{x(0, 4*K)}, 0},
		{"untrusted flags",
			[]extent{{0, 1000 * K, 6 * K, sh}},
			[]extent{{0, 1000 * K, K, sh | fiemapExtentEncoded}, {K, 1001 * K, K, sh | fiemapExtentDelalloc},
				{2 * K, 1002 * K, K, sh | fiemapExtentUnknown}, {3 * K, 1003 * K, K, sh | fiemapExtentDataInline | fiemapExtentNotAligned},
				{4 * K, 1004 * K, K, sh | fiemapExtentDataEncrypted}, {5 * K, 1005 * K, K, sh | fiemapExtentLast}},
			6 * K, []chunk.Extent{x(0, 5*K)}, K},
		{"extents past the limit are clipped",
			[]extent{{0, 1000 * K, 100 * K, sh}},
			[]extent{{0, 1000 * K, 8 * K, sh}, {8 * K, 7000 * K, 100 * K, 0}},
			10 * K, []chunk.Extent{x(8*K, 2*K)}, 8 * K},
		{"nothing mapped", nil, nil, 10 * K, []chunk.Extent{}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, st := diffOf(t, c.base, c.nw, c.limit)
			if got == nil || !reflect.DeepEqual(got, c.want) {
				t.Fatalf("changed %v, want %v", got, c.want)
			}
			if st.shared != c.wantShare {
				t.Fatalf("shared %d, want %d", st.shared, c.wantShare)
			}
		})
	}
}

func TestDiffExtentsCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b, n := sliceSource{{0, 0, 10, sh}}, sliceSource{{0, 0, 10, sh}}
	if _, _, err := diffExtents(ctx, &b, &n, 10); err != context.Canceled {
		t.Fatalf("err %v", err)
	}
}

func x(off, length uint64) chunk.Extent { return chunk.Extent{Offset: off, Length: length} }
