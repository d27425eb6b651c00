package longhorn

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Replica is one Longhorn v1 replica directory as its metadata described it
// when OpenReplica read them. It holds no open files; its methods may be
// called concurrently.
type Replica struct {
	dir   string
	info  Info
	disks map[string]*disk // by disk file name, head included
	chain []string         // snapshot files from the base up to the head's parent
}

// disk is one layer file and its .img.meta.
type disk struct {
	file        string // "volume-snap-x.img" or "volume-head-001.img"
	parent      string // parent's file; "" for the base
	removed     bool
	userCreated bool
	created     time.Time
	labels      map[string]string
	size        uint64 // apparent size of the .img when the replica was opened
	missing     bool   // the .img did not exist then
	dev, ino    uint64 // the .img's identity then (a replaced file has another)
}

// Snapshot describes one snapshot of a replica.
type Snapshot struct {
	// Name is the bare snapshot name: "x" for "volume-snap-x.img".
	Name string
	// File is the snapshot's layer file name in the replica directory.
	File string
	// Parent is the parent snapshot's bare name; "" for the base.
	Parent string
	// Created is when the snapshot was taken (zero if unrecorded).
	Created time.Time
	// Removed: marked for deletion; its data still counts for its
	// descendants, but it cannot be opened or used as a delta base.
	Removed bool
	// UserCreated: taken on request (CSI or user), not by Longhorn itself
	// (rebuild, expansion).
	UserCreated bool
	// Labels are the snapshot's labels (nil if none).
	Labels map[string]string
	// Size is the layer file's apparent size: the volume size when the
	// snapshot was taken, and the size of the image OpenSnapshot reads.
	// It is 0 if the file was missing when the replica was opened
	// (Longhorn was replacing or deleting it).
	Size uint64
}

// OpenReplica reads the metadata of the replica directory dir: volume.meta,
// the .img.meta of the head it names and of every snapshot. It checks that
// every parent exists, that no ancestry loops, that the head exists, and
// that no snapshot layer is larger than the volume. It opens no layer file
// for reading; OpenSnapshot and Delta do, and report ErrChainChanged for a
// layer whose file is missing (Longhorn replaces a file by unlinking its
// name first, and deletes a file before its meta).
//
// A replica that is rebuilding or records an error still opens (Info says
// so); OpenSnapshot and Delta refuse a rebuilding one.
func OpenReplica(dir string) (*Replica, error) {
	data, err := readMeta(filepath.Join(dir, volumeMetaFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNotReplica)
	}
	if err != nil {
		return nil, fmt.Errorf("read volume metadata: %w", err)
	}
	info, err := parseVolumeMeta(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %v", filepath.Join(dir, volumeMetaFile), ErrBadMetadata, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list replica directory: %w", err)
	}
	r := &Replica{dir: dir, info: info, disks: make(map[string]*disk)}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, imgSuffix+metaSuffix) {
			continue
		}
		file := strings.TrimSuffix(name, metaSuffix)
		// Only snapshots and the head volume.meta names are layers: another
		// head is a leftover, or one being created whose parent snapshot
		// does not exist yet.
		if !isSnapshotFile(file) && file != info.Head {
			continue
		}
		data, err := readMeta(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since ReadDir: Longhorn removes a disk's file, then its meta
		}
		if err != nil {
			return nil, fmt.Errorf("read disk metadata: %w", err)
		}
		d, err := parseDiskMeta(file, data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w: %v", filepath.Join(dir, name), ErrBadMetadata, err)
		}
		switch st, err := os.Stat(filepath.Join(dir, file)); {
		case errors.Is(err, fs.ErrNotExist):
			// Being deleted, or replaced (Longhorn unlinks the old
			// name before linking the new file to it): reading it
			// reports ErrChainChanged.
			d.missing = true
		case err != nil:
			return nil, fmt.Errorf("stat layer: %w", err)
		case !st.Mode().IsRegular():
			return nil, fmt.Errorf("%w: %s is not a regular file", ErrInvalidChain, file)
		default:
			d.size = uint64(st.Size())
			d.dev, d.ino = fileID(st)
		}
		r.disks[file] = d
	}
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return r, nil
}

