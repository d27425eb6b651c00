// Package longhorn reads a point-in-time image of a Longhorn v1 volume from
// one of its replica's snapshot files on this node, without the Longhorn API.
//
// # Format
//
// What this package relies on, from longhorn-engine's pkg/replica
// (replica.go, diff_disk.go) and pkg/util/disk (constant.go, disk.go):
//
//   - A replica directory (dataPath/replicas/<volume>-<8 hex>, named by
//     longhorn-manager) holds volume.meta: JSON of replica.Info, keys being
//     the Go field names: Size (bytes), Head ("volume-head-NNN.img"), Parent
//     (the head's parent), SectorSize, Dirty, Rebuilding, Error,
//     BackingFilePath, Encrypted. Dirty is set whenever the replica is open.
//   - Every layer ("disk") is a file <disk>.img with <disk>.img.meta beside
//     it: JSON with Name, Parent (the parent's file name, "" for the base),
//     Removed, UserCreated, Created (RFC 3339, UTC) and Labels. Longhorn
//     names a disk after its meta file and ignores Name — which in a
//     snapshot's meta is the name of the head it was linked from — and so
//     does this package. Only the snapshots and the head volume.meta names
//     are layers; other files (revision.counter, *.checksum, *.tmp,
//     volume-delta-*, a leftover or half-created head) are ignored.
//   - A snapshot "x" is the file volume-snap-x.img. Taking it hard-links the
//     head to that name and starts a new, empty head whose parent it is; its
//     file is not written again unless it is Removed and then coalesced with
//     or pruned by a neighbour. The head is live and never read here.
//   - Each .img is a sparse file of the volume size at its creation (after
//     an expansion older layers are shorter; past a layer's end reads as a
//     hole). A layer's data extents hold its writes, in whole 4 KiB sectors
//     (diffDisk read-modify-writes partial sectors from the composed image);
//     a hole means "look at the parent". Longhorn locates data with FIEMAP
//     on a 4 KiB sector; this package uses SEEK_DATA/SEEK_HOLE, which
//     report the same allocation (both assume filesystem blocks of at most
//     4 KiB, as on ext4 and XFS; a filesystem that reports no holes at all
//     is detected and refused, ErrNoHoleSupport). Writing zeros allocates
//     data; holes are punched only by unmap (trim) — meant for the head and
//     the snapshots marked Removed, but see "Trims and Removed snapshots"
//     below: with a Removed snapshot in the chain the engine punches
//     snapshots that are not Removed. With the setting "Remove Snapshots
//     During Filesystem Trim" (unmapMarkSnapChainRemoved) a trim first
//     marks the head's whole chain Removed. Disable that setting for
//     volumes synced with voldelta: a snapshot already open could be
//     punched under the reader.
//   - A byte of snapshot S is that of the topmost layer in S's ancestry
//     holding data there, zero if none does. Snapshots form a tree (a revert
//     starts a new head on an older snapshot); the live chain is the head's.
//   - A replica with a BackingFilePath has a backing image (raw or qcow2)
//     under its base layer; it is refused (ErrBackingFile).
//
// # Reading
//
//	OpenReplica(dir): parse volume.meta and the .img.meta of the head and
//	    of every snapshot; check that every parent exists, no ancestry
//	    loops, the head exists, and no snapshot layer is larger than the
//	    volume
//	OpenSnapshot(S): open S and its ancestors (base first), keep them open;
//	    for each layer walk SEEK_DATA/SEEK_HOLE up to S's size; sweep the
//	    extent edges of all layers, mapping every range to the topmost
//	    layer with data → sorted segments
//	ReadAt(p, off): binary-search the first segment ending past off; pread
//	    each segment's piece from its layer; zero-fill the gaps
//
// Because the layer files stay open, a purge that coalesces, replaces or
// deletes one of them while an Image is open does not change what it reads
// (coalescing copies identical bytes between a layer and its child, and a
// replaced or deleted file lives on through the open descriptor). Longhorn
// changes a directory in steps — a new head's meta before its parent
// snapshot exists, an unlinked name before the replacing file is linked to
// it, a deleted file before its meta — so OpenReplica tolerates those
// states, and a layer missing when it is opened gives ErrChainChanged: open
// the replica again. A snapshot marked Removed is not read, and a
// rebuilding replica is not read at all.
//
// # Delta
//
// Delta(base, target) lists the extents outside which the images of base and
// target are equal: the union of the data extents of the layers after base
// up to target (plus the range past base's size if the volume grew). It
// reads no data. It is meant for a later scan to re-read only what touches
// these extents, given base's manifest (chunk.ScanOptions.Previous and
// Changed; the types convert with chunk.Extent(e)): segments no extent
// touches keep their old entries, and inside a touched region chunking
// restarts at the last old boundary before a change and stops once a cut
// point meets an old boundary again — content-defined chunking
// resynchronises at the first old boundary past a change. The extents are a
// superset of the change (a layer can rewrite bytes with the same content)
// of the base's image as it is now; they are a superset of the change since
// base was synced only if base's file has not been written since, which
// Delta checks as far as the metadata allow (below). On success the slice
// is never nil, even when empty: nil means "unknown" to the scan.
//
// Delta refuses:
//
//   - a base or target marked Removed (ErrSnapshotRemoved): Longhorn may
//     prune or coalesce it at any moment;
//   - a base with a snapshot marked Removed anywhere below it, i.e. among
//     its ancestors (ErrRemovedBelowBase), for the reason below; Removed
//     snapshots between base and target are fine, their data counts in
//     target's layers;
//   - a result computed over a chain that changed (ErrChainChanged): once
//     the extents are listed, Delta reads volume.meta and the .img.meta of
//     every layer of target's chain (target down to the base layer) again
//     and stats their files; a different parent, Removed mark, UserCreated
//     or creation time, a missing meta, or a layer file that is another
//     file (device, inode or size differ from what OpenReplica saw: a
//     purge's coalesce and replace) refuses it, and so does a replica that
//     started rebuilding (ErrRebuilding). New snapshots and heads above
//     target are not a change: Delta reads none of them.
//
// # Trims and Removed snapshots
//
// In longhorn-engine v1.9.0 (and master as of 2026-08, the same code),
// Replica.UnmapAt (pkg/replica/replica.go, lines 1329-1385) builds the list
// of files to punch: the head first, then, walking down from the head's
// parent (lines 1360-1372), every disk that is marked Removed — a disk that
// is not Removed is skipped, not a stop; the walk stops only at a disk with
// more than one child or past the base. diffDisk.UnmapAt
// (pkg/replica/diff_disk.go, lines 291-367) then pairs that list with its
// open files by position counting down from the top (lines 322-347:
// unmappableDisks[len(d.files)-1-idx] names the file, d.files[idx] is the
// file punched). With k Removed disks in that walk, the engine punches the
// head and the k snapshot files directly under it, Removed or not (and uses
// the Removed ones' paths only to measure the space freed). A snapshot S
// that is not Removed is punched when at least as many Removed disks lie in
// the walk as S's distance from the head, which needs a Removed disk below
// S. So for a base B with a Removed snapshot below it, a trim can punch B
// itself: B's image changes (its trimmed ranges now read as the layer
// below, or zeros), the new head has a hole there too, and Delta(B, T)
// lists neither — the scan would keep the bytes B had when it was synced.
// Delta therefore refuses such a base (ErrRemovedBelowBase), conservatively
// also when the walk would have stopped at a branch before reaching the
// Removed disk. The bytes affected are ones the guest has trimmed (free in
// its filesystem), but the copy would no longer equal the source image.
//
// What Delta cannot see: a trim while a Removed snapshot was below B, after
// B was synced, where Longhorn has purged that snapshot before Delta runs.
// Purging a Removed snapshot whose only child is B coalesces B into it and
// links the result to B's name (OpCoalesce, OpReplace; ReplaceDisk keeps B's
// .img.meta and its Created), so nothing in the metadata records the punch.
// voldelta itself makes this window when it deletes the snapshot under the
// one it last synced. Only a full read, or a later base, closes it.
package longhorn
