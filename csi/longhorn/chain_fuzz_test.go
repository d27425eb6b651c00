package longhorn

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// The layer files of the replicas FuzzOpenReplica builds: the head and three
// snapshots. A layer's metadata is fuzzed; an empty one is not written.
var fuzzLayers = [4]string{"volume-head-003.img", "volume-snap-a.img", "volume-snap-b.img", "volume-snap-c.img"}

// fuzzLayerUnit is the unit of the layer file sizes FuzzOpenReplica's layout
// chooses, and fuzzVolumeSize the volume size of its seeds.
const (
	fuzzLayerUnit  = 512 << 10
	fuzzVolumeSize = 4 * fuzzLayerUnit
)

// encodeJSON is how longhorn-engine writes a metadata file (json.Encoder:
// one value and a newline).
func encodeJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// writeReplicaDir writes a replica directory: volume.meta, the .img.meta of
// every layer with metadata, and the layer files the layout keeps: nibble i
// of layout is layer i's size in fuzzLayerUnit (low 3 bits) and, with bit 3
// set, no file (Longhorn replacing or deleting it).
func writeReplicaDir(t testing.TB, dir string, vol []byte, metas [4][]byte, layout uint16) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, volumeMetaFile), vol, 0o644); err != nil {
		t.Fatal(err)
	}
	for i, file := range fuzzLayers {
		if len(metas[i]) > 0 {
			if err := os.WriteFile(filepath.Join(dir, file+metaSuffix), metas[i], 0o644); err != nil {
				t.Fatal(err)
			}
		}
		nib := layout >> (4 * i) & 0xf
		if nib&8 != 0 {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, file), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(dir, file), int64(nib&7)*fuzzLayerUnit); err != nil {
			t.Fatal(err)
		}
	}
}

// reencodeReplica writes what OpenReplica made of a replica directory back
// as Longhorn would, into dir: volume.meta from Info, and every disk's
// .img.meta and layer file (sparse, of the size it had; none if it was
// missing).
func reencodeReplica(t testing.TB, r *Replica, dir string) {
	t.Helper()
	info := r.Info()
	vol := encodeJSON(t, lhInfo{Size: int64(info.Size), Head: info.Head, Dirty: info.Dirty,
		Rebuilding: info.Rebuilding, Error: info.Error, Parent: info.Parent, SectorSize: info.SectorSize,
		BackingFilePath: info.BackingFilePath, Encrypted: info.Encrypted})
	if err := os.WriteFile(filepath.Join(dir, volumeMetaFile), vol, 0o644); err != nil {
		t.Fatal(err)
	}
	for file, d := range r.disks {
		created := ""
		if !d.created.IsZero() {
			created = d.created.Format(time.RFC3339Nano) // its own offset: in UTC, year 0 at +01:00 would be year -1
		}
		meta := encodeJSON(t, lhDisk{Name: info.Head, Parent: d.parent, Removed: d.removed,
			UserCreated: d.userCreated, Created: created, Labels: d.labels})
		if err := os.WriteFile(filepath.Join(dir, file+metaSuffix), meta, 0o644); err != nil {
			t.Fatal(err)
		}
		if d.missing {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, file), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(dir, file), int64(d.size)); err != nil {
			t.Fatal(err)
		}
	}
}

