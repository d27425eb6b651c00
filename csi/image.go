package csi

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/voldelta/voldelta/agent"
	"github.com/voldelta/voldelta/chunk"
)

// Image is a readable point-in-time image of a volume.
type Image interface {
	io.ReaderAt
	// Size is the image's size in bytes.
	Size() uint64
	// Close releases the image's files.
	Close() error
}

var _ agent.Image = Image(nil)

// ImageSource opens the image of a ready snapshot on this node.
type ImageSource interface {
	// Open returns the image of snapshot snap (Ready) of volume v. An error
	// wrapping ErrUnsupported means no retry will help.
	Open(ctx context.Context, v *Volume, snap SnapshotResult) (Image, error)
}

// ChangeTracker is implemented by image sources that know which extents of
// a snapshot may differ from an earlier snapshot of the same volume (changed
// block tracking), so that a scan can skip the rest.
type ChangeTracker interface {
	// Changed returns extents outside which the images of the snapshots
	// with handles base and target are equal: a superset of the change,
	// never a subset; empty (not nil) if nothing changed. An error means
	// the change is unknown (read everything).
	Changed(ctx context.Context, v *Volume, base, target string) ([]chunk.Extent, error)
}

// Identified is implemented by images that know a stable identity of the
// snapshot they read (for Longhorn, SnapshotIdentity), the form a round
// puts in HELLO's Image and a hint.Source names as its BaseImage.
type Identified interface {
	ImageID() string
}

// ImageID is img's identity if it has one (Identified), "" if not: a live
// device names no point in time, so no hint is ever relative to it.
func ImageID(img Image) string {
	if i, ok := img.(Identified); ok {
		return i.ImageID()
	}
	return ""
}

// SnapshotIdentifier is implemented by image sources that can name a
// snapshot by the identity the image opened from it has (ImageID), without
// opening it.
type SnapshotIdentifier interface {
	// SnapshotID returns the identity of the snapshot with that handle of
	// volume v, as it is now.
	SnapshotID(ctx context.Context, v *Volume, handle string) (string, error)
}

// ParseLonghornSnapshotHandle splits a Longhorn CSI snapshot handle of type
// snap, "snap://<volume>/<snapshot>", into the Longhorn volume and snapshot
// names (longhorn-manager csi/controller_server.go encodeSnapshotID). Other
// types ("bak://" backups, "bi://" backing images) are not local snapshots
// and give ErrUnsupported.
func ParseLonghornSnapshotHandle(handle string) (volume, snapshot string, err error) {
	typ, rest, ok := strings.Cut(handle, "://")
	if !ok {
		return "", "", fmt.Errorf("snapshot handle %q is not a Longhorn handle: %w", handle, ErrUnsupported)
	}
	if typ != "snap" {
		return "", "", fmt.Errorf("snapshot handle %q: type %q is not an in-cluster Longhorn snapshot (use a VolumeSnapshotClass with parameters.type: snap): %w", handle, typ, ErrUnsupported)
	}
	volume, snapshot, ok = strings.Cut(rest, "/")
	if !ok || safeName(volume) != nil || safeName(snapshot) != nil {
		return "", "", fmt.Errorf("snapshot handle %q: want snap://<volume>/<snapshot>: %w", handle, ErrUnsupported)
	}
	return volume, snapshot, nil
}
