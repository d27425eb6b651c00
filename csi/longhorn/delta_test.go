package longhorn

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

// checkDelta compares Delta(base, target) with the model, and checks what
// it promises: outside the extents the two images are equal.
func checkDelta(t *testing.T, f *fixture, r *Replica, base, target string) {
	t.Helper()
	got, err := r.Delta(base, target)
	if err != nil {
		t.Fatalf("Delta(%q, %q): %v", base, target, err)
	}
	if want := f.delta(base, target); !slices.Equal(got, want) {
		t.Fatalf("Delta(%q, %q) = %v, want %v", base, target, got, want)
	}
	ti := f.image(target)
	var bi []byte
	if base != "" {
		bi = f.image(base)
	} else {
		bi = make([]byte, len(ti)) // everything differs from an empty volume
	}
	var off uint64
	for _, e := range append(got, Extent{Offset: uint64(len(ti))}) {
		if e.Offset > off && !bytes.Equal(ti[off:e.Offset], bi[off:e.Offset]) {
			t.Fatalf("Delta(%q, %q) misses a change in [%d, %d)", base, target, off, e.Offset)
		}
		off = e.End()
	}
}

func TestDelta(t *testing.T) {
	f := overlapping(t)
	r := f.open()
	for _, c := range [][2]string{
		{"", "base"}, {"", "s1"}, {"", "s2"},
		{"base", "s1"}, {"base", "s2"}, {"s1", "s2"},
		{"base", "base"}, {"s2", "s2"},
	} {
		checkDelta(t, f, r, c[0], c[1])
	}
	// base "" is the image's own extents.
	d, _ := r.Delta("", "s2")
	img, err := r.OpenSnapshot("s2")
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if !slices.Equal(d, img.Extents()) {
		t.Fatalf("Delta(\"\", s2) = %v, Extents = %v", d, img.Extents())
	}
	// s1 → s2 includes the zero blocks s2 wrote.
	d, _ = r.Delta("s1", "s2")
	if !slices.ContainsFunc(d, func(e Extent) bool { return e.Offset <= 40*blk && e.End() >= 48*blk }) {
		t.Fatalf("Delta(s1, s2) = %v misses the zero write", d)
	}
	if d, _ := r.Delta("s2", "s2"); d == nil || len(d) != 0 {
		t.Fatalf("Delta(s2, s2) = %v", d)
	}
}

func TestDeltaErrors(t *testing.T) {
	f := overlapping(t)
	r := f.open()
	for _, c := range []struct {
		base, target string
		want         error
	}{
		{"base", "nope", ErrSnapshotNotFound},
		{"nope", "s2", ErrSnapshotNotFound},
		{"s2", "s1", ErrNotAncestor},
		{"base", "volume-head-001.img", ErrSnapshotNotFound},
	} {
		if _, err := r.Delta(c.base, c.target); !errors.Is(err, c.want) {
			t.Errorf("Delta(%q, %q): %v, want %v", c.base, c.target, err, c.want)
		}
	}
}