// validate checks the disks and builds r.chain.
func (r *Replica) validate() error {
	head, ok := r.disks[r.info.Head]
	if !ok {
		return fmt.Errorf("%w: head %s has no metadata", ErrInvalidChain, r.info.Head)
	}
	for _, d := range r.disks {
		if d.parent != "" {
			p, ok := r.disks[d.parent]
			if !ok {
				return fmt.Errorf("%w: parent %s of %s does not exist", ErrInvalidChain, d.parent, d.file)
			}
			if p == head {
				return fmt.Errorf("%w: %s has the live head as its parent", ErrInvalidChain, d.file)
			}
		}
		if d != head && d.size > r.info.Size {
			return fmt.Errorf("%w: %s is %d bytes, larger than the volume (%d)", ErrInvalidChain, d.file, d.size, r.info.Size)
		}
	}
	// Every parent exists: a walk longer than the number of disks has met
	// a disk twice.
	for _, d := range r.disks {
		n := 0
		for p := d; p.parent != ""; p = r.disks[p.parent] {
			if n++; n > len(r.disks) {
				return fmt.Errorf("%w: the ancestry of %s loops", ErrInvalidChain, d.file)
			}
		}
	}
	var chain []string
	for p := head.parent; p != ""; p = r.disks[p].parent {
		chain = append(chain, p)
	}
	for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
		chain[i], chain[j] = chain[j], chain[i]
	}
	for _, f := range chain {
		if !isSnapshotFile(f) {
			return fmt.Errorf("%w: %s in the head's chain is not a snapshot file", ErrInvalidChain, f)
		}
	}
	r.chain = chain
	return nil
}

// Dir is the replica directory.
func (r *Replica) Dir() string { return r.dir }

// Info is what volume.meta said when the replica was opened.
func (r *Replica) Info() Info { return r.info }

// Size is the volume size recorded in volume.meta.
func (r *Replica) Size() uint64 { return r.info.Size }

// Snapshots lists the snapshots of the live chain, from the base up to the
// head's parent, Removed ones included. Snapshots on other branches (left
// by a revert) are not listed but can still be opened by name.
func (r *Replica) Snapshots() []Snapshot {
	out := make([]Snapshot, 0, len(r.chain))
	for _, f := range r.chain {
		out = append(out, r.snapshot(r.disks[f]))
	}
	return out
}

// Snapshot describes the snapshot name (bare or file name), wherever it is
// in the replica.
func (r *Replica) Snapshot(name string) (Snapshot, error) {
	d, err := r.lookup(name)
	if err != nil {
		return Snapshot{}, err
	}
	return r.snapshot(d), nil
}

func (r *Replica) snapshot(d *disk) Snapshot {
	s := Snapshot{
		Name:        snapshotName(d.file),
		File:        d.file,
		Created:     d.created,
		Removed:     d.removed,
		UserCreated: d.userCreated,
		Labels:      maps.Clone(d.labels),
		Size:        d.size,
	}
	if d.parent != "" {
		s.Parent = snapshotName(d.parent)
	}
	return s
}

// lookup finds a snapshot by bare name or file name. The head is not a
// snapshot.
func (r *Replica) lookup(name string) (*disk, error) {
	if name == "" {
		return nil, fmt.Errorf("empty snapshot name: %w", ErrSnapshotNotFound)
	}
	for _, f := range []string{name, snapshotFile(name)} {
		if d, ok := r.disks[f]; ok && isSnapshotFile(f) && f != r.info.Head {
			return d, nil
		}
	}
	return nil, fmt.Errorf("snapshot %q in %s: %w", name, r.dir, ErrSnapshotNotFound)
}

