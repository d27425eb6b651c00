package longhorn

import "errors"

// Sentinel errors. Every error returned by this package wraps at most one of
// them, with the file or snapshot it concerns in the message; test with
// errors.Is.
var (
	// ErrNotReplica means the directory has no volume.meta: it is not a
	// Longhorn v1 replica directory.
	ErrNotReplica = errors.New("not a Longhorn replica directory")

	// ErrBadMetadata means volume.meta or a disk's .img.meta could not be
	// parsed, or holds a value this package cannot accept (negative size,
	// empty head).
	ErrBadMetadata = errors.New("bad Longhorn replica metadata")

	// ErrInvalidChain means the metadata do not form a chain: a parent that
	// does not exist, a cycle, a missing head, a layer that is not a
	// regular file or is larger than the volume.
	ErrInvalidChain = errors.New("invalid Longhorn snapshot chain")

	// ErrSnapshotNotFound means no snapshot of that name exists in the
	// replica (the live volume head is not a snapshot).
	ErrSnapshotNotFound = errors.New("snapshot not found")

	// ErrSnapshotRemoved means the snapshot is marked Removed: Longhorn may
	// coalesce or prune its file at any moment, so it is neither read nor
	// used as a delta base. Its data still counts as an ancestor's.
	ErrSnapshotRemoved = errors.New("snapshot is marked removed")

	// ErrRemovedBelowBase means Delta's base has a snapshot marked Removed
	// below it. While one is, longhorn-engine's UnmapAt punches a trim into
	// snapshots that are not Removed, the base among them (see the package
	// documentation), so the base's image may no longer be the one that was
	// synced and the delta from it would miss those bytes. Read the target
	// in full instead; retrying only helps once Longhorn has purged the
	// removed snapshot.
	ErrRemovedBelowBase = errors.New("a snapshot below the delta base is marked removed")

	// ErrNotAncestor means Delta's base is not an ancestor of its target.
	ErrNotAncestor = errors.New("base is not an ancestor of target")

	// ErrRebuilding means volume.meta says the replica is being rebuilt:
	// its snapshot files may be incomplete. Retryable once the rebuild is
	// done (open the replica again).
	ErrRebuilding = errors.New("replica is rebuilding")

	// ErrBackingFile means the chain sits on a backing image
	// (BackingFilePath), which this package does not read.
	ErrBackingFile = errors.New("replicas with a backing image are not supported")

	// ErrChainChanged means a layer file named by the metadata is missing
	// (Longhorn is deleting or replacing it, or did so since OpenReplica),
	// or, in Delta, that the metadata or the files of the target's chain
	// are no longer what OpenReplica read. Retryable: open the replica
	// again.
	ErrChainChanged = errors.New("snapshot chain changed while it was opened")

	// ErrNoHoleSupport means the filesystem reported a sparse layer as
	// data from end to end (SEEK_HOLE unsupported), which would make a
	// layer's holes hide its parent's data.
	ErrNoHoleSupport = errors.New("filesystem does not report holes (SEEK_HOLE)")

	// ErrReplicaNotFound means FindReplica found no usable replica
	// directory for the volume.
	ErrReplicaNotFound = errors.New("no replica of the volume on this node")

	// ErrAmbiguousReplica means FindReplica found several usable replica
	// directories for the volume; use FindReplicas and choose.
	ErrAmbiguousReplica = errors.New("several replicas of the volume on this node")
)
