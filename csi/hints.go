package csi

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/csi/longhorn"
	"github.com/voldelta/voldelta/hint"
)

// HintSourceLonghorn is the Name of the hint.Source ChangeHints returns.
const HintSourceLonghorn = "longhorn"

// SnapshotIdentity is the identity of snapshot s of Longhorn volume volume,
//
//	longhorn:<volume>/<snapshot name>@<created, RFC 3339 in UTC>
//
// with the creation time of the snapshot's .img.meta, which Longhorn keeps
// when it purges a snapshot below it (the file is replaced, the meta only
// gets a new parent) and which every replica of the volume shares: it names
// the snapshot, not a replica's copy, and a snapshot deleted and taken
// again under the same name gets another one. It is "" when the meta
// records no parsable creation time: such a snapshot has no identity, and
// no hints are ever relative to it.
func SnapshotIdentity(volume string, s longhorn.Snapshot) string {
	if s.Created.IsZero() {
		return ""
	}
	return "longhorn:" + volume + "/" + s.Name + "@" + s.Created.UTC().Format(time.RFC3339Nano)
}

// unidentified is the BaseImage of a source whose base has no identity: it
// matches no image's identity (those always hold an "@").
const unidentified = "longhorn:unidentified"

// ChangeHints is the hint.Source of the change from the Longhorn snapshot
// with handle baseHandle to the one with targetHandle of volume v, as
// tracker (an *Images) reports it.
//
// BaseImage is SnapshotIdentity of the base snapshot as the replica records
// it now; it is compared with the Image of the HELLO of the round that read
// the base, which put there the ImageID of the image Images.Open returned.
// Changed is tracker's Changed, checked: a base whose identity is no longer
// BaseImage (deleted and taken again), a Removed snapshot below the base, a
// chain that changed during the delta, a base or target that is Removed or
// gone, a revert (the base is no longer the target's ancestor), a
// rebuilding replica, an encrypted volume or a driver without change
// tracking (ErrUnsupported) give an error wrapping hint.ErrUnavailable and
// the cause, and the round reads the whole image. Other errors (unreadable
// or inconsistent metadata, I/O) are returned as they are.
func ChangeHints(tracker ChangeTracker, v *Volume, baseHandle, targetHandle string) hint.Source {
	return &changeHints{tracker: tracker, v: v, base: baseHandle, target: targetHandle}
}

type changeHints struct {
	tracker      ChangeTracker
	v            *Volume
	base, target string

	once   sync.Once
	baseID string
	idErr  error
}

// Name implements hint.Source.
func (h *changeHints) Name() string { return HintSourceLonghorn }

// BaseImage implements hint.Source. It is never "" (which would make the
// caller vouch for the base): a base that cannot be identified gives an
// identity no image has.
func (h *changeHints) BaseImage() string {
	id, err := h.identity(context.Background())
	if err != nil || id == "" {
		return unidentified
	}
	return id
}

// identity is the base's identity, looked up once.
func (h *changeHints) identity(ctx context.Context) (string, error) {
	h.once.Do(func() {
		si, ok := h.tracker.(SnapshotIdentifier)
		if !ok {
			h.idErr = fmt.Errorf("%T cannot identify snapshots: %w", h.tracker, ErrUnsupported)
			return
		}
		h.baseID, h.idErr = si.SnapshotID(ctx, h.v, h.base)
		if h.idErr == nil && h.baseID == "" {
			h.idErr = fmt.Errorf("snapshot %s records no creation time: %w", h.base, ErrUnsupported)
		}
	})
	return h.baseID, h.idErr
}

// Changed implements hint.Source.
func (h *changeHints) Changed(ctx context.Context, newSize uint64) ([]chunk.Extent, error) {
	if _, err := h.identity(ctx); err != nil {
		return nil, h.unavailable(fmt.Errorf("identify the base snapshot: %w", err))
	}
	var exts []chunk.Extent
	if im, ok := h.tracker.(*Images); ok {
		d, err := im.delta(ctx, h.v, h.base, h.target)
		if err != nil {
			return nil, h.unavailable(err)
		}
		if d.baseID != h.baseID {
			return nil, fmt.Errorf("%w: Longhorn base snapshot %s is now %q, not %q (deleted and taken again?); a full scan is done instead",
				hint.ErrUnavailable, h.base, d.baseID, h.baseID)
		}
		if d.targetSize != newSize {
			return nil, fmt.Errorf("%w: Longhorn snapshot %s is %d bytes, the image read is %d; a full scan is done instead",
				hint.ErrUnavailable, h.target, d.targetSize, newSize)
		}
		exts = d.extents
	} else {
		var err error
		if exts, err = h.tracker.Changed(ctx, h.v, h.base, h.target); err != nil {
			return nil, h.unavailable(err)
		}
		// Another tracker's base may have changed since BaseImage.
		if id, err := h.tracker.(SnapshotIdentifier).SnapshotID(ctx, h.v, h.base); err != nil || id != h.baseID {
			return nil, fmt.Errorf("%w: base snapshot %s changed identity during the delta (%q, %v); a full scan is done instead",
				hint.ErrUnavailable, h.base, id, err)
		}
	}
	if exts == nil {
		return nil, fmt.Errorf("%w: changes from %s to %s unknown; a full scan is done instead", hint.ErrUnavailable, h.base, h.target)
	}
	if err := hint.Check(exts, newSize); err != nil {
		return nil, fmt.Errorf("changes from %s to %s: %w", h.base, h.target, err)
	}
	return exts, nil
}

// unavailable wraps hint.ErrUnavailable around the errors for which reading
// the whole image is the answer, saying so; others are returned as they
// are.
func (h *changeHints) unavailable(err error) error {
	for _, e := range []error{
		ErrUnsupported, longhorn.ErrRemovedBelowBase, longhorn.ErrChainChanged, longhorn.ErrSnapshotRemoved,
		longhorn.ErrSnapshotNotFound, longhorn.ErrNotAncestor, longhorn.ErrRebuilding,
		longhorn.ErrReplicaNotFound, longhorn.ErrBackingFile, hint.ErrUnavailable,
	} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: Longhorn changed-block tracking from %s to %s not used, a full scan is done instead: %w",
				hint.ErrUnavailable, h.base, h.target, err)
		}
	}
	return err
}