// ancestry lists d and its ancestors, d first.
func (r *Replica) ancestry(d *disk) []*disk {
	var out []*disk
	for p := d; ; p = r.disks[p.parent] {
		out = append(out, p)
		if p.parent == "" {
			return out
		}
	}
}

// readable checks what OpenSnapshot and Delta need of the replica and of a
// snapshot they read.
func (r *Replica) readable(d *disk) error {
	if r.info.Rebuilding {
		return fmt.Errorf("%s: %w", r.dir, ErrRebuilding)
	}
	if d.removed {
		return fmt.Errorf("snapshot %s: %w", snapshotName(d.file), ErrSnapshotRemoved)
	}
	return nil
}

// openLayer opens a layer file read-only. A file that vanished since
// OpenReplica is reported as ErrChainChanged.
func (r *Replica) openLayer(file string) (*os.File, error) {
	f, err := os.Open(filepath.Join(r.dir, file))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open layer %s: %w: %v", file, ErrChainChanged, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open layer: %w", err)
	}
	return f, nil
}

// Delta returns the extents that may differ between the images of snapshot
// base and snapshot target, sorted and merged: the union of the data extents
// of the layers after base up to and including target, plus, when target is
// larger than base (the volume grew), the range past base's size. Outside
// them the two images are equal. target must descend from base (or be base:
// no extents). base "" means every data extent of target's chain, i.e.
// target.Extents(). The slice is empty, not nil, when nothing changed.
//
// Delta reads only metadata and extent maps, not data. Neither snapshot may
// be marked Removed (a removed base may have been pruned, so its image is no
// longer what was synced), and no snapshot below base may be either
// (ErrRemovedBelowBase: Longhorn's unmap then punches holes into snapshots
// that are not removed, base among them; see the package documentation).
// Once the extents are listed Delta reads the metadata of target's chain
// again and stats its files: if any differs from what OpenReplica read (a
// parent, a Removed mark, a creation time, a file replaced by a purge) or
// the replica started rebuilding, the result is refused with
// ErrChainChanged (or ErrRebuilding), never returned.
func (r *Replica) Delta(base, target string) ([]Extent, error) {
	t, err := r.lookup(target)
	if err != nil {
		return nil, err
	}
	if err := r.readable(t); err != nil {
		return nil, err
	}
	var b *disk
	if base != "" {
		if b, err = r.lookup(base); err != nil {
			return nil, fmt.Errorf("delta base: %w", err)
		}
		if err := r.readable(b); err != nil {
			return nil, fmt.Errorf("delta base: %w", err)
		}
	} else if r.info.BackingFilePath != "" {
		return nil, fmt.Errorf("%s: %w", r.dir, ErrBackingFile)
	}
	var layers []*disk
	found := b == nil
	chain := r.ancestry(t)
	for i, d := range chain {
		if d == b {
			found = true
			if err := removedBelow(b, chain[i+1:]); err != nil {
				return nil, err
			}
			break
		}
		layers = append(layers, d)
	}
	if !found {
		return nil, fmt.Errorf("delta from %s to %s: %w", snapshotName(b.file), snapshotName(t.file), ErrNotAncestor)
	}
	var size uint64
	var all []Extent
	for i, d := range layers {
		es, fsize, err := r.layerExtents(d)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			size = fsize
		}
		all = append(all, es...)
	}
	if testHookDeltaListed != nil {
		testHookDeltaListed()
	}
	if err := r.recheck(chain); err != nil {
		return nil, fmt.Errorf("delta from %q to %s: %w", base, snapshotName(t.file), err)
	}
	if b != nil && size > b.size {
		all = append(all, Extent{Offset: b.size, Length: size - b.size})
	}
	if len(all) == 0 {
		return []Extent{}, nil // no change, which is not "unknown"
	}
	return clipExtents(mergeExtents(all), size), nil
}

// testHookDeltaListed, if set (by tests), runs once Delta has listed the
// layers' extents, before it checks the chain again.
var testHookDeltaListed func()

