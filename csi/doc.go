// Package csi resolves Kubernetes volumes to readable or writable devices on
// this node and takes the consistent snapshots a sync round reads.
//
//	Resolver.ResolvePVC(ns, pvc): PVC → bound PV → CSI driver and volumeHandle
//	    → device under the host root: /dev/longhorn/<handle>, or
//	    /dev/mapper/<handle> for an encrypted Longhorn volume
//	Resolver.AttachedNode(volume): the Longhorn Volume's status.currentNodeID
//	    (longhorn.io, read through the dynamic client), else the node of an
//	    attached storage.k8s.io/v1 VolumeAttachment of the PV
//	Snapshotter.EnsureSnapshot(request): create the VolumeSnapshot if it is
//	    missing; Result{Ready, RetryAfter, Handle}: Ready once it and its
//	    VolumeSnapshotContent are readyToUse and the content has a
//	    snapshotHandle; an error wrapping ErrSnapshotFailed if either reports
//	    an error
//	Snapshotter.EnsureDeleted(ns, name): delete it if present
//	ImageSource.Open(volume, snapshot): the point-in-time image of a ready
//	    snapshot: for Longhorn v1 (handle "snap://<volume>/<snapshot>"), the
//	    snapshot file chain of the volume's replica on this node
//	    (csi/longhorn); for other drivers, only with an explicit opt-in, the
//	    live device (LiveDevice). An encrypted Longhorn volume (the Volume
//	    or volume.meta says so, or the image starts with a LUKS1/LUKS2
//	    header: engines up to v1.9 write no Encrypted key) is refused with
//	    ErrUnsupported: its replica holds ciphertext. A Longhorn image's
//	    ImageID is SnapshotIdentity, longhorn:<volume>/<snapshot>@<created>
//	ChangeHints(images, volume, base, target): a hint.Source over Longhorn's
//	    Delta between two snapshots; BaseImage is the base's
//	    SnapshotIdentity, and every state in which the delta is not to be
//	    trusted (a Removed snapshot below the base, a chain that changed, a
//	    revert, an encrypted volume, another driver) wraps
//	    hint.ErrUnavailable: the round reads the whole image
//
// Every method is idempotent and says "not yet" with a result, never with
// (nil, nil); the sentinel errors say which failures need a change in the
// cluster before a retry can succeed.
package csi
