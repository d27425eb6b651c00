package longhorn

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpenReplicaErrors(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(f *fixture)
		want  error
	}{
		{"no volume.meta", func(f *fixture) {
			f.snap("base", "")
			f.head("base")
			os.Remove(filepath.Join(f.dir, volumeMetaFile))
		}, ErrNotReplica},
		{"bad volume.meta", func(f *fixture) {
			f.snap("base", "")
			f.head("base")
			os.WriteFile(filepath.Join(f.dir, volumeMetaFile), []byte(`{"Size": 1048576, "Head": `), 0o644)
		}, ErrBadMetadata},
		{"empty volume.meta", func(f *fixture) {
			f.head("")
			os.WriteFile(filepath.Join(f.dir, volumeMetaFile), nil, 0o644)
		}, ErrBadMetadata},
		{"negative size", func(f *fixture) {
			f.head("")
			f.info.Size = -1
			f.writeJSON(volumeMetaFile, f.info)
		}, ErrBadMetadata},
		{"size as a string", func(f *fixture) {
			f.head("")
			os.WriteFile(filepath.Join(f.dir, volumeMetaFile), []byte(`{"Size":"1","Head":"volume-head-001.img"}`), 0o644)
		}, ErrBadMetadata},
		{"bad disk meta", func(f *fixture) {
			f.snap("base", "")
			f.head("base")
			os.WriteFile(filepath.Join(f.dir, "volume-snap-base.img.meta"), []byte(`{"Parent": 3}`), 0o644)
		}, ErrBadMetadata},
		{"parent with a path", func(f *fixture) {
			f.snap("base", "")
			l := f.snap("s", "base")
			l.parent = "../x/volume-snap-base.img"
			f.meta(l, false)
			f.head("s")
		}, ErrBadMetadata},
		{"missing parent", func(f *fixture) {
			f.snap("base", "")
			f.snap("s", "base")
			f.head("s")
			os.Remove(filepath.Join(f.dir, "volume-snap-base.img.meta"))
		}, ErrInvalidChain},
		{"cycle", func(f *fixture) {
			a := f.snap("a", "b")
			f.snap("b", "a")
			_ = a
			f.head("a")
		}, ErrInvalidChain},
		{"cycle off the live chain", func(f *fixture) {
			f.snap("base", "")
			f.snap("a", "b")
			f.snap("b", "a")
			f.head("base")
		}, ErrInvalidChain},
		{"self parent", func(f *fixture) {
			f.snap("a", "a")
			f.head("a")
		}, ErrBadMetadata},
		{"head missing", func(f *fixture) {
			f.snap("base", "")
			f.head("base")
			f.info.Head = "volume-head-009.img"
			f.writeJSON(volumeMetaFile, f.info)
		}, ErrInvalidChain},
		{"head as a parent", func(f *fixture) {
			f.snap("base", "")
			h := f.head("base")
			l := f.snap("s", "")
			l.parent = h.file
			f.meta(l, false)
		}, ErrInvalidChain},
		{"layer larger than the volume", func(f *fixture) {
			f.layer(snapshotFile("big"), "", 2*mib)
			f.head("big")
		}, ErrInvalidChain},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, mib)
			c.setup(f)
			_, err := OpenReplica(f.dir)
			if !errors.Is(err, c.want) {
				t.Fatalf("OpenReplica: %v, want %v", err, c.want)
			}
			if !strings.Contains(err.Error(), f.dir) {
				t.Errorf("error does not name the directory: %v", err)
			}
		})
	}
}