// removedBelow refuses base as a delta base if one of the snapshots below it
// (its ancestors, nearest first) is marked Removed.
func removedBelow(base *disk, below []*disk) error {
	var names []string
	for _, d := range below {
		if d.removed {
			names = append(names, snapshotName(d.file))
		}
	}
	if len(names) == 0 {
		return nil
	}
	return fmt.Errorf("snapshot %s below delta base %s is marked removed: while it is, a trim punches holes "+
		"into the snapshots above it that are not removed (longhorn-engine Replica.UnmapAt), so %s may no longer "+
		"hold what was synced from it: %w",
		strings.Join(names, ", "), snapshotName(base.file), snapshotName(base.file), ErrRemovedBelowBase)
}

// recheck reads volume.meta and the .img.meta of the disks ds again and
// stats their files; anything that differs from what OpenReplica read is
// ErrChainChanged.
func (r *Replica) recheck(ds []*disk) error {
	data, err := readMeta(filepath.Join(r.dir, volumeMetaFile))
	if err != nil {
		return fmt.Errorf("read volume metadata again: %w: %v", ErrChainChanged, err)
	}
	info, err := parseVolumeMeta(data)
	if err != nil {
		return fmt.Errorf("%s: %w: %v", filepath.Join(r.dir, volumeMetaFile), ErrBadMetadata, err)
	}
	if info.Rebuilding {
		return fmt.Errorf("%s: %w", r.dir, ErrRebuilding)
	}
	if info.BackingFilePath != r.info.BackingFilePath {
		return fmt.Errorf("%s: backing file changed: %w", r.dir, ErrChainChanged)
	}
	for _, d := range ds {
		data, err := readMeta(filepath.Join(r.dir, d.file+metaSuffix))
		if err != nil {
			return fmt.Errorf("read metadata of %s again: %w: %v", d.file, ErrChainChanged, err)
		}
		n, err := parseDiskMeta(d.file, data)
		if err != nil {
			return fmt.Errorf("%s: %w: %v", filepath.Join(r.dir, d.file+metaSuffix), ErrBadMetadata, err)
		}
		if n.parent != d.parent || n.removed != d.removed || n.userCreated != d.userCreated || !n.created.Equal(d.created) {
			return fmt.Errorf("metadata of %s changed (parent %q→%q, removed %v→%v): %w",
				d.file, d.parent, n.parent, d.removed, n.removed, ErrChainChanged)
		}
		st, err := os.Stat(filepath.Join(r.dir, d.file))
		if err != nil {
			return fmt.Errorf("stat layer %s again: %w: %v", d.file, ErrChainChanged, err)
		}
		if err := d.same(st); err != nil {
			return err
		}
	}
	return nil
}

// same checks that st is of the file OpenReplica found for d.
func (d *disk) same(st os.FileInfo) error {
	dev, ino := fileID(st)
	if d.missing || dev != d.dev || ino != d.ino || uint64(st.Size()) != d.size {
		return fmt.Errorf("layer %s was replaced (Longhorn purged a snapshot): %w", d.file, ErrChainChanged)
	}
	return nil
}

// fileID is a file's device and inode number.
func fileID(st os.FileInfo) (dev, ino uint64) {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return uint64(s.Dev), s.Ino
	}
	return 0, 0
}

// layerExtents opens the layer of d, lists its data extents and closes it.
// It also returns the layer's size. A file other than the one OpenReplica
// found is ErrChainChanged.
func (r *Replica) layerExtents(d *disk) ([]Extent, uint64, error) {
	f, err := r.openLayer(d.file)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("stat layer: %w", err)
	}
	if err := d.same(st); err != nil {
		return nil, 0, err
	}
	size := uint64(st.Size())
	es, err := dataExtents(f, size)
	if err != nil {
		return nil, 0, fmt.Errorf("layer %s: %w", d.file, err)
	}
	return es, size, nil
}
