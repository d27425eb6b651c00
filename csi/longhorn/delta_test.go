package longhorn

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
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

// punch punches [b, b+n) blocks out of layer l, as a trim does, in the file
// and the model.
func (f *fixture) punch(l *modelLayer, b, n int) {
	f.t.Helper()
	fh, err := os.OpenFile(filepath.Join(f.dir, l.file), os.O_WRONLY, 0)
	if err != nil {
		f.t.Fatal(err)
	}
	defer fh.Close()
	if err := unix.Fallocate(int(fh.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(b)*blk, int64(n)*blk); err != nil {
		f.t.Fatal(err)
	}
	for i := b; i < b+n; i++ {
		l.written[i] = false
		clear(l.data[i*blk : (i+1)*blk])
	}
}

// engineUnmap trims blocks [b, b+n) as longhorn-engine v1.9.0 does
// (pkg/replica/replica.go Replica.UnmapAt, pkg/replica/diff_disk.go
// diffDisk.UnmapAt) and returns the layers it punched, top first. The
// replica lists the head and then every Removed disk it meets walking down
// from the head's parent, skipping disks that are not Removed and stopping
// at one with more than one child; the diffDisk then punches that many
// files of the chain counted from the top, whatever they are.
func (f *fixture) engineUnmap(head *modelLayer, b, n int) []string {
	f.t.Helper()
	children := map[string]int{}
	for _, l := range f.layers {
		if l.parent != "" {
			children[l.parent]++
		}
	}
	chain := []*modelLayer{head} // top first
	for p := head.parent; p != ""; p = f.layers[p].parent {
		chain = append(chain, f.layers[p])
	}
	unmappable := 1
	for _, l := range chain[1:] {
		if children[l.file] > 1 {
			break
		}
		if l.removed {
			unmappable++
		}
	}
	var punched []string
	for _, l := range chain[:unmappable] {
		f.punch(l, b, n)
		punched = append(punched, l.file)
	}
	return punched
}

// TestDeltaRemovedBelowBase: with a Removed snapshot below the base, the
// engine's trim punches the base, which is not Removed, and the delta from
// it would miss that change: Delta refuses the base.
func TestDeltaRemovedBelowBase(t *testing.T) {
	f := newFixture(t, mib)
	base := f.snap("base", "")
	f.fill(base, 0, 32)
	rm := f.snap("rm", "base")
	f.fill(rm, 8, 8)
	rm.removed = true
	f.meta(rm, false)
	s2 := f.snap("s2", "rm")
	f.fill(s2, 16, 8)
	head := f.head("s2")
	synced := f.image("s2") // what a round read of s2

	// A trim of blocks 16..20 while rm is Removed punches the head and s2
	// (the top two files), not rm.
	if got := f.engineUnmap(head, 16, 4); !slices.Equal(got, []string{head.file, s2.file}) {
		t.Fatalf("the engine model punched %v", got)
	}
	f.snap("s3", "s2") // the trimmed head becomes s3
	f.fill(f.layers[snapshotFile("s3")], 40, 2)
	f.head("s3")

	// The delta from s2 to s3 as layers say it misses the punched blocks.
	now := f.image("s3")
	var missed bool
	for _, e := range complement(f.delta("s2", "s3"), uint64(len(now))) {
		if !bytes.Equal(now[e.Offset:e.End()], synced[e.Offset:e.End()]) {
			missed = true
		}
	}
	if !missed {
		t.Fatal("the engine model did not reproduce the missed change")
	}

	r := f.open()
	_, err := r.Delta("s2", "s3")
	if !errors.Is(err, ErrRemovedBelowBase) {
		t.Fatalf("Delta(s2, s3) with rm removed below s2: %v, want ErrRemovedBelowBase", err)
	}
	for _, w := range []string{"rm", "s2"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %s", err, w)
		}
	}
	// A removed snapshot between base and target, or no base at all, is
	// fine: its data counts in target's layers.
	checkDelta(t, f, r, "base", "s3")
	checkDelta(t, f, r, "", "s3")
	if _, err := r.Delta("rm", "s3"); !errors.Is(err, ErrSnapshotRemoved) {
		t.Fatalf("Delta from the removed snapshot: %v", err)
	}
}