// TestLonghornInFlight: states a live Longhorn passes through while it
// takes, replaces or deletes a snapshot open the replica; reading a layer
// that is missing reports ErrChainChanged.
func TestLonghornInFlight(t *testing.T) {
	f := overlapping(t)
	// A new head created before its parent snapshot is linked, and before
	// volume.meta names it.
	f.writeJSON("volume-head-002.img.meta", lhDisk{Parent: "volume-snap-new.img"})
	if err := os.WriteFile(filepath.Join(f.dir, "volume-head-002.img"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A snapshot whose file was unlinked first: being deleted (a leaf) ...
	f.snap("gone", "s2")
	os.Remove(filepath.Join(f.dir, "volume-snap-gone.img"))
	// ... or replaced (s1's name unlinked before the merged file is linked).
	os.Rename(filepath.Join(f.dir, "volume-snap-s1.img"), filepath.Join(f.dir, "s1.saved"))
	r := f.open()
	if s, err := r.Snapshot("s1"); err != nil || s.Size != 0 {
		t.Fatalf("Snapshot(s1) = %+v, %v", s, err)
	}
	checkImage(t, f, r, "base")
	for _, n := range []string{"s1", "s2", "gone"} {
		if _, err := r.OpenSnapshot(n); !errors.Is(err, ErrChainChanged) {
			t.Errorf("OpenSnapshot(%s) with a missing layer: %v", n, err)
		}
	}
	if _, err := r.Delta("base", "s2"); !errors.Is(err, ErrChainChanged) {
		t.Errorf("Delta over a missing layer: %v", err)
	}
	// Once the file is back the same Replica reads it.
	os.Rename(filepath.Join(f.dir, "s1.saved"), filepath.Join(f.dir, "volume-snap-s1.img"))
	checkImage(t, f, r, "s2")
}

func TestOpenSnapshotErrors(t *testing.T) {
	f := overlapping(t)
	r := f.open()
	for _, name := range []string{"nope", "", "volume-head-001.img", "volume-snap-nope.img", "base.img"} {
		if _, err := r.OpenSnapshot(name); !errors.Is(err, ErrSnapshotNotFound) {
			t.Errorf("OpenSnapshot(%q): %v", name, err)
		}
		if _, err := r.Snapshot(name); !errors.Is(err, ErrSnapshotNotFound) {
			t.Errorf("Snapshot(%q): %v", name, err)
		}
	}

	f.info.Rebuilding = true
	f.writeJSON(volumeMetaFile, f.info)
	r = f.open()
	if !r.Info().Rebuilding {
		t.Fatal("Info().Rebuilding not set")
	}
	if _, err := r.OpenSnapshot("s1"); !errors.Is(err, ErrRebuilding) {
		t.Errorf("OpenSnapshot on a rebuilding replica: %v", err)
	}
	if _, err := r.Delta("base", "s1"); !errors.Is(err, ErrRebuilding) {
		t.Errorf("Delta on a rebuilding replica: %v", err)
	}

	f.info.Rebuilding = false
	f.info.BackingFilePath = "/var/lib/longhorn/backing-images/x/backing"
	f.writeJSON(volumeMetaFile, f.info)
	r = f.open()
	if _, err := r.OpenSnapshot("s1"); !errors.Is(err, ErrBackingFile) {
		t.Errorf("OpenSnapshot with a backing file: %v", err)
	}
	if _, err := r.Delta("", "s1"); !errors.Is(err, ErrBackingFile) {
		t.Errorf("Delta from nothing with a backing file: %v", err)
	}
	if _, err := r.Delta("base", "s1"); err != nil {
		t.Errorf("Delta between snapshots with a backing file: %v", err)
	}
}

// TestIgnoredFiles: files that are not layers do not disturb the chain, and
// a disk is named after its meta file, not the Name inside it.
func TestIgnoredFiles(t *testing.T) {
	f := overlapping(t)
	for _, name := range []string{"revision.counter", "volume.meta.tmp", "volume-snap-s1.img.checksum",
		"volume-snap-s1.img.meta.tmp", "volume-delta-x.img", "other.meta", "volume-head-000.img.meta",
		"volume-delta-x.img.meta"} {
		if err := os.WriteFile(filepath.Join(f.dir, name), []byte("{garbage"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(f.dir, "dir.img.meta"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := f.open()
	if n := len(r.Snapshots()); n != 3 {
		t.Fatalf("%d snapshots", n)
	}
	checkImage(t, f, r, "s1")
}

func TestParseCreated(t *testing.T) {
	for _, s := range []string{"2026-01-02T03:04:05Z", "Fri Jan  2 03:04:05 +0000 2026"} {
		if parseCreated(s).IsZero() {
			t.Errorf("parseCreated(%q) is zero", s)
		}
	}
	if !parseCreated("").IsZero() || !parseCreated("yesterday").IsZero() {
		t.Error("unparsable times must be zero")
	}
}
