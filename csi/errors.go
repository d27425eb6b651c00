package csi

import "errors"

var (
	// ErrNotFound: an object the volume resolves through (PVC, PV,
	// Longhorn Volume) does not exist. Retry after it is created.
	ErrNotFound = errors.New("not found")
	// ErrNotBound: the PVC is not bound to a PV yet. Retry later.
	ErrNotBound = errors.New("PVC is not bound")
	// ErrNotCSI: the PV is not a CSI volume; voldelta cannot resolve it.
	ErrNotCSI = errors.New("PV is not a CSI volume")
	// ErrNotAttached: the volume is attached to no node, so no agent can
	// read it. Retry after it is attached.
	ErrNotAttached = errors.New("volume is not attached to any node")
	// ErrSnapshotFailed: the snapshot controller or the CSI driver reported
	// an error on the VolumeSnapshot or its content. Delete the snapshot
	// and take a new one.
	ErrSnapshotFailed = errors.New("volume snapshot failed")
	// ErrUnsupported: the snapshot cannot be read on this node (unknown
	// snapshot handle format, or a driver without a reader).
	ErrUnsupported = errors.New("snapshot cannot be read by voldelta")
)