// checkReplica checks the invariants of a replica OpenReplica accepted.
func checkReplica(t *testing.T, r *Replica) {
	t.Helper()
	info := r.Info()
	head, ok := r.disks[info.Head]
	if !ok {
		t.Fatalf("head %s has no disk", info.Head)
	}
	if info.Size == 0 || !validDiskFile(info.Head) {
		t.Fatalf("accepted info %+v", info)
	}
	// The live chain runs from a base up to the head's parent, each
	// snapshot the parent of the next.
	snaps := r.Snapshots()
	if len(snaps) != len(r.chain) {
		t.Fatalf("%d snapshots for a chain of %d", len(snaps), len(r.chain))
	}
	seen := map[string]bool{}
	for i, s := range snaps {
		if !isSnapshotFile(s.File) || snapshotFile(s.Name) != s.File {
			t.Fatalf("snapshot %d %+v is not a snapshot file", i, s)
		}
		if seen[s.File] {
			t.Fatalf("snapshot %s twice in the chain", s.File)
		}
		seen[s.File] = true
		want := ""
		if i > 0 {
			want = snaps[i-1].Name
		}
		if s.Parent != want {
			t.Fatalf("snapshot %d %s has parent %q, want %q", i, s.Name, s.Parent, want)
		}
		if s.Size > info.Size {
			t.Fatalf("snapshot %s is %d bytes, above the volume size %d", s.Name, s.Size, info.Size)
		}
	}
	wantParent := ""
	if n := len(snaps); n > 0 {
		wantParent = snaps[n-1].File
	}
	if head.parent != wantParent {
		t.Fatalf("head's parent %q, chain ends at %q", head.parent, wantParent)
	}
	// Every disk's ancestry ends at a base, within the disks, never at the
	// head; every snapshot can be looked up and opened or is refused with
	// a reason.
	for file, d := range r.disks {
		anc := r.ancestry(d)
		if len(anc) > len(r.disks) || anc[len(anc)-1].parent != "" {
			t.Fatalf("ancestry of %s: %d disks of %d", file, len(anc), len(r.disks))
		}
		for _, a := range anc[1:] {
			if a == head {
				t.Fatalf("the head is an ancestor of %s", file)
			}
		}
		if file == info.Head || !isSnapshotFile(file) {
			continue
		}
		s, err := r.Snapshot(file)
		if err != nil || s.File != file {
			t.Fatalf("Snapshot(%s) = %+v, %v", file, s, err)
		}
		img, err := r.OpenSnapshot(s.Name)
		switch {
		case err == nil:
			if img.Size() != d.size || len(img.Extents()) != 0 || img.Layers() != len(anc) {
				t.Fatalf("image of %s: size %d (layer %d), %d extents, %d layers of %d",
					file, img.Size(), d.size, len(img.Extents()), img.Layers(), len(anc))
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
		case errors.Is(err, ErrRebuilding) && info.Rebuilding,
			errors.Is(err, ErrSnapshotRemoved) && d.removed,
			errors.Is(err, ErrBackingFile) && info.BackingFilePath != "",
			errors.Is(err, ErrChainChanged) && slices.ContainsFunc(anc, func(a *disk) bool { return a.missing }):
		default:
			t.Fatalf("OpenSnapshot(%s): %v", s.Name, err)
		}
	}
}

// equalReplicas reports how a and b differ, "" if they do not.
func equalReplicas(a, b *Replica) string {
	if a.info != b.info {
		return "info"
	}
	if !slices.Equal(a.chain, b.chain) {
		return "chain"
	}
	if len(a.disks) != len(b.disks) {
		return "number of disks"
	}
	for file, d := range a.disks {
		e, ok := b.disks[file]
		switch {
		case !ok:
			return file + " missing"
		case d.file != e.file || d.parent != e.parent || d.removed != e.removed || d.userCreated != e.userCreated ||
			d.size != e.size || d.missing != e.missing:
			return file
		case !d.created.Equal(e.created):
			return file + " created"
		case !maps.Equal(d.labels, e.labels):
			return file + " labels"
		}
	}
	return ""
}

func FuzzOpenReplica(f *testing.F) {
	vol := func(head, parent string) []byte {
		return encodeJSON(f, lhInfo{Size: fuzzVolumeSize, Head: head, Dirty: true, Parent: parent, SectorSize: 512})
	}
	meta := func(parent string, removed bool, created string, labels map[string]string) []byte {
		return encodeJSON(f, lhDisk{Name: fuzzLayers[0], Parent: parent, Removed: removed, UserCreated: true,
			Created: created, Labels: labels})
	}
	const when = "2026-01-02T03:04:05Z"
	h, a, b, c := fuzzLayers[0], fuzzLayers[1], fuzzLayers[2], fuzzLayers[3]
	all := uint16(0x4444)
	// a <- b <- c <- head
	f.Add(vol(h, c), meta(c, false, when, nil), meta("", false, when, map[string]string{"k": "v"}),
		meta(a, true, "Fri Jan  2 03:04:05 +0000 2026", nil), meta(b, false, "", map[string]string{}), all)
	// a <- b <- head, a <- c (a branch left by a revert), c's file missing
	f.Add(vol(h, b), meta(b, false, when, nil), meta("", false, when, nil), meta(a, false, when, nil),
		meta(a, false, when, nil), uint16(0x8444))
	// head alone, no snapshots, head larger than the volume
	f.Add(vol(h, ""), meta("", false, when, nil), []byte(nil), []byte(nil), []byte(nil), uint16(0x0007))
	// a loop: a <- c <- b <- a
	f.Add(vol(h, c), meta(c, false, when, nil), meta(b, false, when, nil), meta(c, false, when, nil),
		meta(a, false, when, nil), all)
	// the head as a parent
	f.Add(vol(h, a), meta(a, false, when, nil), meta(h, false, when, nil), []byte(nil), []byte(nil), all)
	// a parent that does not exist; a snapshot larger than the volume
	f.Add(vol(h, a), meta(a, false, when, nil), meta("volume-snap-x.img", false, when, nil), []byte(nil),
		[]byte(nil), uint16(0x0054))
	// a rebuilding replica with a backing file
	f.Add(encodeJSON(f, lhInfo{Size: fuzzVolumeSize, Head: h, Parent: a, Rebuilding: true, BackingFilePath: "/b"}),
		meta(a, false, when, nil), meta("", false, when, nil), []byte(nil), []byte(nil), all)
	f.Fuzz(func(t *testing.T, volMeta, headMeta, aMeta, bMeta, cMeta []byte, layout uint16) {
		dir := filepath.Join(t.TempDir(), "pvc-fuzz-0123abcd")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		writeReplicaDir(t, dir, volMeta, [4][]byte{headMeta, aMeta, bMeta, cMeta}, layout)
		r, err := OpenReplica(dir)
		if err != nil {
			return
		}
		checkReplica(t, r)
		again := filepath.Join(filepath.Dir(dir), "pvc-again-0123abcd")
		if err := os.Mkdir(again, 0o755); err != nil {
			t.Fatal(err)
		}
		reencodeReplica(t, r, again)
		r2, err := OpenReplica(again)
		if err != nil {
			t.Fatalf("the re-encoded replica does not open: %v", err)
		}
		if diff := equalReplicas(r, r2); diff != "" {
			t.Fatalf("round trip changed the replica (%s): %+v %v -> %+v %v", diff, r.info, r.chain, r2.info, r2.chain)
		}
	})
}

func FuzzParseCreated(f *testing.F) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	f.Add(t0.Format(time.RFC3339Nano))
	f.Add(t0.Format(time.RFC3339))
	f.Add(t0.In(time.FixedZone("X", -7*3600)).Format(time.RubyDate))
	f.Add(t0.Format(time.UnixDate))
	f.Add("")
	f.Add("yesterday")
	f.Fuzz(func(t *testing.T, s string) {
		tm := parseCreated(s)
		if tm.IsZero() {
			return
		}
		enc := tm.Format(time.RFC3339Nano) // its own offset: in UTC, year 0 at +01:00 would be year -1
		if again := parseCreated(enc); !again.Equal(tm) {
			t.Fatalf("parseCreated(%q) = %v, re-encoded %q parses as %v", s, tm, enc, again)
		}
	})
}