// TestDeltaNoRemoved: without a Removed snapshot the engine's trim punches
// only the head, and the delta from a snapshot holds.
func TestDeltaNoRemoved(t *testing.T) {
	f := newFixture(t, mib)
	base := f.snap("base", "")
	f.fill(base, 0, 32)
	s1 := f.snap("s1", "base")
	f.fill(s1, 8, 8)
	s2 := f.snap("s2", "s1")
	f.fill(s2, 16, 8)
	head := f.head("s2")
	f.fill(head, 18, 1)
	synced := f.image("s2")
	if got := f.engineUnmap(head, 16, 4); !slices.Equal(got, []string{head.file}) {
		t.Fatalf("the engine model punched %v", got)
	}
	if !bytes.Equal(f.image("s2"), synced) {
		t.Fatal("s2 changed")
	}
	f.snap("s3", "s2")
	f.head("s3")
	r := f.open()
	for _, b := range []string{"base", "s1", "s2"} {
		checkDelta(t, f, r, b, "s3")
	}
}

// TestDeltaChainChanged: Delta refuses its result when the chain it read at
// OpenReplica is no longer the chain once the extents are listed.
func TestDeltaChainChanged(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(f *fixture)
		want   error
	}{
		{"snapshot below the base marked removed", func(f *fixture) {
			l := f.layers[snapshotFile("base")]
			l.removed = true
			f.meta(l, false)
		}, ErrChainChanged},
		{"base marked removed", func(f *fixture) {
			l := f.layers[snapshotFile("s1")]
			l.removed = true
			f.meta(l, false)
		}, ErrChainChanged},
		{"target's parent rewritten", func(f *fixture) {
			// A purge of s1: its child s2 now descends from base.
			l := f.layers[snapshotFile("s2")]
			l.parent = snapshotFile("base")
			f.meta(l, false)
		}, ErrChainChanged},
		{"base file replaced", func(f *fixture) {
			// Longhorn's coalesce and replace: another file is linked
			// to the name.
			p := filepath.Join(f.dir, snapshotFile("s1"))
			data, err := os.ReadFile(p)
			if err != nil {
				f.t.Fatal(err)
			}
			if err := os.WriteFile(p+".new", data, 0o644); err != nil {
				f.t.Fatal(err)
			}
			if err := os.Rename(p+".new", p); err != nil {
				f.t.Fatal(err)
			}
		}, ErrChainChanged},
		{"replica rebuilding", func(f *fixture) {
			f.info.Rebuilding = true
			f.writeJSON(volumeMetaFile, f.info)
		}, ErrRebuilding},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Changed during Delta, after the layers were listed.
			f := overlapping(t)
			r := f.open()
			checkDelta(t, f, r, "s1", "s2")
			testHookDeltaListed = func() { c.change(f) }
			t.Cleanup(func() { testHookDeltaListed = nil })
			if _, err := r.Delta("s1", "s2"); !errors.Is(err, c.want) {
				t.Fatalf("Delta with the chain changed during it: %v, want %v", err, c.want)
			}
			testHookDeltaListed = nil
			// The same Replica keeps refusing: its chain is stale.
			if _, err := r.Delta("s1", "s2"); !errors.Is(err, c.want) {
				t.Fatalf("Delta with the chain changed since OpenReplica: %v, want %v", err, c.want)
			}
		})
	}
	// Nothing changed: the hook runs and Delta succeeds.
	f := overlapping(t)
	r := f.open()
	ran := false
	testHookDeltaListed = func() { ran = true }
	defer func() { testHookDeltaListed = nil }()
	checkDelta(t, f, r, "s1", "s2")
	if !ran {
		t.Fatal("the hook did not run")
	}
}

// complement lists the gaps of sorted es within [0, size).
func complement(es []Extent, size uint64) []Extent {
	var out []Extent
	var off uint64
	for _, e := range append(es, Extent{Offset: size}) {
		if e.Offset > off {
			out = append(out, Extent{Offset: off, Length: e.Offset - off})
		}
		off = e.End()
	}
	return out
}
